//! The node's admin API: how the coordinator puts grants on the node, revokes them and scrubs
//! freed memory (`crates/api`, "Node admin routes"; DESIGN.md, "Regions, grants and tenants").
//!
//! [`NodeAdmin`] holds the rules, synchronously, over the executor the engines share; and
//! [`AdminServer`] serves them over HTTP on a small tokio runtime of its own, on a background
//! thread, so that the rest of the node stays synchronous.
//!
//! | method and path | body → answer |
//! |---|---|
//! | `PUT /v1/grants/{id}` | [`GrantSpec`] → 204 (adds, or replaces the grant named `id`) |
//! | `DELETE /v1/grants/{id}` | – → 204 (revoked before the answer; 204 too when unknown) |
//! | `GET /v1/grants` | – → `[{"id": …, GrantSpec fields…}]` ([`GrantEntry`]), by id |
//! | `POST /v1/scrub` | [`ScrubRequest`] → 204 (the range is zero before the answer) |
//!
//! Every route wants `Authorization: Bearer NODE_TOKEN` (else 401). Errors are
//! [`ApiError`] JSON: 400 `bad_request` for a bad peer, an empty or overflowing range or one
//! past the arena; 409 `stale_epoch` for a grant of an older epoch than the node's.
//!
//! **Revocation.** The engines execute every request under the executor's lock, and a grant is
//! removed under that same lock before the answer to `DELETE` is sent: once the coordinator
//! has its answer, no request runs under the old grant.
//!
//! **Fencing.** The node is in one registration epoch at a time ([`NodeAdmin::epoch`], 0
//! before it has registered). A grant of an older epoch is refused; a grant of a newer one
//! moves the node to that epoch. Entering a new epoch (by registering, or by such a grant)
//! drops every coordinator grant of other epochs; the coordinator pushes again what is still
//! valid. Grants given on the command line (`--open-window`, `--grant`) are not the
//! coordinator's: the admin API neither lists nor drops them.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use oxmem_api::{ApiError, ErrorCode, GrantAccess, GrantSpec, ScrubRequest};
use oxmem_net::{EthernetAddress, PeerAddr};
use serde::{Deserialize, Serialize};

use crate::executor::Executor;
use crate::grant::{Access, GRANT_ADDRESS_ALIGN, Grant, GrantId, PeerMatch};
use crate::server::SharedExecutor;

/// Longest grant id the node accepts.
pub const MAX_GRANT_ID_LEN: usize = 256;

/// Bytes a scrub zeroes per hold of the executor's lock, so that the engines are never held
/// up for long.
const SCRUB_CHUNK: u64 = 16 << 20;

/// Parses a grant's peer: `udp://IP:PORT` or `eth/MAC` (as `PeerAddr` displays them).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_peer(s: &str) -> Result<PeerAddr, String> {
    if let Some(addr) = s.strip_prefix("udp://") {
        return addr
            .parse()
            .map(PeerAddr::Udp)
            .map_err(|e| format!("peer {s:?}: {e} (expected udp://IP:PORT)"));
    }
    if let Some(mac) = s.strip_prefix("eth/") {
        return EthernetAddress::parse(mac)
            .map(PeerAddr::Ethernet)
            .ok_or_else(|| format!("peer {s:?}: expected eth/MAC, e.g. eth/02:00:00:00:00:01"));
    }
    Err(format!("peer {s:?}: expected udp://IP:PORT or eth/MAC"))
}

/// One coordinator grant as `GET /v1/grants` lists it: its id and its [`GrantSpec`] (the
/// spec's fields sit beside `id`, so the list also reads as `Vec<GrantSpec>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEntry {
    pub id: String,
    #[serde(flatten)]
    pub spec: GrantSpec,
}

/// What a [`NodeAdmin::put_grant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new grant.
    Added,
    /// The grant of that id was replaced.
    Replaced,
}

#[derive(Debug)]
struct Installed {
    table_id: GrantId,
    spec: GrantSpec,
}

#[derive(Debug, Default)]
struct Coordinated {
    epoch: u64,
    grants: BTreeMap<String, Installed>,
}

struct Inner {
    executor: SharedExecutor,
    token: String,
    /// Lock order: this one, then the executor's.
    state: Mutex<Coordinated>,
}

/// The node's side of the coordinator's grants: ids, epochs and the executor's grant table.
///
/// Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct NodeAdmin {
    inner: Arc<Inner>,
}

impl fmt::Debug for NodeAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("NodeAdmin")
            .field("epoch", &state.epoch)
            .field("grants", &state.grants.len())
            .finish_non_exhaustive()
    }
}

fn lock_exec(executor: &SharedExecutor) -> MutexGuard<'_, Executor<PeerAddr>> {
    // As in the engines: a poisoned executor is still consistent enough to serve.
    executor.lock().unwrap_or_else(|p| p.into_inner())
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// Compares without stopping at the first difference, so that timing tells nothing of the token.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Checks that `[base, base + len)` is non-empty and inside an arena of `capacity` bytes.
fn check_range(what: &str, base: u64, len: u64, capacity: u64) -> Result<(), ApiError> {
    if len == 0 {
        return Err(bad(format!("{what}: len must not be zero")));
    }
    let end = base
        .checked_add(len)
        .ok_or_else(|| bad(format!("{what}: {base:#x}+{len:#x} overflows 64 bits")))?;
    if end > capacity {
        return Err(bad(format!(
            "{what}: {base:#x}+{len:#x} reaches past the {capacity:#x}-byte arena"
        )));
    }
    Ok(())
}

impl NodeAdmin {
    /// The admin side of a node serving `executor`; callers must present `token`.
    pub fn new(executor: SharedExecutor, token: impl Into<String>) -> Self {
        NodeAdmin {
            inner: Arc::new(Inner {
                executor,
                token: token.into(),
                state: Mutex::new(Coordinated::default()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, Coordinated> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The executor the grants are put on.
    pub fn executor(&self) -> &SharedExecutor {
        &self.inner.executor
    }

    /// Whether `authorization` (an `Authorization` header's value) carries the node token. An
    /// empty node token lets nobody in.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        !self.inner.token.is_empty()
            && authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|t| same_token(t.trim().as_bytes(), self.inner.token.as_bytes()))
    }

    /// The registration epoch the node is in (0 before it has registered).
    pub fn epoch(&self) -> u64 {
        self.state().epoch
    }

    /// Enters `epoch`, the one the coordinator just registered the node under: drops every
    /// coordinator grant of another epoch and returns how many. The coordinator's answer to a
    /// registration is the truth, even when its epoch is lower than the node's (a coordinator
    /// whose metadata was reset).
    pub fn enter_epoch(&self, epoch: u64) -> usize {
        let mut state = self.state();
        self.switch_epoch(&mut state, epoch)
    }

    fn switch_epoch(&self, state: &mut Coordinated, epoch: u64) -> usize {
        state.epoch = epoch;
        let stale: Vec<String> = state
            .grants
            .iter()
            .filter(|(_, g)| g.spec.epoch != epoch)
            .map(|(id, _)| id.clone())
            .collect();
        if stale.is_empty() {
            return 0;
        }
        let mut exec = lock_exec(&self.inner.executor);
        for id in &stale {
            if let Some(g) = state.grants.remove(id) {
                exec.grants_mut().remove(g.table_id);
            }
        }
        stale.len()
    }

    /// Adds the grant `id`, or replaces it, in force when this returns.
    ///
    /// # Errors
    /// `bad_request` for an empty or overlong id, a bad peer, or a range that is empty,
    /// overflows or reaches past the arena; `stale_epoch` when `spec.epoch` is older than the
    /// node's epoch. A refused grant changes nothing (a replaced grant stays as it was).
    pub fn put_grant(&self, id: &str, spec: GrantSpec) -> Result<PutOutcome, ApiError> {
        if id.is_empty() || id.len() > MAX_GRANT_ID_LEN {
            return Err(bad(format!(
                "grant id must be 1 to {MAX_GRANT_ID_LEN} bytes long"
            )));
        }
        let peer = parse_peer(&spec.peer).map_err(bad)?;
        let access = match spec.access {
            GrantAccess::Read => Access::Read,
            GrantAccess::ReadWrite => Access::ReadWrite,
        };
        let mut state = self.state();
        if spec.epoch < state.epoch {
            return Err(ApiError::new(
                ErrorCode::StaleEpoch,
                format!(
                    "grant {id} is for epoch {} but the node is in epoch {}",
                    spec.epoch, state.epoch
                ),
            ));
        }
        {
            let exec = lock_exec(&self.inner.executor);
            check_range(
                &format!("grant {id}"),
                spec.base,
                spec.len,
                exec.grants().limit(),
            )?;
            // Checked before anything changes (an epoch switch drops grants).
            if let Some(addr) = spec.addr {
                let aligned = (addr ^ spec.base) % GRANT_ADDRESS_ALIGN == 0;
                if addr.checked_add(spec.len).is_none() || !aligned {
                    return Err(bad(format!(
                        "grant {id}: addresses {addr:#x}+{:#x} overflow or are not aligned like \
                         base {:#x} modulo {GRANT_ADDRESS_ALIGN:#x}",
                        spec.len, spec.base
                    )));
                }
            }
        }
        if spec.epoch > state.epoch {
            self.switch_epoch(&mut state, spec.epoch);
        }
        let grant = Grant {
            peer: PeerMatch::Peer(peer),
            base: spec.base,
            len: spec.len,
            access,
            addr: spec.addr.unwrap_or(spec.base),
        };
        let mut exec = lock_exec(&self.inner.executor);
        let table_id = exec
            .grants_mut()
            .add(grant)
            .map_err(|e| bad(format!("grant {id}: {e}")))?;
        let old = state
            .grants
            .insert(id.to_owned(), Installed { table_id, spec });
        Ok(match old {
            Some(old) => {
                exec.grants_mut().remove(old.table_id);
                PutOutcome::Replaced
            }
            None => PutOutcome::Added,
        })
    }

    /// Revokes the grant `id`: when this returns, no request runs under it any more. Returns
    /// its spec, or `None` when there was no such grant.
    pub fn delete_grant(&self, id: &str) -> Option<GrantSpec> {
        let mut state = self.state();
        let old = state.grants.remove(id)?;
        lock_exec(&self.inner.executor)
            .grants_mut()
            .remove(old.table_id);
        Some(old.spec)
    }

    /// The coordinator's grants, by id.
    pub fn grants(&self) -> Vec<GrantEntry> {
        self.state()
            .grants
            .iter()
            .map(|(id, g)| GrantEntry {
                id: id.clone(),
                spec: g.spec.clone(),
            })
            .collect()
    }

    /// Zeroes `[base, base + len)` of the arena, a chunk at a time.
    ///
    /// It does not look at grants: the coordinator revokes before it scrubs.
    ///
    /// # Errors
    /// `bad_request` when the range is empty, overflows or reaches past the arena.
    pub fn scrub(&self, request: ScrubRequest) -> Result<(), ApiError> {
        let ScrubRequest { base, len } = request;
        let capacity = lock_exec(&self.inner.executor).arena().capacity();
        check_range("scrub", base, len, capacity)?;
        let end = base + len; // checked above
        let mut at = base;
        while at < end {
            let n = (end - at).min(SCRUB_CHUNK);
            lock_exec(&self.inner.executor)
                .arena_mut()
                .fill(at, n, 0)
                .map_err(|e| bad(format!("scrub: {e}")))?;
            at += n;
        }
        Ok(())
    }
}

/// An [`ApiError`] as an HTTP answer.
struct Failure(ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

fn authorize(admin: &NodeAdmin, headers: &HeaderMap) -> Result<(), Failure> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if admin.authorized(value) {
        Ok(())
    } else {
        Err(Failure(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong node token (Authorization: Bearer TOKEN)",
        )))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure(bad(format!("{what}: {e}"))))
}

/// Runs `f` off the runtime's thread: it takes the executor's lock, which the engines hold
/// while they execute.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::new(ErrorCode::Internal, e.to_string())))
        .map_err(Failure)
}

async fn put_grant(
    State(admin): State<NodeAdmin>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Failure> {
    authorize(&admin, &headers)?;
    let spec: GrantSpec = parse_json("GrantSpec", &body)?;
    blocking(move || admin.put_grant(&id, spec)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_grant(
    State(admin): State<NodeAdmin>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Failure> {
    authorize(&admin, &headers)?;
    blocking(move || Ok(admin.delete_grant(&id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_grants(
    State(admin): State<NodeAdmin>,
    headers: HeaderMap,
) -> Result<axum::Json<Vec<GrantEntry>>, Failure> {
    authorize(&admin, &headers)?;
    Ok(axum::Json(admin.grants()))
}

async fn scrub(
    State(admin): State<NodeAdmin>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Failure> {
    authorize(&admin, &headers)?;
    let request: ScrubRequest = parse_json("ScrubRequest", &body)?;
    blocking(move || admin.scrub(request)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The admin API's routes over `admin`.
pub fn router(admin: NodeAdmin) -> Router {
    Router::new()
        .route("/v1/grants", get(list_grants))
        .route("/v1/grants/{id}", put(put_grant).delete(delete_grant))
        .route("/v1/scrub", post(scrub))
        .with_state(admin)
}

/// The admin API served over HTTP on a background thread; stops when dropped.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    admin: NodeAdmin,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl AdminServer {
    /// Serves `admin` on `addr` (port 0: any free port; see [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// When the address cannot be bound or the thread or runtime cannot start.
    pub fn start(addr: SocketAddr, admin: NodeAdmin) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(4)
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(admin.clone());
        let thread = std::thread::Builder::new()
            .name(format!("oxmem-node admin {local_addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await
                })
            })?;
        Ok(AdminServer {
            local_addr,
            admin,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What it serves.
    pub fn admin(&self) -> &NodeAdmin {
        &self.admin
    }

    /// Stops serving and waits for the thread.
    ///
    /// # Errors
    /// The IO error the server stopped with.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the admin server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_in_both_forms() {
        assert_eq!(
            parse_peer("udp://127.0.0.1:7447").unwrap(),
            PeerAddr::Udp("127.0.0.1:7447".parse().unwrap())
        );
        let mac = parse_peer("eth/02:00:00:00:00:01").unwrap();
        assert_eq!(mac.to_string(), "eth/02:00:00:00:00:01");
        assert_eq!(
            parse_peer("udp://[::1]:9").unwrap().to_string(),
            "udp://[::1]:9"
        );
        for bad in [
            "",
            "127.0.0.1:7447",
            "udp://host:1",
            "eth/02:00",
            "eth://02:00:00:00:00:01",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
    }
}
