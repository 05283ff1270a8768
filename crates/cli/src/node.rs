//! `oxmem node`: a memory expansion node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use oxmem_net::engine::{EngineConfig, PeerSettings};
use oxmem_net::ethernet::EthernetTransport;
use oxmem_net::fault::{FaultConfig, FaultInjector};
use oxmem_net::udp::{UdpConfig, UdpTransport};
use oxmem_net::{EthernetAddress, PeerAddr, Transport};
use oxmem_node::agent::RegisterNode;
use oxmem_node::{
    Access, AdminServer, Agent, AgentConfig, AgentEvent, Arena, ArenaOptions, Executor, Grant,
    NodeAdmin, NodeServer, PageKind, Window, parse_size,
};

use crate::client_args::Order;

/// Where the node listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Udp(SocketAddr),
    Ethernet(String),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("udp://") {
            let addr = addr
                .parse()
                .map_err(|e| format!("{s}: {e} (expected udp://IP:PORT)"))?;
            return Ok(Listen::Udp(addr));
        }
        if let Some(iface) = s.strip_prefix("eth://") {
            if iface.is_empty() || iface.contains('/') {
                return Err(format!("{s}: expected eth://IFACE"));
            }
            return Ok(Listen::Ethernet(iface.to_string()));
        }
        Err(format!("{s}: expected udp://IP:PORT or eth://IFACE"))
    }
}

/// A peer on the command line: `udp://IP:PORT` or a MAC address.
fn parse_peer(s: &str) -> Result<PeerAddr, String> {
    if let Some(addr) = s.strip_prefix("udp://") {
        return addr
            .parse()
            .map(PeerAddr::Udp)
            .map_err(|e| format!("{s}: {e}"));
    }
    EthernetAddress::parse(s)
        .map(PeerAddr::Ethernet)
        .ok_or_else(|| format!("{s}: expected udp://IP:PORT or a MAC address"))
}

/// `PEER=BASE:LEN[:ro|:rw]`.
#[derive(Debug, Clone)]
pub struct GrantArg {
    peer: PeerAddr,
    window: Window,
    access: Access,
}

impl FromStr for GrantArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (peer, range) = s
            .rsplit_once('=')
            .ok_or("expected PEER=BASE:LEN[:ro|:rw]")?;
        let (range, access) = match range.rsplit_once(':') {
            Some((r, "ro")) => (r, Access::Read),
            Some((r, "rw")) => (r, Access::ReadWrite),
            _ => (range, Access::ReadWrite),
        };
        let window = Window::from_str(range).map_err(|e| e.to_string())?;
        Ok(GrantArg {
            peer: parse_peer(peer)?,
            window,
            access,
        })
    }
}

/// `PEER=VALUE` for per-peer settings.
#[derive(Debug, Clone)]
pub struct PeerValue<T> {
    peer: PeerAddr,
    value: T,
}

fn parse_peer_value<T: FromStr>(s: &str) -> Result<PeerValue<T>, String>
where
    T::Err: std::fmt::Display,
{
    let (peer, value) = s.rsplit_once('=').ok_or("expected PEER=VALUE")?;
    Ok(PeerValue {
        peer: parse_peer(peer)?,
        value: value.parse().map_err(|e: T::Err| e.to_string())?,
    })
}

fn parse_order(s: &str) -> Result<PeerValue<String>, String> {
    let pv = parse_peer_value::<String>(s)?;
    match pv.value.as_str() {
        "spec" | "memory" => Ok(pv),
        other => Err(format!("{other}: expected spec or memory")),
    }
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Where to serve: udp://IP:PORT (default port 7447) or eth://IFACE. Repeat for several.
    #[arg(long, required = true)]
    pub listen: Vec<Listen>,
    /// Memory to export, e.g. 8GiB.
    #[arg(long, value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
    pub capacity: u64,
    /// Let any OmniXtend host read and write BASE:LEN, like a plain OmniXtend memory device.
    #[arg(long)]
    pub open_window: Vec<Window>,
    /// Let one peer use a range: PEER=BASE:LEN[:ro|:rw], PEER being udp://IP:PORT or a MAC.
    #[arg(long)]
    pub grant: Vec<GrantArg>,
    /// Try explicit huge pages (falls back to transparent huge pages).
    #[arg(long)]
    pub huge_pages: bool,
    /// Lock the memory so it is never swapped out.
    #[arg(long)]
    pub mlock: bool,
    /// Largest UDP datagram to send and receive.
    #[arg(long, default_value_t = oxmem_net::udp::MAX_DATAGRAM)]
    pub max_datagram: usize,
    /// Largest frame to send to one peer: PEER=BYTES (ETRI's endpoint takes about 528).
    #[arg(long, value_parser = parse_peer_value::<usize>)]
    pub peer_max_frame: Vec<PeerValue<usize>>,
    /// Data byte order of one peer: PEER=spec|memory (Western Digital's library: memory).
    #[arg(long, value_parser = parse_order)]
    pub peer_byte_order: Vec<PeerValue<String>>,
    /// Default data byte order for peers.
    #[arg(long, value_enum, default_value_t = Order::Spec)]
    pub byte_order: Order,
    /// Inject faults into everything the node sends, e.g. `loss=0.05,seed=1`.
    #[arg(long)]
    pub faults: Option<FaultConfig>,
    /// Print counters this often (0 = never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub stats_every: Duration,
    /// Serve Prometheus metrics on this address (http://ADDR/metrics).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Stop after this long (for scripts; default: run until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub run_for: Option<Duration>,
    /// Stop when process PID is gone (`oxmem up` passes its own, so its nodes never outlive
    /// it, however it ends).
    #[arg(long, hide = true)]
    pub exit_with_parent: Option<u32>,
    /// Serve the admin API (grants, scrub) for the coordinator on this address (port 0: any
    /// free port). Default with --coordinator: 127.0.0.1:7547.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Register with this coordinator (http://HOST:PORT) and heartbeat it. Without
    /// --open-window the node grants nothing until the coordinator pushes grants.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// The node token: the coordinator presents it to the admin API and the node to the
    /// coordinator (default: $OXMEM_NODE_TOKEN).
    #[arg(long)]
    pub node_token: Option<String>,
    /// The node's stable name in the pool (needed with --coordinator).
    #[arg(long)]
    pub name: Option<String>,
    /// The IP to announce to the coordinator for addresses bound to 0.0.0.0 or :: (the data
    /// addresses and the admin URL; default 127.0.0.1).
    #[arg(long)]
    pub advertise: Option<IpAddr>,
}

/// Where others reach `addr`: the advertised IP in place of an unspecified one.
fn advertised(addr: SocketAddr, advertise: Option<IpAddr>) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            advertise.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            addr.port(),
        )
    } else {
        addr
    }
}

/// The admin API and the agent, when the node is in a pool.
struct Pooled {
    admin: AdminServer,
    agent: Option<Agent>,
}

fn start_pooled(
    args: &NodeArgs,
    server: &NodeServer,
    locals: &[PeerAddr],
) -> anyhow::Result<Option<Pooled>> {
    if args.admin.is_none() && args.coordinator.is_none() {
        return Ok(None);
    }
    let token = args
        .node_token
        .clone()
        .or_else(|| std::env::var("OXMEM_NODE_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .context("--admin and --coordinator need --node-token (or $OXMEM_NODE_TOKEN)")?;
    let addr = args
        .admin
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 7547)));
    let admin = AdminServer::start(addr, NodeAdmin::new(server.executor().clone(), &token))
        .with_context(|| format!("cannot serve the admin API on {addr}"))?;
    let admin_url = format!("http://{}", advertised(admin.local_addr(), args.advertise));
    println!(
        "oxmem node: admin API on http://{} (announced as {admin_url})",
        admin.local_addr()
    );
    let Some(coordinator) = &args.coordinator else {
        return Ok(Some(Pooled { admin, agent: None }));
    };
    let name = args
        .name
        .clone()
        .context("--coordinator needs --name (the node's stable name in the pool)")?;
    let data_addrs = locals
        .iter()
        .map(|l| match l {
            PeerAddr::Udp(a) => format!("udp://{}", advertised(*a, args.advertise)),
            PeerAddr::Ethernet(m) => format!("eth/{m}"),
        })
        .collect();
    let registration = RegisterNode {
        name,
        data_addrs,
        admin_url,
        capacity: args.capacity,
        boot_id: Some(boot_id()),
    };
    println!(
        "oxmem node: registering with {coordinator} as {}",
        registration.name
    );
    let config = AgentConfig::new(coordinator.clone(), token, registration);
    let agent = Agent::spawn(config, admin.admin().clone(), |e| match e {
        AgentEvent::Registered {
            node_id,
            epoch,
            lease,
            dropped,
        } => println!(
            "oxmem node: registered as {node_id}, epoch {epoch}, lease {} ms{}",
            lease.lease_ms,
            if *dropped > 0 {
                format!(", dropped {dropped} grants of older epochs")
            } else {
                String::new()
            }
        ),
        AgentEvent::Reconnected { node_id } => {
            println!("oxmem node: coordinator reachable again ({node_id})")
        }
        AgentEvent::Fenced { node_id, dropped } => println!(
            "oxmem node: fenced: no heartbeat of {node_id} went through for a whole lease; \
             dropped {dropped} grants, registering again"
        ),
        AgentEvent::Forgotten { node_id } => {
            eprintln!("oxmem node: the coordinator forgot {node_id}: registering again")
        }
        AgentEvent::Failed {
            registering,
            error,
            retry_in,
        } => eprintln!(
            "oxmem node: {} failed: {error}; retrying in {retry_in:?}",
            if *registering {
                "registration"
            } else {
                "heartbeat"
            }
        ),
    })
    .context("cannot start the coordinator agent")?;
    Ok(Some(Pooled {
        admin,
        agent: Some(agent),
    }))
}

fn spawn<T: Transport>(
    server: &mut NodeServer,
    transport: T,
    faults: &Option<FaultConfig>,
    config: EngineConfig,
) -> std::io::Result<PeerAddr> {
    match faults {
        Some(f) => server.serve(FaultInjector::new(transport, *f), config),
        None => server.serve(transport, config),
    }
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let arena = Arena::with_options(
        args.capacity,
        ArenaOptions {
            huge_pages: args.huge_pages,
            lock: args.mlock,
        },
    )
    .context("cannot map the arena")?;
    let backing = arena.backing();
    let mut exec: Executor<PeerAddr> = Executor::new(arena);
    for w in &args.open_window {
        exec.grants_mut()
            .add(Grant::any(*w, Access::ReadWrite))
            .with_context(|| format!("open window {w}"))?;
    }
    for g in &args.grant {
        exec.grants_mut()
            .add(Grant::peer(g.peer, g.window, g.access))
            .with_context(|| format!("grant {} to {}", g.window, g.peer))?;
    }
    if exec.grants().is_empty() {
        if args.coordinator.is_some() || args.admin.is_some() {
            eprintln!(
                "oxmem node: no --open-window or --grant: access is denied until the coordinator grants it"
            );
        } else {
            eprintln!("oxmem node: no --open-window or --grant: every access will be denied");
        }
    }

    let mut config = EngineConfig::default();
    config.link.byte_order = args.byte_order.into();
    for p in &args.peer_max_frame {
        config
            .peers
            .entry(p.peer)
            .or_insert_with(PeerSettings::default)
            .max_frame = Some(p.value);
    }
    for p in &args.peer_byte_order {
        let order = if p.value == "memory" {
            Order::Memory
        } else {
            Order::Spec
        };
        config
            .peers
            .entry(p.peer)
            .or_insert_with(PeerSettings::default)
            .byte_order = Some(order.into());
    }

    let mut server = NodeServer::new(exec);
    let mut locals = Vec::new();
    for l in &args.listen {
        let local = match l {
            Listen::Udp(addr) => {
                let udp = UdpConfig {
                    max_datagram: args.max_datagram,
                    ..UdpConfig::default()
                };
                let t = UdpTransport::bind_with(*addr, udp)
                    .with_context(|| format!("cannot bind udp://{addr}"))?;
                spawn(&mut server, t, &args.faults, config.clone())?
            }
            Listen::Ethernet(iface) => {
                let t = EthernetTransport::open(iface)
                    .with_context(|| format!("cannot open eth://{iface}"))?;
                spawn(&mut server, t, &args.faults, config.clone())?
            }
        };
        match local {
            PeerAddr::Udp(a) => println!("oxmem node: listening on udp://{a}"),
            PeerAddr::Ethernet(m) => println!("oxmem node: listening on raw Ethernet, MAC {m}"),
        }
        locals.push(local);
    }
    let pages = match backing.pages {
        PageKind::HugePages { page_size } => {
            format!("explicit huge pages of {} KiB", page_size / 1024)
        }
        PageKind::TransparentHugePages => {
            "ordinary pages with transparent-huge-page advice".to_string()
        }
        PageKind::Normal => "ordinary pages".to_string(),
    };
    println!(
        "oxmem node: {} bytes of memory on {pages}{}",
        args.capacity,
        if backing.locked { ", locked" } else { "" }
    );
    {
        let exec = server.executor().lock().unwrap_or_else(|p| p.into_inner());
        for (_, g) in exec.grants().iter() {
            println!(
                "oxmem node: grant {:?} {:#x}+{:#x} {:?}",
                g.peer, g.base, g.len, g.access
            );
        }
    }

    if let Some(addr) = args.metrics {
        let buckets = [
            1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3, 1e-2,
        ];
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("oxmem_node_service_seconds".into()),
                &buckets,
            )
            .context("metrics buckets")?
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        describe_metrics();
        println!("oxmem node: metrics on http://{addr}/metrics");
    }

    let pooled = start_pooled(&args, &server, &locals)?;

    let start = std::time::Instant::now();
    loop {
        let nap = if args.stats_every.is_zero() {
            Duration::from_millis(200)
        } else {
            args.stats_every
        };
        std::thread::sleep(nap);
        if !args.stats_every.is_zero() {
            print_stats(&server);
        }
        if args.metrics.is_some() {
            publish_metrics(&server);
        }
        let parent_gone = args
            .exit_with_parent
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if parent_gone || args.run_for.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
    }
    print_stats(&server);
    if let Some(p) = pooled {
        if let Some(agent) = p.agent {
            agent.stop();
        }
        p.admin
            .shutdown()
            .context("admin API stopped with an error")?;
    }
    server.shutdown().context("engine stopped with an error")?;
    Ok(())
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "oxmem_node_requests_total",
        "TileLink requests executed, by operation"
    );
    describe_counter!(
        "oxmem_node_read_bytes_total",
        Unit::Bytes,
        "Bytes read by Get and atomics"
    );
    describe_counter!(
        "oxmem_node_written_bytes_total",
        Unit::Bytes,
        "Bytes stored by puts and atomics"
    );
    describe_counter!(
        "oxmem_node_denied_total",
        "Requests answered denied, by reason"
    );
    describe_counter!(
        "oxmem_node_unsupported_total",
        "TL-C requests refused (the node is TL-UH only)"
    );
    describe_counter!(
        "oxmem_node_frames_received_total",
        "Frames received, per transport"
    );
    describe_counter!("oxmem_node_frames_sent_total", "Frames sent, per transport");
    describe_counter!(
        "oxmem_node_frames_refused_total",
        "Frames the link refused (corrupt, malformed, beyond credit)"
    );
    describe_counter!(
        "oxmem_node_peers_refused_total",
        "Frames from new peers beyond the peer limit"
    );
    describe_counter!(
        "oxmem_node_retransmitted_frames_total",
        "Frames resent by go-back-N"
    );
    describe_counter!(
        "oxmem_node_retransmit_timeouts_total",
        "Retransmit timer expiries"
    );
    describe_counter!("oxmem_node_naks_received_total", "NAKs received from peers");
    describe_counter!(
        "oxmem_node_credit_stalls_total",
        "Times framing stopped for lack of credit"
    );
    describe_counter!(
        "oxmem_node_duplicate_frames_total",
        "Duplicate frames received"
    );
    describe_gauge!(
        "oxmem_node_capacity_bytes",
        Unit::Bytes,
        "Memory the node exports"
    );
    metrics::describe_histogram!(
        "oxmem_node_service_seconds",
        Unit::Seconds,
        "Time to execute a request and queue its answer"
    );
    describe_gauge!("oxmem_node_peers", "Peers that have connected");
}

/// Copies the node's counters into the metrics registry (counters are absolute values).
fn publish_metrics(server: &NodeServer) {
    use std::sync::atomic::Ordering::Relaxed;

    use metrics::{counter, gauge};
    use oxmem_node::DenyReason;
    use oxmem_wire::Op;
    let exec = server.executor().lock().unwrap_or_else(|p| p.into_inner());
    let c = exec.counters();
    for (op, name) in [
        (Op::Get, "get"),
        (Op::PutFullData, "put_full_data"),
        (Op::PutPartialData, "put_partial_data"),
        (Op::ArithmeticData, "arithmetic_data"),
        (Op::LogicalData, "logical_data"),
        (Op::Intent, "intent"),
    ] {
        counter!("oxmem_node_requests_total", "op" => name).absolute(c.requests.get(op));
    }
    counter!("oxmem_node_read_bytes_total").absolute(c.bytes_read);
    counter!("oxmem_node_written_bytes_total").absolute(c.bytes_written);
    for (reason, name) in [
        (DenyReason::NoGrant, "no_grant"),
        (DenyReason::ReadOnly, "read_only"),
        (DenyReason::OutOfArena, "out_of_arena"),
        (DenyReason::Unaligned, "unaligned"),
        (DenyReason::AtomicTooLarge, "atomic_too_large"),
        (DenyReason::CorruptData, "corrupt_data"),
        (DenyReason::Malformed, "malformed"),
    ] {
        counter!("oxmem_node_denied_total", "reason" => name).absolute(c.denied.get(reason));
    }
    counter!("oxmem_node_unsupported_total").absolute(c.unsupported);
    gauge!("oxmem_node_capacity_bytes").set(exec.arena().capacity() as f64);
    drop(exec);
    let mut peers = 0;
    for e in server.engines() {
        let s = e.stats();
        let t = e.local_addr().to_string();
        counter!("oxmem_node_frames_received_total", "transport" => t.clone())
            .absolute(s.frames_received.load(Relaxed));
        counter!("oxmem_node_frames_sent_total", "transport" => t.clone())
            .absolute(s.frames_sent.load(Relaxed));
        counter!("oxmem_node_frames_refused_total", "transport" => t.clone())
            .absolute(s.frames_refused.load(Relaxed));
        counter!("oxmem_node_peers_refused_total", "transport" => t.clone())
            .absolute(s.peers_refused.load(Relaxed));
        counter!("oxmem_node_retransmitted_frames_total", "transport" => t.clone())
            .absolute(s.retransmitted_frames.load(Relaxed));
        counter!("oxmem_node_retransmit_timeouts_total", "transport" => t.clone())
            .absolute(s.retransmit_timeouts.load(Relaxed));
        counter!("oxmem_node_naks_received_total", "transport" => t.clone())
            .absolute(s.naks_received.load(Relaxed));
        counter!("oxmem_node_credit_stalls_total", "transport" => t.clone())
            .absolute(s.credit_stalls.load(Relaxed));
        counter!("oxmem_node_duplicate_frames_total", "transport" => t)
            .absolute(s.duplicates_received.load(Relaxed));
        peers += s.peers.load(Relaxed);
    }
    gauge!("oxmem_node_peers").set(peers as f64);
}

/// A random id for this run of the process (see `RegisterNode::boot_id`).
fn boot_id() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn print_stats(server: &NodeServer) {
    use std::sync::atomic::Ordering::Relaxed;
    let exec = server.executor().lock().unwrap_or_else(|p| p.into_inner());
    let c = exec.counters();
    let (mut rx, mut tx, mut refused) = (0, 0, 0);
    for e in server.engines() {
        rx += e.stats().frames_received.load(Relaxed);
        tx += e.stats().frames_sent.load(Relaxed);
        refused += e.stats().frames_refused.load(Relaxed);
    }
    println!(
        "oxmem node: requests {} read {} B written {} B denied {} unsupported {} frames in {rx} out {tx} refused {refused}",
        c.requests.total(),
        c.bytes_read,
        c.bytes_written,
        c.denied.total(),
        c.unsupported
    );
}
