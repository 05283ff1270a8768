//! The coordinator's HTTP server (axum), its lease checker, and the procedures that tie the
//! state machine, the metadata store and the nodes together.
//!
//! One lock serialises every operation on the [`State`]: an operation changes the state,
//! commits the changed records to the store as one batch, and makes its node calls (grants,
//! revocations, scrubs), all before it answers. Only the byte copies of re-replication run
//! outside the lock.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use oxmem_api::{
    AllocRequest, ApiError, AttachRequest, ClusterStatus, CreateTenant, ErrorCode, GrantAccess,
    Lease, NodeId, NodeInfo, NodeRegistered, OpenSession, RegionId, RegionInfo, RegisterNode,
    SessionId, SessionOpened, TenantCreated, TenantId, TenantInfo,
};
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, MutexGuard, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::control::{ControlError, CopyEnd, DataMover, NodeControl};
use crate::state::{Batch, GrantPush, Limits, NodeTarget, RepairPlan, State, grant_spec};
use crate::store::{MetadataStore, StoreError};
use crate::{CoordinatorConfig, ServeError};

pub use crate::state::MOVER_GRANT_BIT;

/// The process-wide Prometheus handle: installs the recorder as the global `metrics`
/// recorder on first use (if another recorder is installed already, the coordinator's metrics
/// go to that one and this handle renders nothing).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Request latencies as a real histogram (Prometheus buckets), from 100 µs to 10 s.
            let buckets = [
                1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 2.0, 10.0,
            ];
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "oxmem_coord_request_seconds".into(),
                    ),
                    &buckets,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// An error answer: [`ApiError`] as JSON with the status its code goes with.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

fn fail(code: ErrorCode, msg: impl Into<String>) -> Failure {
    Failure(ApiError::new(code, msg))
}

/// A JSON body whose rejection is a `bad_request` [`ApiError`].
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &St) -> Result<Self, Failure> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(e) => Err(fail(ErrorCode::BadRequest, e.body_text())),
        }
    }
}

/// A path parameter (`{id}`) whose rejection (say, percent-encoded bytes that are not UTF-8)
/// is a `bad_request` [`ApiError`], not axum's plain-text answer.
#[derive(Debug)]
pub struct Param(pub String);

impl<St: Send + Sync> FromRequestParts<St> for Param {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Failure> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Param(v)),
            Err(e) => Err(fail(ErrorCode::BadRequest, e.body_text())),
        }
    }
}

/// The answer to a path no route matches: `bad_request` with status 404.
async fn no_such_route() -> Response {
    let e = ApiError::new(ErrorCode::BadRequest, "no such route");
    (StatusCode::NOT_FOUND, axum::Json(e)).into_response()
}

/// The answer to a method the route does not serve: `bad_request` with status 405 (axum adds
/// the `Allow` header).
async fn no_such_method() -> Response {
    let e = ApiError::new(ErrorCode::BadRequest, "method not allowed on this route");
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(e)).into_response()
}

type Answer<T> = Result<axum::Json<T>, Failure>;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    Admin,
    Node,
    Tenant(TenantId),
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A running coordinator: state, store, node control and data mover. Cheap to clone.
pub struct Coordinator<S, C, M> {
    inner: Arc<Inner<S, C, M>>,
}

impl<S, C, M> Clone for Coordinator<S, C, M> {
    fn clone(&self) -> Self {
        Coordinator {
            inner: self.inner.clone(),
        }
    }
}

impl<S, C, M> std::fmt::Debug for Coordinator<S, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

struct Inner<S, C, M> {
    config: CoordinatorConfig,
    store: S,
    control: Arc<C>,
    mover: Arc<M>,
    state: Mutex<State>,
    start: Instant,
    leader: AtomicBool,
    leader_tx: watch::Sender<bool>,
    metrics: PrometheusHandle,
    /// Session heartbeats noted on arrival, before they wait for the state: (session id,
    /// bearer token) → arrival. The lease checker applies those whose token owns the session
    /// before it judges leases, so a heartbeat counts even when the coordinator was too busy
    /// to answer it before its sender gave up and sent another.
    arrivals: std::sync::Mutex<HashMap<(String, String), u64>>,
}

/// At most this many heartbeats are noted between two lease checks (junk cannot grow the
/// table without bound).
const MAX_NOTED_ARRIVALS: usize = 65_536;

/// Session ids and tokens longer than this are not noted (those this coordinator hands out
/// are far shorter), so the table holds at most about 40 MiB.
const MAX_NOTED_LEN: usize = 256;

enum Call {
    Put(GrantPush),
    Delete(NodeTarget, u64),
    Scrub(NodeTarget, oxmem_api::ScrubRequest),
}

impl Call {
    fn target(&self) -> &NodeTarget {
        match self {
            Call::Put(p) => &p.target,
            Call::Delete(t, _) | Call::Scrub(t, _) => t,
        }
    }
}

/// Runs node calls concurrently; results in the calls' order.
async fn fan_out<C: NodeControl>(
    control: &Arc<C>,
    calls: Vec<Call>,
) -> Vec<Result<(), ControlError>> {
    let mut set = JoinSet::new();
    let n = calls.len();
    for (i, call) in calls.into_iter().enumerate() {
        let c = control.clone();
        set.spawn(async move {
            let r = match call {
                Call::Put(p) => c.put_grant(p.target, p.grant_id, p.spec).await,
                Call::Delete(t, id) => c.delete_grant(t, id).await,
                Call::Scrub(t, req) => c.scrub(t, req).await,
            };
            (i, r)
        });
    }
    let mut out: Vec<Option<Result<(), ControlError>>> = vec![None; n];
    while let Some(r) = set.join_next().await {
        if let Ok((i, r)) = r {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(ControlError::Unreachable {
                    node: "?".into(),
                    reason: "call panicked".into(),
                })
            })
        })
        .collect()
}

impl<S: MetadataStore, C: NodeControl, M: DataMover> Coordinator<S, C, M> {
    /// Loads the state from `store` (call it once this coordinator is the leader).
    ///
    /// # Errors
    ///
    /// The store fails or says this coordinator is not the leader, or a record is corrupt.
    pub async fn new(
        config: CoordinatorConfig,
        store: S,
        control: C,
        mover: M,
    ) -> Result<Self, ServeError> {
        let limits = Limits {
            align: config.align,
            default_stripe: config.default_stripe,
            max_stripe: config.max_stripe,
            max_stripes: config.max_stripes,
            max_replicas: config.max_replicas,
            default_replicas: config.default_replicas,
        };
        if !limits.align.is_power_of_two()
            || limits.default_stripe == 0
            || limits.default_stripe % limits.align != 0
        {
            return Err(ServeError::Config(
                "align must be a power of two and default_stripe a positive multiple of it".into(),
            ));
        }
        let records = store.load_all().await?;
        let (state, batch) = State::load(limits, records, 0).map_err(ServeError::Corrupt)?;
        if !batch.is_empty() {
            store.apply(batch.into_changes()).await?;
        }
        let (leader_tx, _) = watch::channel(true);
        let c = Coordinator {
            inner: Arc::new(Inner {
                config,
                store,
                control: Arc::new(control),
                mover: Arc::new(mover),
                state: Mutex::new(state),
                start: Instant::now(),
                leader: AtomicBool::new(true),
                leader_tx,
                metrics: metrics_handle(),
                arrivals: std::sync::Mutex::new(HashMap::new()),
            }),
        };
        c.publish(&*c.inner.state.lock().await);
        Ok(c)
    }

    /// The configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.inner.config
    }

    /// Milliseconds since this coordinator started (its lease clock).
    pub fn now_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64
    }

    /// Whether this coordinator is still the leader (false once the store said otherwise).
    pub fn is_leader(&self) -> bool {
        self.inner.leader.load(Ordering::SeqCst)
    }

    /// Resolves when this coordinator loses leadership.
    pub fn leadership_lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.leader_tx.subscribe();
        async move {
            let _ = rx.wait_for(|leader| !*leader).await;
        }
    }

    /// Runs `f` on the state (for tests and operators' tools).
    pub async fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&*self.inner.state.lock().await)
    }

    /// The pool as the operator sees it.
    pub async fn status(&self) -> ClusterStatus {
        let st = self.inner.state.lock().await;
        st.status(self.now_ms(), self.is_leader())
    }

    fn lose_leadership(&self) {
        self.inner.leader.store(false, Ordering::SeqCst);
        let _ = self.inner.leader_tx.send(false);
    }

    fn check_leader(&self) -> Result<(), Failure> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(fail(
                ErrorCode::NotLeader,
                "this coordinator is not the leader",
            ))
        }
    }

    fn publish(&self, st: &State) {
        let g = st.gauges();
        metrics::gauge!("oxmem_coord_regions").set(g.regions as f64);
        metrics::gauge!("oxmem_coord_bytes_allocated").set(g.bytes_allocated as f64);
        metrics::gauge!("oxmem_coord_capacity_bytes").set(g.capacity as f64);
        metrics::gauge!("oxmem_coord_free_bytes").set(g.free as f64);
        metrics::gauge!("oxmem_coord_nodes", "health" => "up").set(g.nodes_up as f64);
        metrics::gauge!("oxmem_coord_nodes", "health" => "down").set(g.nodes_down as f64);
        metrics::gauge!("oxmem_coord_degraded_stripes").set(g.degraded_stripes as f64);
        metrics::gauge!("oxmem_coord_sessions").set(g.sessions as f64);
        metrics::gauge!("oxmem_coord_pending_releases").set(g.pending_releases as f64);
    }

    /// Commits a batch. On `NotLeader` the coordinator stops serving; on another store error
    /// the state is reloaded from the store (which holds the truth) and the error answered.
    async fn commit(&self, st: &mut State, batch: Batch) -> Result<(), Failure> {
        if batch.is_empty() {
            self.publish(st);
            return Ok(());
        }
        match self.inner.store.apply(batch.into_changes()).await {
            Ok(()) => {
                self.publish(st);
                Ok(())
            }
            Err(StoreError::NotLeader) => {
                self.lose_leadership();
                Err(fail(
                    ErrorCode::NotLeader,
                    "this coordinator lost leadership",
                ))
            }
            Err(e) => {
                metrics::counter!("oxmem_coord_store_errors_total").increment(1);
                if let Ok(records) = self.inner.store.load_all().await {
                    if let Ok((mut fresh, b)) =
                        State::load(st.limits().clone(), records, self.now_ms())
                    {
                        fresh.adopt_runtime(st);
                        *st = fresh;
                        if !b.is_empty() {
                            let _ = self.inner.store.apply(b.into_changes()).await;
                        }
                    }
                }
                Err(fail(ErrorCode::Storage, e.to_string()))
            }
        }
    }

    fn authenticate(&self, st: &State, headers: &HeaderMap) -> Result<Principal, Failure> {
        let token = bearer(headers).ok_or_else(|| {
            fail(
                ErrorCode::Unauthorized,
                "missing Authorization: Bearer TOKEN",
            )
        })?;
        let cfg = &self.inner.config;
        if ct_eq(token.as_bytes(), cfg.admin_token.as_bytes()) {
            return Ok(Principal::Admin);
        }
        if ct_eq(token.as_bytes(), cfg.node_token.as_bytes()) {
            return Ok(Principal::Node);
        }
        match st.tenant_by_token(token) {
            Some(t) => Ok(Principal::Tenant(t.clone())),
            None => Err(fail(ErrorCode::Unauthorized, "unknown token")),
        }
    }

    /// Locks the state, checks leadership and authenticates.
    async fn enter(
        &self,
        headers: &HeaderMap,
    ) -> Result<(MutexGuard<'_, State>, Principal), Failure> {
        let st = self.inner.state.lock().await;
        self.check_leader()?;
        let who = self.authenticate(&st, headers)?;
        Ok((st, who))
    }

    fn need(who: &Principal, want: &str) -> Failure {
        let who = match who {
            Principal::Admin => "the admin token",
            Principal::Node => "the node token",
            Principal::Tenant(_) => "a tenant token",
        };
        fail(
            ErrorCode::Forbidden,
            format!("this call needs {want}, not {who}"),
        )
    }

    async fn enter_as_admin(&self, headers: &HeaderMap) -> Result<MutexGuard<'_, State>, Failure> {
        match self.enter(headers).await? {
            (st, Principal::Admin) => Ok(st),
            (_, who) => Err(Self::need(&who, "the admin token")),
        }
    }

    async fn enter_as_node(&self, headers: &HeaderMap) -> Result<MutexGuard<'_, State>, Failure> {
        match self.enter(headers).await? {
            (st, Principal::Node) => Ok(st),
            (_, who) => Err(Self::need(&who, "the node token")),
        }
    }

    async fn enter_as_tenant(
        &self,
        headers: &HeaderMap,
    ) -> Result<(MutexGuard<'_, State>, TenantId), Failure> {
        match self.enter(headers).await? {
            (st, Principal::Tenant(t)) => Ok((st, t)),
            (_, who) => Err(Self::need(&who, "a tenant token")),
        }
    }

    /// Admin or tenant: `None` is the admin (sees everything).
    async fn enter_as_tenant_or_admin(
        &self,
        headers: &HeaderMap,
    ) -> Result<(MutexGuard<'_, State>, Option<TenantId>), Failure> {
        match self.enter(headers).await? {
            (st, Principal::Tenant(t)) => Ok((st, Some(t))),
            (st, Principal::Admin) => Ok((st, None)),
            (_, who) => Err(Self::need(&who, "a tenant or the admin token")),
        }
    }

    /// Runs the releases among `ids` (all, with `None`) whose node is up: every grant is
    /// revoked first, then the ranges whose grant is gone are scrubbed, then their space is
    /// free again. Failed ones stay pending and are retried by the lease checker.
    async fn run_releases(&self, st: &mut State, ids: Option<&[u64]>) -> Result<(), Failure> {
        let jobs = st.release_jobs(ids);
        if jobs.is_empty() {
            return Ok(());
        }
        // Every grant of a job (its owner's and its attached sessions') is revoked at once;
        // a job is scrubbed only once all of them are gone.
        let calls: Vec<Call> = jobs
            .iter()
            .flat_map(|j| {
                std::iter::once(j.grant_id)
                    .chain(j.extra_grants.iter().copied())
                    .map(|g| Call::Delete(j.target.clone(), g))
            })
            .collect();
        let mut revoked = fan_out(&self.inner.control, calls).await.into_iter();
        let jobs: Vec<_> = jobs
            .into_iter()
            .filter(|j| {
                let n = 1 + j.extra_grants.len();
                revoked.by_ref().take(n).fold(true, |ok, r| ok & r.is_ok())
            })
            .collect();
        let scrubbed = fan_out(
            &self.inner.control,
            jobs.iter()
                .map(|j| Call::Scrub(j.target.clone(), j.scrub))
                .collect(),
        )
        .await;
        let mut b = Batch::new();
        for (j, r) in jobs.iter().zip(scrubbed) {
            if r.is_ok() {
                st.complete_release(j.grant_id, &mut b);
            }
        }
        self.commit(st, b).await
    }

    /// Runs the revocations among `ids` (all, with `None`) whose node is up (grants of
    /// sessions that detached). Failed ones stay pending and are retried by the lease checker.
    async fn run_revocations(&self, st: &mut State, ids: Option<&[u64]>) -> Result<(), Failure> {
        let jobs = st.revoke_jobs(ids);
        if jobs.is_empty() {
            return Ok(());
        }
        let results = fan_out(
            &self.inner.control,
            jobs.iter()
                .map(|j| Call::Delete(j.target.clone(), j.grant_id))
                .collect(),
        )
        .await;
        let mut b = Batch::new();
        for (j, r) in jobs.iter().zip(results) {
            if r.is_ok() {
                st.complete_revoke(j.grant_id, &mut b);
            }
        }
        self.commit(st, b).await
    }

    /// Pushes every grant an up node should hold, for nodes whose grants are pending.
    async fn push_pending_grants(&self, st: &mut State) {
        for node in st.nodes_with_pending_grants() {
            let pushes = st.grant_pushes_for_node(&node);
            let ok = fan_out(
                &self.inner.control,
                pushes.into_iter().map(Call::Put).collect(),
            )
            .await
            .iter()
            .all(Result::is_ok);
            st.set_grants_pending(&node, !ok);
        }
    }

    /// One pass of the lease checker: nodes past their lease go down, sessions past theirs
    /// are closed (their regions freed), pending releases and grant pushes are retried, and
    /// re-replications start. With `wait`, the re-replications run to completion before it
    /// returns; otherwise they run as tasks.
    pub async fn tick(&self, wait: bool) {
        let plans = {
            // Leases are judged as of when this pass began: heartbeats that arrived while it
            // waited for the lock were held up by the coordinator, not by their senders.
            let now = self.now_ms();
            let mut st = self.inner.state.lock().await;
            if !self.is_leader() {
                return;
            }
            let cfg = &self.inner.config;
            self.apply_noted_arrivals(&mut st);
            let mut b = Batch::new();
            let down = st.expire_nodes(now, cfg.lease.as_millis() as u64, &mut b);
            for id in &down {
                metrics::counter!("oxmem_coord_node_lease_expiries_total").increment(1);
                eprintln!(
                    "oxmem coord: node {id} is down: its lease ran out; its copies are stale"
                );
            }
            // Right after a start (a restart, a failover), sessions get one more lease: their
            // clients were heartbeating a coordinator that was not there, and retry.
            let session_lease = cfg.session_lease.as_millis() as u64;
            let freed = if now > session_lease {
                st.expire_sessions(now, session_lease, &mut b)
            } else {
                Vec::new()
            };
            if !freed.is_empty() {
                metrics::counter!("oxmem_coord_session_lease_expiries_total").increment(1);
            }
            if self.commit(&mut st, b).await.is_err() {
                return;
            }
            let _ = self.run_releases(&mut st, None).await;
            let _ = self.run_revocations(&mut st, None).await;
            self.push_pending_grants(&mut st).await;
            // Starting a re-replication pushes grants while holding the state: a node that does
            // not answer costs a control timeout each time. Nodes that failed once are left
            // out for the rest of this pass, and the pass starts no more re-replications once
            // it has held the state for a quarter of a lease (the rest wait for the next pass),
            // so that heartbeats are not held up until leases run out.
            let budget = cfg.lease.min(cfg.session_lease) / 4;
            let started = Instant::now();
            let mut avoid = BTreeSet::new();
            let mut plans = Vec::new();
            for id in st.regions_to_repair(now) {
                if started.elapsed() > budget {
                    break;
                }
                if let Some(plan) = self.start_repair(&mut st, id, &mut avoid).await {
                    plans.push(plan);
                }
            }
            self.publish(&st);
            plans
        };
        let mut set = JoinSet::new();
        for plan in plans {
            let me = self.clone();
            let fut = async move { me.run_repair(plan).await };
            if wait {
                set.spawn(fut);
            } else {
                tokio::spawn(fut);
            }
        }
        while set.join_next().await.is_some() {}
    }

    /// Plans a re-replication of region `id`, commits it, and puts the grants of the new
    /// extents (the client's, and the mover's on both ends). `None` when nothing can be done.
    async fn start_repair(
        &self,
        st: &mut State,
        id: RegionId,
        avoid: &mut BTreeSet<NodeId>,
    ) -> Option<RepairPlan> {
        // The plan moves every extent of the region: every node holding one must take the new
        // grants, so a region on a node that just failed to answer waits for the next pass.
        if st.region_nodes(id).iter().any(|n| avoid.contains(n)) {
            return None;
        }
        let mut b = Batch::new();
        let plan = st.plan_repair(id, avoid, &mut b)?;
        if self.commit(st, b).await.is_err() {
            return None;
        }
        // Every current extent's grants, at the addresses the plan gave them (replacing the
        // old ones), the new extents' included; then the mover's.
        let mut calls: Vec<Call> = st
            .grant_pushes_for_region(id)
            .into_iter()
            .map(Call::Put)
            .collect();
        calls.extend(self.mover_grants(st, &plan).into_iter().map(Call::Put));
        let nodes: Vec<NodeId> = calls.iter().map(|c| c.target().node_id.clone()).collect();
        let results = fan_out(&self.inner.control, calls).await;
        for (node, r) in nodes.into_iter().zip(&results) {
            if r.is_err() {
                // It may still hold the old addresses' grants: push again later.
                st.set_grants_pending(&node, true);
                avoid.insert(node);
            }
        }
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            eprintln!(
                "oxmem coord: re-replication of region {id} could not grant access: {e}; it is \
                 retried"
            );
        } else {
            metrics::counter!("oxmem_coord_repairs_started_total").increment(1);
            let jobs: Vec<String> = plan
                .jobs
                .iter()
                .map(|j| {
                    format!(
                        "{}@{:#x} -> {}@{:#x} ({} bytes)",
                        j.from_node.node_id, j.from_address, j.to_node.node_id, j.to_address, j.len
                    )
                })
                .collect();
            eprintln!(
                "oxmem coord: re-replicating region {id}: {}",
                jobs.join(", ")
            );
            return Some(plan);
        }
        self.end_repair(st, &plan, false).await;
        None
    }

    fn mover_grants(&self, st: &State, plan: &RepairPlan) -> Vec<GrantPush> {
        let Some(addr) = &self.inner.config.mover_addr else {
            return Vec::new();
        };
        let mut ends: Vec<(u64, GrantAccess)> = Vec::new();
        for j in &plan.jobs {
            for end in [
                (j.from_extent, GrantAccess::Read),
                (j.to_extent, GrantAccess::ReadWrite),
            ] {
                if !ends.contains(&end) {
                    ends.push(end);
                }
            }
        }
        ends.into_iter()
            .filter_map(|(eid, access)| {
                let (target, e) = st.extent_location(plan.region_id, eid)?;
                let spec = grant_spec(addr, e, access, target.epoch);
                Some(GrantPush {
                    target,
                    grant_id: MOVER_GRANT_BIT | eid,
                    spec,
                })
            })
            .collect()
    }

    /// Copies the bytes of a plan (outside the lock), then finishes or aborts it.
    async fn run_repair(&self, plan: RepairPlan) {
        let mut ok = true;
        for j in &plan.jobs {
            let from = CopyEnd {
                node: j.from_node.clone(),
                address: j.from_address,
            };
            let to = CopyEnd {
                node: j.to_node.clone(),
                address: j.to_address,
            };
            if let Err(e) = self.inner.mover.copy(from, to, j.len).await {
                eprintln!(
                    "oxmem coord: re-replication of region {} failed: {e}; it is retried",
                    plan.region_id
                );
                ok = false;
                break;
            }
        }
        let mut st = self.inner.state.lock().await;
        if !self.is_leader() {
            return;
        }
        self.end_repair(&mut st, &plan, ok).await;
    }

    async fn end_repair(&self, st: &mut State, plan: &RepairPlan, ok: bool) {
        let revokes: Vec<Call> = self
            .mover_grants(st, plan)
            .into_iter()
            .map(|p| Call::Delete(p.target, p.grant_id))
            .collect();
        let _ = fan_out(&self.inner.control, revokes).await;
        let mut b = Batch::new();
        let finished = ok && st.repair_still_valid(plan);
        let released = if finished {
            metrics::counter!("oxmem_coord_repairs_finished_total").increment(1);
            st.finish_repair(plan, &mut b)
        } else {
            metrics::counter!("oxmem_coord_repairs_failed_total").increment(1);
            let retry = self.now_ms() + self.inner.config.repair_backoff.as_millis() as u64;
            st.abort_repair(plan, retry, &mut b)
        };
        if self.commit(st, b).await.is_ok() {
            if finished {
                eprintln!(
                    "oxmem coord: re-replication of region {} done",
                    plan.region_id
                );
            }
            let _ = self.run_releases(st, Some(&released)).await;
        }
    }

    /// Notes a session heartbeat on arrival (see `Inner::arrivals`). Nothing is checked yet,
    /// so the note is keyed by session *and* token (a request with someone else's session id
    /// and a wrong token cannot replace the owner's note), ids and tokens longer than any this
    /// coordinator hands out are not noted, and the table holds at most
    /// [`MAX_NOTED_ARRIVALS`] notes between two lease checks. A flood can fill it for one
    /// pass; that only takes away the allowance for a busy coordinator, never what an answered
    /// heartbeat does.
    fn note_arrival(&self, headers: &HeaderMap, session: &str, at: u64) {
        let Some(token) = bearer(headers) else { return };
        if session.len() > MAX_NOTED_LEN || token.len() > MAX_NOTED_LEN {
            return;
        }
        let mut noted = self
            .inner
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (session.to_owned(), token.to_owned());
        if noted.len() < MAX_NOTED_ARRIVALS || noted.contains_key(&key) {
            noted.insert(key, at);
        }
    }

    /// Applies the noted heartbeats whose token is their session's tenant's.
    fn apply_noted_arrivals(&self, st: &mut State) {
        let noted = std::mem::take(
            &mut *self
                .inner
                .arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for ((session, token), at) in noted {
            if let Some(tenant) = st.tenant_by_token(&token).cloned() {
                let _ = st.heartbeat_session(&tenant, &SessionId(session), at);
            }
        }
    }

    /// Runs [`Coordinator::tick`] forever at the configured period.
    pub async fn run_lease_checker(self) {
        let period = self.inner.config.tick_period();
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cfg = &self.inner.config;
        // A gap this long between two passes means this process did not run (stopped, starved
        // of CPU, swapped out): the heartbeats of that time wait unread in its sockets.
        let pause = (period * 2).max(cfg.lease.min(cfg.session_lease) / 2);
        let mut last = self.now_ms();
        loop {
            interval.tick().await;
            if !self.is_leader() {
                return;
            }
            let now = self.now_ms();
            let gap = now.saturating_sub(last);
            if gap > pause.as_millis() as u64 {
                eprintln!(
                    "oxmem coord: no lease check for {gap} ms (this process was paused): every \
                     lease starts again now"
                );
                self.inner.state.lock().await.renew_leases(self.now_ms());
                last = self.now_ms();
                continue;
            }
            self.tick(false).await;
            // Measured from the end of a pass: a pass that waits on slow nodes is not a pause.
            last = self.now_ms();
        }
    }

    /// The HTTP routes (see the crate docs and `openapi.yaml`).
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/v1/nodes",
                post(register_node::<S, C, M>).get(list_nodes::<S, C, M>),
            )
            .route("/v1/nodes/{id}/heartbeat", post(heartbeat_node::<S, C, M>))
            .route(
                "/v1/tenants",
                post(create_tenant::<S, C, M>).get(list_tenants::<S, C, M>),
            )
            .route("/v1/sessions", post(open_session::<S, C, M>))
            .route(
                "/v1/sessions/{id}/heartbeat",
                post(heartbeat_session::<S, C, M>),
            )
            .route(
                "/v1/sessions/{id}",
                axum::routing::delete(close_session::<S, C, M>),
            )
            .route(
                "/v1/regions",
                post(alloc::<S, C, M>).get(list_regions::<S, C, M>),
            )
            .route(
                "/v1/regions/{id}",
                get(describe_region::<S, C, M>).delete(free_region::<S, C, M>),
            )
            .route("/v1/regions/{id}/attach", post(attach_region::<S, C, M>))
            .route("/v1/status", get(status::<S, C, M>))
            .route("/metrics", get(render_metrics::<S, C, M>))
            .method_not_allowed_fallback(no_such_method)
            .route_layer(axum::middleware::from_fn(track))
            .fallback(no_such_route)
            .with_state(self.clone())
    }
}

async fn track(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().to_string();
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics::histogram!(
        "oxmem_coord_request_seconds",
        "method" => method.clone(),
        "route" => route.clone()
    )
    .record(start.elapsed().as_secs_f64());
    metrics::counter!(
        "oxmem_coord_requests_total",
        "method" => method,
        "route" => route,
        "code" => resp.status().as_u16().to_string()
    )
    .increment(1);
    resp
}

type Co<S, C, M> = AxState<Coordinator<S, C, M>>;

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn parse_region(id: &str) -> Result<RegionId, Failure> {
    id.parse::<u64>()
        .map(RegionId)
        .map_err(|_| fail(ErrorCode::UnknownRegion, format!("no region {id:?}")))
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn register_node<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Body(req): Body<RegisterNode>,
) -> Answer<NodeRegistered> {
    let mut st = co.enter_as_node(&headers).await?;
    let mut b = Batch::new();
    let before = st
        .node_by_name(&req.name)
        .map(|n| (n.up, n.rec.boot_id == req.boot_id));
    let node = st.register_node(req, co.now_ms(), &mut b)?;
    co.commit(&mut st, b).await?;
    let id = &node.rec.node_id;
    let epoch = node.rec.epoch;
    match before {
        None => eprintln!("oxmem coord: node {id} ({}) joined", node.rec.name),
        Some((_, false)) => eprintln!(
            "oxmem coord: node {id} registered after a restart (epoch {epoch}): its copies are \
             stale"
        ),
        Some((false, true)) => eprintln!(
            "oxmem coord: node {id} is back, same process (epoch {epoch}): sole copies it holds \
             are current again"
        ),
        Some((true, true)) => {
            eprintln!("oxmem coord: node {id} registered again, same process (epoch {epoch})")
        }
    }
    // Re-push the grants of its current extents (under the new epoch), then release what
    // was moved away while it was gone.
    co.push_pending_grants(&mut st).await;
    co.run_releases(&mut st, None).await?;
    Ok(axum::Json(NodeRegistered {
        node_id: node.rec.node_id,
        epoch: node.rec.epoch,
        lease: Lease {
            lease_ms: co.config().lease.as_millis() as u64,
        },
    }))
}

async fn heartbeat_node<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Param(id): Param,
) -> Answer<Lease> {
    let arrived = co.now_ms(); // the lease counts from here (see `heartbeat_session`)
    let mut st = co.enter_as_node(&headers).await?;
    let mut b = Batch::new();
    let id = NodeId(id);
    st.heartbeat_node(&id, arrived, &mut b)?;
    co.commit(&mut st, b).await?;
    Ok(axum::Json(Lease {
        lease_ms: co.config().lease.as_millis() as u64,
    }))
}

async fn list_nodes<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
) -> Answer<Vec<NodeInfo>> {
    let st = co.enter_as_admin(&headers).await?;
    Ok(axum::Json(st.node_infos(co.now_ms())))
}

async fn create_tenant<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Body(req): Body<CreateTenant>,
) -> Answer<TenantCreated> {
    let mut st = co.enter_as_admin(&headers).await?;
    let mut b = Batch::new();
    let token = new_token();
    let tenant_id = st.create_tenant(req, token.clone(), &mut b)?;
    co.commit(&mut st, b).await?;
    Ok(axum::Json(TenantCreated { tenant_id, token }))
}

async fn list_tenants<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
) -> Answer<Vec<TenantInfo>> {
    let st = co.enter_as_admin(&headers).await?;
    Ok(axum::Json(st.tenant_infos()))
}

async fn open_session<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Body(req): Body<OpenSession>,
) -> Answer<SessionOpened> {
    let (mut st, tenant) = co.enter_as_tenant(&headers).await?;
    let mut b = Batch::new();
    let session_id = st.open_session(&tenant, req, co.now_ms(), &mut b)?;
    co.commit(&mut st, b).await?;
    Ok(axum::Json(SessionOpened {
        session_id,
        lease: Lease {
            lease_ms: co.config().session_lease.as_millis() as u64,
        },
    }))
}

async fn heartbeat_session<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Param(id): Param,
) -> Answer<Lease> {
    // The lease counts from when the heartbeat arrived, not from when the state lock was
    // free: a coordinator busy for a while must not expire the sessions that waited on it.
    let arrived = co.now_ms();
    co.note_arrival(&headers, &id, arrived);
    let (mut st, tenant) = co.enter_as_tenant(&headers).await?;
    st.heartbeat_session(&tenant, &SessionId(id), arrived)?;
    Ok(axum::Json(Lease {
        lease_ms: co.config().session_lease.as_millis() as u64,
    }))
}

async fn close_session<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Param(id): Param,
) -> Result<StatusCode, Failure> {
    let (mut st, tenant) = co.enter_as_tenant_or_admin(&headers).await?;
    let mut b = Batch::new();
    let released = st.close_session(tenant.as_ref(), &SessionId(id), &mut b)?;
    co.commit(&mut st, b).await?;
    co.run_releases(&mut st, Some(&released)).await?;
    co.run_revocations(&mut st, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn alloc<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Body(req): Body<AllocRequest>,
) -> Answer<RegionInfo> {
    let (mut st, tenant) = co.enter_as_tenant(&headers).await?;
    let mut b = Batch::new();
    let id = st.alloc(&tenant, &req, &mut b)?;
    co.commit(&mut st, b).await?;
    let pushes = st.grant_pushes_for_region(id);
    let results = fan_out(
        &co.inner.control,
        pushes.into_iter().map(Call::Put).collect(),
    )
    .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        // Undo: the region goes, its extents are revoked and scrubbed like any free.
        let mut b = Batch::new();
        let released = st.free_region(id, &mut b);
        co.commit(&mut st, b).await?;
        co.run_releases(&mut st, Some(&released)).await?;
        return Err(fail(
            ErrorCode::NodeDown,
            format!("could not grant access: {e}"),
        ));
    }
    metrics::counter!("oxmem_coord_allocs_total").increment(1);
    let r = st.region(id).expect("just allocated");
    Ok(axum::Json(st.region_info(r)))
}

async fn attach_region<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Param(id): Param,
    Body(req): Body<AttachRequest>,
) -> Answer<RegionInfo> {
    let (mut st, tenant) = co.enter_as_tenant(&headers).await?;
    let id = parse_region(&id)?;
    let mut b = Batch::new();
    st.attach(&tenant, id, &req.session_id, &mut b)?;
    co.commit(&mut st, b).await?;
    // Grants are pushed before the answer, like an alloc's. A node that cannot take its grant
    // now is retried by the lease checker; the caller gets an error and may attach again
    // (attaching twice pushes the grants again).
    let pushes = st.grant_pushes_for_region(id);
    let nodes: Vec<NodeId> = pushes.iter().map(|p| p.target.node_id.clone()).collect();
    let results = fan_out(
        &co.inner.control,
        pushes.into_iter().map(Call::Put).collect(),
    )
    .await;
    let mut first_error = None;
    for (node, r) in nodes.iter().zip(results) {
        if let Err(e) = r {
            st.set_grants_pending(node, true);
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(fail(
            ErrorCode::NodeDown,
            format!("could not grant access: {e}"),
        ));
    }
    let r = st.region(id).expect("checked");
    Ok(axum::Json(st.region_info(r)))
}

async fn list_regions<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
) -> Answer<Vec<RegionInfo>> {
    let (st, tenant) = co.enter_as_tenant_or_admin(&headers).await?;
    Ok(axum::Json(st.regions(tenant.as_ref())))
}

async fn describe_region<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Param(id): Param,
) -> Answer<RegionInfo> {
    let (st, tenant) = co.enter_as_tenant_or_admin(&headers).await?;
    let r = st.check_region(tenant.as_ref(), parse_region(&id)?)?;
    Ok(axum::Json(st.region_info(r)))
}

async fn free_region<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
    Param(id): Param,
) -> Result<StatusCode, Failure> {
    let (mut st, tenant) = co.enter_as_tenant_or_admin(&headers).await?;
    let id = parse_region(&id)?;
    st.check_region(tenant.as_ref(), id)?;
    let mut b = Batch::new();
    let released = st.free_region(id, &mut b);
    co.commit(&mut st, b).await?;
    co.run_releases(&mut st, Some(&released)).await?;
    metrics::counter!("oxmem_coord_frees_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}

async fn status<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
    headers: HeaderMap,
) -> Answer<ClusterStatus> {
    let st = co.enter_as_admin(&headers).await?;
    Ok(axum::Json(st.status(co.now_ms(), co.is_leader())))
}

async fn render_metrics<S: MetadataStore, C: NodeControl, M: DataMover>(
    AxState(co): Co<S, C, M>,
) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        co.inner.metrics.render(),
    )
        .into_response()
}

/// Serves the coordinator on `listener` until `shutdown` resolves or leadership is lost,
/// with the lease checker running beside it.
///
/// # Errors
///
/// Loading the state failed ([`ServeError::Store`], [`ServeError::Corrupt`]), the server
/// failed ([`ServeError::Io`]), or the store said this coordinator is no longer the leader
/// ([`ServeError::NotLeader`]: campaign again, then serve again).
pub async fn serve_with_shutdown<S: MetadataStore, C: NodeControl, M: DataMover>(
    config: CoordinatorConfig,
    store: S,
    control: C,
    mover: M,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let co = Coordinator::new(config, store, control, mover).await?;
    let checker = tokio::spawn(co.clone().run_lease_checker());
    let lost = co.leadership_lost();
    let result = axum::serve(listener, co.router())
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                () = lost => {}
            }
        })
        .await;
    checker.abort();
    result.map_err(ServeError::Io)?;
    if co.is_leader() {
        Ok(())
    } else {
        Err(ServeError::NotLeader)
    }
}

/// [`serve_with_shutdown`] that never shuts down on its own: it returns only on error or
/// loss of leadership.
///
/// # Errors
///
/// As [`serve_with_shutdown`].
pub async fn serve<S: MetadataStore, C: NodeControl, M: DataMover>(
    config: CoordinatorConfig,
    store: S,
    control: C,
    mover: M,
    listener: tokio::net::TcpListener,
) -> Result<(), ServeError> {
    serve_with_shutdown(
        config,
        store,
        control,
        mover,
        listener,
        std::future::pending(),
    )
    .await
}

/// The lease checker's period for `lease` and `session_lease`: a quarter of the shorter,
/// between 10 ms and 1 s.
pub(crate) fn tick_for(lease: Duration, session_lease: Duration) -> Duration {
    (lease.min(session_lease) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
