//! `oxmem-api`: the coordinator's HTTP/JSON API as plain serde types.
//!
//! The coordinator, the memory nodes and the clients all speak this API, so none of them
//! depends on another's server code. Every request carries `Authorization: Bearer TOKEN`:
//! the admin token for operator calls, the node token for node calls, a tenant's token for
//! everything a tenant does. Errors come back as [`ApiError`] with a stable [`ErrorCode`].
//!
//! Coordinator routes (all JSON):
//!
//! | method and path | body → answer | who |
//! |---|---|---|
//! | `POST /v1/nodes` | [`RegisterNode`] → [`NodeRegistered`] | node |
//! | `POST /v1/nodes/{id}/heartbeat` | – → [`Lease`] | node |
//! | `GET /v1/nodes` | – → `Vec<`[`NodeInfo`]`>` | admin |
//! | `POST /v1/tenants` | [`CreateTenant`] → [`TenantCreated`] | admin |
//! | `GET /v1/tenants` | – → `Vec<`[`TenantInfo`]`>` | admin |
//! | `POST /v1/sessions` | [`OpenSession`] → [`SessionOpened`] | tenant |
//! | `POST /v1/sessions/{id}/heartbeat` | – → [`Lease`] | tenant |
//! | `DELETE /v1/sessions/{id}` | – → – (frees the session's regions) | tenant |
//! | `POST /v1/regions` | [`AllocRequest`] → [`RegionInfo`] | tenant |
//! | `GET /v1/regions` | – → `Vec<`[`RegionInfo`]`>` (a tenant's own; all for admin) | tenant, admin |
//! | `GET /v1/regions/{id}` | – → [`RegionInfo`] | owner, admin |
//! | `DELETE /v1/regions/{id}` | – → – | owner, admin |
//! | `GET /v1/status` | – → [`ClusterStatus`] | admin |
//! | `GET /metrics` | Prometheus text | anyone |
//!
//! Node admin routes, served by every memory node and called by the coordinator with the
//! node token, so that grants are in force before an allocation returns and revoked before a
//! free returns:
//!
//! | method and path | body → answer |
//! |---|---|
//! | `PUT /v1/grants/{id}` | [`GrantSpec`] → – |
//! | `DELETE /v1/grants/{id}` | – → – |
//! | `GET /v1/grants` | – → `Vec<`[`GrantSpec`]`>` |
//! | `POST /v1/scrub` | [`ScrubRequest`] → – (zeroes the range) |

#![forbid(unsafe_code)]

use core::fmt;

use serde::{Deserialize, Serialize};

/// A memory node's id, given by the coordinator at registration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

/// A tenant's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub String);

/// A client session's id (what a client heartbeats).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub String);

/// A region's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionId(pub u64);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(NodeId, TenantId, SessionId, RegionId);

/// A node announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterNode {
    /// A stable name (the same after a restart, so the coordinator recognises the node).
    pub name: String,
    /// Where clients reach its memory: `udp://IP:PORT` and/or `eth/MAC` (as many as it serves).
    pub data_addrs: Vec<String>,
    /// Base URL of its admin API, e.g. `http://127.0.0.1:7547`.
    pub admin_url: String,
    /// Bytes it exports.
    pub capacity: u64,
    /// A new random value every time the node process starts. A node that registers again
    /// with another boot id lost its memory (it restarted), so every copy it held is stale; with
    /// the same boot id it only lost contact (and fenced itself) and kept its data.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// The coordinator's answer to [`RegisterNode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistered {
    pub node_id: NodeId,
    /// Incremented at every registration of this node: grants carry it, and a node that comes
    /// back under a newer epoch drops grants of older ones (fencing).
    pub epoch: u64,
    pub lease: Lease,
}

/// How long the caller may go without heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_ms: u64,
}

/// Whether a node is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    Up,
    /// Missed its lease.
    Down,
}

/// What the coordinator knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: NodeId,
    pub name: String,
    pub data_addrs: Vec<String>,
    pub admin_url: String,
    pub capacity: u64,
    /// Bytes allocated to regions.
    pub used: u64,
    pub health: NodeHealth,
    pub epoch: u64,
    /// Milliseconds since its last heartbeat.
    pub last_heartbeat_ms: u64,
}

/// The operator creates a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTenant {
    pub name: String,
    /// Most bytes its regions may hold in all (replicas count).
    pub quota_bytes: u64,
}

/// A new tenant and its token (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCreated {
    pub tenant_id: TenantId,
    pub token: String,
}

/// What the operator sees of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub tenant_id: TenantId,
    pub name: String,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    pub regions: u64,
}

/// A client opens a session: its regions live as long as it heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    /// The data-path address nodes see the client at (`udp://IP:PORT` or `eth/MAC`): what
    /// the grants of its regions name.
    pub client_addr: String,
}

/// The coordinator's answer to [`OpenSession`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpened {
    pub session_id: SessionId,
    pub lease: Lease,
}

/// A tenant asks for memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocRequest {
    pub session_id: SessionId,
    pub bytes: u64,
    /// Copies of every stripe, each on a different node (default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Bytes per stripe (default: the coordinator's, e.g. 1 MiB).
    #[serde(default)]
    pub stripe_size: Option<u64>,
}

/// Another session of the region's tenant asks to use the region too (a second process
/// sharing it): `POST /v1/regions/{id}/attach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    pub session_id: SessionId,
}

/// Where one copy of a stripe lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node_id: NodeId,
    /// The data-path address of the stripe's first byte on that node: an address of the
    /// extent's own grant window (never given to other memory), not of the node's memory.
    pub address: u64,
    /// The node is up and this copy is current.
    pub healthy: bool,
}

/// One stripe of a region: bytes `[index * stripe_size, …)` of the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    pub index: u64,
    pub len: u64,
    pub copies: Vec<Placement>,
}

/// How a region fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionHealth {
    /// Every copy of every stripe is on an up node.
    Healthy,
    /// Some copies are lost, but every stripe has at least one.
    Degraded,
    /// Some stripe has no copy left.
    Lost,
}

/// Where a node's memory is reached, for the clients of its regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub node_id: NodeId,
    pub data_addrs: Vec<String>,
}

/// A region and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    pub region_id: RegionId,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub bytes: u64,
    pub replicas: u32,
    pub stripe_size: u64,
    pub stripes: Vec<Stripe>,
    /// The nodes its stripes are on.
    pub nodes: Vec<NodeAddr>,
    pub health: RegionHealth,
}

/// The operator's view of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeInfo>,
    pub tenants: Vec<TenantInfo>,
    pub regions: Vec<RegionInfo>,
    /// Stripes with fewer healthy copies than asked for.
    pub degraded_stripes: u64,
    /// Whether this coordinator is the leader (always, with the embedded store).
    pub leader: bool,
}

/// Read, or read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantAccess {
    Read,
    ReadWrite,
}

/// A grant the coordinator puts on a node: `peer` may use `[base, base + len)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSpec {
    /// `udp://IP:PORT` or `eth/MAC`.
    pub peer: String,
    /// The first byte of the node's memory it covers.
    pub base: u64,
    pub len: u64,
    pub access: GrantAccess,
    /// The address the peer uses for the byte at `base` (absent: `base` itself). The
    /// coordinator gives every grant addresses of its own, never used before, so that a peer
    /// acting on an old placement is denied rather than reaching memory reused since. It must
    /// be aligned like `base` modulo 32 KiB (the largest TileLink transfer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    /// The node registration epoch the grant was made for; a node refuses grants of older
    /// epochs.
    pub epoch: u64,
}

/// Zero a range of a node's memory (after a free, before reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRequest {
    pub base: u64,
    pub len: u64,
}

/// Stable error codes: clients branch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No token, or a token nobody issued.
    Unauthorized,
    /// A valid token that may not do this (a tenant calling an admin route).
    Forbidden,
    /// The region belongs to another tenant.
    NotYours,
    /// Not enough free memory on enough distinct nodes.
    OutOfCapacity,
    /// The tenant's quota would be exceeded.
    QuotaExceeded,
    UnknownRegion,
    UnknownNode,
    UnknownSession,
    UnknownTenant,
    /// A node needed for the operation is down.
    NodeDown,
    /// The request is malformed or absurd (zero or overflowing sizes, bad addresses…).
    BadRequest,
    /// This coordinator is not the leader; retry against the leader.
    NotLeader,
    /// A grant made for an older registration epoch of the node than the one it is in now
    /// (fencing: the coordinator that sent it has lost track of the node).
    StaleEpoch,
    /// The metadata store failed.
    Storage,
    Internal,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::NotYours => 403,
            ErrorCode::UnknownRegion
            | ErrorCode::UnknownNode
            | ErrorCode::UnknownSession
            | ErrorCode::UnknownTenant => 404,
            ErrorCode::OutOfCapacity | ErrorCode::QuotaExceeded => 507,
            ErrorCode::NodeDown => 503,
            ErrorCode::BadRequest => 400,
            ErrorCode::NotLeader => 421,
            ErrorCode::StaleEpoch => 409,
            ErrorCode::Storage | ErrorCode::Internal => 500,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// An error with a code and a message for humans.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable_snake_case_on_the_wire() {
        let e = ApiError::new(ErrorCode::OutOfCapacity, "3 nodes, none with 2 GiB free");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"code":"out_of_capacity","message":"3 nodes, none with 2 GiB free"}"#
        );
        assert_eq!(serde_json::from_str::<ApiError>(&json).unwrap(), e);
        assert_eq!(ErrorCode::NotYours.http_status(), 403);
        assert_eq!(
            serde_json::to_string(&ErrorCode::StaleEpoch).unwrap(),
            r#""stale_epoch""#
        );
        assert_eq!(ErrorCode::StaleEpoch.http_status(), 409);
    }

    #[test]
    fn alloc_request_defaults_replicas_and_stripe_size() {
        let r: AllocRequest = serde_json::from_str(r#"{"session_id":"s1","bytes":4096}"#).unwrap();
        assert_eq!(r.replicas, None);
        assert_eq!(r.stripe_size, None);
        assert_eq!(r.session_id, SessionId("s1".into()));
    }
}
