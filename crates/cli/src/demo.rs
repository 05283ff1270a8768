//! `oxmem demo`: the LLM workload under memory shortage, with and without borrowed memory.
//!
//! One command tells the whole story: it starts a pool on this machine (as `oxmem up` does,
//! on loopback), then serves the same seeded multi-turn workload with the same model in every
//! mode — all-local (the ideal), shortage (a quarter of the KV working set fits, evicted blocks
//! are recomputed), shortage plus a local-disk tier (`O_DIRECT`), plus a Redis tier (a real
//! `redis-server`, when one is installed) and plus the oxmem pool — and prints a table, writes
//! a PNG chart and, on request, JSON. Every mode must generate exactly the tokens of
//! all-local; the command fails if one does not.
//!
//! `--replay h100-8b` replaces model compute by a time model of an H100 serving Llama-3-8B
//! (see `oxmem_llm::AcceleratorModel`) while every KV block moved to and from a tier is real
//! and of the real size; its output is labelled as simulated compute.

use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use oxmem_client::{AllocOptions, Pool, PoolOptions};
use oxmem_kv::{DiskOptions, DiskTier, KvError, PoolTier, PoolTierOptions, RedisOptions};
use oxmem_llm::{
    BenchConfig, Compute, ModeReport, ModeSpec, Progress, block_bytes, finish_reports, run_mode,
    short_budget_bytes, working_set_blocks,
};
use plotters::prelude::*;
use serde::Serialize;

use crate::coord::{LocalPool, UpArgs, start_local_pool};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A tiny model and workload: every mode in seconds (for CI and a first look).
    #[arg(long)]
    pub quick: bool,
    /// Replace model compute with a time model of an accelerator; KV transfers stay real.
    #[arg(long, value_enum)]
    pub replay: Option<Accelerator>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to write the PNG chart.
    #[arg(long, default_value = "oxmem-demo.png")]
    pub chart: PathBuf,
    /// Write no chart.
    #[arg(long)]
    pub no_chart: bool,
    /// Directory for the disk tier's file; its file system must support O_DIRECT (default:
    /// the system's temporary directory).
    #[arg(long)]
    pub disk_dir: Option<PathBuf>,
    /// The redis-server program for the Redis tier (default: `redis-server` on PATH; the mode
    /// is skipped, and says so, when there is none).
    #[arg(long)]
    pub redis_server: Option<PathBuf>,
    /// Leave out modes (comma-separated: all-local, shortage, disk, redis, pool); without
    /// all-local and shortage there is nothing to compare with.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Memory nodes of the embedded pool.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
}

/// The accelerators `--replay` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accelerator {
    /// An NVIDIA H100 SXM serving Llama-3-8B in bf16.
    #[value(name = "h100-8b")]
    H100_8b,
}

/// What `--json` writes.
#[derive(Debug, Serialize)]
struct DemoJson<'a> {
    /// `cpu …` or the accelerator model's label.
    compute: String,
    /// True when model compute was replaced by a time model (transfers are real).
    simulated_compute: bool,
    time_model: Option<String>,
    config: &'a BenchConfig,
    working_set_blocks: u64,
    block_bytes: usize,
    short_budget_bytes: u64,
    cpus: usize,
    skipped: &'a [String],
    modes: &'a [ModeReport],
}

/// Kills the `redis-server` it started when dropped.
struct RedisServer {
    child: Child,
    url: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts a private `redis-server` on a free loopback port, without persistence.
fn start_redis(program: &Path) -> anyhow::Result<RedisServer> {
    let port = free_port()?;
    let child = Command::new(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let server = RedisServer {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on port {port} within 10 s",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Progress on stderr: a line rewritten in place on a terminal, quarters otherwise.
fn progress_printer() -> impl FnMut(Progress) {
    let tty = std::io::stderr().is_terminal();
    let mut last_quarter = usize::MAX;
    let started = Instant::now();
    move |p: Progress| {
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(
                err,
                "\r  {:<10} {:>4}/{:<4} requests  {:>6.1} s",
                p.mode,
                p.done,
                p.total,
                started.elapsed().as_secs_f64()
            );
            if p.done == p.total {
                let _ = writeln!(err);
            }
        } else {
            let quarter = p.done * 4 / p.total.max(1);
            if quarter != last_quarter {
                last_quarter = quarter;
                let _ = writeln!(err, "  {:<10} {:>4}/{} requests", p.mode, p.done, p.total);
            }
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = match (args.replay, args.quick) {
        (Some(Accelerator::H100_8b), false) => BenchConfig::replay(),
        (Some(Accelerator::H100_8b), true) => BenchConfig::quick_replay(),
        (None, false) => BenchConfig::default(),
        (None, true) => BenchConfig::quick(),
    };
    for s in &args.skip {
        if !["all-local", "shortage", "disk", "redis", "pool"].contains(&s.as_str()) {
            bail!("--skip takes all-local, shortage, disk, redis or pool, not {s:?}");
        }
    }
    let skip = |m: &str| args.skip.iter().any(|s| s == m);
    let block = block_bytes(&cfg);
    let ws = working_set_blocks(&cfg);
    // Every tier can hold the whole working set twice over, so a tier never evicts what the
    // workload will ask for again (the pool's sets of slots need headroom).
    let tier_blocks = ws * 2;
    let simulated = matches!(cfg.compute, Compute::Replay(_));
    println!("oxmem demo: an LLM serving multi-turn conversations when its KV cache does not fit");
    if let Compute::Replay(a) = &cfg.compute {
        println!("  SIMULATED COMPUTE: {}", a.describe());
        println!(
            "  (model compute is a time model; every KV block moved to and from a tier is real)"
        );
    }
    println!("  compute    {}", cfg.compute_label());
    println!(
        "  workload   {} requests: {} users x {} rounds + {} questions on {} documents (seed {})",
        cfg.workload.requests(),
        cfg.workload.users,
        cfg.workload.rounds,
        cfg.workload.doc_questions,
        cfg.workload.documents,
        cfg.workload.seed
    );
    println!(
        "  KV cache   {} blocks of {} tokens x {:.2} MiB = {:.1} MiB working set; short budget {:.1} MiB ({:.0} %)",
        ws,
        cfg.block_tokens,
        mib(block as u64),
        mib(ws * block as u64),
        mib(short_budget_bytes(&cfg)),
        cfg.budget_fraction * 100.0
    );

    // The tiers, each set up before any mode runs (so no mode pays another's start-up).
    let mut skipped: Vec<String> = Vec::new();
    let mut modes = Vec::new();
    if !skip("all-local") {
        modes.push(ModeSpec::all_local(&cfg));
    }
    if !skip("shortage") {
        modes.push(ModeSpec::shortage(&cfg));
    }
    let disk_dir = args.disk_dir.clone().unwrap_or_else(std::env::temp_dir);
    let disk_path = disk_dir.join(format!("oxmem-demo-kv-{}.bin", std::process::id()));
    if !skip("disk") {
        match DiskTier::create(&disk_path, block, tier_blocks, DiskOptions::default()) {
            Ok(t) => {
                println!("  disk tier  {} (O_DIRECT)", disk_path.display());
                modes.push(ModeSpec::with_tier("disk", &cfg, Arc::new(t)));
            }
            Err(e @ KvError::DirectIoUnsupported { .. }) => {
                println!("  disk tier  skipped: {e} (choose another --disk-dir)");
                skipped.push(format!("disk: {e}"));
            }
            Err(e) => return Err(e).context("disk tier"),
        }
    }
    let redis_program = args
        .redis_server
        .clone()
        .or_else(|| find_on_path("redis-server"));
    let mut _redis = None;
    if !skip("redis") {
        match &redis_program {
            Some(p) => {
                let server = start_redis(p)?;
                let tier = oxmem_kv::RedisTier::connect(
                    &server.url,
                    block,
                    tier_blocks,
                    RedisOptions::default(),
                )
                .context("Redis tier")?;
                println!("  redis tier {} ({})", server.url, p.display());
                modes.push(ModeSpec::with_tier("redis", &cfg, Arc::new(tier)));
                _redis = Some(server);
            }
            None => {
                println!(
                    "  redis tier skipped: no redis-server on PATH (apt-get install redis-server)"
                );
                skipped.push("redis: no redis-server on PATH".into());
            }
        }
    }
    let mut _pool: Option<(LocalPool, Pool)> = None;
    if !skip("pool") {
        let (local, pool, tier) = start_pool(&args, block, tier_blocks)?;
        println!(
            "  pool tier  {} nodes at {} (region of {:.1} MiB)",
            args.nodes,
            local.url,
            mib(tier.region().len())
        );
        modes.push(ModeSpec::with_tier("pool", &cfg, Arc::new(tier)));
        _pool = Some((local, pool));
    }

    println!("running {} modes:", modes.len());
    let mut reports = Vec::new();
    for spec in &modes {
        let mut progress = progress_printer();
        let report =
            run_mode(&cfg, spec, &mut progress).with_context(|| format!("mode {}", spec.name))?;
        reports.push(report);
    }
    let verdict = finish_reports(&mut reports);
    print_table(&reports, simulated);
    print_targets(&reports, simulated);
    if let Some(path) = &args.json {
        let doc = DemoJson {
            compute: cfg.compute_label(),
            simulated_compute: simulated,
            time_model: match &cfg.compute {
                Compute::Replay(a) => Some(a.describe()),
                Compute::Real => None,
            },
            config: &cfg,
            working_set_blocks: ws,
            block_bytes: block,
            short_budget_bytes: short_budget_bytes(&cfg),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            skipped: &skipped,
            modes: &reports,
        };
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("{}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if !args.no_chart {
        match chart(&reports, &cfg, &args.chart) {
            Ok(()) => println!("wrote {}", args.chart.display()),
            Err(e) => println!("no chart: {e:#}"),
        }
    }
    drop(modes);
    let _ = std::fs::remove_file(&disk_path);
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    verdict.context("every mode must generate exactly the tokens of all-local")?;
    Ok(())
}

/// Starts the embedded pool and formats a region of it as a KV store.
fn start_pool(
    args: &DemoArgs,
    block: usize,
    tier_blocks: u64,
) -> anyhow::Result<(LocalPool, Pool, PoolTier)> {
    let mut options = PoolTierOptions::default();
    if let Some(t) = std::env::var("OXMEM_DEMO_POOL_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.threads = t;
    }
    let region_bytes = PoolTier::region_bytes(block, tier_blocks, options.ways)?;
    let nodes = args.nodes.max(1) as u64;
    let mib = 1u64 << 20;
    // Each node holds its share of the region, plus slack for stripe rounding.
    let capacity = (region_bytes.div_ceil(nodes) + 16 * mib).div_ceil(mib) * mib;
    let data_dir = std::env::temp_dir().join(format!("oxmem-demo-{}", std::process::id()));
    let up = UpArgs {
        nodes: args.nodes.max(1),
        capacity,
        data_dir: data_dir.clone(),
        replicas: 1,
        listen: "127.0.0.1:0".parse().expect("address"),
        admin_token: None,
        stripe: mib,
        lease: Duration::from_secs(3),
        run_for: None,
    };
    let local = start_local_pool(&up, |_, _| {}).context("starting the embedded pool")?;
    let _ = std::fs::remove_dir_all(&data_dir); // the coordinator keeps its files open
    let pool = Pool::connect(&local.url, &local.tenant_token, PoolOptions::default())
        .context("connecting to the embedded pool")?;
    let region = pool
        .alloc(
            region_bytes,
            AllocOptions {
                replicas: Some(1),
                stripe_size: Some(mib),
            },
        )
        .context("allocating the KV region")?;
    let tier = PoolTier::create(region, block, options).context("formatting the KV region")?;
    Ok((local, pool, tier))
}

fn print_table(reports: &[ModeReport], simulated: bool) {
    if simulated {
        println!("results (SIMULATED COMPUTE, real KV transfers):");
    } else {
        println!("results:");
    }
    println!(
        "  {:<10} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>9} {:>8} {:>7}",
        "mode",
        "req/s",
        "tokens/s",
        "TTFT p50",
        "TTFT p99",
        "computed",
        "reused",
        "fetched",
        "recovery",
        "of ideal",
        "tokens"
    );
    for r in reports {
        println!(
            "  {:<10} {:>8.2} {:>9.1} {:>8.1}ms {:>8.1}ms {:>9} {:>9} {:>7.1}MiB {:>8.2}x {:>7.0}% {:>7}",
            r.mode,
            r.requests_per_s,
            r.tokens_per_s,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.prefill_tokens_computed,
            r.prefill_tokens_reused,
            mib(r.bytes_fetched),
            r.recovery_vs_shortage.unwrap_or(f64::NAN),
            r.fraction_of_ideal.unwrap_or(f64::NAN) * 100.0,
            match r.tokens_match_all_local {
                Some(true) => "same",
                Some(false) => "DIFFER",
                None => "-",
            }
        );
    }
    println!(
        "  (computed/reused: prompt tokens whose KV was computed or taken from a cache; recovery: \
         throughput / shortage's; of ideal: throughput / all-local's)"
    );
}

/// The targets, each said met or missed.
fn print_targets(reports: &[ModeReport], simulated: bool) {
    let rps = |m: &str| {
        reports
            .iter()
            .find(|r| r.mode == m)
            .map(|r| r.requests_per_s)
    };
    let Some(pool) = rps("pool") else { return };
    let mut checks: Vec<(String, f64, f64)> = Vec::new();
    if let Some(s) = rps("shortage") {
        checks.push(("pool vs shortage".into(), pool / s, 2.0));
    }
    if let Some(i) = rps("all-local") {
        let want = if simulated { 0.8 } else { 0.9 };
        checks.push(("pool vs all-local".into(), pool / i, want));
    }
    if simulated {
        for tier in ["redis", "disk"] {
            if let Some(t) = rps(tier) {
                checks.push((format!("pool vs {tier}"), pool / t, 1.5));
            }
        }
    }
    println!("targets:");
    for (what, got, want) in checks {
        let verdict = if got >= want { "met" } else { "MISSED" };
        println!("  {what:<20} {got:>6.2}x (target {want}x): {verdict}");
    }
}

const COLORS: [RGBColor; 5] = [
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
];

/// A bar chart of requests per second per mode, each bar labelled with its recovery factor.
fn chart(reports: &[ModeReport], cfg: &BenchConfig, path: &Path) -> anyhow::Result<()> {
    crate::bench::plot::ensure_font()?;
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = reports
        .iter()
        .map(|r| r.requests_per_s)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.2;
    let title = if matches!(cfg.compute, Compute::Replay(_)) {
        format!(
            "{} (SIMULATED COMPUTE, real KV transfers)",
            cfg.compute_label()
        )
    } else {
        format!(
            "LLM serving under KV-cache shortage: {}",
            cfg.compute_label()
        )
    };
    let n = reports.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    let names: Vec<String> = reports.iter().map(|r| r.mode.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("requests per second")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, r) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, r.requests_per_s)],
            color.filled(),
        )))?;
        let label = match (r.recovery_vs_shortage, r.fraction_of_ideal) {
            (Some(rec), Some(ideal)) => format!("{rec:.2}x / {:.0}% of ideal", ideal * 100.0),
            _ => format!("{:.2} req/s", r.requests_per_s),
        };
        chart.draw_series(std::iter::once(Text::new(
            label,
            (x + 0.12, r.requests_per_s + top * 0.03),
            ("sans-serif", 14),
        )))?;
    }
    root.present()?;
    Ok(())
}
