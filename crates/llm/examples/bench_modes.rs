//! Runs the recovery benchmark in the in-process modes (all-local, shortage, and a `MemTier`
//! standing in for remote memory) and prints a table plus one JSON line per mode. `reused_f`:
//! prompt tokens taken from evicted blocks still being written; `wr wait`: time the serving
//! loop waited for tier writes (a full write-back queue, and the last writes of the run).
//!
//! ```text
//! cargo run --release -p oxmem-llm --example bench_modes            # default model, CPU
//! cargo run --release -p oxmem-llm --example bench_modes -- --quick # tiny model
//! cargo run --release -p oxmem-llm --example bench_modes -- --replay # simulated H100 + 8B
//! ```

use std::io::Write;
use std::sync::Arc;

use oxmem_llm::{
    BenchConfig, MemTier, ModeSpec, block_bytes, finish_reports, run_mode, short_budget_bytes,
    working_set_blocks,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = if args.iter().any(|a| a == "--replay") {
        BenchConfig::replay()
    } else if args.iter().any(|a| a == "--quick") {
        BenchConfig::quick()
    } else {
        BenchConfig::default()
    };
    let ws = working_set_blocks(&cfg);
    let bb = block_bytes(&cfg);
    println!(
        "compute: {}\nworkload: {} requests, working set {} blocks x {} KiB = {:.1} MiB, short budget {:.1} MiB",
        cfg.compute_label(),
        cfg.workload.requests(),
        ws,
        bb / 1024,
        (ws * bb as u64) as f64 / (1 << 20) as f64,
        short_budget_bytes(&cfg) as f64 / (1 << 20) as f64
    );
    if let oxmem_llm::Compute::Replay(a) = &cfg.compute {
        println!("time model: {}", a.describe());
    }
    let modes = vec![
        ModeSpec::all_local(&cfg),
        ModeSpec::shortage(&cfg),
        ModeSpec::with_tier("mem", &cfg, Arc::new(MemTier::new(bb, ws + 16))),
    ];
    let mut reports = Vec::new();
    for spec in &modes {
        let rep = run_mode(&cfg, spec, &mut |p| {
            print!("\r{}: {}/{}   ", p.mode, p.done, p.total);
            let _ = std::io::stdout().flush();
        })?;
        println!();
        reports.push(rep);
    }
    finish_reports(&mut reports)?;
    println!(
        "{:<10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "mode",
        "elapsed",
        "req/s",
        "ttft p50",
        "computed",
        "reused_l",
        "reused_t",
        "reused_f",
        "fetchMiB",
        "writeMiB",
        "wr wait",
        "vs short",
        "vs ideal"
    );
    for r in &reports {
        println!(
            "{:<10} {:>7.2}s {:>8.2} {:>7.1}ms {:>9} {:>9} {:>9} {:>9} {:>9.1} {:>9.1} {:>7.2}s {:>7.2}x {:>8.2}",
            r.mode,
            r.elapsed_s,
            r.requests_per_s,
            r.ttft_p50_ms,
            r.prefill_tokens_computed,
            r.reused_local_tokens,
            r.reused_tier_tokens,
            r.reused_inflight_tokens,
            r.bytes_fetched as f64 / (1 << 20) as f64,
            r.bytes_written as f64 / (1 << 20) as f64,
            r.write_wait_s,
            r.recovery_vs_shortage.unwrap_or(f64::NAN),
            r.fraction_of_ideal.unwrap_or(f64::NAN),
        );
    }
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    println!(
        "tokens identical in every mode: digest {}",
        reports[0].tokens_digest
    );
    Ok(())
}
