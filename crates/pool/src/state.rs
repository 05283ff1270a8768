//! The coordinator's state machine, sans IO.
//!
//! [`State`] holds what the coordinator knows (nodes, tenants, sessions, regions, extents
//! waiting to be released) and every operation on it. An operation checks its input, changes
//! the state, and writes the records it changed into a [`Batch`]; the server commits the batch
//! to the [`MetadataStore`](crate::store::MetadataStore) as one atomic change before it answers
//! or calls any node. Time comes in as milliseconds on the caller's monotonic clock, and tokens
//! come from the caller, so every test here is deterministic.
//!
//! Layout of a region: `n = ceil(bytes / stripe_size)` stripes, each with `replicas` copies.
//! At allocation, copy `k` of stripe `i` goes to node `N[(i + k) % m]`, where `N` are the `m`
//! up nodes with the most free space (so the copies of one stripe are on distinct nodes and
//! consecutive stripes on different nodes). Each node takes ONE extent per region holding all
//! its stripe copies in stripe order; the last, possibly short, stripe is always last on its
//! node. Re-replication adds extents (one per target node) and later drops the stale ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use oxmem_api::{
    AllocRequest, ApiError, ClusterStatus, CreateTenant, ErrorCode, GrantAccess, GrantSpec,
    NodeAddr, NodeHealth, NodeId, NodeInfo, OpenSession, Placement, RegionHealth, RegionId,
    RegionInfo, RegisterNode, ScrubRequest, SessionId, Stripe, TenantId, TenantInfo,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::placement::{FreeList, align_up};
use crate::store::Change;

/// Placement and validation limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Extent alignment on nodes (a power of two), e.g. 4096.
    pub align: u64,
    /// Stripe size when a request names none, e.g. 1 MiB.
    pub default_stripe: u64,
    /// Largest stripe size a request may name.
    pub max_stripe: u64,
    /// Most stripes in one region; with the default stripe size the coordinator doubles the
    /// stripe size until the region fits, an explicit stripe size that needs more is refused.
    pub max_stripes: u64,
    /// Most copies of a stripe.
    pub max_replicas: u32,
    /// Copies of a stripe when a request names no number.
    pub default_replicas: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            align: 4096,
            default_stripe: 1 << 20,
            max_stripe: 1 << 30,
            max_stripes: 1 << 16,
            max_replicas: 8,
            default_replicas: 1,
        }
    }
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub name: String,
    pub data_addrs: Vec<String>,
    pub admin_url: String,
    pub capacity: u64,
    pub epoch: u64,
    /// The node process's boot id at its last registration (see `RegisterNode::boot_id`).
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant_id: TenantId,
    pub name: String,
    pub quota_bytes: u64,
    pub token: String,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: SessionId,
    pub tenant_id: TenantId,
    pub client_addr: String,
}

/// One contiguous range of a node's memory held by a region. Its id is also the id of the
/// grant that gives the region's client access to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRecord {
    pub id: u64,
    pub node_id: NodeId,
    pub base: u64,
    /// Rounded up to the alignment.
    pub len: u64,
    /// Being filled by re-replication: its copies are not current yet.
    #[serde(default)]
    pub syncing: bool,
    /// The address clients (and the mover) use for the byte at `base`: addresses of its own,
    /// never given to another extent (see [`State::window_for`]). Absent in records written
    /// before windows: `base` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
}

impl ExtentRecord {
    /// The data-path address of its first byte.
    pub fn addr(&self) -> u64 {
        self.window.unwrap_or(self.base)
    }
}

/// One copy of a stripe: `offset` bytes into extent `extent`.
///
/// A copy that is not healthy is either **stale** (it missed writes that went to other copies,
/// or its node restarted and lost its memory, or it is still being filled: only
/// re-replication replaces it) or **unavailable but current** (it was among the last healthy
/// copies of its stripe when its node went down: when that node comes back with its memory,
/// and no other copy of the stripe has become healthy meanwhile, it is current again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub extent: u64,
    pub offset: u64,
    pub healthy: bool,
    /// Never current again (see above); meaningful only when not healthy. Records written
    /// before this field read as stale: whether such a copy went down current is not known.
    #[serde(default = "stale_unless_recorded")]
    pub stale: bool,
}

fn stale_unless_recorded() -> bool {
    true
}

/// A region as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    pub region_id: RegionId,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub bytes: u64,
    pub replicas: u32,
    pub stripe_size: u64,
    pub extents: Vec<ExtentRecord>,
    /// `stripes[i]` are the copies of stripe `i`.
    pub stripes: Vec<Vec<CopyRecord>>,
    /// Other sessions of the same tenant that use the region too (another process sharing
    /// it): each gets its own grant for every extent.
    #[serde(default)]
    pub attached: Vec<Attachment>,
}

/// A session attached to a region it did not allocate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub session_id: SessionId,
    /// Unique per attachment: its grants are named [`attachment_grant`]`(extent, seq)`.
    pub seq: u64,
}

/// Grant ids with this bit set are the data mover's temporary grants during a
/// re-replication (`MOVER_GRANT_BIT | extent id`); client grants use the extent id alone.
pub const MOVER_GRANT_BIT: u64 = 1 << 62;

/// Where extents' data-path windows start (256 TiB: above any node's memory).
pub const WINDOWS_START: u64 = 1 << 48;

/// Windows are aligned like their extent's base modulo this (64 KiB, more than the largest
/// TileLink transfer, which nodes require).
pub const WINDOW_ALIGN: u64 = 1 << 16;

/// The bits of a client grant id that name its extent.
pub const EXTENT_BITS: u64 = (1 << 40) - 1;

/// Attachment numbers stay below this, so their grant ids never reach the mover's bit 62.
pub const MAX_ATTACHMENTS: u64 = 1 << 21;

/// Grant ids of the region owner's grants are extent ids; an attachment's grant for an extent
/// carries the attachment's number above bit 40 (extent ids stay far below 2^40).
pub fn attachment_grant(extent: u64, seq: u64) -> u64 {
    debug_assert!(seq < MAX_ATTACHMENTS && extent <= EXTENT_BITS);
    (seq << 40) | extent
}

impl RegionRecord {
    fn stripe_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.stripe_size;
        self.stripe_size.min(self.bytes - start)
    }

    fn extent(&self, id: u64) -> Option<&ExtentRecord> {
        self.extents.iter().find(|e| e.id == id)
    }

    fn healthy_copies(&self, i: usize) -> usize {
        self.stripes[i].iter().filter(|c| c.healthy).count()
    }

    /// Stripes with fewer healthy copies than asked for.
    pub fn degraded_stripes(&self) -> u64 {
        (0..self.stripes.len())
            .filter(|&i| self.healthy_copies(i) < self.replicas as usize)
            .count() as u64
    }

    /// Healthy, Degraded or Lost.
    pub fn health(&self) -> RegionHealth {
        let mut health = RegionHealth::Healthy;
        for i in 0..self.stripes.len() {
            let h = self.healthy_copies(i);
            if h == 0 {
                return RegionHealth::Lost;
            }
            if h < self.replicas as usize {
                health = RegionHealth::Degraded;
            }
        }
        health
    }

    /// Bytes charged to the tenant: replicas count.
    pub fn charged(&self) -> u64 {
        self.bytes * u64::from(self.replicas)
    }
}

/// An extent freed (or moved away) whose grant must be revoked and whose bytes must be zeroed
/// before the space is reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub extent_id: u64,
    pub node_id: NodeId,
    pub base: u64,
    pub len: u64,
    /// The grants of attached sessions for this extent, revoked along with the owner's.
    #[serde(default)]
    pub extra_grants: Vec<u64>,
}

/// A grant to revoke without freeing anything: an attached session went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRecord {
    pub grant_id: u64,
    pub node_id: NodeId,
}

/// Id counters, stored under `counters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_node: u64,
    pub next_tenant: u64,
    pub next_session: u64,
    pub next_region: u64,
    pub next_extent: u64,
    #[serde(default)]
    pub next_attachment: u64,
    /// Where the next extent's window may start (see [`State::window_for`]).
    #[serde(default)]
    pub next_window: u64,
}

/// A batch of record changes, committed atomically; later writes of a key replace earlier ones.
#[derive(Debug, Default)]
pub struct Batch {
    map: BTreeMap<String, Option<Vec<u8>>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn put<T: Serialize>(&mut self, key: String, value: &T) {
        let bytes = serde_json::to_vec(value).expect("records serialize");
        self.map.insert(key, Some(bytes));
    }

    fn delete(&mut self, key: String) {
        self.map.insert(key, None);
    }

    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The store changes.
    pub fn into_changes(self) -> Vec<Change> {
        self.map
            .into_iter()
            .map(|(key, v)| match v {
                Some(value) => Change::Put { key, value },
                None => Change::Delete { key },
            })
            .collect()
    }
}

/// Record keys.
pub mod keys {
    use super::*;
    pub const COUNTERS: &str = "counters";
    pub fn node(id: &NodeId) -> String {
        format!("node/{id}")
    }
    pub fn tenant(id: &TenantId) -> String {
        format!("tenant/{id}")
    }
    pub fn session(id: &SessionId) -> String {
        format!("session/{id}")
    }
    pub fn region(id: RegionId) -> String {
        format!("region/{:020}", id.0)
    }
    pub fn release(extent: u64) -> String {
        format!("release/{extent:020}")
    }
    pub fn revoke(grant: u64) -> String {
        format!("revoke/{grant:020}")
    }
}

/// A node and what the coordinator knows of it at run time.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub rec: NodeRecord,
    pub free: FreeList,
    pub up: bool,
    pub last_heartbeat: u64,
    /// Its grants must be (re)pushed: after a registration or a return from down.
    pub grants_pending: bool,
    /// It has heartbeated or registered since this coordinator loaded it: until then, the
    /// copies it holds that went down current are not restored (see
    /// [`State::heartbeat_node`]).
    pub confirmed: bool,
}

/// A session and its last heartbeat.
#[derive(Debug, Clone)]
pub struct SessionState {
    pub rec: SessionRecord,
    pub last_heartbeat: u64,
}

/// Which node, for a call to its admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    pub node_id: NodeId,
    pub admin_url: String,
    pub epoch: u64,
}

/// A grant to put on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantPush {
    pub target: NodeTarget,
    pub grant_id: u64,
    pub spec: GrantSpec,
}

/// A release ready to run on an up node: revoke `grant_id`, then scrub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseJob {
    pub target: NodeTarget,
    pub grant_id: u64,
    /// Attached sessions' grants for the same extent, revoked too.
    pub extra_grants: Vec<u64>,
    pub scrub: ScrubRequest,
}

/// A grant to revoke on an up node (an attached session went away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeJob {
    pub target: NodeTarget,
    pub grant_id: u64,
}

/// One byte copy of a re-replication: `len` bytes from a healthy copy to a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyJob {
    pub from_node: NodeAddr,
    pub from_address: u64,
    pub from_extent: u64,
    pub to_node: NodeAddr,
    pub to_address: u64,
    pub to_extent: u64,
    pub len: u64,
}

/// A re-replication in flight: new extents (syncing) and the copies that fill them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan {
    pub region_id: RegionId,
    /// Extent id → node and epoch it was made under.
    pub new_extents: Vec<(u64, NodeId, u64)>,
    pub jobs: Vec<CopyJob>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| format!("record {key}: {e}"))
}

const MAX_NAME: usize = 256;

/// A name or address of 1 to [`MAX_NAME`] characters (characters, not bytes, like the
/// `maxLength` of `openapi.yaml`).
fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().nth(MAX_NAME).is_none()
}

/// 1 to [`MAX_NAME`] printable ASCII characters, no space or control character (admin URLs;
/// `openapi.yaml` says `[!-~]`).
fn ascii_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A client's data-path address as every node parses a grant's peer: `udp://IP:PORT` (IPv6
/// in brackets) or `eth/MAC` with six two-digit hex groups. What a node would refuse is
/// refused when the session opens, not as `node_down` at the session's first allocation.
fn client_addr_ok(a: &str) -> bool {
    if a.len() > MAX_NAME {
        return false;
    }
    if let Some(sock) = a.strip_prefix("udp://") {
        return sock.parse::<std::net::SocketAddr>().is_ok();
    }
    if let Some(mac) = a.strip_prefix("eth/") {
        let groups: Vec<&str> = mac.split(':').collect();
        return groups.len() == 6
            && groups
                .iter()
                .all(|g| g.len() == 2 && g.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    false
}

/// Everything the coordinator knows.
#[derive(Debug)]
pub struct State {
    limits: Limits,
    nodes: BTreeMap<NodeId, NodeState>,
    tenants: BTreeMap<TenantId, TenantRecord>,
    tokens: HashMap<String, TenantId>,
    tenant_used: BTreeMap<TenantId, u64>,
    sessions: BTreeMap<SessionId, SessionState>,
    regions: BTreeMap<RegionId, RegionRecord>,
    releases: BTreeMap<u64, ReleaseRecord>,
    revocations: BTreeMap<u64, RevokeRecord>,
    counters: Counters,
    /// Regions being re-replicated now.
    repairing: BTreeSet<RegionId>,
    /// Region → time before which no new repair is tried (after a failure).
    repair_backoff: BTreeMap<RegionId, u64>,
}

impl State {
    /// An empty state.
    pub fn new(limits: Limits) -> Self {
        assert!(limits.align.is_power_of_two());
        State {
            limits,
            nodes: BTreeMap::new(),
            tenants: BTreeMap::new(),
            tokens: HashMap::new(),
            tenant_used: BTreeMap::new(),
            sessions: BTreeMap::new(),
            regions: BTreeMap::new(),
            releases: BTreeMap::new(),
            revocations: BTreeMap::new(),
            counters: Counters::default(),
            repairing: BTreeSet::new(),
            repair_backoff: BTreeMap::new(),
        }
    }

    /// Rebuilds the state from stored records at time `now`: every node and session gets a
    /// fresh lease from `now`. Extents that were being filled by a re-replication when the
    /// coordinator stopped are released (their copy never finished); the returned batch
    /// records that and must be committed.
    ///
    /// # Errors
    ///
    /// A record that does not decode, or extents that overlap.
    pub fn load(
        limits: Limits,
        records: Vec<(String, Vec<u8>)>,
        now: u64,
    ) -> Result<(State, Batch), String> {
        let mut st = State::new(limits);
        let mut regions = Vec::new();
        let mut releases = Vec::new();
        for (key, v) in &records {
            let kind = key.split('/').next().unwrap_or("");
            match kind {
                "counters" => st.counters = decode(key, v)?,
                "node" => {
                    let rec: NodeRecord = decode(key, v)?;
                    let free = FreeList::new(rec.capacity, st.limits.align);
                    st.nodes.insert(
                        rec.node_id.clone(),
                        NodeState {
                            rec,
                            free,
                            up: true,
                            last_heartbeat: now,
                            grants_pending: false,
                            confirmed: false,
                        },
                    );
                }
                "tenant" => {
                    let rec: TenantRecord = decode(key, v)?;
                    st.tokens.insert(rec.token.clone(), rec.tenant_id.clone());
                    st.tenants.insert(rec.tenant_id.clone(), rec);
                }
                "session" => {
                    let rec: SessionRecord = decode(key, v)?;
                    st.sessions.insert(
                        rec.session_id.clone(),
                        SessionState {
                            rec,
                            last_heartbeat: now,
                        },
                    );
                }
                "region" => regions.push(decode::<RegionRecord>(key, v)?),
                "release" => releases.push(decode::<ReleaseRecord>(key, v)?),
                "revoke" => {
                    let rec: RevokeRecord = decode(key, v)?;
                    st.revocations.insert(rec.grant_id, rec);
                }
                _ => {} // records of other components (e.g. leader election) are not ours
            }
        }
        let mut batch = Batch::new();
        for rel in releases {
            let node = st
                .nodes
                .get_mut(&rel.node_id)
                .ok_or_else(|| format!("release {} on unknown node", rel.extent_id))?;
            if !node.free.reserve(rel.base, rel.len) {
                return Err(format!("release {} overlaps", rel.extent_id));
            }
            st.releases.insert(rel.extent_id, rel);
        }
        for mut r in regions {
            for e in &r.extents {
                let node = st
                    .nodes
                    .get_mut(&e.node_id)
                    .ok_or_else(|| format!("extent {} on unknown node", e.id))?;
                if !node.free.reserve(e.base, e.len) {
                    return Err(format!("extent {} overlaps", e.id));
                }
            }
            let syncing: Vec<u64> = r
                .extents
                .iter()
                .filter(|e| e.syncing)
                .map(|e| e.id)
                .collect();
            if !syncing.is_empty() {
                for copies in &mut r.stripes {
                    copies.retain(|c| !syncing.contains(&c.extent));
                }
                let (gone, kept) = r.extents.drain(..).partition(|e| e.syncing);
                r.extents = kept;
                let seqs = attachment_seqs(&r);
                st.release_extents(gone, &seqs, &mut batch);
                batch.put(keys::region(r.region_id), &r);
            }
            *st.tenant_used.entry(r.tenant_id.clone()).or_default() += r.charged();
            st.regions.insert(r.region_id, r);
        }
        Ok((st, batch))
    }

    /// Takes the run-time knowledge (node health and heartbeats, session heartbeats, repair
    /// backoffs) of `old`, after a reload.
    pub fn adopt_runtime(&mut self, old: &State) {
        for (id, n) in &mut self.nodes {
            if let Some(o) = old.nodes.get(id) {
                n.up = o.up;
                n.last_heartbeat = o.last_heartbeat;
                n.grants_pending = o.grants_pending;
                n.confirmed = o.confirmed;
            }
        }
        for (id, s) in &mut self.sessions {
            if let Some(o) = old.sessions.get(id) {
                s.last_heartbeat = o.last_heartbeat;
            }
        }
        self.repairing = old.repairing.clone();
        self.repair_backoff = old.repair_backoff.clone();
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Data-path addresses for a new extent of `len` bytes at `base` on its node: a range
    /// never given out before (a counter that only grows, from [`WINDOWS_START`], far above
    /// any node's memory), aligned like `base` modulo [`WINDOW_ALIGN`] so that naturally
    /// aligned transfers stay aligned. A client that acts on an old placement, after the
    /// extent was moved or freed and its memory given to another region of the same client,
    /// names addresses no node grants any more: it is denied, and asks where the stripes are
    /// now, instead of writing into the other region. (After 2^64 bytes of extents the
    /// counter starts over.)
    fn window_for(&mut self, base: u64, len: u64, batch: &mut Batch) -> u64 {
        let from = self.counters.next_window.max(WINDOWS_START);
        let window = from
            .checked_next_multiple_of(WINDOW_ALIGN)
            .and_then(|w| w.checked_add(base % WINDOW_ALIGN))
            .filter(|w| {
                w.checked_add(len)
                    .is_some_and(|end| end < u64::MAX - WINDOW_ALIGN)
            })
            .unwrap_or(WINDOWS_START + base % WINDOW_ALIGN);
        // One aligned block of no man's land between windows.
        self.counters.next_window = window + len + WINDOW_ALIGN;
        batch.put(keys::COUNTERS.to_string(), &self.counters);
        window
    }

    fn bump(&mut self, which: fn(&mut Counters) -> &mut u64, batch: &mut Batch) -> u64 {
        let c = which(&mut self.counters);
        *c += 1;
        let v = *c;
        batch.put(keys::COUNTERS.to_string(), &self.counters);
        v
    }

    // ----- nodes -----

    /// A node registers (or re-registers after a restart: same name, new epoch). The node's
    /// grants are to be re-pushed (see [`State::grant_pushes_for_node`]).
    ///
    /// # Errors
    ///
    /// `BadRequest` for an empty name, no data address, a bad admin URL, a capacity below one
    /// aligned block, or one too small for the extents the node already holds.
    pub fn register_node(
        &mut self,
        req: RegisterNode,
        now: u64,
        batch: &mut Batch,
    ) -> Result<NodeState, ApiError> {
        if !name_ok(&req.name) {
            return Err(err(
                ErrorCode::BadRequest,
                "node name must be 1 to 256 characters",
            ));
        }
        if req.data_addrs.is_empty() || req.data_addrs.iter().any(|a| !name_ok(a)) {
            return Err(err(
                ErrorCode::BadRequest,
                "a node needs 1 or more data addresses of 1 to 256 characters",
            ));
        }
        let url = &req.admin_url;
        if !["http://", "https://"]
            .iter()
            .any(|p| url.starts_with(p) && url.len() > p.len())
            || !ascii_word(url)
        {
            return Err(err(
                ErrorCode::BadRequest,
                "admin_url must be an http(s) URL of at most 256 printable ASCII characters",
            ));
        }
        if req.capacity < self.limits.align {
            return Err(err(
                ErrorCode::BadRequest,
                format!("capacity must be at least {} bytes", self.limits.align),
            ));
        }
        let existing = self
            .nodes
            .values()
            .find(|n| n.rec.name == req.name)
            .map(|n| n.rec.node_id.clone());
        let node_id = match existing {
            Some(id) => {
                let needed = self.highest_end_on(&id);
                if req.capacity < needed {
                    return Err(err(
                        ErrorCode::BadRequest,
                        format!(
                            "capacity {} is below the {needed} bytes its extents reach",
                            req.capacity
                        ),
                    ));
                }
                let node = self.nodes.get_mut(&id).expect("found");
                if node.rec.capacity != req.capacity {
                    // Rebuild its free list for the new capacity.
                    let mut free = FreeList::new(req.capacity, self.limits.align);
                    let used: Vec<(u64, u64)> = self
                        .regions
                        .values()
                        .flat_map(|r| r.extents.iter())
                        .filter(|e| e.node_id == id)
                        .map(|e| (e.base, e.len))
                        .chain(
                            self.releases
                                .values()
                                .filter(|r| r.node_id == id)
                                .map(|r| (r.base, r.len)),
                        )
                        .collect();
                    for (b, l) in used {
                        let ok = free.reserve(b, l);
                        debug_assert!(ok);
                    }
                    let node = self.nodes.get_mut(&id).expect("found");
                    node.free = free;
                }
                // Another boot: the process restarted and its memory is gone, even if it came
                // back before its lease ran out. Every copy it held is stale. The same
                // process coming back (it fenced itself, say, while the coordinator was away)
                // still has its memory: sole copies it holds are current.
                // (Whether or not this coordinator saw it go down: one that restarted meanwhile
                // loaded it as up, with the copies an earlier run marked down.)
                if self.nodes[&id].rec.boot_id != req.boot_id {
                    self.mark_node_down(&id, true, batch);
                } else if req.boot_id.is_some() {
                    self.restore_sole_copies(&id, batch);
                }
                let node = self.nodes.get_mut(&id).expect("found");
                node.rec.boot_id = req.boot_id;
                node.rec.epoch += 1;
                node.rec.data_addrs = req.data_addrs;
                node.rec.admin_url = req.admin_url;
                node.rec.capacity = req.capacity;
                node.up = true;
                node.confirmed = true;
                node.last_heartbeat = now;
                node.grants_pending = true;
                id
            }
            None => {
                let n = self.bump(|c| &mut c.next_node, batch);
                let id = NodeId(format!("n{n}"));
                let rec = NodeRecord {
                    node_id: id.clone(),
                    name: req.name,
                    data_addrs: req.data_addrs,
                    admin_url: req.admin_url,
                    capacity: req.capacity,
                    epoch: 1,
                    boot_id: req.boot_id,
                };
                let free = FreeList::new(rec.capacity, self.limits.align);
                self.nodes.insert(
                    id.clone(),
                    NodeState {
                        rec,
                        free,
                        up: true,
                        last_heartbeat: now,
                        grants_pending: false,
                        confirmed: true,
                    },
                );
                id
            }
        };
        let node = &self.nodes[&node_id];
        batch.put(keys::node(&node_id), &node.rec);
        Ok(node.clone())
    }

    fn highest_end_on(&self, id: &NodeId) -> u64 {
        let ext = self
            .regions
            .values()
            .flat_map(|r| r.extents.iter())
            .filter(|e| &e.node_id == id)
            .map(|e| e.base + e.len);
        let rel = self
            .releases
            .values()
            .filter(|r| &r.node_id == id)
            .map(|r| r.base + r.len);
        ext.chain(rel).max().unwrap_or(0)
    }

    /// A node heartbeats, renewing its lease.
    ///
    /// A node that was declared down must register again instead (the error says so): it
    /// may not have noticed (a coordinator that judged its lease late, a node whose fencing
    /// timer ran late), and so may still hold grants to copies that have gone stale since;
    /// registering moves it to a new epoch, which drops them all, and only current grants
    /// are pushed again. Likewise at its first heartbeat after this coordinator loaded it,
    /// if it holds copies an earlier run marked down. Registering from the same process also
    /// brings back the copies that went down current (see [`State::register_node`]).
    ///
    /// # Errors
    ///
    /// `UnknownNode`: the node must register.
    pub fn heartbeat_node(
        &mut self,
        id: &NodeId,
        now: u64,
        _batch: &mut Batch,
    ) -> Result<(), ApiError> {
        let node = self
            .nodes
            .get(id)
            .ok_or_else(|| err(ErrorCode::UnknownNode, format!("no node {id}: register")))?;
        // (The scan only until the node is confirmed: once after a load.)
        if !node.up || (!node.confirmed && self.holds_down_copies(id)) {
            return Err(err(
                ErrorCode::UnknownNode,
                format!("node {id} was declared down: register again"),
            ));
        }
        let node = self.nodes.get_mut(id).expect("found above");
        node.last_heartbeat = node.last_heartbeat.max(now);
        node.confirmed = true;
        Ok(())
    }

    /// Whether a copy on node `id` is not healthy (stale, or down but current), other than
    /// one being filled.
    fn holds_down_copies(&self, id: &NodeId) -> bool {
        self.regions.values().any(|r| {
            r.stripes.iter().flatten().any(|c| {
                !c.healthy
                    && r.extent(c.extent)
                        .is_some_and(|e| &e.node_id == id && !e.syncing)
            })
        })
    }

    /// A node that was down is back with its memory (same process): its copies that went
    /// down current, of stripes that have no healthy copy anywhere, become healthy again (no
    /// one could have written them elsewhere). Every other copy of such a stripe is stale from
    /// now on: writes go to the restored copies only.
    ///
    /// A region where copies came back moves to new addresses (see [`State::rewindow`]): a
    /// client that still reads a copy that went stale meanwhile, at its old address, is
    /// denied, even where that copy shares an extent (and so a grant) with a restored one.
    fn restore_sole_copies(&mut self, id: &NodeId, batch: &mut Batch) {
        let mut moved = Vec::new();
        for r in self.regions.values_mut() {
            let on_node: Vec<u64> = r
                .extents
                .iter()
                .filter(|e| &e.node_id == id && !e.syncing)
                .map(|e| e.id)
                .collect();
            if on_node.is_empty() {
                continue;
            }
            let mut changed = false;
            for copies in &mut r.stripes {
                if copies.iter().any(|c| c.healthy)
                    || !copies
                        .iter()
                        .any(|c| !c.stale && on_node.contains(&c.extent))
                {
                    continue;
                }
                for c in copies.iter_mut() {
                    if !c.stale && on_node.contains(&c.extent) {
                        c.healthy = true;
                    } else {
                        c.stale = true;
                    }
                }
                changed = true;
            }
            if changed {
                batch.put(keys::region(r.region_id), &*r);
                moved.push(r.region_id);
            }
        }
        for rid in moved {
            self.rewindow(rid, batch);
            let nodes: BTreeSet<NodeId> = self.regions[&rid]
                .extents
                .iter()
                .map(|e| e.node_id.clone())
                .collect();
            for n in &nodes {
                self.set_grants_pending(n, true);
            }
        }
    }

    /// Gives every extent of region `id` new data-path addresses (see
    /// [`State::window_for`]); the grants must then be pushed again. Clients that act on the
    /// old placement are denied at every node that has taken the new grants, and ask where
    /// the stripes are now.
    fn rewindow(&mut self, id: RegionId, batch: &mut Batch) {
        let Some(r) = self.regions.get(&id) else {
            return;
        };
        let old: Vec<(usize, u64, u64)> = r
            .extents
            .iter()
            .enumerate()
            .map(|(k, e)| (k, e.base, e.len))
            .collect();
        for (k, base, len) in old {
            let window = self.window_for(base, len, batch);
            self.regions.get_mut(&id).expect("exists").extents[k].window = Some(window);
        }
        batch.put(keys::region(id), &self.regions[&id]);
    }

    /// Marks down every up node whose last heartbeat is more than `lease_ms` before `now`,
    /// and every copy on it unhealthy. Returns the nodes marked down.
    pub fn expire_nodes(&mut self, now: u64, lease_ms: u64, batch: &mut Batch) -> Vec<NodeId> {
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.up && now.saturating_sub(n.last_heartbeat) > lease_ms)
            .map(|n| n.rec.node_id.clone())
            .collect();
        for id in &down {
            self.mark_node_down(id, false, batch);
        }
        down
    }

    /// Every up node and every session gets a fresh lease from `now`, as after a restart (the
    /// coordinator itself was paused, so it cannot tell who stopped heartbeating).
    pub fn renew_leases(&mut self, now: u64) {
        for n in self.nodes.values_mut().filter(|n| n.up) {
            n.last_heartbeat = n.last_heartbeat.max(now);
        }
        for s in self.sessions.values_mut() {
            s.last_heartbeat = s.last_heartbeat.max(now);
        }
    }

    /// Marks a node down now (lease expiry, or the operator), and every copy on it not
    /// healthy. Those of stripes that keep a healthy copy elsewhere are stale (writes go on
    /// without them); those that were the last healthy copies of their stripes stay current
    /// (see [`CopyRecord`]) unless `memory_lost` (the node restarted): then every copy on it
    /// is stale, the unhealthy ones included.
    pub fn mark_node_down(&mut self, id: &NodeId, memory_lost: bool, batch: &mut Batch) {
        let Some(node) = self.nodes.get_mut(id) else {
            return;
        };
        node.up = false;
        for r in self.regions.values_mut() {
            let on_node: Vec<u64> = r
                .extents
                .iter()
                .filter(|e| &e.node_id == id)
                .map(|e| e.id)
                .collect();
            if on_node.is_empty() {
                continue;
            }
            let mut changed = false;
            for copies in &mut r.stripes {
                let elsewhere = copies
                    .iter()
                    .any(|c| c.healthy && !on_node.contains(&c.extent));
                for c in copies.iter_mut().filter(|c| on_node.contains(&c.extent)) {
                    // (`stale` means nothing while a copy is healthy: judged afresh here.)
                    let stale = memory_lost || if c.healthy { elsewhere } else { c.stale };
                    if c.healthy || stale != c.stale {
                        c.healthy = false;
                        c.stale = stale;
                        changed = true;
                    }
                }
            }
            if changed {
                batch.put(keys::region(r.region_id), &*r);
            }
        }
    }

    /// Whether the node is known and up.
    pub fn node_up(&self, id: &NodeId) -> bool {
        self.nodes.get(id).is_some_and(|n| n.up)
    }

    /// The node named `name`, if known.
    pub fn node_by_name(&self, name: &str) -> Option<&NodeState> {
        self.nodes.values().find(|n| n.rec.name == name)
    }

    /// A node, if known.
    pub fn node(&self, id: &NodeId) -> Option<&NodeState> {
        self.nodes.get(id)
    }

    fn target(&self, id: &NodeId) -> Option<NodeTarget> {
        self.nodes.get(id).map(|n| NodeTarget {
            node_id: n.rec.node_id.clone(),
            admin_url: n.rec.admin_url.clone(),
            epoch: n.rec.epoch,
        })
    }

    fn node_addr(&self, id: &NodeId) -> NodeAddr {
        NodeAddr {
            node_id: id.clone(),
            data_addrs: self
                .nodes
                .get(id)
                .map(|n| n.rec.data_addrs.clone())
                .unwrap_or_default(),
        }
    }

    /// Up nodes whose grants must be re-pushed.
    pub fn nodes_with_pending_grants(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.up && n.grants_pending)
            .map(|n| n.rec.node_id.clone())
            .collect()
    }

    /// The grants were pushed (or must be pushed again).
    pub fn set_grants_pending(&mut self, id: &NodeId, pending: bool) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.grants_pending = pending;
        }
    }

    /// Every grant a node should hold now: one per extent of a region on it whose copies are
    /// current or being filled, for the region's session's client, under the node's epoch.
    pub fn grant_pushes_for_node(&self, id: &NodeId) -> Vec<GrantPush> {
        let Some(target) = self.target(id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for r in self.regions.values() {
            let holders = self.grant_holders(r);
            for e in r.extents.iter().filter(|e| &e.node_id == id) {
                let current = e.syncing
                    || r.stripes
                        .iter()
                        .flatten()
                        .any(|c| c.extent == e.id && c.healthy);
                if current {
                    push_extent_grants(&mut out, &target, e, &holders);
                }
            }
        }
        out
    }

    /// Who holds grants to a region's extents: its session's client (`None`: grant id = extent
    /// id) and every attached session's client (with the attachment's number).
    fn grant_holders(&self, r: &RegionRecord) -> Vec<(String, Option<u64>)> {
        let owner = self
            .sessions
            .get(&r.session_id)
            .map(|s| (s.rec.client_addr.clone(), None));
        let attached = r.attached.iter().filter_map(|a| {
            let s = self.sessions.get(&a.session_id)?;
            Some((s.rec.client_addr.clone(), Some(a.seq)))
        });
        owner.into_iter().chain(attached).collect()
    }

    /// The up nodes holding an extent of region `id`.
    pub fn region_nodes(&self, id: RegionId) -> BTreeSet<NodeId> {
        self.regions
            .get(&id)
            .map(|r| {
                r.extents
                    .iter()
                    .filter(|e| self.node_up(&e.node_id))
                    .map(|e| e.node_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The grants that give a region's clients access to its current extents (holding a
    /// healthy copy, or being filled) on up nodes. Stale copies are never granted: a write
    /// that reaches only those and the healthy copies it knows must fail, not be acknowledged
    /// without the copy being made.
    pub fn grant_pushes_for_region(&self, id: RegionId) -> Vec<GrantPush> {
        let Some(r) = self.regions.get(&id) else {
            return Vec::new();
        };
        let holders = self.grant_holders(r);
        let mut out = Vec::new();
        let current = |e: &ExtentRecord| {
            e.syncing
                || r.stripes
                    .iter()
                    .flatten()
                    .any(|c| c.extent == e.id && c.healthy)
        };
        for e in r
            .extents
            .iter()
            .filter(|e| self.node_up(&e.node_id) && current(e))
        {
            let Some(target) = self.target(&e.node_id) else {
                continue;
            };
            push_extent_grants(&mut out, &target, e, &holders);
        }
        out
    }

    /// Session `session` of `tenant` attaches to region `id` (another process of the tenant
    /// sharing the region): it gets grants of its own to every extent. Attaching the owner, or
    /// twice, changes nothing.
    ///
    /// # Errors
    ///
    /// `UnknownRegion`, `NotYours` (another tenant's region), `UnknownSession` (also another
    /// tenant's session).
    pub fn attach(
        &mut self,
        tenant: &TenantId,
        id: RegionId,
        session: &SessionId,
        batch: &mut Batch,
    ) -> Result<(), ApiError> {
        self.check_region(Some(tenant), id)?;
        self.own_session(Some(tenant), session)?;
        let r = &self.regions[&id];
        if &r.session_id == session || r.attached.iter().any(|a| &a.session_id == session) {
            return Ok(());
        }
        if self.counters.next_attachment >= MAX_ATTACHMENTS {
            return Err(err(
                ErrorCode::BadRequest,
                "this pool has used up its attachment numbers",
            ));
        }
        let seq = self.bump(|c| &mut c.next_attachment, batch);
        let r = self.regions.get_mut(&id).expect("checked");
        r.attached.push(Attachment {
            session_id: session.clone(),
            seq,
        });
        batch.put(keys::region(id), &*r);
        Ok(())
    }

    /// Detaches `session` from every region it is attached to: its grants become revocations.
    /// Returns their grant ids.
    fn detach_everywhere(&mut self, session: &SessionId, batch: &mut Batch) -> Vec<u64> {
        let mut revoked = Vec::new();
        for r in self.regions.values_mut() {
            let Some(pos) = r.attached.iter().position(|a| &a.session_id == session) else {
                continue;
            };
            let a = r.attached.remove(pos);
            for e in &r.extents {
                let rec = RevokeRecord {
                    grant_id: attachment_grant(e.id, a.seq),
                    node_id: e.node_id.clone(),
                };
                batch.put(keys::revoke(rec.grant_id), &rec);
                revoked.push(rec.grant_id);
                self.revocations.insert(rec.grant_id, rec);
            }
            batch.put(keys::region(r.region_id), &*r);
        }
        revoked
    }

    /// The revocations among `ids` (all, with `None`) that can run now: on up nodes.
    pub fn revoke_jobs(&self, ids: Option<&[u64]>) -> Vec<RevokeJob> {
        self.revocations
            .values()
            .filter(|r| ids.is_none_or(|ids| ids.contains(&r.grant_id)))
            .filter(|r| self.node_up(&r.node_id))
            .filter_map(|r| {
                Some(RevokeJob {
                    target: self.target(&r.node_id)?,
                    grant_id: r.grant_id,
                })
            })
            .collect()
    }

    /// The grant is revoked.
    pub fn complete_revoke(&mut self, grant_id: u64, batch: &mut Batch) {
        if self.revocations.remove(&grant_id).is_some() {
            batch.delete(keys::revoke(grant_id));
        }
    }

    // ----- tenants and sessions -----

    /// The operator creates a tenant with `token` (made by the caller, random).
    ///
    /// # Errors
    ///
    /// `BadRequest` for an empty or overlong name, or a name already taken.
    pub fn create_tenant(
        &mut self,
        req: CreateTenant,
        token: String,
        batch: &mut Batch,
    ) -> Result<TenantId, ApiError> {
        if !name_ok(&req.name) {
            return Err(err(
                ErrorCode::BadRequest,
                "tenant name must be 1 to 256 characters",
            ));
        }
        if self.tenants.values().any(|t| t.name == req.name) {
            return Err(err(
                ErrorCode::BadRequest,
                format!("tenant {:?} exists", req.name),
            ));
        }
        let n = self.bump(|c| &mut c.next_tenant, batch);
        let id = TenantId(format!("t{n}"));
        let rec = TenantRecord {
            tenant_id: id.clone(),
            name: req.name,
            quota_bytes: req.quota_bytes,
            token: token.clone(),
        };
        batch.put(keys::tenant(&id), &rec);
        self.tokens.insert(token, id.clone());
        self.tenants.insert(id.clone(), rec);
        Ok(id)
    }

    /// The tenant that `token` belongs to.
    pub fn tenant_by_token(&self, token: &str) -> Option<&TenantId> {
        self.tokens.get(token)
    }

    /// A tenant opens a session for its client at `client_addr`.
    ///
    /// # Errors
    ///
    /// `BadRequest` for an address that is neither `udp://IP:PORT` nor `eth/MAC`.
    pub fn open_session(
        &mut self,
        tenant: &TenantId,
        req: OpenSession,
        now: u64,
        batch: &mut Batch,
    ) -> Result<SessionId, ApiError> {
        if !client_addr_ok(&req.client_addr) {
            return Err(err(
                ErrorCode::BadRequest,
                "client_addr must be udp://IP:PORT or eth/MAC (six hex pairs: eth/02:00:00:00:00:01)",
            ));
        }
        if !self.tenants.contains_key(tenant) {
            return Err(err(ErrorCode::UnknownTenant, format!("no tenant {tenant}")));
        }
        let n = self.bump(|c| &mut c.next_session, batch);
        let id = SessionId(format!("s{n}"));
        let rec = SessionRecord {
            session_id: id.clone(),
            tenant_id: tenant.clone(),
            client_addr: req.client_addr,
        };
        batch.put(keys::session(&id), &rec);
        self.sessions.insert(
            id.clone(),
            SessionState {
                rec,
                last_heartbeat: now,
            },
        );
        Ok(id)
    }

    fn own_session(
        &self,
        tenant: Option<&TenantId>,
        id: &SessionId,
    ) -> Result<&SessionState, ApiError> {
        match self.sessions.get(id) {
            Some(s) if tenant.is_none_or(|t| &s.rec.tenant_id == t) => Ok(s),
            _ => Err(err(ErrorCode::UnknownSession, format!("no session {id}"))),
        }
    }

    /// A tenant's session heartbeats.
    ///
    /// # Errors
    ///
    /// `UnknownSession`, also for another tenant's session.
    pub fn heartbeat_session(
        &mut self,
        tenant: &TenantId,
        id: &SessionId,
        now: u64,
    ) -> Result<(), ApiError> {
        self.own_session(Some(tenant), id)?;
        let s = self.sessions.get_mut(id).expect("checked");
        s.last_heartbeat = s.last_heartbeat.max(now);
        Ok(())
    }

    /// Closes a session (its tenant's or, with `tenant == None`, anyone's) and frees its
    /// regions; returns the releases to run.
    ///
    /// # Errors
    ///
    /// `UnknownSession`, also for another tenant's session.
    pub fn close_session(
        &mut self,
        tenant: Option<&TenantId>,
        id: &SessionId,
        batch: &mut Batch,
    ) -> Result<Vec<u64>, ApiError> {
        self.own_session(tenant, id)?;
        let regions: Vec<RegionId> = self
            .regions
            .values()
            .filter(|r| &r.session_id == id)
            .map(|r| r.region_id)
            .collect();
        let mut released = Vec::new();
        for r in regions {
            released.extend(self.free_region(r, batch));
        }
        self.detach_everywhere(id, batch);
        self.sessions.remove(id);
        batch.delete(keys::session(id));
        Ok(released)
    }

    /// Closes every session whose last heartbeat is more than `lease_ms` before `now`;
    /// returns the releases to run.
    pub fn expire_sessions(&mut self, now: u64, lease_ms: u64, batch: &mut Batch) -> Vec<u64> {
        let expired: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| now.saturating_sub(s.last_heartbeat) > lease_ms)
            .map(|s| s.rec.session_id.clone())
            .collect();
        let mut out = Vec::new();
        for id in expired {
            if let Some(s) = self.sessions.get(&id) {
                eprintln!(
                    "oxmem coord: session {id} expired: no heartbeat for {} ms (lease {lease_ms} ms); its regions are freed",
                    now.saturating_sub(s.last_heartbeat)
                );
            }
            out.extend(self.close_session(None, &id, batch).unwrap_or_default());
        }
        out
    }

    // ----- regions -----

    /// Total capacity of every registered node.
    pub fn total_capacity(&self) -> u64 {
        self.nodes.values().map(|n| n.free.capacity()).sum()
    }

    /// Allocates a region for `tenant` and places it (see the module docs). The grants are
    /// not pushed yet: see [`State::grant_pushes_for_region`].
    ///
    /// # Errors
    ///
    /// `UnknownSession` (also another tenant's), `BadRequest` for a zero size, zero or too
    /// many replicas, a bad stripe size, a size (times replicas) past the pool's capacity or
    /// overflowing; `QuotaExceeded`; `OutOfCapacity` when the up nodes have no room.
    pub fn alloc(
        &mut self,
        tenant: &TenantId,
        req: &AllocRequest,
        batch: &mut Batch,
    ) -> Result<RegionId, ApiError> {
        self.own_session(Some(tenant), &req.session_id)?;
        let l = self.limits.clone();
        if req.bytes == 0 {
            return Err(err(ErrorCode::BadRequest, "bytes must be positive"));
        }
        let replicas = req.replicas.unwrap_or(l.default_replicas);
        if replicas == 0 || replicas > l.max_replicas {
            return Err(err(
                ErrorCode::BadRequest,
                format!("replicas must be 1 to {}", l.max_replicas),
            ));
        }
        let capacity = self.total_capacity();
        let charged = req
            .bytes
            .checked_mul(u64::from(replicas))
            .filter(|&c| c <= capacity)
            .ok_or_else(|| {
                err(
                    ErrorCode::BadRequest,
                    format!(
                        "{} bytes × {replicas} exceeds the pool's capacity of {capacity} bytes",
                        req.bytes
                    ),
                )
            })?;
        let stripe = match req.stripe_size {
            Some(s) => {
                if s == 0 || s % l.align != 0 || s > l.max_stripe {
                    return Err(err(
                        ErrorCode::BadRequest,
                        format!(
                            "stripe_size must be a positive multiple of {} up to {}",
                            l.align, l.max_stripe
                        ),
                    ));
                }
                if req.bytes.div_ceil(s) > l.max_stripes {
                    return Err(err(
                        ErrorCode::BadRequest,
                        format!(
                            "more than {} stripes: use a larger stripe_size",
                            l.max_stripes
                        ),
                    ));
                }
                s
            }
            None => {
                let mut s = l.default_stripe;
                while req.bytes.div_ceil(s) > l.max_stripes {
                    s = s.saturating_mul(2);
                }
                s
            }
        };
        let t = &self.tenants[tenant];
        let used = self.tenant_used.get(tenant).copied().unwrap_or(0);
        if used.saturating_add(charged) > t.quota_bytes {
            return Err(err(
                ErrorCode::QuotaExceeded,
                format!(
                    "tenant {tenant} uses {used} of {} bytes; {charged} more would exceed it",
                    t.quota_bytes
                ),
            ));
        }
        let n_stripes = req.bytes.div_ceil(stripe) as usize;
        let lens: Vec<u64> = (0..n_stripes)
            .map(|i| stripe.min(req.bytes - i as u64 * stripe))
            .collect();

        let mut cands: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.up)
            .map(|n| n.rec.node_id.clone())
            .collect();
        cands.sort_by(|a, b| {
            self.nodes[b]
                .free
                .free_bytes()
                .cmp(&self.nodes[a].free.free_bytes())
                .then(a.cmp(b))
        });
        let free_total: u64 = cands
            .iter()
            .map(|id| self.nodes[id].free.free_bytes())
            .sum();
        let no_room = |why: String| err(ErrorCode::OutOfCapacity, why);
        if free_total < charged {
            return Err(no_room(format!(
                "{free_total} bytes free on up nodes, {charged} asked"
            )));
        }
        let r = replicas as usize;
        let (chosen, shares) = loop {
            if cands.len() < r {
                return Err(no_room(format!("{r} copies need {r} up nodes with room")));
            }
            let m = cands.len().min(r.max(n_stripes));
            let mut shares = vec![0u64; m];
            for (i, len) in lens.iter().enumerate() {
                for k in 0..r {
                    shares[(i + k) % m] += len;
                }
            }
            let misfit = (0..m).find(|&j| {
                let need = align_up(shares[j], l.align).unwrap_or(u64::MAX);
                self.nodes[&cands[j]].free.largest_free() < need
            });
            match misfit {
                Some(j) => {
                    cands.remove(j);
                }
                None => break (cands[..m].to_vec(), shares),
            }
        };
        let m = chosen.len();
        let mut extents = Vec::with_capacity(m);
        for (j, id) in chosen.iter().enumerate() {
            let base = self
                .nodes
                .get_mut(id)
                .expect("chosen")
                .free
                .alloc(shares[j])
                .expect("checked largest free block");
            let eid = self.bump(|c| &mut c.next_extent, batch);
            let len = align_up(shares[j], l.align).expect("checked");
            let window = self.window_for(base, len, batch);
            extents.push(ExtentRecord {
                id: eid,
                node_id: id.clone(),
                base,
                len,
                syncing: false,
                window: Some(window),
            });
        }
        let mut fill = vec![0u64; m];
        let stripes = lens
            .iter()
            .enumerate()
            .map(|(i, len)| {
                (0..r)
                    .map(|k| {
                        let j = (i + k) % m;
                        let c = CopyRecord {
                            extent: extents[j].id,
                            offset: fill[j],
                            healthy: true,
                            stale: false,
                        };
                        fill[j] += len;
                        c
                    })
                    .collect()
            })
            .collect();
        let n = self.bump(|c| &mut c.next_region, batch);
        let id = RegionId(n);
        let rec = RegionRecord {
            region_id: id,
            tenant_id: tenant.clone(),
            session_id: req.session_id.clone(),
            bytes: req.bytes,
            replicas,
            stripe_size: stripe,
            extents,
            stripes,
            attached: Vec::new(),
        };
        batch.put(keys::region(id), &rec);
        *self.tenant_used.entry(tenant.clone()).or_default() += charged;
        self.regions.insert(id, rec);
        Ok(id)
    }

    /// Checks that `tenant` (or the operator, with `None`) may see region `id`.
    ///
    /// # Errors
    ///
    /// `UnknownRegion`, or `NotYours` when it is another tenant's.
    pub fn check_region(
        &self,
        tenant: Option<&TenantId>,
        id: RegionId,
    ) -> Result<&RegionRecord, ApiError> {
        let r = self
            .regions
            .get(&id)
            .ok_or_else(|| err(ErrorCode::UnknownRegion, format!("no region {id}")))?;
        if let Some(t) = tenant {
            if &r.tenant_id != t {
                return Err(err(
                    ErrorCode::NotYours,
                    format!("region {id} belongs to another tenant"),
                ));
            }
        }
        Ok(r)
    }

    /// Frees a region: its extents become releases (revoke, scrub, then reuse). Returns their
    /// ids; unknown regions free nothing.
    pub fn free_region(&mut self, id: RegionId, batch: &mut Batch) -> Vec<u64> {
        let Some(r) = self.regions.remove(&id) else {
            return Vec::new();
        };
        batch.delete(keys::region(id));
        if let Some(u) = self.tenant_used.get_mut(&r.tenant_id) {
            *u -= r.charged();
        }
        self.repair_backoff.remove(&id);
        let seqs = attachment_seqs(&r);
        self.release_extents(r.extents, &seqs, batch)
    }

    fn release_extents(
        &mut self,
        extents: Vec<ExtentRecord>,
        attachment_seqs: &[u64],
        batch: &mut Batch,
    ) -> Vec<u64> {
        extents
            .into_iter()
            .map(|e| {
                let rel = ReleaseRecord {
                    extent_id: e.id,
                    node_id: e.node_id,
                    base: e.base,
                    len: e.len,
                    // The mover's grant too: a re-replication still copying into (or out
                    // of) this extent when its region goes must not write into the space
                    // after it has been scrubbed and handed to someone else.
                    extra_grants: attachment_seqs
                        .iter()
                        .map(|&s| attachment_grant(e.id, s))
                        .chain(std::iter::once(MOVER_GRANT_BIT | e.id))
                        .collect(),
                };
                batch.put(keys::release(e.id), &rel);
                self.releases.insert(e.id, rel);
                e.id
            })
            .collect()
    }

    /// The releases among `ids` (all, with `None`) that can run now: on up nodes.
    pub fn release_jobs(&self, ids: Option<&[u64]>) -> Vec<ReleaseJob> {
        let pick = |rel: &ReleaseRecord| ids.is_none_or(|ids| ids.contains(&rel.extent_id));
        self.releases
            .values()
            .filter(|rel| pick(rel) && self.node_up(&rel.node_id))
            .filter_map(|rel| {
                Some(ReleaseJob {
                    target: self.target(&rel.node_id)?,
                    grant_id: rel.extent_id,
                    extra_grants: rel.extra_grants.clone(),
                    scrub: ScrubRequest {
                        base: rel.base,
                        len: rel.len,
                    },
                })
            })
            .collect()
    }

    /// Releases waiting (on any node).
    pub fn pending_releases(&self) -> usize {
        self.releases.len()
    }

    /// The release ran (grant revoked, bytes zeroed): its space is free again.
    pub fn complete_release(&mut self, extent_id: u64, batch: &mut Batch) {
        if let Some(rel) = self.releases.remove(&extent_id) {
            if let Some(n) = self.nodes.get_mut(&rel.node_id) {
                n.free.free(rel.base, rel.len);
            }
            batch.delete(keys::release(extent_id));
        }
    }

    // ----- re-replication -----

    /// Regions that have a stripe with fewer healthy copies than asked for but at least one,
    /// and no repair in flight or backing off at `now`.
    pub fn regions_to_repair(&self, now: u64) -> Vec<RegionId> {
        self.regions
            .values()
            .filter(|r| !self.repairing.contains(&r.region_id))
            .filter(|r| {
                self.repair_backoff
                    .get(&r.region_id)
                    .is_none_or(|&t| t <= now)
            })
            .filter(|r| {
                (0..r.stripes.len())
                    .any(|i| (1..r.replicas as usize).contains(&r.healthy_copies(i)))
            })
            .map(|r| r.region_id)
            .collect()
    }

    /// Plans new copies for the under-replicated stripes of region `id`: for each, the up
    /// node with most room that holds no current copy of it; one new (syncing) extent per
    /// target node. Every extent of the region gets new data-path addresses (the caller
    /// replaces their grants before copying). Nodes in `avoid` (that just failed to answer)
    /// are neither targets nor sources. Returns `None` when nothing can be placed now.
    pub fn plan_repair(
        &mut self,
        id: RegionId,
        avoid: &BTreeSet<NodeId>,
        batch: &mut Batch,
    ) -> Option<RepairPlan> {
        let r = self.regions.get(&id)?;
        let replicas = r.replicas as usize;
        let room: BTreeMap<NodeId, u64> = self
            .nodes
            .values()
            .filter(|n| n.up && !avoid.contains(&n.rec.node_id))
            .map(|n| (n.rec.node_id.clone(), n.free.largest_free()))
            .collect();
        let mut assigned: BTreeMap<NodeId, u64> = BTreeMap::new();
        // (stripe, target node, source copy)
        let mut picks: Vec<(usize, NodeId, CopyRecord)> = Vec::new();
        for i in 0..r.stripes.len() {
            let healthy: Vec<CopyRecord> =
                r.stripes[i].iter().filter(|c| c.healthy).copied().collect();
            if healthy.is_empty() || healthy.len() >= replicas {
                continue;
            }
            let Some(source) = healthy.iter().copied().find(|c| {
                r.extent(c.extent)
                    .is_some_and(|e| !avoid.contains(&e.node_id))
            }) else {
                continue;
            };
            let len = r.stripe_len(i);
            let mut holders: BTreeSet<NodeId> = healthy
                .iter()
                .filter_map(|c| r.extent(c.extent))
                .map(|e| e.node_id.clone())
                .collect();
            for _ in healthy.len()..replicas {
                let best = room
                    .iter()
                    .filter(|(n, _)| !holders.contains(*n))
                    .filter(|(n, rm)| {
                        let after = assigned.get(*n).copied().unwrap_or(0) + len;
                        align_up(after, self.limits.align).is_some_and(|a| a <= **rm)
                    })
                    .max_by_key(|(n, rm)| {
                        (
                            **rm - assigned.get(*n).copied().unwrap_or(0),
                            std::cmp::Reverse((*n).clone()),
                        )
                    })
                    .map(|(n, _)| n.clone());
                let Some(target) = best else { break };
                *assigned.entry(target.clone()).or_default() += len;
                holders.insert(target.clone());
                picks.push((i, target, source));
            }
        }
        if picks.is_empty() {
            return None;
        }
        // One syncing extent per target node.
        let mut new_extents: BTreeMap<NodeId, ExtentRecord> = BTreeMap::new();
        for (node, total) in &assigned {
            let base = self
                .nodes
                .get_mut(node)
                .expect("up")
                .free
                .alloc(*total)
                .expect("checked largest free block");
            let eid = self.bump(|c| &mut c.next_extent, batch);
            let len = align_up(*total, self.limits.align).expect("checked");
            let window = self.window_for(base, len, batch);
            new_extents.insert(
                node.clone(),
                ExtentRecord {
                    id: eid,
                    node_id: node.clone(),
                    base,
                    len,
                    syncing: true,
                    window: Some(window),
                },
            );
        }
        // Every extent of the region moves to new addresses. Once its grants are replaced
        // (before any byte is copied), a client that has not learned of the new copies is
        // denied at every healthy copy, and asks where the stripes are now: no write can be
        // acknowledged without reaching the copy being made.
        self.rewindow(id, batch);
        let mut fill: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut jobs: Vec<CopyJob> = Vec::new();
        let r = self.regions.get(&id).expect("exists");
        let mut added: Vec<(usize, CopyRecord)> = Vec::new();
        for (i, node, src) in &picks {
            let len = r.stripe_len(*i);
            let ext = &new_extents[node];
            let off = fill.entry(node.clone()).or_default();
            let src_ext = r.extent(src.extent).expect("copy's extent");
            let job = CopyJob {
                from_node: self.node_addr(&src_ext.node_id),
                from_address: src_ext.addr() + src.offset,
                from_extent: src_ext.id,
                to_node: self.node_addr(node),
                to_address: ext.addr() + *off,
                to_extent: ext.id,
                len,
            };
            added.push((
                *i,
                CopyRecord {
                    extent: ext.id,
                    offset: *off,
                    healthy: false,
                    stale: true, // being filled
                },
            ));
            *off += len;
            match jobs.last_mut() {
                Some(last)
                    if last.from_extent == job.from_extent
                        && last.to_extent == job.to_extent
                        && last.from_address + last.len == job.from_address
                        && last.to_address + last.len == job.to_address =>
                {
                    last.len += job.len;
                }
                _ => jobs.push(job),
            }
        }
        let plan = RepairPlan {
            region_id: id,
            new_extents: new_extents
                .values()
                .map(|e| (e.id, e.node_id.clone(), self.nodes[&e.node_id].rec.epoch))
                .collect(),
            jobs,
        };
        let r = self.regions.get_mut(&id).expect("exists");
        r.extents.extend(new_extents.into_values());
        for (i, c) in added {
            r.stripes[i].push(c);
        }
        batch.put(keys::region(id), &*r);
        self.repairing.insert(id);
        Some(plan)
    }

    /// Whether a plan can still be finished: the region is there, its new extents too, and
    /// their nodes are up under the same epoch.
    pub fn repair_still_valid(&self, plan: &RepairPlan) -> bool {
        let Some(r) = self.regions.get(&plan.region_id) else {
            return false;
        };
        plan.new_extents.iter().all(|(eid, node, epoch)| {
            r.extent(*eid).is_some()
                && self
                    .nodes
                    .get(node)
                    .is_some_and(|n| n.up && n.rec.epoch == *epoch)
        })
    }

    /// The copies of a plan are done: its new copies become healthy, and stale copies of
    /// stripes that have all their copies again are dropped (extents left with no copy are
    /// released). Returns the releases to run.
    pub fn finish_repair(&mut self, plan: &RepairPlan, batch: &mut Batch) -> Vec<u64> {
        self.repairing.remove(&plan.region_id);
        self.repair_backoff.remove(&plan.region_id);
        if !self.repair_still_valid(plan) {
            return self.abort_repair_inner(plan, batch);
        }
        let r = self.regions.get_mut(&plan.region_id).expect("valid");
        let new: Vec<u64> = plan.new_extents.iter().map(|(e, _, _)| *e).collect();
        for e in r.extents.iter_mut().filter(|e| new.contains(&e.id)) {
            e.syncing = false;
        }
        let replicas = r.replicas as usize;
        for copies in &mut r.stripes {
            for c in copies.iter_mut().filter(|c| new.contains(&c.extent)) {
                c.healthy = true;
                c.stale = false;
            }
            if copies.iter().filter(|c| c.healthy).count() >= replicas {
                copies.retain(|c| c.healthy);
            }
        }
        let referenced: BTreeSet<u64> = r.stripes.iter().flatten().map(|c| c.extent).collect();
        let (gone, kept): (Vec<_>, Vec<_>) = r
            .extents
            .drain(..)
            .partition(|e| !referenced.contains(&e.id));
        r.extents = kept;
        batch.put(keys::region(plan.region_id), &*r);
        let seqs = attachment_seqs(r);
        self.release_extents(gone, &seqs, batch)
    }

    /// A plan failed (copy error, node gone): its new extents are released and the region
    /// waits until `retry_at` before another try. Returns the releases to run.
    pub fn abort_repair(
        &mut self,
        plan: &RepairPlan,
        retry_at: u64,
        batch: &mut Batch,
    ) -> Vec<u64> {
        self.repairing.remove(&plan.region_id);
        if self.regions.contains_key(&plan.region_id) {
            self.repair_backoff.insert(plan.region_id, retry_at);
        }
        self.abort_repair_inner(plan, batch)
    }

    fn abort_repair_inner(&mut self, plan: &RepairPlan, batch: &mut Batch) -> Vec<u64> {
        let Some(r) = self.regions.get_mut(&plan.region_id) else {
            return Vec::new(); // freed meanwhile: its extents were released with it
        };
        let new: Vec<u64> = plan.new_extents.iter().map(|(e, _, _)| *e).collect();
        for copies in &mut r.stripes {
            copies.retain(|c| !new.contains(&c.extent));
        }
        let (gone, kept): (Vec<_>, Vec<_>) = r.extents.drain(..).partition(|e| new.contains(&e.id));
        r.extents = kept;
        batch.put(keys::region(plan.region_id), &*r);
        let seqs = attachment_seqs(r);
        self.release_extents(gone, &seqs, batch)
    }

    /// Where extent `extent` of region `region` is: its node (for an admin call), base and
    /// length.
    pub fn extent_location(
        &self,
        region: RegionId,
        extent: u64,
    ) -> Option<(NodeTarget, &ExtentRecord)> {
        let e = self.regions.get(&region)?.extent(extent)?;
        Some((self.target(&e.node_id)?, e))
    }

    // ----- views -----

    /// A region as the API shows it.
    pub fn region_info(&self, r: &RegionRecord) -> RegionInfo {
        let stripes = r
            .stripes
            .iter()
            .enumerate()
            .map(|(i, copies)| Stripe {
                index: i as u64,
                len: r.stripe_len(i),
                copies: copies
                    .iter()
                    .filter_map(|c| {
                        let e = r.extent(c.extent)?;
                        Some(Placement {
                            node_id: e.node_id.clone(),
                            address: e.addr() + c.offset,
                            healthy: c.healthy,
                        })
                    })
                    .collect(),
            })
            .collect();
        let nodes: BTreeSet<&NodeId> = r.extents.iter().map(|e| &e.node_id).collect();
        RegionInfo {
            region_id: r.region_id,
            tenant_id: r.tenant_id.clone(),
            session_id: r.session_id.clone(),
            bytes: r.bytes,
            replicas: r.replicas,
            stripe_size: r.stripe_size,
            stripes,
            nodes: nodes.into_iter().map(|n| self.node_addr(n)).collect(),
            health: r.health(),
        }
    }

    /// A region by id.
    pub fn region(&self, id: RegionId) -> Option<&RegionRecord> {
        self.regions.get(&id)
    }

    /// Regions of `tenant` (all, with `None`).
    pub fn regions(&self, tenant: Option<&TenantId>) -> Vec<RegionInfo> {
        self.regions
            .values()
            .filter(|r| tenant.is_none_or(|t| &r.tenant_id == t))
            .map(|r| self.region_info(r))
            .collect()
    }

    /// The nodes as the API shows them.
    pub fn node_infos(&self, now: u64) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| NodeInfo {
                node_id: n.rec.node_id.clone(),
                name: n.rec.name.clone(),
                data_addrs: n.rec.data_addrs.clone(),
                admin_url: n.rec.admin_url.clone(),
                capacity: n.rec.capacity,
                used: n.free.capacity() - n.free.free_bytes(),
                health: if n.up {
                    NodeHealth::Up
                } else {
                    NodeHealth::Down
                },
                epoch: n.rec.epoch,
                last_heartbeat_ms: now.saturating_sub(n.last_heartbeat),
            })
            .collect()
    }

    /// The tenants as the API shows them.
    pub fn tenant_infos(&self) -> Vec<TenantInfo> {
        self.tenants
            .values()
            .map(|t| TenantInfo {
                tenant_id: t.tenant_id.clone(),
                name: t.name.clone(),
                quota_bytes: t.quota_bytes,
                used_bytes: self.tenant_used.get(&t.tenant_id).copied().unwrap_or(0),
                regions: self
                    .regions
                    .values()
                    .filter(|r| r.tenant_id == t.tenant_id)
                    .count() as u64,
            })
            .collect()
    }

    /// The whole pool.
    pub fn status(&self, now: u64, leader: bool) -> ClusterStatus {
        ClusterStatus {
            nodes: self.node_infos(now),
            tenants: self.tenant_infos(),
            regions: self.regions(None),
            degraded_stripes: self.degraded_stripes(),
            leader,
        }
    }

    /// Stripes with fewer healthy copies than asked for, over all regions.
    pub fn degraded_stripes(&self) -> u64 {
        self.regions
            .values()
            .map(RegionRecord::degraded_stripes)
            .sum()
    }

    /// Numbers for the metrics gauges.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            regions: self.regions.len() as u64,
            bytes_allocated: self.regions.values().map(RegionRecord::charged).sum(),
            capacity: self.total_capacity(),
            free: self.nodes.values().map(|n| n.free.free_bytes()).sum(),
            nodes_up: self.nodes.values().filter(|n| n.up).count() as u64,
            nodes_down: self.nodes.values().filter(|n| !n.up).count() as u64,
            degraded_stripes: self.degraded_stripes(),
            sessions: self.sessions.len() as u64,
            pending_releases: self.releases.len() as u64,
        }
    }

    /// Free bytes and largest free block of a node (for tests and operators).
    pub fn node_free(&self, id: &NodeId) -> Option<(u64, u64, usize)> {
        self.nodes
            .get(id)
            .map(|n| (n.free.free_bytes(), n.free.largest_free(), n.free.blocks()))
    }
}

/// Numbers for the metrics gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub regions: u64,
    pub bytes_allocated: u64,
    pub capacity: u64,
    pub free: u64,
    pub nodes_up: u64,
    pub nodes_down: u64,
    pub degraded_stripes: u64,
    pub sessions: u64,
    pub pending_releases: u64,
}

/// A grant of all of extent `e` to `peer`, at the extent's window.
pub fn grant_spec(peer: &str, e: &ExtentRecord, access: GrantAccess, epoch: u64) -> GrantSpec {
    GrantSpec {
        peer: peer.to_string(),
        base: e.base,
        len: e.len,
        access,
        epoch,
        addr: e.window,
    }
}

/// The attachment numbers of a region.
fn attachment_seqs(r: &RegionRecord) -> Vec<u64> {
    r.attached.iter().map(|a| a.seq).collect()
}

/// The grants of extent `e` on `target`, one per holder (see `State::grant_holders`).
fn push_extent_grants(
    out: &mut Vec<GrantPush>,
    target: &NodeTarget,
    e: &ExtentRecord,
    holders: &[(String, Option<u64>)],
) {
    for (client, seq) in holders {
        out.push(GrantPush {
            target: target.clone(),
            grant_id: seq.map_or(e.id, |s| attachment_grant(e.id, s)),
            spec: grant_spec(client, e, GrantAccess::ReadWrite, target.epoch),
        });
    }
}
