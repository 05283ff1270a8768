//! Baselines measured in the same run as oxmem: a raw UDP ping-pong, single-stream TCP
//! (iperf3), and Mooncake's transfer engine over TCP. Each is skipped, with the reason
//! recorded, when it cannot run here.

use std::time::Duration;

use oxmem_client::Target;
use serde::Serialize;

/// Round trips of a datagram to an echo and back.
#[derive(Debug, Clone, Serialize)]
pub struct PingPong {
    pub size: u64,
    pub round_trips: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Single-stream TCP bandwidth.
#[derive(Debug, Clone, Serialize)]
pub struct Iperf {
    pub gbytes_per_s: f64,
    pub seconds: f64,
}

/// One point of Mooncake's `transfer_engine_bench` over TCP.
#[derive(Debug, Clone, Serialize)]
pub struct MooncakeResult {
    pub op: String,
    pub block_size: u64,
    pub batch_size: u64,
    pub threads: u64,
    pub gbytes_per_s: f64,
    pub ops_per_s: f64,
}

/// All baselines of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Baselines {
    pub udp_ping_pong: Option<PingPong>,
    pub iperf3_tcp: Option<Iperf>,
    pub mooncake_tcp: Vec<MooncakeResult>,
    /// One line per baseline that did not run, saying why.
    pub skipped: Vec<String>,
}

/// Runs every baseline against the host of `target`.
pub fn run_all(target: &Target, duration: Duration, progress: &dyn Fn(&str)) -> Baselines {
    let _ = (target, duration);
    progress("baselines are not implemented yet");
    Baselines {
        skipped: vec!["baselines: not implemented yet".into()],
        ..Baselines::default()
    }
}
