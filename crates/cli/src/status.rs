//! `oxmem status`: the pool as the coordinator sees it.

use anyhow::{Context as _, bail};
use clap::Args;
use oxmem_api::{ApiError, ClusterStatus, NodeHealth, RegionHealth};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator.
    #[arg(
        long,
        env = "OXMEM_COORDINATOR",
        default_value = "http://127.0.0.1:7500"
    )]
    pub coordinator: String,
    /// The admin token.
    #[arg(long, env = "OXMEM_ADMIN_TOKEN")]
    pub token: String,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn fetch(coordinator: &str, token: &str) -> anyhow::Result<ClusterStatus> {
    let url = format!("{}/v1/status", coordinator.trim_end_matches('/'));
    let resp = reqwest::blocking::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .with_context(|| format!("cannot reach the coordinator at {coordinator}"))?;
    let status = resp.status();
    let body = resp.bytes().context("reading the answer")?;
    if !status.is_success() {
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => bail!("coordinator refused: {e}"),
            Err(_) => bail!("coordinator answered HTTP {status}"),
        }
    }
    serde_json::from_slice(&body).context("the coordinator's answer is not a status")
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn render(s: &ClusterStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "coordinator: {}",
        if s.leader { "leader" } else { "follower" }
    );
    let _ = writeln!(out, "\nNODES");
    let _ = writeln!(
        out,
        "{:<10} {:<14} {:<28} {:>10} {:>10} {:>6} {:>10}",
        "ID", "NAME", "ADDRESS", "CAPACITY", "USED", "HEALTH", "HEARTBEAT"
    );
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{:<10} {:<14} {:<28} {:>10} {:>10} {:>6} {:>8}ms",
            n.node_id.0,
            n.name,
            n.data_addrs.first().map_or("-", String::as_str),
            bytes(n.capacity),
            bytes(n.used),
            match n.health {
                NodeHealth::Up => "up",
                NodeHealth::Down => "DOWN",
            },
            n.last_heartbeat_ms
        );
    }
    let _ = writeln!(out, "\nTENANTS");
    let _ = writeln!(
        out,
        "{:<12} {:<16} {:>10} {:>10} {:>8}",
        "ID", "NAME", "QUOTA", "USED", "REGIONS"
    );
    for t in &s.tenants {
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:>10} {:>10} {:>8}",
            t.tenant_id.0,
            t.name,
            bytes(t.quota_bytes),
            bytes(t.used_bytes),
            t.regions
        );
    }
    let _ = writeln!(out, "\nREGIONS");
    let _ = writeln!(
        out,
        "{:<8} {:<12} {:>10} {:>8} {:>8} {:>6} {:<9}",
        "ID", "TENANT", "SIZE", "REPLICAS", "STRIPES", "NODES", "HEALTH"
    );
    for r in &s.regions {
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:>10} {:>8} {:>8} {:>6} {:<9}",
            r.region_id.0,
            r.tenant_id.0,
            bytes(r.bytes),
            r.replicas,
            r.stripes.len(),
            r.nodes.len(),
            match r.health {
                RegionHealth::Healthy => "healthy",
                RegionHealth::Degraded => "DEGRADED",
                RegionHealth::Lost => "LOST",
            }
        );
    }
    let _ = writeln!(out, "\ndegraded stripes: {}", s.degraded_stripes);
    out
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let s = fetch(&args.coordinator, &args.token)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1 << 20), "1.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
