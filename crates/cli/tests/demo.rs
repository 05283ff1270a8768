//! `oxmem demo --quick` end to end: the embedded pool, a real `redis-server` (when installed),
//! the disk tier, every mode, the JSON and the chart.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pool::temp_dir;
use common::{oxmem, run};

#[test]
fn the_quick_demo_runs_every_mode_with_identical_tokens() {
    let dir = temp_dir("demo");
    let json = dir.join("demo.json");
    let chart = dir.join("demo.png");
    let mut cmd = Command::new(oxmem());
    cmd.args(["demo", "--quick", "--json"])
        .arg(&json)
        .arg("--chart")
        .arg(&chart)
        .arg("--disk-dir")
        .arg(&dir);
    let out = run(cmd, Duration::from_secs(240));
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("targets:"), "{stdout}");

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON file")).expect("JSON");
    assert_eq!(doc["simulated_compute"], false);
    let modes = doc["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    let redis = which("redis-server");
    let mut want = vec!["all-local", "shortage", "disk"];
    if redis {
        want.push("redis");
    } else {
        println!("no redis-server on PATH: the redis mode is skipped (and must say so)");
        assert!(stdout.contains("redis tier skipped"), "{stdout}");
    }
    want.push("pool");
    assert_eq!(names, want);
    let mode = |name: &str| modes.iter().find(|m| m["mode"] == name).unwrap();
    for m in modes {
        for field in [
            "requests_per_s",
            "tokens_per_s",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "prefill_tokens_computed",
            "prefill_tokens_reused",
            "bytes_fetched",
            "recovery_vs_shortage",
            "fraction_of_ideal",
        ] {
            assert!(m[field].is_number(), "{} has no {field}: {m}", m["mode"]);
        }
        assert_eq!(m["tokens_match_all_local"], true, "{}", m["mode"]);
        assert!(m["requests_per_s"].as_f64().unwrap() > 0.0);
    }
    let n = |m: &str, f: &str| mode(m)[f].as_u64().unwrap();
    // Shortage really recomputes; every tier really fetches what shortage recomputed.
    assert!(n("shortage", "prefill_tokens_computed") > n("all-local", "prefill_tokens_computed"));
    assert_eq!(n("shortage", "bytes_fetched"), 0);
    for tier in want.iter().skip(2) {
        assert!(n(tier, "bytes_fetched") > 0, "{tier} fetched nothing");
        assert!(
            n(tier, "prefill_tokens_computed") < n("shortage", "prefill_tokens_computed"),
            "{tier} computed as much as shortage"
        );
    }
    let png = std::fs::read(&chart).expect("the chart");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}
