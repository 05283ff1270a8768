//! `oxmem-pool`: the coordinator.
//!
//! It turns separate memory nodes into one pool: a node registry with leases, placement of
//! regions in stripes (optionally replicated) over nodes, tenants with tokens and quotas,
//! client sessions with leases, grants pushed to nodes before an allocation returns and
//! revoked before a free returns, scrubbing, and re-replication when a node dies. Its metadata
//! lives behind [`store::MetadataStore`]: redb embedded ([`RedbStore`]), or etcd for several
//! coordinators.
//!
//! # Running one
//!
//! ```no_run
//! # async fn run() -> Result<(), oxmem_pool::ServeError> {
//! use std::time::Duration;
//! use oxmem_pool::{CoordinatorConfig, HttpNodeControl, NoMover, RedbStore, serve};
//!
//! let config = CoordinatorConfig::new("admin-secret", "node-secret");
//! let store = RedbStore::open("/var/lib/oxmem")?;
//! let control = HttpNodeControl::new("node-secret", Duration::from_secs(2));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7546").await?;
//! // With etcd: campaign first, then serve; serve returns ServeError::NotLeader when the
//! // store reports lost leadership.
//! serve(config, store, control, NoMover, listener).await
//! # }
//! ```
//!
//! [`serve`] loads every record, then serves the HTTP/JSON API of `oxmem-api` (routes in
//! `openapi.yaml` beside this crate's `Cargo.toml`) and runs the lease checker. Tests and
//! tools that want to drive it by hand use [`Coordinator`]: [`Coordinator::router`] and
//! [`Coordinator::tick`].
//!
//! # How it works
//!
//! - [`state`]: the state machine, sans IO. Every operation writes the records it changed into
//!   a batch, committed atomically to the store before the coordinator answers or calls a node.
//! - [`placement`]: each node's free space (best fit, coalescing, 4 KiB-aligned extents). A
//!   region is cut into stripes (default 1 MiB); copy `k` of stripe `i` goes to the `(i + k)
//!   mod m`-th of the `m` up nodes with most free space, and each node holds one extent per
//!   region with all its stripes.
//! - Grants: extent `e` of a region is granted to the session's `client_addr` under grant id
//!   `e` (a decimal `u64`), read-write, with the node's epoch, before alloc answers. Free
//!   revokes every grant, then scrubs every extent, before it answers; the space is reused
//!   only after the scrub. A node that is down at that moment is revoked and scrubbed when it
//!   returns, before anything else is placed in that space.
//! - Leases: a node that misses its lease is down and its copies stale; a stripe with another
//!   healthy copy is copied to a new node by the [`DataMover`] and the stale copy released.
//!   A node that re-registers (same name) gets a new epoch and its current grants again.
//!   A session that misses its lease has its regions freed.
//! - [`control`]: [`NodeControl`] (node admin API; [`HttpNodeControl`]) and [`DataMover`].
//! - Metrics: `GET /metrics`, Prometheus text, through the `metrics` facade.

#![forbid(unsafe_code)]

use std::time::Duration;

pub mod control;
pub mod etcd;
pub mod placement;
pub mod redb_store;
pub mod server;
pub mod state;
pub mod store;

pub use control::{
    ControlError, CopyEnd, DataMover, HttpNodeControl, MoveError, NoMover, NodeControl,
};
pub use redb_store::RedbStore;
pub use server::{Coordinator, MOVER_GRANT_BIT, metrics_handle, serve, serve_with_shutdown};
pub use store::{MemoryStore, MetadataStore, StoreError};

/// How a coordinator behaves.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Bearer token for operator calls.
    pub admin_token: String,
    /// Bearer token nodes use to call the coordinator, and the coordinator to call nodes.
    pub node_token: String,
    /// A node that does not heartbeat for this long is down (default 3 s).
    pub lease: Duration,
    /// A session that does not heartbeat for this long is closed and its regions freed
    /// (default 10 s).
    pub session_lease: Duration,
    /// Stripe size when a request names none (default 1 MiB).
    pub default_stripe: u64,
    /// Largest stripe size a request may name (default 1 GiB).
    pub max_stripe: u64,
    /// Most stripes in a region (default 65,536); see [`state::Limits::max_stripes`].
    pub max_stripes: u64,
    /// Most copies of a stripe (default 8).
    pub max_replicas: u32,
    /// Copies of a stripe when an allocation names no number (default 1).
    pub default_replicas: u32,
    /// Alignment of extents on nodes, a power of two (default 4096).
    pub align: u64,
    /// Period of the lease checker (default: a quarter of the shorter lease, 10 ms to 1 s).
    pub tick: Option<Duration>,
    /// Wait before retrying a failed re-replication of a region (default 1 s).
    pub repair_backoff: Duration,
    /// The data mover's data-path address: if set, it is granted read access to the source
    /// and write access to the target of every re-replication copy, for its duration (grant
    /// ids `MOVER_GRANT_BIT | extent`).
    pub mover_addr: Option<String>,
}

impl CoordinatorConfig {
    /// Defaults with these tokens.
    pub fn new(admin_token: impl Into<String>, node_token: impl Into<String>) -> Self {
        CoordinatorConfig {
            admin_token: admin_token.into(),
            node_token: node_token.into(),
            lease: Duration::from_secs(3),
            session_lease: Duration::from_secs(10),
            default_stripe: 1 << 20,
            max_stripe: 1 << 30,
            max_stripes: 1 << 16,
            max_replicas: 8,
            default_replicas: 1,
            align: 4096,
            tick: None,
            repair_backoff: Duration::from_secs(1),
            mover_addr: None,
        }
    }

    /// The lease checker's period.
    pub fn tick_period(&self) -> Duration {
        self.tick
            .unwrap_or_else(|| server::tick_for(self.lease, self.session_lease))
    }
}

/// Why the coordinator could not start or stopped.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record is corrupt.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The configuration is inconsistent.
    #[error("bad configuration: {0}")]
    Config(String),
    /// Listening or serving failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The store said this coordinator is no longer the leader.
    #[error("not the leader any more")]
    NotLeader,
}
