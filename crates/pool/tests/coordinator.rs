//! The coordinator over HTTP, with a fake node control and a fake data mover: auth, errors,
//! grants and revocations, leases, re-replication, restarts.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oxmem_api::{
    AllocRequest, ApiError, ClusterStatus, CreateTenant, ErrorCode, GrantAccess, GrantSpec, Lease,
    NodeHealth, NodeId, NodeRegistered, OpenSession, RegionHealth, RegionInfo, RegisterNode,
    ScrubRequest, SessionOpened, TenantCreated,
};
use oxmem_pool::state::NodeTarget;
use oxmem_pool::store::{Change, MemoryStore, MetadataStore, StoreError};
use oxmem_pool::{
    ControlError, Coordinator, CoordinatorConfig, CopyEnd, DataMover, MoveError, NodeControl,
    RedbStore,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

const MIB: u64 = 1 << 20;
const ADMIN: &str = "admin-token";
const NODE: &str = "node-token";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Put(NodeId, u64, GrantSpec),
    Delete(NodeId, u64),
    Scrub(NodeId, ScrubRequest),
}

#[derive(Clone, Default)]
struct FakeControl {
    calls: Arc<Mutex<Vec<Call>>>,
    refuse: Arc<Mutex<BTreeSet<NodeId>>>,
    /// How long every grant put takes (a node that answers slowly).
    slow: Arc<Mutex<Duration>>,
}

impl FakeControl {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    fn check(&self, node: &NodeTarget, call: Call) -> Result<(), ControlError> {
        if self.refuse.lock().unwrap().contains(&node.node_id) {
            return Err(ControlError::Unreachable {
                node: node.node_id.0.clone(),
                reason: "fake".into(),
            });
        }
        self.calls.lock().unwrap().push(call);
        Ok(())
    }
}

impl NodeControl for FakeControl {
    async fn put_grant(
        &self,
        node: NodeTarget,
        id: u64,
        spec: GrantSpec,
    ) -> Result<(), ControlError> {
        assert_eq!(spec.epoch, node.epoch);
        let slow = *self.slow.lock().unwrap();
        tokio::time::sleep(slow).await;
        self.check(&node, Call::Put(node.node_id.clone(), id, spec))
    }
    async fn delete_grant(&self, node: NodeTarget, id: u64) -> Result<(), ControlError> {
        self.check(&node, Call::Delete(node.node_id.clone(), id))
    }
    async fn scrub(&self, node: NodeTarget, req: ScrubRequest) -> Result<(), ControlError> {
        self.check(&node, Call::Scrub(node.node_id.clone(), req))
    }
}

#[derive(Clone, Default)]
struct FakeMover {
    copies: Arc<Mutex<Vec<(CopyEnd, CopyEnd, u64)>>>,
    fail: Arc<AtomicBool>,
}

impl DataMover for FakeMover {
    async fn copy(&self, from: CopyEnd, to: CopyEnd, len: u64) -> Result<(), MoveError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(MoveError("fake failure".into()));
        }
        self.copies.lock().unwrap().push((from, to, len));
        Ok(())
    }
}

/// A store that can be told to say NotLeader.
#[derive(Default, Clone)]
struct FlakyStore {
    inner: Arc<MemoryStore>,
    not_leader: Arc<AtomicBool>,
}

impl MetadataStore for FlakyStore {
    async fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.load_all().await
    }
    async fn apply(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        if self.not_leader.load(Ordering::SeqCst) {
            return Err(StoreError::NotLeader);
        }
        self.inner.apply(changes).await
    }
}

struct Harness<S: MetadataStore> {
    co: Coordinator<S, FakeControl, FakeMover>,
    url: String,
    http: reqwest::Client,
    control: FakeControl,
    mover: FakeMover,
    server: tokio::task::JoinHandle<()>,
}

fn config() -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(ADMIN, NODE);
    c.repair_backoff = Duration::ZERO;
    c
}

impl<S: MetadataStore> Harness<S> {
    async fn start(config: CoordinatorConfig, store: S) -> Self {
        let control = FakeControl::default();
        let mover = FakeMover::default();
        let co = Coordinator::new(config, store, control.clone(), mover.clone())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = co.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Harness {
            co,
            url,
            http: reqwest::Client::new(),
            control,
            mover,
            server,
        }
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, String) {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    async fn ok<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> T {
        let (status, text) = self.raw(method, path, Some(token), body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn no_content(&self, method: Method, path: &str, token: &str) {
        let (status, text) = self.raw(method, path, Some(token), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {text}");
    }

    /// The error an API call answers: checks the status goes with the code.
    async fn err(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> ErrorCode {
        let (status, text) = self.raw(method, path, token, body).await;
        let e: ApiError = serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!(
                "{path}: not an ApiError: {status} {}",
                &text[..text.len().min(300)]
            )
        });
        assert_eq!(status.as_u16(), e.code.http_status(), "{path}: {text}");
        e.code
    }

    async fn register(&self, name: &str, capacity: u64) -> NodeRegistered {
        let req = RegisterNode {
            name: name.into(),
            data_addrs: vec![format!("udp://127.0.0.1:{}", 7000 + name.len())],
            admin_url: format!("http://{name}.invalid:7547"),
            capacity,
            boot_id: Some(format!("{name}-boot")),
        };
        self.ok(
            Method::POST,
            "/v1/nodes",
            NODE,
            Some(serde_json::to_value(req).unwrap()),
        )
        .await
    }

    async fn tenant(&self, name: &str, quota: u64) -> TenantCreated {
        let req = CreateTenant {
            name: name.into(),
            quota_bytes: quota,
        };
        self.ok(
            Method::POST,
            "/v1/tenants",
            ADMIN,
            Some(serde_json::to_value(req).unwrap()),
        )
        .await
    }

    async fn session(&self, token: &str, client: &str) -> SessionOpened {
        let req = OpenSession {
            client_addr: client.into(),
        };
        self.ok(
            Method::POST,
            "/v1/sessions",
            token,
            Some(serde_json::to_value(req).unwrap()),
        )
        .await
    }

    async fn alloc(
        &self,
        token: &str,
        s: &SessionOpened,
        bytes: u64,
        replicas: Option<u32>,
    ) -> RegionInfo {
        let req = AllocRequest {
            session_id: s.session_id.clone(),
            bytes,
            replicas,
            stripe_size: None,
        };
        self.ok(
            Method::POST,
            "/v1/regions",
            token,
            Some(serde_json::to_value(req).unwrap()),
        )
        .await
    }

    async fn status(&self) -> ClusterStatus {
        self.ok(Method::GET, "/v1/status", ADMIN, None).await
    }

    async fn heartbeat_session(&self, token: &str, s: &SessionOpened) -> Lease {
        self.ok(
            Method::POST,
            &format!("/v1/sessions/{}/heartbeat", s.session_id),
            token,
            None,
        )
        .await
    }

    async fn heartbeat_node(&self, id: &NodeId) -> StatusCode {
        self.raw(
            Method::POST,
            &format!("/v1/nodes/{id}/heartbeat"),
            Some(NODE),
            None,
        )
        .await
        .0
    }
}

impl<S: MetadataStore> Drop for Harness<S> {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Every (node, grant id) that region `r`'s extents should have, from its placements.
fn placements(r: &RegionInfo) -> BTreeSet<(NodeId, u64)> {
    r.stripes
        .iter()
        .flat_map(|s| s.copies.iter().map(|c| (c.node_id.clone(), c.address)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_end_to_end() {
    let h = Harness::start(config(), MemoryStore::new()).await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let r = h.register(name, 256 * MIB).await;
        assert_eq!(r.epoch, 1);
        assert_eq!(r.lease, Lease { lease_ms: 3000 });
        ids.push(r.node_id);
    }
    assert_eq!(h.heartbeat_node(&ids[0]).await, StatusCode::OK);
    let t = h.tenant("acme", 1 << 30).await;
    let s = h.session(&t.token, "udp://10.0.0.9:4000").await;
    assert_eq!(s.lease.lease_ms, 10_000);
    let lease: Lease = h.heartbeat_session(&t.token, &s).await;
    assert_eq!(lease.lease_ms, 10_000);

    let r = h.alloc(&t.token, &s, 5 * MIB, Some(2)).await;
    assert_eq!(
        (r.bytes, r.replicas, r.stripe_size, r.health),
        (5 * MIB, 2, MIB, RegionHealth::Healthy)
    );
    assert_eq!(r.nodes.len(), 3);
    assert!(r.nodes.iter().all(|n| n.data_addrs.len() == 1));
    // Grants are in force when alloc answers: one per node, for the client, covering exactly
    // its copies.
    let calls = h.control.take();
    assert_eq!(calls.len(), 3);
    let mut covered = 0;
    for c in &calls {
        let Call::Put(node, _, spec) = c else {
            panic!("{c:?}")
        };
        assert_eq!(spec.peer, "udp://10.0.0.9:4000");
        assert_eq!(spec.access, GrantAccess::ReadWrite);
        assert_eq!(spec.epoch, 1);
        for stripe in &r.stripes {
            for copy in stripe.copies.iter().filter(|c| &c.node_id == node) {
                // Clients address the extent at a window of its own, far above the memory.
                let at = spec
                    .addr
                    .expect("the coordinator's grants have addresses of their own");
                assert!(at >= 1 << 48 && at % (1 << 15) == spec.base % (1 << 15));
                assert!(copy.address >= at && copy.address + stripe.len <= at + spec.len);
                covered += 1;
            }
        }
    }
    assert_eq!(covered, 10);

    let same: RegionInfo = h
        .ok(
            Method::GET,
            &format!("/v1/regions/{}", r.region_id),
            &t.token,
            None,
        )
        .await;
    assert_eq!(same, r);
    let list: Vec<RegionInfo> = h.ok(Method::GET, "/v1/regions", &t.token, None).await;
    assert_eq!(list, vec![r.clone()]);
    let st = h.status().await;
    assert_eq!(st.nodes.len(), 3);
    assert_eq!(st.nodes.iter().map(|n| n.used).sum::<u64>(), 10 * MIB);
    assert_eq!(st.tenants[0].used_bytes, 10 * MIB);
    assert_eq!(
        (st.regions.len(), st.degraded_stripes, st.leader),
        (1, 0, true)
    );

    h.no_content(
        Method::DELETE,
        &format!("/v1/regions/{}", r.region_id),
        &t.token,
    )
    .await;
    assert_eq!(
        h.err(
            Method::GET,
            &format!("/v1/regions/{}", r.region_id),
            Some(&t.token),
            None
        )
        .await,
        ErrorCode::UnknownRegion
    );
    let st = h.status().await;
    assert_eq!(st.nodes.iter().map(|n| n.used).sum::<u64>(), 0);
    assert_eq!(st.tenants[0].used_bytes, 0);

    // Stable error codes.
    let big = serde_json::json!({"session_id": s.session_id, "bytes": 1u64 << 40});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&t.token), Some(big))
            .await,
        ErrorCode::BadRequest
    );
    let zero = serde_json::json!({"session_id": s.session_id, "bytes": 0});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&t.token), Some(zero))
            .await,
        ErrorCode::BadRequest
    );
    let neg = serde_json::json!({"session_id": s.session_id, "bytes": -1});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&t.token), Some(neg))
            .await,
        ErrorCode::BadRequest
    );
    let nos = serde_json::json!({"session_id": "s77", "bytes": 4096});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&t.token), Some(nos))
            .await,
        ErrorCode::UnknownSession
    );
    let full = serde_json::json!({"session_id": s.session_id, "bytes": 769 * MIB, "replicas": 1});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&t.token), Some(full))
            .await,
        ErrorCode::BadRequest
    );
    let small = h.tenant("small", MIB).await;
    let s2 = h.session(&small.token, "eth/02:00:00:00:00:02").await;
    let over = serde_json::json!({"session_id": s2.session_id, "bytes": MIB, "replicas": 2});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&small.token), Some(over))
            .await,
        ErrorCode::QuotaExceeded
    );
    assert_eq!(
        h.err(Method::GET, "/v1/regions/x", Some(&t.token), None)
            .await,
        ErrorCode::UnknownRegion
    );
    assert_eq!(
        h.err(Method::POST, "/v1/nodes/n9/heartbeat", Some(NODE), None)
            .await,
        ErrorCode::UnknownNode
    );
    let (status, text) = h
        .raw(
            Method::POST,
            "/v1/tenants",
            Some(ADMIN),
            Some(serde_json::json!({"name": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<ApiError>(&text).unwrap().code,
        ErrorCode::BadRequest
    );

    // Closing the session frees its regions.
    let r = h.alloc(&t.token, &s, MIB, None).await;
    h.no_content(
        Method::DELETE,
        &format!("/v1/sessions/{}", s.session_id),
        &t.token,
    )
    .await;
    assert_eq!(
        h.err(
            Method::GET,
            &format!("/v1/regions/{}", r.region_id),
            Some(ADMIN),
            None
        )
        .await,
        ErrorCode::UnknownRegion
    );

    let metrics = h.raw(Method::GET, "/metrics", None, None).await.1;
    for name in [
        "oxmem_coord_requests_total",
        "oxmem_coord_regions",
        "oxmem_coord_bytes_allocated",
        "oxmem_coord_capacity_bytes",
        "oxmem_coord_nodes",
        "oxmem_coord_degraded_stripes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains("code=\"507\""),
        "requests are counted by code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_and_ownership() {
    let h = Harness::start(config(), MemoryStore::new()).await;
    h.register("a", 64 * MIB).await;
    let t1 = h.tenant("one", 1 << 30).await;
    let t2 = h.tenant("two", 1 << 30).await;
    assert_ne!(t1.token, t2.token);
    let s1 = h.session(&t1.token, "udp://10.0.0.1:1").await;
    let r = h.alloc(&t1.token, &s1, MIB, None).await;
    let region = format!("/v1/regions/{}", r.region_id);

    assert_eq!(
        h.err(Method::GET, "/v1/status", None, None).await,
        ErrorCode::Unauthorized
    );
    assert_eq!(
        h.err(Method::GET, "/v1/status", Some("nope"), None).await,
        ErrorCode::Unauthorized
    );
    assert_eq!(
        h.err(Method::GET, &region, None, None).await,
        ErrorCode::Unauthorized
    );
    let body = serde_json::json!({"name": "x", "data_addrs": ["udp://1.2.3.4:5"], "admin_url": "http://x", "capacity": 1 << 20});
    assert_eq!(
        h.err(Method::POST, "/v1/nodes", Some("nope"), Some(body.clone()))
            .await,
        ErrorCode::Unauthorized
    );
    // Valid tokens on the wrong routes.
    assert_eq!(
        h.err(Method::GET, "/v1/status", Some(&t1.token), None)
            .await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err(Method::GET, "/v1/nodes", Some(&t1.token), None).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err(
            Method::POST,
            "/v1/tenants",
            Some(&t1.token),
            Some(serde_json::json!({"name": "x", "quota_bytes": 1}))
        )
        .await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err(
            Method::POST,
            "/v1/nodes",
            Some(&t1.token),
            Some(body.clone())
        )
        .await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err(Method::POST, "/v1/nodes", Some(ADMIN), Some(body))
            .await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err(Method::GET, "/v1/regions", Some(NODE), None).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err(
            Method::POST,
            "/v1/sessions",
            Some(ADMIN),
            Some(serde_json::json!({"client_addr": "udp://1.1.1.1:1"}))
        )
        .await,
        ErrorCode::Forbidden
    );
    // Another tenant's region: neither seen nor freed.
    assert_eq!(
        h.err(Method::GET, &region, Some(&t2.token), None).await,
        ErrorCode::NotYours
    );
    assert_eq!(
        h.err(Method::DELETE, &region, Some(&t2.token), None).await,
        ErrorCode::NotYours
    );
    let list: Vec<RegionInfo> = h.ok(Method::GET, "/v1/regions", &t2.token, None).await;
    assert!(list.is_empty());
    assert_eq!(
        h.err(
            Method::POST,
            &format!("/v1/sessions/{}/heartbeat", s1.session_id),
            Some(&t2.token),
            None
        )
        .await,
        ErrorCode::UnknownSession
    );
    assert_eq!(
        h.err(
            Method::DELETE,
            &format!("/v1/sessions/{}", s1.session_id),
            Some(&t2.token),
            None
        )
        .await,
        ErrorCode::UnknownSession
    );
    let steal = serde_json::json!({"session_id": s1.session_id, "bytes": 4096});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&t2.token), Some(steal))
            .await,
        ErrorCode::UnknownSession
    );
    // The admin sees and frees everything.
    let all: Vec<RegionInfo> = h.ok(Method::GET, "/v1/regions", ADMIN, None).await;
    assert_eq!(all.len(), 1);
    let _: RegionInfo = h.ok(Method::GET, &region, &t1.token, None).await;
    h.no_content(Method::DELETE, &region, ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_revokes_every_grant_then_scrubs_before_answering() {
    let h = Harness::start(config(), MemoryStore::new()).await;
    for name in ["a", "b", "c"] {
        h.register(name, 64 * MIB).await;
    }
    let t = h.tenant("acme", 1 << 30).await;
    let s = h.session(&t.token, "udp://10.0.0.9:4000").await;
    let r = h.alloc(&t.token, &s, 8 * MIB, Some(2)).await;
    let grants: Vec<(NodeId, u64, GrantSpec)> = h
        .control
        .take()
        .into_iter()
        .map(|c| match c {
            Call::Put(n, id, spec) => (n, id, spec),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(grants.len(), 3);
    h.no_content(
        Method::DELETE,
        &format!("/v1/regions/{}", r.region_id),
        &t.token,
    )
    .await;
    let calls = h.control.take();
    // Each extent: the client's grant and the mover's (none here; deleting it is harmless)
    // are revoked, then every extent is scrubbed.
    assert_eq!(calls.len(), 9, "{calls:?}");
    let (revokes, scrubs) = calls.split_at(6);
    let all_revoked: BTreeSet<_> = revokes
        .iter()
        .map(|c| match c {
            Call::Delete(n, id) => (n.clone(), *id),
            other => panic!("a scrub before every grant was revoked: {other:?}"),
        })
        .collect();
    let bit = oxmem_pool::MOVER_GRANT_BIT;
    let revoked: BTreeSet<_> = all_revoked
        .iter()
        .filter(|(_, id)| id & bit == 0)
        .cloned()
        .collect();
    let movers: BTreeSet<_> = all_revoked
        .iter()
        .filter(|(_, id)| id & bit != 0)
        .map(|(n, id)| (n.clone(), id & !bit))
        .collect();
    assert_eq!(
        movers, revoked,
        "the mover's grant of every extent is revoked too"
    );
    let scrubbed: BTreeSet<_> = scrubs
        .iter()
        .map(|c| match c {
            Call::Scrub(n, req) => (n.clone(), req.base, req.len),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        revoked,
        grants.iter().map(|(n, id, _)| (n.clone(), *id)).collect()
    );
    assert_eq!(
        scrubbed,
        grants
            .iter()
            .map(|(n, _, g)| (n.clone(), g.base, g.len))
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alloc_fails_cleanly_when_a_node_refuses_its_grant() {
    let h = Harness::start(config(), MemoryStore::new()).await;
    let a = h.register("a", 64 * MIB).await;
    h.register("b", 64 * MIB).await;
    let t = h.tenant("acme", 1 << 30).await;
    let s = h.session(&t.token, "udp://10.0.0.9:4000").await;
    h.control.refuse.lock().unwrap().insert(a.node_id.clone());
    let body = serde_json::json!({"session_id": s.session_id, "bytes": 4 * MIB});
    assert_eq!(
        h.err(Method::POST, "/v1/regions", Some(&t.token), Some(body))
            .await,
        ErrorCode::NodeDown
    );
    // The grant that was put on b is revoked (with any mover grant for the same extent) and
    // its extent scrubbed; a's waits.
    let calls = h.control.take();
    let ok = match calls.as_slice() {
        [
            Call::Put(_, id, _),
            Call::Delete(_, d1),
            Call::Delete(_, d2),
            Call::Scrub(..),
        ] => {
            let mover = oxmem_pool::MOVER_GRANT_BIT | id;
            (d1, d2) == (id, &mover) || (d1, d2) == (&mover, id)
        }
        _ => false,
    };
    assert!(ok, "{calls:?}");
    let st = h.status().await;
    assert!(st.regions.is_empty());
    assert_eq!(st.tenants[0].used_bytes, 0);
    assert_eq!(
        st.nodes
            .iter()
            .find(|n| n.node_id == a.node_id)
            .unwrap()
            .used,
        2 * MIB,
        "a's extent waits for its scrub"
    );
    h.control.refuse.lock().unwrap().clear();
    h.co.tick(true).await;
    assert!(h.status().await.nodes.iter().all(|n| n.used == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lease_expiry_degrades_then_rereplication_heals() {
    let mut cfg = config();
    cfg.lease = Duration::from_millis(400);
    let h = Harness::start(cfg, MemoryStore::new()).await;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c", "d"] {
        nodes.push(h.register(name, 64 * MIB).await.node_id);
    }
    let t = h.tenant("acme", 1 << 30).await;
    let s = h.session(&t.token, "udp://10.0.0.9:4000").await;
    let r = h.alloc(&t.token, &s, 6 * MIB, Some(2)).await;
    let dead = r.stripes[0].copies[0].node_id.clone();
    h.control.take();
    h.mover.fail.store(true, Ordering::SeqCst);

    // Everyone but `dead` heartbeats past its lease.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in nodes.iter().filter(|n| **n != dead) {
            assert_eq!(h.heartbeat_node(n).await, StatusCode::OK);
        }
    }
    h.co.tick(true).await; // marks it down; the copy fails
    let st = h.status().await;
    let node = st.nodes.iter().find(|n| n.node_id == dead).unwrap();
    assert_eq!(node.health, NodeHealth::Down);
    assert_eq!(st.regions[0].health, RegionHealth::Degraded);
    let lost = r
        .stripes
        .iter()
        .filter(|s| s.copies.iter().any(|c| c.node_id == dead))
        .count() as u64;
    assert!(lost > 0);
    assert_eq!(st.degraded_stripes, lost);
    for stripe in &st.regions[0].stripes {
        for c in &stripe.copies {
            assert_eq!(c.healthy, c.node_id != dead, "{stripe:?}");
        }
    }
    // The failed attempt's extents were given back (revoke + scrub).
    let calls = h.control.take();
    assert!(calls.iter().any(|c| matches!(c, Call::Put(..))));
    assert!(calls.iter().any(|c| matches!(c, Call::Scrub(..))));

    h.mover.fail.store(false, Ordering::SeqCst);
    h.co.tick(true).await;
    let healed: RegionInfo = h
        .ok(
            Method::GET,
            &format!("/v1/regions/{}", r.region_id),
            &t.token,
            None,
        )
        .await;
    assert_eq!(healed.health, RegionHealth::Healthy);
    for stripe in &healed.stripes {
        assert_eq!(stripe.copies.len(), 2);
        let on: BTreeSet<_> = stripe.copies.iter().map(|c| &c.node_id).collect();
        assert_eq!(on.len(), 2, "copies on distinct nodes");
        assert!(!on.contains(&dead));
        assert!(stripe.copies.iter().all(|c| c.healthy));
    }
    // The mover copied every lost stripe from a surviving copy to the new one.
    let copies = h.mover.copies.lock().unwrap().clone();
    assert_eq!(copies.iter().map(|c| c.2).sum::<u64>(), lost * MIB);
    for (from, to, _) in &copies {
        assert_ne!(from.node.node_id, dead);
        assert_ne!(to.node.node_id, dead);
        assert!(!to.node.data_addrs.is_empty());
    }
    let old = placements(&r);
    let new = placements(&healed);
    for (from, to, len) in &copies {
        for off in (0..*len).step_by(MIB as usize) {
            assert!(new.contains(&(from.node.node_id.clone(), from.address + off)));
            assert!(new.contains(&(to.node.node_id.clone(), to.address + off)));
        }
    }
    // Every copy is at new addresses, the surviving ones too: a client that did not learn of
    // the new copies is denied everywhere instead of writing past them.
    assert!(old.is_disjoint(&new), "{old:?} {new:?}");
    // The client was granted every current extent at its new addresses (the new ones and the
    // surviving ones, on every live node) before the copy.
    let calls = h.control.take();
    let granted: BTreeSet<NodeId> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Put(n, _, g) if g.peer == "udp://10.0.0.9:4000" => Some(n.clone()),
            _ => None,
        })
        .collect();
    let holding: BTreeSet<NodeId> = healed
        .stripes
        .iter()
        .flat_map(|s| s.copies.iter().map(|c| c.node_id.clone()))
        .collect();
    assert_eq!(granted, holding);
    assert_eq!(h.status().await.degraded_stripes, 0);

    // The dead node comes back: it was declared down, so it must register again (a new
    // epoch drops whatever grants it still held); its stale extent is revoked and scrubbed.
    assert_eq!(h.heartbeat_node(&dead).await, StatusCode::NOT_FOUND);
    let name = st
        .nodes
        .iter()
        .find(|n| n.node_id == dead)
        .unwrap()
        .name
        .clone();
    assert_eq!(h.register(&name, 64 * MIB).await.node_id, dead);
    h.co.tick(true).await;
    let calls = h.control.take();
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, Call::Delete(n, _) if *n == dead)),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, Call::Scrub(n, _) if *n == dead)),
        "{calls:?}"
    );
    let st = h.status().await;
    assert_eq!(st.nodes.iter().find(|n| n.node_id == dead).unwrap().used, 0);
    assert_eq!(st.nodes.iter().map(|n| n.used).sum::<u64>(), 12 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stripe_comes_back_with_its_node() {
    let mut cfg = config();
    cfg.lease = Duration::from_millis(200);
    let h = Harness::start(cfg, MemoryStore::new()).await;
    let a = h.register("a", 64 * MIB).await.node_id;
    let t = h.tenant("acme", 1 << 30).await;
    let s = h.session(&t.token, "udp://10.0.0.9:4000").await;
    let r = h.alloc(&t.token, &s, MIB, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.co.tick(true).await;
    let st = h.status().await;
    assert_eq!(st.regions[0].health, RegionHealth::Lost);
    let e = h
        .err(
            Method::POST,
            "/v1/regions",
            Some(&t.token),
            Some(serde_json::json!({"session_id": s.session_id, "bytes": 4096})),
        )
        .await;
    assert_eq!(e, ErrorCode::OutOfCapacity, "no up node");
    // Declared down, it must register again; the same process (same boot id) kept its memory.
    assert_eq!(h.heartbeat_node(&a).await, StatusCode::NOT_FOUND);
    assert_eq!(h.register("a", 64 * MIB).await.node_id, a);
    let back: RegionInfo = h
        .ok(
            Method::GET,
            &format!("/v1/regions/{}", r.region_id),
            &t.token,
            None,
        )
        .await;
    assert_eq!(back.health, RegionHealth::Healthy);
    // The same copies, at new addresses.
    let nodes = |r: &RegionInfo| -> Vec<NodeId> {
        r.stripes
            .iter()
            .flat_map(|s| s.copies.iter().map(|c| c.node_id.clone()))
            .collect()
    };
    assert_eq!(nodes(&back), nodes(&r));
    assert!(placements(&back).is_disjoint(&placements(&r)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lease_expiry_frees_its_regions() {
    let mut cfg = config();
    cfg.session_lease = Duration::from_millis(300);
    let h = Harness::start(cfg, MemoryStore::new()).await;
    h.register("a", 64 * MIB).await;
    h.register("b", 64 * MIB).await;
    let t = h.tenant("acme", 1 << 30).await;
    let live = h.session(&t.token, "udp://10.0.0.1:1").await;
    let dying = h.session(&t.token, "udp://10.0.0.2:2").await;
    let kept = h.alloc(&t.token, &live, 3 * MIB, None).await;
    h.alloc(&t.token, &dying, 5 * MIB, None).await;
    h.alloc(&t.token, &dying, 7 * MIB, Some(2)).await;
    h.control.take();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _: Lease = h.heartbeat_session(&t.token, &live).await;
    }
    h.co.tick(true).await;
    let st = h.status().await;
    assert_eq!(
        st.regions.iter().map(|r| r.region_id).collect::<Vec<_>>(),
        vec![kept.region_id]
    );
    assert_eq!(st.tenants[0].used_bytes, 3 * MIB);
    assert_eq!(st.nodes.iter().map(|n| n.used).sum::<u64>(), 3 * MIB);
    let calls = h.control.take();
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Delete(_, id) if id & oxmem_pool::MOVER_GRANT_BIT == 0))
            .count(),
        4
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Scrub(..)))
            .count(),
        4
    );
    let e = h
        .err(
            Method::POST,
            &format!("/v1/sessions/{}/heartbeat", dying.session_id),
            Some(&t.token),
            None,
        )
        .await;
    assert_eq!(e, ErrorCode::UnknownSession);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_heard_while_the_coordinator_was_busy_keeps_its_lease() {
    let mut cfg = config();
    cfg.session_lease = Duration::from_millis(400);
    let h = Arc::new(Harness::start(cfg, MemoryStore::new()).await);
    h.register("a", 64 * MIB).await;
    h.register("b", 64 * MIB).await;
    let t = h.tenant("acme", 1 << 30).await;
    let s = h.session(&t.token, "udp://10.0.0.1:1").await;
    // An alloc holds the coordinator for 1.5 s: its node answers the grant slowly.
    *h.control.slow.lock().unwrap() = Duration::from_millis(1500);
    let busy = {
        let (h, token, s) = (h.clone(), t.token.clone(), s.clone());
        tokio::spawn(async move { h.alloc(&token, &s, MIB, None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile the client heartbeats every 100 ms, and gives up on each answer after 60 ms.
    let path = format!("{}/v1/sessions/{}/heartbeat", h.url, s.session_id);
    let mut unanswered = 0;
    for _ in 0..14 {
        let r = h
            .http
            .post(&path)
            .bearer_auth(&t.token)
            .timeout(Duration::from_millis(60))
            .send()
            .await;
        if r.is_err() {
            unanswered += 1;
        }
        // Someone else posts heartbeats for the same session id with a wrong token: noted
        // too, but they cannot displace the owner's, and count for nothing.
        let _ = h
            .http
            .post(&path)
            .bearer_auth("not-the-token")
            .timeout(Duration::from_millis(20))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        unanswered >= 10,
        "the coordinator was not busy: {unanswered}"
    );
    busy.await.unwrap();
    *h.control.slow.lock().unwrap() = Duration::ZERO;
    // The session's last answered heartbeat is older than its lease, but the coordinator
    // heard from it all along: it keeps its lease.
    h.co.tick(true).await;
    let _: Lease = h.heartbeat_session(&t.token, &s).await;
    assert_eq!(h.status().await.regions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_redb_file_keeps_regions_and_repushes_grants() {
    let dir = std::env::temp_dir().join(format!(
        "oxmem-pool-restart-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let (regions, token, grants_before) = {
        let h = Harness::start(config(), RedbStore::open(&dir).unwrap()).await;
        for name in ["a", "b", "c"] {
            h.register(name, 64 * MIB).await;
        }
        let t = h.tenant("acme", 1 << 30).await;
        let s = h.session(&t.token, "udp://10.0.0.9:4000").await;
        h.alloc(&t.token, &s, 5 * MIB, Some(2)).await;
        let gone = h.alloc(&t.token, &s, 2 * MIB, None).await;
        h.alloc(&t.token, &s, 3 * MIB, None).await;
        h.no_content(
            Method::DELETE,
            &format!("/v1/regions/{}", gone.region_id),
            &t.token,
        )
        .await;
        let calls = h.control.take();
        let revoked: BTreeSet<u64> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Delete(_, id) if id & oxmem_pool::MOVER_GRANT_BIT == 0 => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(revoked.len(), 2);
        let grants: BTreeSet<(NodeId, u64, u64, u64)> = calls
            .into_iter()
            .filter_map(|c| match c {
                Call::Put(n, id, g) if !revoked.contains(&id) => Some((n, id, g.base, g.len)),
                _ => None,
            })
            .collect();
        let out = (h.status().await.regions, t.token.clone(), grants);
        h.server.abort();
        out
    };
    // The old server's connections let go of the file as they close.
    let mut store = None;
    for _ in 0..100 {
        match RedbStore::open(&dir) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let h = Harness::start(config(), store.expect("the redb file reopens")).await;
    let st = h.status().await;
    assert_eq!(st.regions, regions, "same regions, same placement");
    assert_eq!(st.nodes.iter().map(|n| n.used).sum::<u64>(), 13 * MIB);
    let mine: Vec<RegionInfo> = h.ok(Method::GET, "/v1/regions", &token, None).await;
    assert_eq!(mine.len(), 2, "the tenant's token still works");
    // The nodes re-register (same names): new epoch, and their grants come back.
    for name in ["a", "b", "c"] {
        assert_eq!(h.register(name, 64 * MIB).await.epoch, 2);
    }
    let pushed: BTreeSet<(NodeId, u64, u64, u64)> = h
        .control
        .take()
        .into_iter()
        .filter_map(|c| match c {
            Call::Put(n, id, g) => {
                assert_eq!(g.epoch, 2);
                Some((n, id, g.base, g.len))
            }
            _ => None,
        })
        .collect();
    assert_eq!(pushed, grants_before);
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_leadership_gets_not_leader_answers() {
    let store = FlakyStore::default();
    let h = Harness::start(config(), store.clone()).await;
    h.register("a", 64 * MIB).await;
    let lost = h.co.leadership_lost();
    store.not_leader.store(true, Ordering::SeqCst);
    let body = serde_json::json!({"name": "x", "quota_bytes": 1});
    assert_eq!(
        h.err(Method::POST, "/v1/tenants", Some(ADMIN), Some(body))
            .await,
        ErrorCode::NotLeader
    );
    tokio::time::timeout(Duration::from_secs(1), lost)
        .await
        .unwrap();
    assert!(!h.co.is_leader());
    assert_eq!(
        h.err(Method::GET, "/v1/status", Some(ADMIN), None).await,
        ErrorCode::NotLeader
    );
}

/// What `scripts/fuzz-api.sh` (schemathesis against `openapi.yaml`) found: every bad request
/// is an `ApiError` JSON body with a 4xx status, and what the spec calls valid is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_bad_requests_get_json_api_errors() {
    let h = Harness::start(config(), MemoryStore::new()).await;
    h.register("a", 64 * MIB).await;
    let t = h.tenant("fuzz", 1 << 30).await;

    // Path parameters that are not UTF-8 once percent-decoded: were axum's text/plain 400.
    for (method, path, token) in [
        (Method::GET, "/v1/regions/%FF", ADMIN),
        (Method::DELETE, "/v1/regions/%C0%AF", ADMIN),
        (Method::POST, "/v1/nodes/%FF/heartbeat", NODE),
        (Method::POST, "/v1/sessions/%FE/heartbeat", t.token.as_str()),
        (Method::DELETE, "/v1/sessions/%FF", ADMIN),
    ] {
        assert_eq!(
            h.err(method, path, Some(token), None).await,
            ErrorCode::BadRequest,
            "{path}"
        );
    }

    // A method the route does not serve: was 405 with an empty body.
    let resp = h
        .http
        .put(format!("{}/v1/nodes", h.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST,GET,HEAD");
    let e: ApiError = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    // An unknown route: 404 with code bad_request, as openapi.yaml says (was 400).
    let (status, text) = h.raw(Method::GET, "/v2/nothing", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let e: ApiError = serde_json::from_str(&text).unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);

    // Client addresses a node would refuse as a grant's peer are refused at the session, not
    // answered 503 node_down at its first allocation.
    for bad in [
        "udp://G|]6_",
        "udp://host:1",
        "udp://1.2.3.4:65536",
        "eth://02:00:00:00:00:01",
        "eth/02:00",
        "eth/02:00:00:00:00:0g",
        "eth/+2:00:00:00:00:01",
    ] {
        let body = serde_json::json!({ "client_addr": bad });
        assert_eq!(
            h.err(Method::POST, "/v1/sessions", Some(&t.token), Some(body))
                .await,
            ErrorCode::BadRequest,
            "{bad}"
        );
    }
    for good in [
        "udp://[::1]:9",
        "udp://10.0.0.9:0080",
        "eth/02:AB:cd:00:00:01",
    ] {
        let s = h.session(&t.token, good).await;
        h.alloc(&t.token, &s, 4096, None).await;
    }
    assert!(h.control.take().iter().all(|c| matches!(c, Call::Put(..))));

    // Names count characters, like the spec's maxLength: 256 two-byte characters are fine,
    // 257 are not.
    h.tenant(&"é".repeat(256), 0).await;
    let long = serde_json::json!({"name": "é".repeat(257), "quota_bytes": 0});
    assert_eq!(
        h.err(Method::POST, "/v1/tenants", Some(ADMIN), Some(long))
            .await,
        ErrorCode::BadRequest
    );
    let node = serde_json::json!({"name": "ü".repeat(256), "data_addrs": ["udp://1.2.3.4:5"], "admin_url": "http://x", "capacity": 4096});
    let _: NodeRegistered = h.ok(Method::POST, "/v1/nodes", NODE, Some(node)).await;
    // Admin URLs: http(s):// and printable ASCII after it.
    for url in ["http://", "https://a b", "ftp://x", "http://ü"] {
        let body = serde_json::json!({"name": "n", "data_addrs": ["udp://1.2.3.4:5"], "admin_url": url, "capacity": 4096});
        assert_eq!(
            h.err(Method::POST, "/v1/nodes", Some(NODE), Some(body))
                .await,
            ErrorCode::BadRequest,
            "{url}"
        );
    }
    // Integers out of u64 (negative, or past 2^64 and so a float to serde) are 400 too.
    for q in [serde_json::json!(-1), serde_json::json!(1e30)] {
        let body = serde_json::json!({"name": "q", "quota_bytes": q});
        assert_eq!(
            h.err(Method::POST, "/v1/tenants", Some(ADMIN), Some(body))
                .await,
            ErrorCode::BadRequest
        );
    }
}

#[test]
fn openapi_describes_every_route_and_error_code() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    for route in [
        "/v1/nodes:",
        "/v1/nodes/{id}/heartbeat:",
        "/v1/tenants:",
        "/v1/sessions:",
        "/v1/sessions/{id}/heartbeat:",
        "/v1/sessions/{id}:",
        "/v1/regions:",
        "/v1/regions/{id}:",
        "/v1/regions/{id}/attach:",
        "/v1/status:",
        "/metrics:",
    ] {
        assert!(doc.contains(&format!("  {route}\n")), "{route} missing");
    }
    for code in [
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotYours,
        ErrorCode::OutOfCapacity,
        ErrorCode::QuotaExceeded,
        ErrorCode::UnknownRegion,
        ErrorCode::UnknownNode,
        ErrorCode::UnknownSession,
        ErrorCode::UnknownTenant,
        ErrorCode::NodeDown,
        ErrorCode::BadRequest,
        ErrorCode::NotLeader,
        ErrorCode::Storage,
        ErrorCode::Internal,
    ] {
        let name = serde_json::to_value(code).unwrap();
        assert!(doc.contains(name.as_str().unwrap()), "{code:?} missing");
    }
}
