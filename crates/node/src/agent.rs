//! The node's agent: registers with the coordinator and heartbeats it, on a background thread.
//!
//! - It registers (`POST /v1/nodes` with [`RegisterNode`]) and enters the epoch the answer
//!   gives ([`NodeAdmin::enter_epoch`]), which drops every coordinator grant of other epochs;
//!   the coordinator pushes again what is still valid.
//! - Then it heartbeats (`POST /v1/nodes/{id}/heartbeat`) every third of the lease.
//! - When the coordinator cannot be reached, or fails, the node goes on serving and the agent
//!   retries, backing off from [`AgentConfig::min_backoff`] to [`AgentConfig::max_backoff`]
//!   (a heartbeat, and a registration once the node has had a lease, is retried at least
//!   every third of the lease).
//! - When the coordinator answers a heartbeat with `unknown_node` (it forgot the node: a
//!   restart on a fresh store, say) the agent registers again, under a new epoch.
//! - **Self-fencing.** When no heartbeat has succeeded for a whole lease, counted from when
//!   the last successful one was sent (the coordinator cannot have received it earlier, so it
//!   cannot declare the node down sooner), the node drops every coordinator grant (grants given
//!   on the command line stay) and registers again, under a new epoch, as soon as the
//!   coordinator answers; the coordinator pushes again only what is still valid. A partitioned
//!   node therefore never serves stripes the coordinator has moved elsewhere meanwhile. While
//!   a lease runs, a heartbeat waits at most until its end.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oxmem_api::{ApiError, ErrorCode, NodeRegistered};
/// The API types the agent's callers need (re-exported so they need not depend on `oxmem-api`).
pub use oxmem_api::{Lease, NodeId, RegisterNode};

use crate::admin::NodeAdmin;

/// How the agent reaches the coordinator.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's base URL, e.g. `http://127.0.0.1:7546`.
    pub coordinator: String,
    /// The node token (sent as `Authorization: Bearer TOKEN`).
    pub token: String,
    /// What the node registers as.
    pub registration: RegisterNode,
    /// Longest a request to the coordinator may take.
    pub request_timeout: Duration,
    /// First wait after a failure.
    pub min_backoff: Duration,
    /// Longest wait between two attempts to register.
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// Defaults: 5 s requests, backoff from 200 ms to 5 s.
    pub fn new(
        coordinator: impl Into<String>,
        token: impl Into<String>,
        registration: RegisterNode,
    ) -> Self {
        AgentConfig {
            coordinator: coordinator.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            registration,
            request_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What the agent did, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Registered: the node is in `epoch` now and dropped `dropped` grants of other epochs.
    Registered {
        node_id: NodeId,
        epoch: u64,
        lease: Lease,
        dropped: usize,
    },
    /// A heartbeat went through after failures.
    Reconnected { node_id: NodeId },
    /// No heartbeat succeeded for a whole lease: the node dropped its `dropped` coordinator
    /// grants and will register again.
    Fenced { node_id: NodeId, dropped: usize },
    /// The coordinator does not know `node_id` any more: registering again.
    Forgotten { node_id: NodeId },
    /// A registration or heartbeat failed; the next try is in `retry_in`.
    Failed {
        registering: bool,
        error: String,
        retry_in: Duration,
    },
}

/// Where the agent stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The id of the latest registration.
    pub node_id: Option<NodeId>,
    /// Its epoch.
    pub epoch: Option<u64>,
    /// The lease the coordinator last gave.
    pub lease: Option<Lease>,
    /// Successful registrations.
    pub registrations: u64,
    /// Successful heartbeats.
    pub heartbeats: u64,
    /// Failed registrations and heartbeats.
    pub failures: u64,
    /// Times the node fenced itself (dropped its grants after a lease without heartbeats).
    pub fences: u64,
    /// The latest failure.
    pub last_error: Option<String>,
}

/// The agent's thread; stops when dropped.
#[derive(Debug)]
pub struct Agent {
    status: Arc<Mutex<AgentStatus>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts registering and heartbeating for `admin`'s node; `on_event` hears what happens.
    ///
    /// # Errors
    /// When the thread cannot start.
    pub fn spawn(
        config: AgentConfig,
        admin: NodeAdmin,
        on_event: impl FnMut(&AgentEvent) + Send + 'static,
    ) -> io::Result<Agent> {
        let status = Arc::new(Mutex::new(AgentStatus::default()));
        let (stop, stopped) = mpsc::channel();
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("oxmem-node agent".into())
            .spawn(move || {
                Runner {
                    config,
                    admin,
                    status: shared,
                    on_event: Box::new(on_event),
                    stopped,
                }
                .run();
            })?;
        Ok(Agent {
            status,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it stands now.
    pub fn status(&self) -> AgentStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the thread and waits for it (at most one request's timeout).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

enum CallError {
    /// The coordinator answered with an error.
    Api(ApiError),
    /// No answer, or one that is not the API's.
    Other(String),
}

impl CallError {
    fn message(&self) -> String {
        match self {
            CallError::Api(e) => format!("coordinator answered {e}"),
            CallError::Other(e) => e.clone(),
        }
    }
}

struct Runner {
    config: AgentConfig,
    admin: NodeAdmin,
    status: Arc<Mutex<AgentStatus>>,
    on_event: Box<dyn FnMut(&AgentEvent) + Send>,
    stopped: mpsc::Receiver<()>,
}

/// A third of the lease: how often to heartbeat.
fn interval(lease: Lease) -> Duration {
    Duration::from_millis(lease.lease_ms / 3).max(Duration::from_millis(10))
}

impl Runner {
    fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Waits `d`; false when asked to stop.
    fn sleep(&self, d: Duration) -> bool {
        matches!(self.stopped.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<T, CallError> {
        let answer = request
            .bearer_auth(&self.config.token)
            .send()
            .map_err(|e| CallError::Other(format!("coordinator unreachable: {e}")))?;
        let status = answer.status();
        let body = answer
            .bytes()
            .map_err(|e| CallError::Other(format!("reading the coordinator's answer: {e}")))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => CallError::Api(e),
                Err(_) => CallError::Other(format!(
                    "coordinator answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Other(format!("coordinator answered nonsense: {e}")))
    }

    fn run(mut self) {
        let client = match reqwest::blocking::Client::builder()
            .timeout(self.config.request_timeout)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                self.update(|s| s.last_error = Some(format!("no HTTP client: {e}")));
                return;
            }
        };
        let base = self.config.coordinator.clone();
        let mut backoff = self.config.min_backoff;
        let mut failing = false;
        let mut registered: Option<(NodeId, Duration)> = None;
        // How often to heartbeat under the last lease given. Registration retries never wait
        // longer than that once the node has had a lease: a coordinator that has just restarted
        // gives every node one lease to come back, and a node that waited out a long backoff
        // would be declared down, and its copies re-made, for nothing.
        let mut every_known: Option<Duration> = None;
        // When the lease the coordinator holds for the node ends at the latest: the lease
        // counted from when the last successful registration or heartbeat was sent.
        let mut lease_end: Option<Instant> = None;
        let mut wait = Duration::ZERO;
        loop {
            if let Some(end) = lease_end {
                // Wake up when the lease ends, to fence at once.
                wait = wait.min(end.saturating_duration_since(Instant::now()));
            }
            if !self.sleep(wait) {
                return;
            }
            if let (Some(end), Some((node_id, _))) = (lease_end, &registered)
                && Instant::now() >= end
            {
                let node_id = node_id.clone();
                self.fence(node_id);
                registered = None;
                lease_end = None;
            }
            let Some((node_id, every)) = registered.clone() else {
                let sent = Instant::now();
                let request = client
                    .post(format!("{base}/v1/nodes"))
                    .json(&self.config.registration);
                match self.call::<NodeRegistered>(request) {
                    Ok(r) => {
                        let dropped = self.admin.enter_epoch(r.epoch);
                        self.update(|s| {
                            s.node_id = Some(r.node_id.clone());
                            s.epoch = Some(r.epoch);
                            s.lease = Some(r.lease);
                            s.registrations += 1;
                        });
                        (self.on_event)(&AgentEvent::Registered {
                            node_id: r.node_id.clone(),
                            epoch: r.epoch,
                            lease: r.lease,
                            dropped,
                        });
                        wait = interval(r.lease);
                        every_known = Some(wait);
                        lease_end = Some(sent + Duration::from_millis(r.lease.lease_ms));
                        registered = Some((r.node_id, wait));
                        backoff = self.config.min_backoff;
                        failing = false;
                    }
                    Err(e) => {
                        wait = every_known.map_or(backoff, |every| backoff.min(every));
                        backoff = (backoff * 2).min(self.config.max_backoff);
                        self.fail(true, &e, wait);
                    }
                }
                continue;
            };
            let sent = Instant::now();
            let mut request = client.post(format!("{base}/v1/nodes/{node_id}/heartbeat"));
            if let Some(end) = lease_end {
                // Never wait for an answer past the lease's end: fence then.
                let left = end.saturating_duration_since(sent);
                request = request.timeout(
                    left.max(Duration::from_millis(10))
                        .min(self.config.request_timeout),
                );
            }
            match self.call::<Lease>(request) {
                Ok(_) if lease_end.is_some_and(|end| Instant::now() >= end) => {
                    // The answer came after the lease ended: the coordinator may have declared
                    // the node down meanwhile. Fence and register again.
                    self.fence(node_id);
                    registered = None;
                    lease_end = None;
                    wait = Duration::ZERO;
                }
                Ok(lease) => {
                    lease_end = Some(sent + Duration::from_millis(lease.lease_ms));
                    self.update(|s| {
                        s.lease = Some(lease);
                        s.heartbeats += 1;
                    });
                    if failing {
                        (self.on_event)(&AgentEvent::Reconnected {
                            node_id: node_id.clone(),
                        });
                    }
                    wait = interval(lease);
                    every_known = Some(wait);
                    registered = Some((node_id, wait));
                    backoff = self.config.min_backoff;
                    failing = false;
                }
                Err(CallError::Api(e)) if e.code == ErrorCode::UnknownNode => {
                    (self.on_event)(&AgentEvent::Forgotten { node_id });
                    registered = None;
                    wait = Duration::ZERO;
                }
                Err(e) => {
                    wait = backoff.min(every);
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    failing = true;
                    self.fail(false, &e, wait);
                }
            }
        }
    }

    /// Drops every coordinator grant: the coordinator may have given the node's stripes to
    /// others by now.
    fn fence(&mut self, node_id: NodeId) {
        let mut dropped = 0;
        for g in self.admin.grants() {
            if self.admin.delete_grant(&g.id).is_some() {
                dropped += 1;
            }
        }
        self.update(|s| s.fences += 1);
        (self.on_event)(&AgentEvent::Fenced { node_id, dropped });
    }

    fn fail(&mut self, registering: bool, error: &CallError, retry_in: Duration) {
        let error = error.message();
        self.update(|s| {
            s.failures += 1;
            s.last_error = Some(error.clone());
        });
        (self.on_event)(&AgentEvent::Failed {
            registering,
            error,
            retry_in,
        });
    }
}
