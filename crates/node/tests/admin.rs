//! The node's admin API over real HTTP on 127.0.0.1, and the agent against a fake coordinator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use oxmem_api::{
    ApiError, ErrorCode, GrantAccess, GrantSpec, Lease, NodeId, NodeRegistered, RegisterNode,
    ScrubRequest,
};
use oxmem_net::PeerAddr;
use oxmem_node::{
    Access, AdminServer, Agent, AgentConfig, AgentEvent, Arena, Executor, Grant, GrantEntry,
    NodeAdmin, SharedExecutor, Window,
};
use oxmem_wire::Message;
use reqwest::blocking::Client;

const TOKEN: &str = "node-secret";
const CAPACITY: u64 = 1 << 20;

fn udp(n: u8) -> PeerAddr {
    PeerAddr::Udp(SocketAddr::from(([10, 0, 0, n], 7447)))
}

struct Node {
    server: AdminServer,
    exec: SharedExecutor,
    http: Client,
}

impl Node {
    fn start(capacity: u64) -> Node {
        let exec: SharedExecutor = Arc::new(Mutex::new(Executor::new(
            Arena::new(capacity).expect("arena"),
        )));
        let admin = NodeAdmin::new(exec.clone(), TOKEN);
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), admin).expect("serve");
        Node {
            server,
            exec,
            http: Client::new(),
        }
    }

    fn admin(&self) -> &NodeAdmin {
        self.server.admin()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.local_addr())
    }

    fn put(&self, id: &str, spec: &GrantSpec) -> reqwest::blocking::Response {
        self.http
            .put(self.url(&format!("/v1/grants/{id}")))
            .bearer_auth(TOKEN)
            .json(spec)
            .send()
            .expect("PUT")
    }

    fn delete(&self, id: &str) -> reqwest::blocking::Response {
        self.http
            .delete(self.url(&format!("/v1/grants/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .expect("DELETE")
    }

    fn list(&self) -> Vec<GrantEntry> {
        let r = self
            .http
            .get(self.url("/v1/grants"))
            .bearer_auth(TOKEN)
            .send()
            .expect("GET");
        assert_eq!(r.status(), 200);
        r.json().expect("grant list")
    }

    fn scrub(&self, base: u64, len: u64) -> reqwest::blocking::Response {
        self.http
            .post(self.url("/v1/scrub"))
            .bearer_auth(TOKEN)
            .json(&ScrubRequest { base, len })
            .send()
            .expect("scrub")
    }

    fn check(&self, peer: PeerAddr, address: u64, len: u64, write: bool) -> bool {
        self.exec
            .lock()
            .unwrap()
            .grants()
            .check(&peer, address, len, write)
    }

    /// Whether a 64-byte Get by `peer` at `address` is answered with data.
    fn get_allowed(&self, peer: PeerAddr, address: u64) -> bool {
        let mut exec = self.exec.lock().unwrap();
        let reply = exec
            .respond(&peer, &Message::get(1, address, 6))
            .expect("an answer");
        !reply.denied
    }
}

fn spec(peer: &str, base: u64, len: u64, access: GrantAccess, epoch: u64) -> GrantSpec {
    GrantSpec {
        peer: peer.into(),
        base,
        len,
        access,
        epoch,
        addr: None,
    }
}

fn api_error(r: reqwest::blocking::Response, status: u16) -> ApiError {
    assert_eq!(r.status(), status);
    r.json().expect("an ApiError body")
}

#[test]
fn put_grants_take_effect_and_get_lists_them() {
    let node = Node::start(CAPACITY);
    assert!(!node.get_allowed(udp(1), 0x1000), "nothing is granted yet");

    let g1 = spec(
        "udp://10.0.0.1:7447",
        0x1000,
        0x1000,
        GrantAccess::ReadWrite,
        0,
    );
    assert_eq!(node.put("g1", &g1).status(), 204);
    assert!(node.check(udp(1), 0x1000, 0x1000, true));
    assert!(node.get_allowed(udp(1), 0x1040));
    assert!(!node.get_allowed(udp(2), 0x1040), "another peer");
    assert!(!node.get_allowed(udp(1), 0x2000), "past the grant");

    let g2 = spec("eth/02:00:00:00:00:07", 0x8000, 0x100, GrantAccess::Read, 0);
    assert_eq!(node.put("g2", &g2).status(), 204);
    let mac = PeerAddr::Ethernet(oxmem_net::EthernetAddress([2, 0, 0, 0, 0, 7]));
    assert!(node.check(mac, 0x8000, 0x100, false));
    assert!(!node.check(mac, 0x8000, 0x100, true), "read only");

    let listed = node.list();
    assert_eq!(
        listed,
        vec![
            GrantEntry {
                id: "g1".into(),
                spec: g1.clone()
            },
            GrantEntry {
                id: "g2".into(),
                spec: g2.clone()
            },
        ]
    );
    // The list also reads as the API's Vec<GrantSpec>.
    let body = node
        .http
        .get(node.url("/v1/grants"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let specs: Vec<GrantSpec> = serde_json::from_str(&body).unwrap();
    assert_eq!(specs, vec![g1, g2]);

    // PUT again replaces: g1 becomes read-only and moves.
    let g1b = spec("udp://10.0.0.1:7447", 0x4000, 0x1000, GrantAccess::Read, 0);
    assert_eq!(node.put("g1", &g1b).status(), 204);
    assert!(
        !node.check(udp(1), 0x1000, 64, false),
        "the old range is gone"
    );
    assert!(node.check(udp(1), 0x4000, 64, false));
    assert!(!node.check(udp(1), 0x4000, 64, true));
    assert_eq!(node.exec.lock().unwrap().grants().len(), 2);
    assert_eq!(node.list().len(), 2);
}

#[test]
fn a_grant_at_addresses_of_its_own_serves_its_memory_there_only() {
    let node = Node::start(CAPACITY);
    let peer = "udp://10.0.0.1:7447";
    let base = 0x8000;
    // The peer addresses the 4 KiB at arena 0x8000 as 0x1_0000_0000_8000.
    let at = (1 << 48) + base;
    node.exec
        .lock()
        .unwrap()
        .arena_mut()
        .fill(base, 4096, 0xab)
        .unwrap();
    let mapped = GrantSpec {
        addr: Some(at),
        ..spec(peer, base, 4096, GrantAccess::ReadWrite, 0)
    };
    assert_eq!(node.put("g", &mapped).status(), 204);
    assert!(node.get_allowed(udp(1), at));
    assert!(node.get_allowed(udp(1), at + 4096 - 64));
    // The data is the arena's at `base`.
    {
        let mut exec = node.exec.lock().unwrap();
        let reply = exec
            .respond(&udp(1), &Message::get(1, at + 64, 6))
            .expect("an answer");
        assert!(!reply.denied);
        let oxmem_wire::Payload::Data(data) = reply.payload else {
            panic!("{reply:?}")
        };
        let mut got = [0u8; 64];
        data.copy_to(&mut got);
        assert_eq!(got, [0xab; 64]);
    }
    // Its memory at its arena address, and past its end, are not the peer's.
    assert!(!node.get_allowed(udp(1), base));
    assert!(!node.get_allowed(udp(1), at + 4096));
    assert!(!node.get_allowed(udp(2), at));
    // Peer addresses must keep TileLink's natural alignment: aligned like the base modulo
    // 32 KiB. And they must not overflow.
    for bad in [at + 4096, u64::MAX - 100] {
        let r = node.put(
            "h",
            &GrantSpec {
                addr: Some(bad),
                ..spec(peer, base, 4096, GrantAccess::ReadWrite, 0)
            },
        );
        let e = api_error(r, 400);
        assert_eq!(e.code, ErrorCode::BadRequest, "{bad:#x}: {}", e.message);
    }
    // The listing shows where the peer addresses it.
    assert_eq!(node.list()[0].spec.addr, Some(at));
}

#[test]
fn delete_revokes_before_the_answer() {
    let node = Node::start(CAPACITY);
    let g = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 0);
    assert_eq!(node.put("g", &g).status(), 204);

    // A peer keeps reading while the grant is revoked. Every request that starts after the
    // DELETE's answer has been seen must be denied.
    let answered = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let exec = node.exec.clone();
        let (answered, stop) = (answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut allowed, mut late) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let mut exec = exec.lock().unwrap();
                let after = answered.load(Ordering::SeqCst);
                let reply = exec.respond(&udp(1), &Message::get(1, 0x40, 6)).unwrap();
                if !reply.denied {
                    allowed += 1;
                    if after {
                        late += 1;
                    }
                }
            }
            (allowed, late)
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(node.delete("g").status(), 204);
    answered.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::SeqCst);
    let (allowed, late) = reader.join().unwrap();
    assert!(allowed > 0, "the grant was in force before");
    assert_eq!(late, 0, "a request ran under a revoked grant");
    assert!(!node.get_allowed(udp(1), 0x40));
    assert!(node.list().is_empty());
    assert!(node.exec.lock().unwrap().grants().is_empty());

    // Deleting again, or something never granted, is not an error.
    assert_eq!(node.delete("g").status(), 204);
    assert_eq!(node.delete("nope").status(), 204);
}

#[test]
fn scrub_zeroes_the_range_only() {
    let node = Node::start(CAPACITY);
    node.exec
        .lock()
        .unwrap()
        .arena_mut()
        .fill(0, 0x4000, 0xab)
        .unwrap();
    assert_eq!(node.scrub(0x1000, 0x2000).status(), 204);
    let exec = node.exec.lock().unwrap();
    let bytes = exec.arena().get(0, 0x4000).unwrap();
    assert!(bytes[..0x1000].iter().all(|&b| b == 0xab));
    assert!(bytes[0x1000..0x3000].iter().all(|&b| b == 0));
    assert!(bytes[0x3000..].iter().all(|&b| b == 0xab));
}

#[test]
fn scrub_of_many_chunks_zeroes_everything() {
    let capacity = 40 << 20; // more than two of the 16 MiB chunks a scrub works in
    let node = Node::start(capacity);
    node.exec
        .lock()
        .unwrap()
        .arena_mut()
        .fill(0, capacity, 0x5a)
        .unwrap();
    assert_eq!(node.scrub(0, capacity).status(), 204);
    let exec = node.exec.lock().unwrap();
    assert!(exec.arena().as_slice().iter().all(|&b| b == 0));
}

#[test]
fn every_route_wants_the_node_token() {
    let node = Node::start(CAPACITY);
    let g = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 0);
    type Auth = fn(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder;
    let auths: [Auth; 4] = [
        |r| r,
        |r| r.bearer_auth("wrong"),
        |r| r.bearer_auth(""),
        |r| r.basic_auth("node", Some(TOKEN)),
    ];
    for auth in auths {
        let h = &node.http;
        let requests = [
            h.put(node.url("/v1/grants/g")).json(&g),
            h.delete(node.url("/v1/grants/g")),
            h.get(node.url("/v1/grants")),
            h.post(node.url("/v1/scrub"))
                .json(&ScrubRequest { base: 0, len: 64 }),
        ];
        for r in requests {
            let e = api_error(auth(r).send().unwrap(), 401);
            assert_eq!(e.code, ErrorCode::Unauthorized);
        }
    }
    assert!(node.exec.lock().unwrap().grants().is_empty());
}

#[test]
fn bad_input_is_refused_with_400_and_changes_nothing() {
    let node = Node::start(CAPACITY);
    let good = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 0);
    assert_eq!(node.put("g", &good).status(), 204);

    let bad_specs = [
        spec("10.0.0.1:7447", 0, 64, GrantAccess::Read, 0),
        spec("udp://somehost:7447", 0, 64, GrantAccess::Read, 0),
        spec("eth/02:00:00", 0, 64, GrantAccess::Read, 0),
        spec("udp://10.0.0.1:7447", 0, 0, GrantAccess::Read, 0),
        spec(
            "udp://10.0.0.1:7447",
            u64::MAX - 10,
            64,
            GrantAccess::Read,
            0,
        ),
        spec(
            "udp://10.0.0.1:7447",
            CAPACITY - 32,
            64,
            GrantAccess::Read,
            0,
        ),
        spec("udp://10.0.0.1:7447", CAPACITY, 1, GrantAccess::Read, 0),
    ];
    for s in &bad_specs {
        // Both as a new grant and as a replacement of `g`.
        for id in ["new", "g"] {
            let e = api_error(node.put(id, s), 400);
            assert_eq!(e.code, ErrorCode::BadRequest, "{s:?}");
            assert!(!e.message.is_empty());
        }
    }
    let raw = |body: &str| {
        node.http
            .put(node.url("/v1/grants/g"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap()
    };
    for body in [
        "",
        "{",
        r#"{"peer":"udp://10.0.0.1:7447","base":0,"len":64,"access":"write","epoch":0}"#,
        r#"{"peer":"udp://10.0.0.1:7447","base":-1,"len":64,"access":"read","epoch":0}"#,
        r#"{"peer":"udp://10.0.0.1:7447","base":0,"len":64,"access":"read"}"#,
    ] {
        assert_eq!(api_error(raw(body), 400).code, ErrorCode::BadRequest);
    }
    let long_id = "x".repeat(300);
    assert_eq!(
        api_error(node.put(&long_id, &good), 400).code,
        ErrorCode::BadRequest
    );

    // Nothing changed.
    assert_eq!(
        node.list(),
        vec![GrantEntry {
            id: "g".into(),
            spec: good
        }]
    );
    assert_eq!(node.exec.lock().unwrap().grants().len(), 1);

    for (base, len) in [(0, 0), (u64::MAX, 2), (CAPACITY - 1, 2), (CAPACITY, 1)] {
        let e = api_error(node.scrub(base, len), 400);
        assert_eq!(e.code, ErrorCode::BadRequest, "{base:#x}+{len:#x}");
    }
}

#[test]
fn epochs_fence_grants() {
    let node = Node::start(CAPACITY);
    // A window from the command line: not the coordinator's, never listed nor dropped.
    node.exec
        .lock()
        .unwrap()
        .grants_mut()
        .add(Grant::any(
            Window {
                base: 0x10000,
                len: 0x1000,
            },
            Access::Read,
        ))
        .unwrap();

    assert_eq!(node.admin().epoch(), 0);
    let e0 = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 0);
    assert_eq!(node.put("a", &e0).status(), 204);

    // Registering under epoch 5 drops the epoch-0 grant.
    assert_eq!(node.admin().enter_epoch(5), 1);
    assert_eq!(node.admin().epoch(), 5);
    assert!(node.list().is_empty());
    assert!(!node.check(udp(1), 0, 64, false));

    // Grants of older epochs are refused.
    for epoch in [0, 4] {
        let old = spec(
            "udp://10.0.0.1:7447",
            0,
            0x1000,
            GrantAccess::ReadWrite,
            epoch,
        );
        let e = api_error(node.put("a", &old), 409);
        assert_eq!(e.code, ErrorCode::StaleEpoch);
    }
    assert!(!node.check(udp(1), 0, 64, false));

    let e5 = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 5);
    assert_eq!(node.put("a", &e5).status(), 204);
    let e5b = spec("udp://10.0.0.2:7447", 0x2000, 0x1000, GrantAccess::Read, 5);
    assert_eq!(node.put("b", &e5b).status(), 204);
    assert!(node.check(udp(1), 0, 64, true));

    // A grant of a newer epoch (pushed before the registration's answer reached the agent)
    // moves the node to that epoch and drops the others.
    let e7 = spec("udp://10.0.0.3:7447", 0x3000, 0x1000, GrantAccess::Read, 7);
    assert_eq!(node.put("c", &e7).status(), 204);
    assert_eq!(node.admin().epoch(), 7);
    assert_eq!(
        node.list(),
        vec![GrantEntry {
            id: "c".into(),
            spec: e7
        }]
    );
    assert!(!node.check(udp(1), 0, 64, false));
    assert!(!node.check(udp(2), 0x2000, 64, false));
    assert!(node.check(udp(3), 0x3000, 64, false));
    // Then the registration's own answer, for the same epoch, drops nothing.
    assert_eq!(node.admin().enter_epoch(7), 0);
    assert_eq!(node.list().len(), 1);

    // A coordinator that lost its metadata registers the node under a lower epoch: its answer
    // is the truth, and grants of any other epoch go.
    assert_eq!(node.admin().enter_epoch(1), 1);
    assert_eq!(node.admin().epoch(), 1);
    assert!(node.list().is_empty());

    // The open window stayed through all of it.
    assert!(node.check(udp(9), 0x10000, 0x1000, false));
    assert_eq!(node.exec.lock().unwrap().grants().len(), 1);
}

// ---- the agent, against a fake coordinator ----

#[derive(Debug, Default)]
struct Calls {
    registrations: Mutex<Vec<(Option<String>, RegisterNode)>>,
    heartbeats: Mutex<Vec<(Option<String>, String)>>,
    epoch: AtomicU64,
    forget_once: AtomicBool,
    lease_ms: u64,
}

fn auth(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn register(
    State(c): State<Arc<Calls>>,
    headers: HeaderMap,
    Json(body): Json<RegisterNode>,
) -> Json<NodeRegistered> {
    c.registrations.lock().unwrap().push((auth(&headers), body));
    let epoch = c.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    Json(NodeRegistered {
        node_id: NodeId(format!("node-{epoch}")),
        epoch,
        lease: Lease {
            lease_ms: c.lease_ms,
        },
    })
}

async fn heartbeat(
    State(c): State<Arc<Calls>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    c.heartbeats.lock().unwrap().push((auth(&headers), id));
    if c.forget_once.swap(false, Ordering::SeqCst) {
        let e = ApiError::new(ErrorCode::UnknownNode, "who?");
        return (StatusCode::NOT_FOUND, Json(e)).into_response();
    }
    Json(Lease {
        lease_ms: c.lease_ms,
    })
    .into_response()
}

struct FakeCoordinator {
    addr: SocketAddr,
    calls: Arc<Calls>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCoordinator {
    fn start(addr: SocketAddr, lease_ms: u64) -> FakeCoordinator {
        let calls = Arc::new(Calls {
            lease_ms,
            ..Calls::default()
        });
        let app = axum::Router::new()
            .route("/v1/nodes", post(register))
            .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
            .with_state(calls.clone());
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        FakeCoordinator {
            addr,
            calls,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn registrations(&self) -> usize {
        self.calls.registrations.lock().unwrap().len()
    }

    fn heartbeats(&self) -> usize {
        self.calls.heartbeats.lock().unwrap().len()
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn registration(node: &Node) -> RegisterNode {
    RegisterNode {
        name: "node-a".into(),
        data_addrs: vec!["udp://127.0.0.1:7447".into()],
        admin_url: node.url(""),
        capacity: CAPACITY,
        boot_id: None,
    }
}

#[test]
fn agent_registers_heartbeats_and_registers_again_when_forgotten() {
    let node = Node::start(CAPACITY);
    let coordinator = FakeCoordinator::start("127.0.0.1:0".parse().unwrap(), 150);
    // A grant left from before (epoch 0): registering drops it.
    let old = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 0);
    assert_eq!(node.put("old", &old).status(), 204);

    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let agent = Agent::spawn(
        AgentConfig::new(coordinator.url(), TOKEN, registration(&node)),
        node.admin().clone(),
        move |e| log.lock().unwrap().push(e.clone()),
    )
    .unwrap();

    wait_until("registration and heartbeats", || {
        coordinator.heartbeats() >= 3
    });
    assert_eq!(coordinator.registrations(), 1);
    assert_eq!(node.admin().epoch(), 1);
    assert!(node.list().is_empty(), "the epoch-0 grant was dropped");
    assert!(!node.check(udp(1), 0, 64, false));
    {
        let regs = coordinator.calls.registrations.lock().unwrap();
        assert_eq!(regs[0].0.as_deref(), Some("Bearer node-secret"));
        assert_eq!(regs[0].1, registration(&node));
        let hbs = coordinator.calls.heartbeats.lock().unwrap();
        assert!(
            hbs.iter()
                .all(|(a, id)| a.as_deref() == Some("Bearer node-secret") && id == "node-1")
        );
    }
    let status = agent.status();
    assert_eq!(status.node_id, Some(NodeId("node-1".into())));
    assert_eq!(status.epoch, Some(1));
    assert_eq!(status.registrations, 1);
    assert!(status.heartbeats >= 2);
    assert!(matches!(
        events.lock().unwrap()[0],
        AgentEvent::Registered {
            epoch: 1,
            dropped: 1,
            ..
        }
    ));

    // The coordinator pushes a grant of epoch 1, then forgets the node.
    let g1 = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 1);
    assert_eq!(node.put("g1", &g1).status(), 204);
    assert!(node.check(udp(1), 0, 64, true));
    coordinator.calls.forget_once.store(true, Ordering::SeqCst);
    wait_until("registering again", || coordinator.registrations() == 2);
    wait_until("the new epoch", || node.admin().epoch() == 2);
    assert!(node.list().is_empty(), "grants of epoch 1 were dropped");
    assert!(!node.check(udp(1), 0, 64, false));
    let before = coordinator.heartbeats();
    wait_until("heartbeats under the new id", || {
        coordinator.heartbeats() >= before + 2
    });
    let last = coordinator.calls.heartbeats.lock().unwrap().last().cloned();
    assert_eq!(last.unwrap().1, "node-2");
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, AgentEvent::Forgotten { node_id } if node_id.0 == "node-1"))
    );
    agent.stop();
}

#[test]
fn agent_keeps_trying_while_the_coordinator_is_away() {
    let node = Node::start(CAPACITY);
    // A port nobody listens on, for now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = AgentConfig::new(format!("http://{addr}/"), TOKEN, registration(&node));
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    config.request_timeout = Duration::from_secs(2);
    let agent = Agent::spawn(config, node.admin().clone(), |_| {}).unwrap();
    wait_until("failed registrations", || agent.status().failures >= 3);
    assert_eq!(agent.status().registrations, 0);
    assert!(agent.status().last_error.is_some());

    // Grants pushed meanwhile (admin API) still work: the node keeps serving.
    let g = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 0);
    assert_eq!(node.put("g", &g).status(), 204);
    assert!(node.get_allowed(udp(1), 0));

    // A lease long enough that the short outage below stays within it: an outage longer than
    // a lease makes the node fence itself and register again (tested in crates/cli/tests/fencing.rs).
    let coordinator = FakeCoordinator::start(addr, 3000);
    wait_until("registration once the coordinator is up", || {
        agent.status().registrations == 1
    });
    wait_until("heartbeats", || coordinator.heartbeats() >= 2);
    assert_eq!(node.admin().epoch(), 1);

    // The coordinator goes away again: the node keeps serving its grants and the agent
    // retries heartbeats; back, the same registration goes on (no new epoch).
    let g1 = spec("udp://10.0.0.1:7447", 0, 0x1000, GrantAccess::ReadWrite, 1);
    assert_eq!(node.put("g1", &g1).status(), 204);
    drop(coordinator);
    let failures = agent.status().failures;
    wait_until("failed heartbeats", || {
        agent.status().failures >= failures + 2
    });
    assert!(node.get_allowed(udp(1), 0));
    let coordinator = FakeCoordinator::start(addr, 3000);
    wait_until("heartbeats again", || coordinator.heartbeats() >= 2);
    assert_eq!(coordinator.registrations(), 0);
    assert_eq!(agent.status().registrations, 1);
    assert_eq!(node.list().len(), 1);
    agent.stop();
}
