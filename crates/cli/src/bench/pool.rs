//! `oxmem bench-pool`: what striping gives. Reads a region striped over all nodes and a region
//! on one node, of the same size, in the same run, and reports both and their ratio.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use oxmem_client::{AllocOptions, Pool, PoolOptions, Region};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct PoolBenchArgs {
    /// The coordinator.
    #[arg(
        long,
        env = "OXMEM_COORDINATOR",
        default_value = "http://127.0.0.1:7500"
    )]
    pub coordinator: String,
    /// A tenant token.
    #[arg(long, env = "OXMEM_TOKEN")]
    pub token: String,
    /// Bytes of each region (and of each read).
    #[arg(long, default_value = "64MiB", value_parser = |s: &str| oxmem_node::parse_size(s).map_err(|e| e.to_string()))]
    pub size: u64,
    /// Stripe size of the striped region.
    #[arg(long, default_value = "1MiB", value_parser = |s: &str| oxmem_node::parse_size(s).map_err(|e| e.to_string()))]
    pub stripe: u64,
    /// How long to read each region.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Largest UDP datagram.
    #[arg(long, default_value_t = 65000)]
    pub max_datagram: usize,
    /// Label for the JSON (the path: loopback, veth-tbf…).
    #[arg(long, default_value = "loopback")]
    pub label: String,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The reads of one region.
#[derive(Debug, Clone, Serialize)]
pub struct RegionRun {
    pub layout: String,
    pub nodes: usize,
    pub stripes: usize,
    pub reads: u64,
    pub seconds: f64,
    pub gbytes_per_s: f64,
}

/// One `oxmem bench-pool` run.
#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    pub label: String,
    pub size: u64,
    pub striped: RegionRun,
    pub single_node: RegionRun,
    /// Striped throughput over single-node throughput.
    pub ratio: f64,
}

fn run_region(region: &Region, layout: &str, duration: Duration) -> anyhow::Result<RegionRun> {
    let len = usize::try_from(region.len())?;
    // Fill it (so pages exist on the nodes), then read it whole, again and again.
    let data: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
    region.write(0, &data).context("filling the region")?;
    let mut buf = vec![0u8; len];
    region.read(0, &mut buf).context("first read")?;
    anyhow::ensure!(buf == data, "{layout} region read back different data");
    let start = Instant::now();
    let mut reads = 0u64;
    while start.elapsed() < duration {
        region.read(0, &mut buf).context("read")?;
        reads += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let info = region.info();
    Ok(RegionRun {
        layout: layout.into(),
        nodes: info.nodes.len(),
        stripes: info.stripes.len(),
        reads,
        seconds,
        gbytes_per_s: reads as f64 * len as f64 / seconds / 1e9,
    })
}

pub fn run(args: PoolBenchArgs) -> anyhow::Result<()> {
    let mut options = PoolOptions::default();
    options.client.udp.max_datagram = args.max_datagram;
    options.client.timeout = Duration::from_secs(30);
    let pool =
        Pool::connect(&args.coordinator, &args.token, options).context("connecting to the pool")?;
    let striped = pool
        .alloc(
            args.size,
            AllocOptions {
                replicas: Some(1),
                stripe_size: Some(args.stripe),
            },
        )
        .context("allocating the striped region")?;
    let single = pool
        .alloc(
            args.size,
            AllocOptions {
                replicas: Some(1),
                stripe_size: Some(args.size),
            },
        )
        .context("allocating the single-node region")?;
    eprintln!(
        "oxmem bench-pool: striped region on {} nodes, single-node region on {}",
        striped.info().nodes.len(),
        single.info().nodes.len()
    );
    let s = run_region(&striped, "striped", args.duration)?;
    let o = run_region(&single, "single-node", args.duration)?;
    for r in [&s, &o] {
        println!(
            "{:<12} {:>2} nodes {:>5} stripes  {:>6} reads of {} B in {:.1} s  {:>7.3} GB/s",
            r.layout, r.nodes, r.stripes, r.reads, args.size, r.seconds, r.gbytes_per_s
        );
    }
    let report = PoolReport {
        label: args.label.clone(),
        size: args.size,
        ratio: s.gbytes_per_s / o.gbytes_per_s,
        striped: s,
        single_node: o,
    };
    println!("striped / single-node: {:.2}x", report.ratio);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    striped.free().context("freeing")?;
    single.free().context("freeing")?;
    Ok(())
}
