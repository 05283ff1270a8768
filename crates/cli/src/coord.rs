//! `oxmem coord` (the coordinator) and `oxmem up` (a whole pool on one machine).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use oxmem_api::{CreateTenant, NodeInfo, TenantCreated};
use oxmem_client::pool::{format_peer, parse_peer};
use oxmem_client::{Client, ClientOptions, NodeOptions};
use oxmem_net::PeerAddr;
use oxmem_node::parse_size;
use oxmem_pool::etcd::{EtcdConfig, EtcdLeadership};
use oxmem_pool::{CoordinatorConfig, CopyEnd, DataMover, HttpNodeControl, MoveError, RedbStore};
use rand::Rng as _;

/// Copies bytes between nodes for re-replication, over the data path.
#[derive(Debug, Clone)]
pub struct ClientMover {
    client: Arc<Client>,
}

impl ClientMover {
    /// A mover whose UDP socket is bound to `ip` (the address nodes see it at).
    pub fn bind(ip: IpAddr) -> anyhow::Result<Self> {
        let options = ClientOptions {
            timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        let client = Client::udp_at(SocketAddr::new(ip, 0), options).context("mover socket")?;
        Ok(ClientMover {
            client: Arc::new(client),
        })
    }

    /// The address the coordinator must grant (`CoordinatorConfig::mover_addr`).
    pub fn addr(&self) -> String {
        format_peer(&self.client.local_addr())
    }
}

fn peer_of(end: &CopyEnd, client: &Client) -> Result<PeerAddr, MoveError> {
    let want_udp = matches!(client.local_addr(), PeerAddr::Udp(_));
    end.node
        .data_addrs
        .iter()
        .filter_map(|a| parse_peer(a))
        .find(|p| matches!(p, PeerAddr::Udp(_)) == want_udp)
        .ok_or_else(|| {
            MoveError(format!(
                "node {} has no address this mover can use",
                end.node.node_id
            ))
        })
}

fn copy_blocking(client: &Client, from: &CopyEnd, to: &CopyEnd, len: u64) -> Result<(), MoveError> {
    let src = peer_of(from, client)?;
    let dst = peer_of(to, client)?;
    let err = |what: &str, e: oxmem_client::Error| {
        MoveError(format!(
            "{what} ({} {:#x} -> {} {:#x}): {e}",
            from.node.node_id, from.address, to.node.node_id, to.address
        ))
    };
    client
        .connect(src, NodeOptions::default())
        .map_err(|e| err("connect to source", e))?;
    client
        .connect(dst, NodeOptions::default())
        .map_err(|e| err("connect to target", e))?;
    const CHUNK: u64 = 1 << 20;
    let read = |peer, address, n| match client.start_read(peer, address, n).and_then(|t| t.wait()) {
        Ok(oxmem_client::Completed::Read(d)) => Ok(d),
        Ok(_) => Err(MoveError("unexpected reply".into())),
        Err(e) => Err(err("read", e)),
    };
    // Clients that know the new copy write to both ends while this runs, so a chunk copied
    // before such a write could carry stale bytes over it. After the copy, compare the two
    // ends chunk by chunk and copy again what differs, until a whole pass finds them equal.
    for pass in 0..8 {
        let mut differed = 0u64;
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min(len - done) as usize;
            let data = read(src, from.address + done, n)?;
            let stale = pass == 0 || read(dst, to.address + done, n)? != data;
            if stale {
                client
                    .write(dst, to.address + done, &data)
                    .map_err(|e| err("write", e))?;
                differed += 1;
            }
            done += n as u64;
        }
        if pass > 0 && differed == 0 {
            return Ok(());
        }
    }
    Err(MoveError("the copies kept differing after 8 passes".into()))
}

impl DataMover for ClientMover {
    async fn copy(&self, from: CopyEnd, to: CopyEnd, len: u64) -> Result<(), MoveError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || copy_blocking(&client, &from, &to, len))
            .await
            .map_err(|e| MoveError(format!("mover task: {e}")))?
    }
}

/// A random token.
fn token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct CoordArgs {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7500")]
    pub listen: SocketAddr,
    /// Directory of the embedded metadata store (redb).
    #[arg(long, required_unless_present = "etcd")]
    pub data_dir: Option<PathBuf>,
    /// etcd endpoints (http://HOST:PORT) for a cluster of coordinators, instead of --data-dir.
    #[arg(long)]
    pub etcd: Vec<String>,
    /// Name of the cluster in etcd.
    #[arg(long, default_value = "default")]
    pub cluster: String,
    /// Token for operator calls (default: a new random one, printed).
    #[arg(long, env = "OXMEM_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Token nodes and the coordinator use with each other (default: random, printed).
    #[arg(long, env = "OXMEM_NODE_TOKEN")]
    pub node_token: Option<String>,
    /// A node that does not heartbeat for this long is down.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// A client session that does not heartbeat for this long is closed and its regions freed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_lease: Duration,
    /// Default stripe size.
    #[arg(long, default_value = "1MiB", value_parser = size)]
    pub stripe: u64,
    /// Copies of each stripe when an allocation names no number.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// IP the re-replication mover binds to (the address nodes see it at).
    #[arg(long)]
    pub mover_ip: Option<IpAddr>,
}

fn config(args: &CoordArgs, admin: &str, node: &str, mover: &ClientMover) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(admin, node);
    c.lease = args.lease;
    c.session_lease = args.session_lease;
    c.default_stripe = args.stripe;
    c.default_replicas = args.replicas;
    c.mover_addr = Some(mover.addr());
    c
}

/// How long the coordinator waits for a node's admin API. The coordinator holds its state
/// while it calls nodes, so a call to an unreachable node must end well within a lease, or
/// every heartbeat waiting behind it would arrive late.
fn control_timeout(lease: Duration) -> Duration {
    (lease / 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

fn mover_ip(listen: &SocketAddr, explicit: Option<IpAddr>) -> IpAddr {
    explicit.unwrap_or(if listen.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    })
}

pub fn coord(args: CoordArgs) -> anyhow::Result<()> {
    let admin = args.admin_token.clone().unwrap_or_else(token);
    let node = args.node_token.clone().unwrap_or_else(token);
    if args.admin_token.is_none() {
        println!("oxmem coord: admin token {admin}");
    }
    if args.node_token.is_none() {
        println!("oxmem coord: node token {node}");
    }
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let mover = ClientMover::bind(mover_ip(&args.listen, args.mover_ip))?;
    let control = HttpNodeControl::new(node.clone(), control_timeout(args.lease));
    rt.block_on(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        if args.etcd.is_empty() {
            let dir = args
                .data_dir
                .clone()
                .expect("clap requires it without --etcd");
            let store = RedbStore::open(&dir)
                .with_context(|| format!("metadata store in {}", dir.display()))?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .context("bind")?;
            println!(
                "oxmem coord: serving http://{} (metadata in {})",
                listener.local_addr()?,
                dir.display()
            );
            oxmem_pool::serve_with_shutdown(
                config(&args, &admin, &node, &mover),
                store,
                control,
                mover,
                listener,
                shutdown,
            )
            .await
            .map_err(anyhow::Error::from)
        } else {
            let cfg = EtcdConfig::new(args.etcd.clone(), args.cluster.clone());
            let leadership = EtcdLeadership::connect(cfg)
                .await
                .context("cannot reach etcd")?;
            tokio::pin!(shutdown);
            let name = args.listen.to_string();
            loop {
                println!(
                    "oxmem coord: campaigning for leadership of cluster {:?}",
                    args.cluster
                );
                tokio::select! {
                    r = leadership.campaign(&name) => r.context("campaign")?,
                    () = &mut shutdown => return Ok(()),
                }
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .context("bind")?;
                println!(
                    "oxmem coord: leader, serving http://{}",
                    listener.local_addr()?
                );
                let store = leadership.store();
                let result = oxmem_pool::serve_with_shutdown(
                    config(&args, &admin, &node, &mover),
                    store,
                    control.clone(),
                    mover.clone(),
                    listener,
                    std::future::pending(),
                )
                .await;
                match result {
                    Err(oxmem_pool::ServeError::NotLeader) => {
                        println!("oxmem coord: lost leadership");
                        continue;
                    }
                    other => return other.map_err(anyhow::Error::from),
                }
            }
        }
    })
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Memory nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Memory of each node.
    #[arg(long, default_value = "1GiB", value_parser = size)]
    pub capacity: u64,
    /// Where the coordinator keeps its metadata.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Copies of each stripe when an allocation names no number.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Address of the coordinator's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7500")]
    pub listen: SocketAddr,
    /// Admin token (default: random, printed).
    #[arg(long, env = "OXMEM_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Default stripe size.
    #[arg(long, default_value = "1MiB", value_parser = size)]
    pub stripe: u64,
    /// A node that does not heartbeat for this long is down.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Stop after this long (for scripts; default: run until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub run_for: Option<Duration>,
}

/// Kills the node processes when `oxmem up` ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http_json<T: serde::de::DeserializeOwned>(
    req: reqwest::blocking::RequestBuilder,
) -> anyhow::Result<T> {
    let resp = req.send()?;
    let status = resp.status();
    let body = resp.bytes()?;
    if !status.is_success() {
        bail!(
            "coordinator answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

/// A pool on this machine: the coordinator on a thread of this process, the nodes as child
/// processes (killed when this is dropped), and a tenant with a quota of all of it.
pub struct LocalPool {
    pub url: String,
    pub admin_token: String,
    pub tenant_token: String,
    /// The node processes' ids, node0 first.
    pub node_pids: Vec<u32>,
    /// Held for its `Drop`, which kills the nodes.
    _children: Children,
    coord_thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for LocalPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPool")
            .field("url", &self.url)
            .field("node_pids", &self.node_pids)
            .finish_non_exhaustive()
    }
}

/// Starts a [`LocalPool`] as `oxmem up` does, and waits until every node has registered.
/// `on_node` hears of each node process as it starts (index, pid).
pub fn start_local_pool(
    args: &UpArgs,
    mut on_node: impl FnMut(usize, u32),
) -> anyhow::Result<LocalPool> {
    let admin = args.admin_token.clone().unwrap_or_else(token);
    let node = token();
    let coord_args = CoordArgs {
        listen: args.listen,
        data_dir: Some(args.data_dir.join("coordinator")),
        etcd: Vec::new(),
        cluster: "default".into(),
        admin_token: Some(admin.clone()),
        node_token: Some(node.clone()),
        lease: args.lease,
        session_lease: Duration::from_secs(10),
        stripe: args.stripe,
        replicas: args.replicas,
        mover_ip: None,
    };
    // The coordinator runs in this process, on a thread of its own.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let coord_thread = std::thread::Builder::new()
        .name("oxmem-coordinator".into())
        .spawn(move || {
            let result = (|| -> anyhow::Result<()> {
                let rt = tokio::runtime::Runtime::new()?;
                let mover = ClientMover::bind(mover_ip(&coord_args.listen, None))?;
                let control = HttpNodeControl::new(
                    coord_args.node_token.clone().unwrap_or_default(),
                    control_timeout(coord_args.lease),
                );
                let dir = coord_args.data_dir.clone().unwrap_or_default();
                let store = RedbStore::open(&dir)?;
                rt.block_on(async {
                    let listener = tokio::net::TcpListener::bind(coord_args.listen).await?;
                    let _ = ready_tx.send(Ok(listener.local_addr()?));
                    let cfg = config(
                        &coord_args,
                        coord_args.admin_token.as_deref().unwrap_or(""),
                        coord_args.node_token.as_deref().unwrap_or(""),
                        &mover,
                    );
                    let shutdown = async {
                        let _ = tokio::signal::ctrl_c().await;
                    };
                    oxmem_pool::serve_with_shutdown(cfg, store, control, mover, listener, shutdown)
                        .await?;
                    Ok(())
                })
            })();
            if let Err(e) = &result {
                let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
            }
            result
        })?;
    let addr = ready_rx.recv().context("coordinator thread ended")??;
    let url = format!("http://{addr}");

    // The nodes are processes of their own, so one can be killed like a machine that fails.
    let exe = std::env::current_exe().context("own executable")?;
    let mut children = Children(Vec::new());
    for i in 0..args.nodes {
        let child = Command::new(&exe)
            .args([
                "node",
                "--listen",
                "udp://127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(["--capacity", &args.capacity.to_string()])
            .args([
                "--coordinator",
                &url,
                "--node-token",
                &node,
                "--name",
                &format!("node{i}"),
            ])
            .args(["--exit-with-parent", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a node")?;
        on_node(i, child.id());
        children.0.push(child);
    }

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes: Vec<NodeInfo> =
            http_json(http.get(format!("{url}/v1/nodes")).bearer_auth(&admin))?;
        if nodes.len() >= args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {} of {} nodes registered", nodes.len(), args.nodes);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let quota = args.capacity.saturating_mul(args.nodes as u64);
    let tenant: TenantCreated = http_json(
        http.post(format!("{url}/v1/tenants"))
            .bearer_auth(&admin)
            .json(&CreateTenant {
                name: format!("tenant-{}", std::process::id()),
                quota_bytes: quota,
            }),
    )?;
    let node_pids = children.0.iter().map(Child::id).collect();
    Ok(LocalPool {
        url,
        admin_token: admin,
        tenant_token: tenant.token,
        node_pids,
        _children: children,
        coord_thread,
    })
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let pool = start_local_pool(&args, |i, pid| {
        println!("oxmem up: node{i} is process {pid}")
    })?;
    let (url, admin) = (&pool.url, &pool.admin_token);
    println!("oxmem up: coordinator {url}");
    println!(
        "oxmem up: {} nodes of {} bytes, {} cop{} per stripe",
        args.nodes,
        args.capacity,
        args.replicas,
        if args.replicas == 1 { "y" } else { "ies" }
    );
    println!("oxmem up: tenant token {}", pool.tenant_token);
    println!("oxmem up: admin token {admin}");
    println!(
        "export OXMEM_COORDINATOR={url} OXMEM_TOKEN={} OXMEM_ADMIN_TOKEN={admin}",
        pool.tenant_token
    );
    println!("oxmem up: running; Ctrl-C stops everything");

    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if pool.coord_thread.is_finished() {
            break;
        }
        if args.run_for.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
    }
    drop(pool);
    println!("oxmem up: stopped");
    Ok(())
}
