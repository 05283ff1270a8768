//! A whole pool in this process: a coordinator (metadata in memory) on a runtime thread of
//! its own, and memory nodes on loopback UDP that register with it, plus a tenant.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use oxmem_api::{CreateTenant, NodeInfo, TenantCreated};
use oxmem_net::PeerAddr;
use oxmem_net::engine::EngineConfig;
use oxmem_net::udp::UdpTransport;
use oxmem_node::agent::RegisterNode;
use oxmem_node::{AdminServer, Agent, AgentConfig, Arena, Executor, NodeAdmin, NodeServer};
use oxmem_pool::{CoordinatorConfig, HttpNodeControl, MemoryStore, NoMover};

const ADMIN: &str = "kv-test-admin";
const NODE: &str = "kv-test-node";

struct Node {
    agent: Option<Agent>,
    admin: Option<AdminServer>,
    server: Option<NodeServer>,
}

/// A coordinator and nodes; everything stops when dropped.
pub struct TestPool {
    pub url: String,
    pub token: String,
    nodes: Vec<Node>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    coordinator: Option<std::thread::JoinHandle<()>>,
}

impl TestPool {
    /// A coordinator with `nodes` nodes of `capacity` bytes each and a tenant whose quota is
    /// all of it.
    pub fn start(nodes: usize, capacity: u64) -> TestPool {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let coordinator = std::thread::Builder::new()
            .name("kv-test coordinator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                        .await
                        .expect("bind");
                    ready_tx
                        .send(listener.local_addr().expect("addr"))
                        .expect("send");
                    let mut config = CoordinatorConfig::new(ADMIN, NODE);
                    config.default_stripe = 256 << 10;
                    let control = HttpNodeControl::new(NODE, Duration::from_secs(2));
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    oxmem_pool::serve_with_shutdown(
                        config,
                        MemoryStore::new(),
                        control,
                        NoMover,
                        listener,
                        shutdown,
                    )
                    .await
                    .expect("coordinator");
                });
            })
            .expect("coordinator thread");
        let addr: SocketAddr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("coordinator started");
        let url = format!("http://{addr}");
        let mut pool = TestPool {
            url: url.clone(),
            token: String::new(),
            nodes: Vec::new(),
            stop: Some(stop),
            coordinator: Some(coordinator),
        };
        for i in 0..nodes {
            pool.nodes.push(start_node(&url, i, capacity));
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up: Vec<NodeInfo> = http
                .get(format!("{url}/v1/nodes"))
                .bearer_auth(ADMIN)
                .send()
                .and_then(|r| r.json())
                .unwrap_or_default();
            if up.len() >= nodes {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {nodes} nodes registered",
                up.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let tenant: TenantCreated = http
            .post(format!("{url}/v1/tenants"))
            .bearer_auth(ADMIN)
            .json(&CreateTenant {
                name: "kv-tests".into(),
                quota_bytes: capacity * nodes as u64,
            })
            .send()
            .and_then(|r| r.json())
            .expect("tenant");
        pool.token = tenant.token;
        pool
    }

    /// A new session of the tenant.
    pub fn connect(&self) -> oxmem_client::Pool {
        connect(&self.url, &self.token)
    }
}

/// A session of the tenant with `token` at `url`, with loopback settings.
pub fn connect(url: &str, token: &str) -> oxmem_client::Pool {
    let options = oxmem_client::PoolOptions {
        bind_ip: Some(Ipv4Addr::LOCALHOST.into()),
        ..Default::default()
    };
    oxmem_client::Pool::connect(url, token, options).expect("pool session")
}

fn start_node(url: &str, index: usize, capacity: u64) -> Node {
    let arena = Arena::new(capacity).expect("arena");
    let mut server = NodeServer::new(Executor::new(arena));
    let udp = UdpTransport::bind((Ipv4Addr::LOCALHOST, 0).into()).expect("udp");
    let local = server.serve(udp, EngineConfig::default()).expect("engine");
    let PeerAddr::Udp(data) = local else {
        panic!("a UDP transport has a UDP address")
    };
    let admin = AdminServer::start(
        (Ipv4Addr::LOCALHOST, 0).into(),
        NodeAdmin::new(server.executor().clone(), NODE),
    )
    .expect("admin server");
    let registration = RegisterNode {
        name: format!("kv-node{index}"),
        data_addrs: vec![format!("udp://{data}")],
        admin_url: format!("http://{}", admin.local_addr()),
        capacity,
        boot_id: Some(format!("{}-{index}", std::process::id())),
    };
    let agent = Agent::spawn(
        AgentConfig::new(url, NODE, registration),
        admin.admin().clone(),
        |_| {},
    )
    .expect("agent");
    Node {
        agent: Some(agent),
        admin: Some(admin),
        server: Some(server),
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(a) = n.agent.take() {
                a.stop();
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.coordinator.take() {
            let _ = t.join();
        }
        for n in &mut self.nodes {
            if let Some(a) = n.admin.take() {
                let _ = a.shutdown();
            }
            if let Some(s) = n.server.take() {
                let _ = s.shutdown();
            }
        }
    }
}
