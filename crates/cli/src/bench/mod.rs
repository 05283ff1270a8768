//! `oxmem bench`: latency, bandwidth and atomics against a memory node, with the baselines a
//! user would compare with, measured in the same run.

pub mod baselines;
pub mod plot;
pub mod pool;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use oxmem_client::{AtomicOp, Endpoint, EndpointOptions, Target, Ticket};
use oxmem_net::PeerAddr;
use oxmem_net::engine::EngineConfig;
use oxmem_net::udp::{UdpConfig, UdpTransport};
use oxmem_node::{Access, Arena, Executor, Grant, NodeServer, Window, parse_size};
use serde::Serialize;

use crate::client_args::Variant;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchOp {
    Read,
    Write,
    FetchAdd,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The node (udp://HOST:PORT or eth://IFACE/PEER_MAC). Without it, the bench starts a node
    /// of its own on UDP loopback.
    #[arg(long)]
    pub target: Option<Target>,
    /// Operation of a single measurement.
    #[arg(long, value_enum, default_value_t = BenchOp::Read)]
    pub op: BenchOp,
    /// Bytes per operation (ignored for fetch-add, which moves 8).
    #[arg(long, default_value = "4KiB", value_parser = size)]
    pub size: u64,
    /// Operations kept in flight.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// How long to measure each point.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Run the whole suite (latency, bandwidth, atomics) and the baselines.
    #[arg(long)]
    pub suite: bool,
    /// Measure time per point in the suite.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub point: Duration,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a PNG chart of the suite.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Skip the baselines (UDP ping-pong, iperf3, Mooncake).
    #[arg(long)]
    pub no_baselines: bool,
    /// Largest UDP datagram for udp:// targets (and the bench's own node).
    #[arg(long, default_value_t = 65000)]
    pub max_datagram: usize,
    /// Bytes of the node's memory the bench spreads its operations over.
    #[arg(long, default_value = "64MiB", value_parser = size)]
    pub region: u64,
    /// Header variant.
    #[arg(long, value_enum, default_value_t = Variant::V1_1)]
    pub variant: Variant,
    /// Label for this run in the JSON (for example the path: loopback, veth).
    #[arg(long, default_value = "loopback")]
    pub label: String,
    /// IP address of the node's host for the baselines (needed for eth:// targets).
    #[arg(long)]
    pub baseline_host: Option<std::net::IpAddr>,
    /// A Mooncake target segment (IP:PORT) already running on a remote host.
    #[arg(long)]
    pub mooncake_segment: Option<String>,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// One measured point.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub op: BenchOp,
    pub size: u64,
    pub depth: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    /// 10^9 bytes per second, as Mooncake and iperf3 report.
    pub gbytes_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
}

/// A target the issue sets, checked against the baselines of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub ours: f64,
    pub baseline: f64,
    pub ratio: f64,
    /// The ratio required (at least, or at most when `lower_is_better`).
    pub required: f64,
    pub lower_is_better: bool,
    pub met: bool,
}

/// Everything one `oxmem bench` run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub target: String,
    pub machine: String,
    pub measurements: Vec<Measurement>,
    pub baselines: baselines::Baselines,
    pub targets: Vec<TargetCheck>,
}

/// Runs one point: keeps `depth` operations in flight for `duration`.
pub fn measure(
    ep: &Endpoint,
    op: BenchOp,
    size: u64,
    depth: usize,
    duration: Duration,
    region: u64,
) -> anyhow::Result<Measurement> {
    let size = if op == BenchOp::FetchAdd { 8 } else { size };
    let len = usize::try_from(size).context("size")?;
    let slots = (region / size).max(1);
    let data = vec![0x5au8; len];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let mut next = 0u64;
    // Read buffers are handed back by completed reads and reused: no allocation per read.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let start_op =
        |next: &mut u64, spare: &mut Vec<Vec<u8>>| -> anyhow::Result<(Instant, Ticket)> {
            let address = (*next % slots) * size;
            *next += 1;
            let t = Instant::now();
            let ticket = match op {
                BenchOp::Read => {
                    let buf = spare.pop().unwrap_or_else(|| vec![0; len]);
                    ep.start_read_into(address, buf)?
                }
                BenchOp::Write => ep.start_write(address, &data)?,
                BenchOp::FetchAdd => ep.start_atomic(address, AtomicOp::Add, 8, 1)?,
            };
            Ok((t, ticket))
        };
    // Warm up briefly (connection credits, page faults on the node), then measure.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        start_op(&mut next, &mut spare)?.1.wait().ok();
    }
    let mut window = std::collections::VecDeque::with_capacity(depth);
    let begin = Instant::now();
    for _ in 0..depth.max(1) {
        window.push_back(start_op(&mut next, &mut spare)?);
    }
    let (mut ops, mut errors) = (0u64, 0u64);
    while let Some((t, ticket)) = window.pop_front() {
        match ticket.wait() {
            Ok(done) => {
                if let oxmem_client::Completed::Read(buf) = done {
                    spare.push(buf);
                }
                ops += 1;
                hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
            }
            Err(_) => errors += 1,
        }
        if begin.elapsed() < duration {
            window.push_back(start_op(&mut next, &mut spare)?);
        }
    }
    let seconds = begin.elapsed().as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p) as f64;
    Ok(Measurement {
        op,
        size,
        depth,
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds,
        gbytes_per_s: ops as f64 * size as f64 / seconds / 1e9,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: hist.max() as f64,
        errors,
    })
}

/// A node of the bench's own on UDP loopback.
fn start_local_node(args: &BenchArgs) -> anyhow::Result<(NodeServer, SocketAddr)> {
    let capacity = args.region.max(1 << 20);
    let mut exec = Executor::new(Arena::new(capacity).context("arena")?);
    exec.grants_mut().add(Grant::any(
        Window {
            base: 0,
            len: capacity,
        },
        Access::ReadWrite,
    ))?;
    let mut server = NodeServer::new(exec);
    let udp = UdpConfig {
        max_datagram: args.max_datagram,
        ..UdpConfig::default()
    };
    let t = UdpTransport::bind_with(SocketAddr::from(([127, 0, 0, 1], 0)), udp)?;
    let PeerAddr::Udp(addr) = server.serve(t, EngineConfig::default())? else {
        bail!("not UDP")
    };
    Ok((server, addr))
}

fn options(args: &BenchArgs) -> EndpointOptions {
    let mut o = EndpointOptions {
        variant: args.variant.into(),
        timeout: Duration::from_secs(10),
        ..EndpointOptions::default()
    };
    o.udp.max_datagram = args.max_datagram;
    o
}

fn progress(msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "oxmem bench: {msg}");
}

fn print_measurement(m: &Measurement) {
    println!(
        "{:<9} {:>8} B  depth {:>3}  {:>10.0} ops/s  {:>7.3} GB/s  p50 {:>7.1} us  p99 {:>7.1} us  p999 {:>7.1} us  max {:>8.1} us{}",
        format!("{:?}", m.op).to_lowercase(),
        m.size,
        m.depth,
        m.ops_per_s,
        m.gbytes_per_s,
        m.p50_us,
        m.p99_us,
        m.p999_us,
        m.max_us,
        if m.errors > 0 {
            format!("  {} errors", m.errors)
        } else {
            String::new()
        }
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut _local = None;
    let target = match &args.target {
        Some(t) => t.clone(),
        None => {
            let (server, addr) = start_local_node(&args)?;
            progress(&format!("started a node on udp://{addr}"));
            _local = Some(server);
            Target::Udp(addr)
        }
    };
    let ep = Endpoint::connect(&target, options(&args))
        .with_context(|| format!("cannot connect to {target}"))?;
    let mut measurements = Vec::new();
    if args.suite {
        let plan = suite_plan();
        for (i, (op, size, depth)) in plan.iter().enumerate() {
            progress(&format!(
                "[{}/{}] {op:?} {size} B depth {depth}",
                i + 1,
                plan.len()
            ));
            let m = measure(&ep, *op, *size, *depth, args.point, args.region)?;
            print_measurement(&m);
            measurements.push(m);
        }
    } else {
        let m = measure(
            &ep,
            args.op,
            args.size,
            args.depth,
            args.duration,
            args.region,
        )?;
        print_measurement(&m);
        measurements.push(m);
    }
    drop(ep);

    let baselines = if args.no_baselines || !args.suite {
        baselines::Baselines::default()
    } else {
        let opts = baselines::BaselineOptions {
            host: args.baseline_host,
            mooncake_segment: args.mooncake_segment.clone(),
        };
        let duration = args.point.max(Duration::from_secs(2));
        baselines::run_all(&target, &opts, duration, &progress)
    };
    let targets = check_targets(&measurements, &baselines);
    for t in &targets {
        println!(
            "target {:<45} ours {:>12.3}  baseline {:>12.3}  ratio {:>6.2} (need {} {:.2})  {}",
            t.name,
            t.ours,
            t.baseline,
            t.ratio,
            if t.lower_is_better { "<=" } else { ">=" },
            t.required,
            if t.met { "met" } else { "MISSED" }
        );
    }
    let report = Report {
        label: args.label.clone(),
        target: target.to_string(),
        machine: machine(),
        measurements,
        baselines,
        targets,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        progress(&format!("wrote {}", path.display()));
    }
    if let Some(path) = &args.plot {
        plot::plot(&report, path).with_context(|| format!("cannot draw {}", path.display()))?;
        progress(&format!("wrote {}", path.display()));
    }
    Ok(())
}

/// The suite's points: latency at depth 1, bandwidth at several sizes and depths, atomics.
fn suite_plan() -> Vec<(BenchOp, u64, usize)> {
    let mut plan = Vec::new();
    for op in [BenchOp::Read, BenchOp::Write] {
        for size in [64, 4096, 65536] {
            plan.push((op, size, 1));
        }
    }
    for op in [BenchOp::Read, BenchOp::Write] {
        for size in [4096u64, 65536, 1 << 20, 4 << 20] {
            for depth in [1, 2, 4, 8, 32] {
                // Large transfers fill the path at a few in flight; small ones need depth.
                if (size >= 1 << 20 && depth > 8) || (size < 1 << 20 && matches!(depth, 2 | 4)) {
                    continue;
                }
                if depth == 1 && size <= 65536 {
                    continue; // measured above
                }
                plan.push((op, size, depth));
            }
        }
    }
    plan.push((BenchOp::FetchAdd, 8, 1));
    plan.push((BenchOp::FetchAdd, 8, 32));
    plan
}

fn find(ms: &[Measurement], op: BenchOp, size: u64, min_depth: usize) -> Option<&Measurement> {
    ms.iter()
        .filter(|m| m.op == op && m.size == size && m.depth >= min_depth)
        .max_by(|a, b| a.gbytes_per_s.total_cmp(&b.gbytes_per_s))
}

fn check(
    name: &str,
    ours: f64,
    baseline: f64,
    required: f64,
    lower_is_better: bool,
) -> TargetCheck {
    let ratio = if baseline > 0.0 {
        ours / baseline
    } else {
        f64::NAN
    };
    let met = if lower_is_better {
        ratio <= required
    } else {
        ratio >= required
    };
    TargetCheck {
        name: name.into(),
        ours,
        baseline,
        ratio,
        required,
        lower_is_better,
        met,
    }
}

/// The targets, as ratios to baselines measured in the same run.
fn check_targets(ms: &[Measurement], b: &baselines::Baselines) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    if let Some(m) = find(ms, BenchOp::Read, 1 << 20, 1) {
        if let Some(tcp) = &b.iperf3_tcp {
            out.push(check(
                "1 MiB reads vs iperf3 TCP (GB/s)",
                m.gbytes_per_s,
                tcp.gbytes_per_s,
                0.9,
                false,
            ));
        }
        if let Some(mc) = b.mooncake_tcp.iter().find(|r| r.block_size == 1 << 20) {
            out.push(check(
                "1 MiB reads vs Mooncake TCP (GB/s)",
                m.gbytes_per_s,
                mc.gbytes_per_s,
                3.0,
                false,
            ));
        }
    }
    if let Some(m) = find(ms, BenchOp::Read, 4096, 32) {
        if let Some(mc) = b.mooncake_tcp.iter().find(|r| r.block_size == 4096) {
            out.push(check(
                "4 KiB reads depth>=32 vs Mooncake TCP (ops/s)",
                m.ops_per_s,
                mc.ops_per_s,
                25.0,
                false,
            ));
        }
    }
    if let (Some(m), Some(pp)) = (
        ms.iter()
            .find(|m| m.op == BenchOp::Read && m.size == 64 && m.depth == 1),
        &b.udp_ping_pong,
    ) {
        out.push(check(
            "64 B read p50 vs UDP ping-pong p50 (us)",
            m.p50_us,
            pp.p50_us,
            1.3,
            true,
        ));
        out.push(check(
            "64 B read p99 vs UDP ping-pong p99 (us)",
            m.p99_us,
            pp.p99_us,
            2.0,
            true,
        ));
    }
    out
}
