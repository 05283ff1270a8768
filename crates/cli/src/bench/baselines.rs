//! Baselines measured in the same run as oxmem: a raw UDP ping-pong, single-stream TCP
//! (iperf3), and Mooncake's transfer engine over TCP. Each is skipped, with the reason
//! recorded, when it cannot run here.
//!
//! For a loopback target everything runs on this machine: the UDP echo on a thread, and an
//! `iperf3 -s -1` server and a Mooncake target process started (and always killed) here. For
//! another host the servers must already run there, on the ports below;
//! `scripts/bench-netns.sh` starts them next to the node:
//!
//! * the UDP echo, `oxmem bench-echo --listen IP:7448` ([`ECHO_PORT`]);
//! * `iperf3 -s -p 5201` ([`IPERF3_PORT`]);
//! * a Mooncake `transfer_engine_bench --mode=target --protocol=tcp
//!   --metadata_server=P2PHANDSHAKE`, whose segment (`IP:PORT`, the port it logs after
//!   "P2P handshake, listening on") is passed with `--mooncake-segment`.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use oxmem_client::Target;
use serde::Serialize;

/// UDP port of the ping-pong echo on a remote host (`oxmem bench-echo`).
pub const ECHO_PORT: u16 = 7448;
/// TCP port of the iperf3 server on a remote host (iperf3's default).
pub const IPERF3_PORT: u16 = 5201;
/// Bytes per ping-pong datagram.
pub const PING_SIZE: usize = 64;
/// Mooncake points: (block size, batch size, threads). A batch of 32 from one thread keeps
/// 32 transfers in flight (queue depth 32) for 4 KiB; 8 × 1 MiB matches oxmem's deepest
/// 1 MiB point.
pub const MOONCAKE_POINTS: [(u64, u64, u64); 2] = [(4096, 32, 1), (1 << 20, 8, 1)];

/// Round trips of a datagram to an echo and back.
#[derive(Debug, Clone, Serialize)]
pub struct PingPong {
    pub size: u64,
    pub round_trips: u64,
    /// Datagrams not answered within 200 ms (not counted in the percentiles).
    pub lost: u64,
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

/// Where the baselines run, beyond the target itself.
#[derive(Debug, Clone, Default)]
pub struct BaselineOptions {
    /// The IP of the node's host for the baselines; needed for eth:// targets, which have none.
    pub host: Option<IpAddr>,
    /// A Mooncake target segment (`IP:PORT`) already running on a remote host.
    pub mooncake_segment: Option<String>,
}

/// Runs every baseline against the host of `target` (or `opts.host`).
pub fn run_all(
    target: &Target,
    opts: &BaselineOptions,
    duration: Duration,
    progress: &dyn Fn(&str),
) -> Baselines {
    let mut b = Baselines::default();
    let host = match (opts.host, target) {
        (Some(h), _) => h,
        (None, Target::Udp(a)) => a.ip(),
        (None, Target::Ethernet { .. }) => {
            b.skipped.push(
                "all baselines: an eth:// target has no IP address; pass --baseline-host IP".into(),
            );
            return b;
        }
    };
    let local = host.is_loopback();

    progress(&format!(
        "baseline: UDP ping-pong ({PING_SIZE} B) with {host}"
    ));
    match ping_pong_baseline(host, local, duration) {
        Ok(p) => {
            progress(&format!(
                "baseline: UDP ping-pong p50 {:.1} us p99 {:.1} us",
                p.p50_us, p.p99_us
            ));
            b.udp_ping_pong = Some(p);
        }
        Err(e) => b.skipped.push(format!("UDP ping-pong: {e:#}")),
    }

    progress(&format!("baseline: iperf3 single-stream TCP to {host}"));
    match iperf3_baseline(host, local, duration) {
        Ok(i) => {
            progress(&format!("baseline: iperf3 TCP {:.3} GB/s", i.gbytes_per_s));
            b.iperf3_tcp = Some(i);
        }
        Err(e) => b.skipped.push(format!("iperf3 TCP: {e:#}")),
    }

    progress(&format!(
        "baseline: Mooncake transfer engine over TCP with {host}"
    ));
    match mooncake_baseline(host, local, opts.mooncake_segment.as_deref(), duration) {
        Ok(rs) => {
            for r in &rs {
                progress(&format!(
                    "baseline: Mooncake {} {} B batch {} threads {}: {:.3} GB/s {:.0} ops/s",
                    r.op, r.block_size, r.batch_size, r.threads, r.gbytes_per_s, r.ops_per_s
                ));
            }
            b.mooncake_tcp = rs;
        }
        Err(e) => b.skipped.push(format!("Mooncake TCP: {e:#}")),
    }
    b
}

// ---------------------------------------------------------------------------------------------
// UDP ping-pong

/// `oxmem bench-echo`: a UDP echo for the ping-pong baseline on another host.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7448")]
    pub listen: SocketAddr,
    /// Exit after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub run_for: Duration,
}

/// Runs the echo of `oxmem bench-echo` until `args.run_for` has passed.
pub fn run_echo(args: &EchoArgs) -> anyhow::Result<()> {
    let socket =
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    eprintln!(
        "oxmem bench-echo: echoing on udp://{}",
        socket.local_addr()?
    );
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + args.run_for;
    std::thread::scope(|s| {
        s.spawn(|| {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::Relaxed);
        });
        serve_echo(&socket, &stop)
    })
}

/// Sends every datagram back to its sender until `stop` is set.
pub fn serve_echo(socket: &UdpSocket, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Some((n, from)) = recv_spin(socket, &mut buf, Duration::from_millis(50))? {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

/// How long a receive polls before it blocks: the same as oxmem's engine
/// (`EngineConfig::spin`), so both sides of the comparison wait for a datagram the same way.
pub const SPIN: Duration = Duration::from_micros(50);

/// Receives one datagram: polls for [`SPIN`], then blocks for at most `timeout`.
fn recv_spin(
    socket: &UdpSocket,
    buf: &mut [u8],
    timeout: Duration,
) -> std::io::Result<Option<(usize, SocketAddr)>> {
    let idle = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    socket.set_nonblocking(true)?;
    let t = Instant::now();
    loop {
        match socket.recv_from(buf) {
            Ok(r) => return Ok(Some(r)),
            Err(e) if idle(&e) => {}
            Err(e) => return Err(e),
        }
        if t.elapsed() >= SPIN {
            break;
        }
        std::hint::spin_loop();
    }
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(timeout))?;
    match socket.recv_from(buf) {
        Ok(r) => Ok(Some(r)),
        Err(e) if idle(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A UDP echo on a thread of this process, stopped when dropped.
#[derive(Debug)]
pub struct LocalEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalEcho {
    pub fn start() -> anyhow::Result<LocalEcho> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || {
                let _ = serve_echo(&socket, &s);
            })?;
        Ok(LocalEcho {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LocalEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ping_pong_baseline(host: IpAddr, local: bool, duration: Duration) -> anyhow::Result<PingPong> {
    if local {
        let echo = LocalEcho::start().context("cannot start the local echo")?;
        ping_pong(echo.addr, duration)
    } else {
        ping_pong(SocketAddr::new(host, ECHO_PORT), duration)
    }
}

/// Sends [`PING_SIZE`]-byte datagrams to the echo at `echo`, one at a time, for `duration`.
/// Both ends poll for [`SPIN`] before blocking, like oxmem's engine.
///
/// # Errors
/// When nothing answers within 1 s.
pub fn ping_pong(echo: SocketAddr, duration: Duration) -> anyhow::Result<PingPong> {
    let bind: SocketAddr = if echo.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(echo)?;
    let mut out = [0u8; PING_SIZE];
    let mut buf = [0u8; 2048];
    // Is anyone there?
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send(&out)?;
    if socket.recv(&mut buf).is_err() {
        anyhow::bail!(
            "no UDP echo answered at {echo} within 1 s (start `oxmem bench-echo --listen {echo}` there)"
        );
    }
    // Histogram in nanoseconds; reported in microseconds.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let warm = Instant::now();
    let mut seq = 0u64;
    let mut lost = 0u64;
    let mut round = |record: bool, hist: &mut Histogram<u64>| -> anyhow::Result<()> {
        seq += 1;
        out[..8].copy_from_slice(&seq.to_le_bytes());
        let t = Instant::now();
        socket.send(&out)?;
        loop {
            match recv_spin(&socket, &mut buf, Duration::from_millis(200))? {
                Some((n, _)) if n >= 8 && buf[..8] == seq.to_le_bytes() => break,
                Some(_) => {} // a late answer to an earlier, lost datagram
                None => {
                    lost += 1;
                    return Ok(());
                }
            }
        }
        if record {
            hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
        }
        Ok(())
    };
    while warm.elapsed() < Duration::from_millis(200) {
        round(false, &mut hist)?;
    }
    let begin = Instant::now();
    while begin.elapsed() < duration {
        round(true, &mut hist)?;
    }
    if hist.is_empty() {
        anyhow::bail!("every datagram to {echo} was lost");
    }
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(PingPong {
        size: PING_SIZE as u64,
        round_trips: hist.len(),
        lost,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes, always bounded and killed

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a bounded command printed.
#[derive(Debug)]
struct Output {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` for at most `limit`, killing it after that (then `status` is `None`).
fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = Guard(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?,
    );
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(
        child
            .0
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    );
    let err = drain(
        child
            .0
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.0.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

// ---------------------------------------------------------------------------------------------
// iperf3

fn iperf3_installed() -> bool {
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn iperf3_baseline(host: IpAddr, local: bool, duration: Duration) -> anyhow::Result<Iperf> {
    if !iperf3_installed() {
        anyhow::bail!("iperf3 not installed (apt-get install iperf3)");
    }
    let seconds = duration.as_secs().max(1);
    let limit = Duration::from_secs(seconds + 20);
    let (_server, port) = if local {
        let port = free_tcp_port()?;
        let server = Guard(
            Command::new("iperf3")
                .args(["-s", "-1", "-B", &host.to_string(), "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start the iperf3 server")?,
        );
        (Some(server), port)
    } else {
        (None, IPERF3_PORT)
    };
    // A local server may need a moment to listen: retry a refused connection a few times.
    let mut tries = 0;
    loop {
        tries += 1;
        if local {
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = run_bounded(
            Command::new("iperf3").args([
                "-c",
                &host.to_string(),
                "-p",
                &port.to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
            ]),
            limit,
        )?;
        if out.status.is_none() {
            anyhow::bail!("iperf3 -c {host} -p {port} did not finish within {limit:?}");
        }
        match parse_iperf3_json(&out.stdout) {
            Ok(i) => return Ok(i),
            Err(e) if local && tries < 5 && e.contains("refused") => {}
            Err(e) => anyhow::bail!(
                "iperf3 -c {host} -p {port}: {e}{}",
                if local {
                    String::new()
                } else {
                    format!(" (is `iperf3 -s -p {port}` running there?)")
                }
            ),
        }
    }
}

/// Reads `end.sum_received` of `iperf3 -J` output.
pub fn parse_iperf3_json(s: &str) -> Result<Iperf, String> {
    let v: serde_json::Value =
        serde_json::from_str(s).map_err(|e| format!("not iperf3 JSON: {e}"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(e.to_string());
    }
    let sum = &v["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .ok_or("no end.sum_received.bits_per_second")?;
    Ok(Iperf {
        gbytes_per_s: bps / 8.0 / 1e9,
        seconds: sum["seconds"].as_f64().unwrap_or(0.0),
    })
}

// ---------------------------------------------------------------------------------------------
// Mooncake transfer engine

/// The `transfer_engine_bench` executable: `$OXMEM_MOONCAKE_BENCH`, else the one inside the
/// `mooncake` Python package (pip's `bin/transfer_engine_bench` is a Python wrapper that
/// would outlive a kill of itself), else `transfer_engine_bench` on the PATH.
fn find_mooncake_bench() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OXMEM_MOONCAKE_BENCH") {
        return Some(PathBuf::from(p));
    }
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-c",
                "import importlib.util as u, os; s = u.find_spec('mooncake'); \
                 print(os.path.dirname(s.origin) if s and s.origin else '')",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !dir.is_empty() {
                let p = PathBuf::from(dir).join("transfer_engine_bench");
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("transfer_engine_bench"))
            .find(|p| p.is_file())
    })
}

/// The local address this host uses to reach `host`.
fn local_ip_towards(host: IpAddr) -> anyhow::Result<IpAddr> {
    let s = UdpSocket::bind(if host.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    })?;
    s.connect((host, 9))?;
    Ok(s.local_addr()?.ip())
}

const MOONCAKE_BUFFER: &str = "268435456";

/// Starts a Mooncake target on `ip` and returns it with its segment name (`IP:PORT`).
fn start_mooncake_target(bench: &PathBuf, ip: IpAddr) -> anyhow::Result<(Guard, String)> {
    let mut child = Guard(
        Command::new(bench)
            .args([
                "--mode=target",
                "--protocol=tcp",
                "--metadata_server=P2PHANDSHAKE",
                &format!("--local_server_name={ip}:17500"),
                &format!("--buffer_size={MOONCAKE_BUFFER}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bench.display()))?,
    );
    let stderr = child.0.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(seg) = parse_mooncake_listen(&line) {
                let _ = tx.send(Ok(seg));
            }
            log.push_str(&line);
            log.push('\n');
        }
        let _ = tx.send(Err(log));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(seg)) => Ok((child, seg)),
        Ok(Err(log)) => anyhow::bail!("the Mooncake target exited: {}", last_lines(&log, 3)),
        Err(_) => anyhow::bail!("the Mooncake target did not report its port within 10 s"),
    }
}

fn mooncake_baseline(
    host: IpAddr,
    local: bool,
    segment: Option<&str>,
    duration: Duration,
) -> anyhow::Result<Vec<MooncakeResult>> {
    let bench = find_mooncake_bench().context(
        "transfer_engine_bench not found (apt-get install libibverbs1; \
         pip install mooncake-transfer-engine-non-cuda)",
    )?;
    let (_target, segment) = match (segment, local) {
        (Some(s), _) => (None, s.to_string()),
        (None, true) => {
            let (t, s) = start_mooncake_target(&bench, host)?;
            (Some(t), s)
        }
        (None, false) => anyhow::bail!(
            "{host} is remote: start a Mooncake target there and pass --mooncake-segment IP:PORT \
             (scripts/bench-netns.sh does)"
        ),
    };
    let me = local_ip_towards(host)?;
    let seconds = duration.as_secs().max(1);
    let mut results = Vec::new();
    for (block, batch, threads) in MOONCAKE_POINTS {
        let out = run_bounded(
            Command::new(&bench).args([
                "--mode=initiator",
                "--protocol=tcp",
                "--metadata_server=P2PHANDSHAKE",
                &format!("--local_server_name={me}:17501"),
                &format!("--segment_id={segment}"),
                "--operation=read",
                &format!("--block_size={block}"),
                &format!("--batch_size={batch}"),
                &format!("--threads={threads}"),
                &format!("--duration={seconds}"),
                &format!("--buffer_size={MOONCAKE_BUFFER}"),
                "--report_unit=GB",
                "--report_precision=6",
            ]),
            Duration::from_secs(seconds + 30),
        )?;
        let text = format!("{}\n{}", out.stdout, out.stderr);
        match parse_mooncake_output(&text) {
            Some(done) => results.push(MooncakeResult {
                op: "read".into(),
                block_size: block,
                batch_size: batch,
                threads,
                gbytes_per_s: done.gbytes_per_s,
                ops_per_s: done.gbytes_per_s * 1e9 / block as f64,
            }),
            None => anyhow::bail!(
                "transfer_engine_bench initiator ({block} B) {}: {}",
                match out.status {
                    Some(s) => format!("exited with {s}"),
                    None => "timed out".into(),
                },
                last_lines(&text, 3)
            ),
        }
    }
    Ok(results)
}

/// The summary line of a `transfer_engine_bench` initiator.
#[derive(Debug, Clone, PartialEq)]
pub struct MooncakeDone {
    pub seconds: f64,
    pub batches: u64,
    /// In the unit of `--report_unit`; the bench passes GB (10^9 bytes).
    pub gbytes_per_s: f64,
}

/// Finds "Test completed: duration 3.00, batch count 670, throughput 1.87 GB/s".
pub fn parse_mooncake_output(s: &str) -> Option<MooncakeDone> {
    let line = s.lines().rev().find(|l| l.contains("Test completed:"))?;
    let rest = line.split("Test completed:").nth(1)?;
    let field = |name: &str| -> Option<&str> {
        rest.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name))
            .map(str::trim)
    };
    let seconds = field("duration")?.parse().ok()?;
    let batches = field("batch count")?.parse().ok()?;
    let tput = field("throughput")?;
    let (value, unit) = tput.split_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let gbytes_per_s = match unit.trim() {
        "GB/s" => value,
        "MB/s" => value / 1e3,
        "KB/s" => value / 1e6,
        "GiB/s" => value * (1u64 << 30) as f64 / 1e9,
        "MiB/s" => value * (1u64 << 20) as f64 / 1e9,
        "Gb/s" => value / 8.0,
        _ => return None,
    };
    Some(MooncakeDone {
        seconds,
        batches,
        gbytes_per_s,
    })
}

/// Finds the segment name in "Transfer Engine RPC using P2P handshake, listening on IP:PORT".
pub fn parse_mooncake_listen(line: &str) -> Option<String> {
    let rest = line.split("P2P handshake, listening on ").nth(1)?;
    let seg = rest.split_whitespace().next()?;
    seg.rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map(|_| seg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_iperf3_json() {
        let i = parse_iperf3_json(include_str!("testdata/iperf3-loopback.json")).unwrap();
        assert!((i.gbytes_per_s - 15_952_311_809.401_339 / 8e9).abs() < 1e-9);
        assert!((i.seconds - 2.017_181).abs() < 1e-9);
    }

    #[test]
    fn iperf3_errors_are_reported() {
        let e = parse_iperf3_json(
            r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#,
        )
        .unwrap_err();
        assert!(e.contains("Connection refused"), "{e}");
        assert!(parse_iperf3_json("iperf3: error").is_err());
    }

    #[test]
    fn parses_real_mooncake_output() {
        let d = parse_mooncake_output(include_str!("testdata/mooncake-initiator-4k.log")).unwrap();
        assert_eq!(
            d,
            MooncakeDone {
                seconds: 2.0,
                batches: 838,
                gbytes_per_s: 0.054854
            }
        );
        let d = parse_mooncake_output(
            "I1122 transfer_engine_bench.cpp:569] Test completed: duration 3.00, batch count 670, throughput 1.87 GB/s",
        )
        .unwrap();
        assert_eq!(d.batches, 670);
        assert!((d.gbytes_per_s - 1.87).abs() < 1e-12);
        assert!(parse_mooncake_output("Worker 0 stopped!").is_none());
    }

    #[test]
    fn parses_mooncake_segment() {
        let log = include_str!("testdata/mooncake-target.log");
        let seg = log.lines().find_map(parse_mooncake_listen).unwrap();
        assert_eq!(seg, "127.0.0.1:15116");
        assert!(parse_mooncake_listen("TcpTransport: listen on port 16816").is_none());
    }

    #[test]
    fn ping_pong_measures_loopback() {
        let echo = LocalEcho::start().unwrap();
        let p = ping_pong(echo.addr, Duration::from_millis(300)).unwrap();
        assert_eq!(p.size, 64);
        assert!(p.round_trips > 10, "{p:?}");
        assert!(p.p50_us > 0.0 && p.p50_us <= p.p99_us && p.p99_us <= p.p999_us);
    }

    #[test]
    fn ping_pong_without_echo_is_an_error() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let e = ping_pong(silent.local_addr().unwrap(), Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("no UDP echo"), "{e}");
    }

    #[test]
    fn eth_target_without_host_skips_with_reason() {
        let t: Target = "eth://veth0/02:00:00:00:00:01".parse().unwrap();
        let b = run_all(
            &t,
            &BaselineOptions::default(),
            Duration::from_millis(10),
            &|_| {},
        );
        assert!(b.udp_ping_pong.is_none() && b.iperf3_tcp.is_none());
        assert!(b.skipped[0].contains("--baseline-host"), "{:?}", b.skipped);
    }
}
