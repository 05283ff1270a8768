//! `Pool` and `Region`: memory from the coordinator, used as one flat range.
//!
//! [`Pool::connect`] opens a session with the coordinator (heartbeated in the background, so
//! the regions live as long as the program does) and a [`Client`] whose address the nodes'
//! grants name. [`Pool::alloc`] returns a [`Region`]: offsets `0..len` that map onto stripes
//! spread over nodes, each stripe possibly replicated. Reads take each stripe from a healthy
//! copy, all stripes at once, and fail over to another copy when a node stops answering;
//! writes go to every copy and fail if any copy could not be written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxmem_api::{
    AllocRequest, ApiError, AttachRequest, ErrorCode, Lease, NodeAddr, NodeId, OpenSession,
    RegionHealth, RegionId, RegionInfo, SessionId, SessionOpened,
};
use oxmem_net::{EthernetAddress, PeerAddr};

use crate::client::{Client, ClientOptions, NodeOptions};
use crate::endpoint::{Completed, Ticket};
use crate::error::Error;
use crate::handler::AtomicOp;

/// Why a pool operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The coordinator refused, with a stable code.
    #[error("coordinator: {0}")]
    Api(ApiError),
    /// The coordinator could not be reached or answered nonsense.
    #[error("coordinator unreachable: {0}")]
    Http(String),
    /// The data path failed (denied, timeout, link failed…).
    #[error(transparent)]
    Data(#[from] Error),
    /// Caller: an offset or length outside the region.
    #[error("range {offset:#x}+{len} is outside the region of {region_len} bytes")]
    OutOfRange {
        offset: u64,
        len: u64,
        region_len: u64,
    },
    /// A stripe has no copy this client can reach.
    #[error("no reachable copy of stripe {stripe}")]
    NoCopy { stripe: u64 },
}

impl From<ApiError> for PoolError {
    fn from(e: ApiError) -> Self {
        PoolError::Api(e)
    }
}

/// How a pool client behaves.
#[derive(Debug, Clone, Default)]
pub struct PoolOptions {
    /// The data-path client (timeouts, buffers, UDP settings).
    pub client: ClientOptions,
    /// How to talk to the nodes.
    pub node: NodeOptions,
    /// Use raw Ethernet on this interface instead of UDP.
    pub ethernet: Option<String>,
    /// The local IP to bind the UDP socket to: the address nodes will see and grant. Default:
    /// the one this host uses to reach the coordinator.
    pub bind_ip: Option<std::net::IpAddr>,
}

/// Options of one allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocOptions {
    /// Copies of every stripe, each on its own node (default 1).
    pub replicas: Option<u32>,
    /// Bytes per stripe (default: the coordinator's).
    pub stripe_size: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
    session: SessionId,
    client: Client,
    /// Nodes already connected.
    connected: Mutex<std::collections::HashSet<PeerAddr>>,
    stop: Arc<AtomicBool>,
}

impl Inner {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> Result<T, PoolError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| PoolError::Http(e.to_string()))?;
        decode(resp)
    }

    /// A request to `peer` failed with `error`: when the link itself failed (the node was
    /// cut off, or restarted), connect to it again at the next placement refresh instead of
    /// failing on the dead link for ever.
    fn note_error(&self, peer: PeerAddr, error: &Error) {
        if matches!(error, Error::LinkFailed(_) | Error::PeerClosed) {
            self.connected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
        }
    }

    /// Connects the data-path client to every node of `nodes` it can reach.
    fn connect_nodes(&self, nodes: &[NodeAddr]) {
        for n in nodes {
            let Some(peer) = pick_addr(&self.client, &n.data_addrs) else {
                continue;
            };
            let mut done = self.connected.lock().unwrap_or_else(|p| p.into_inner());
            if done.contains(&peer) {
                continue;
            }
            if self.client.connect(peer, NodeOptions::default()).is_ok() {
                done.insert(peer);
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    resp: reqwest::blocking::Response,
) -> Result<T, PoolError> {
    let status = resp.status();
    let body = resp.bytes().map_err(|e| PoolError::Http(e.to_string()))?;
    if status.is_success() {
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| PoolError::Http(format!("bad answer: {e}")))
    } else {
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => Err(PoolError::Api(e)),
            Err(_) => Err(PoolError::Http(format!("HTTP {status}"))),
        }
    }
}

/// The data-path address of a node this client can use: UDP for a UDP client, the MAC for an
/// Ethernet client.
fn pick_addr(client: &Client, addrs: &[String]) -> Option<PeerAddr> {
    let want_udp = matches!(client.local_addr(), PeerAddr::Udp(_));
    addrs
        .iter()
        .find_map(|a| parse_peer(a).filter(|p| matches!(p, PeerAddr::Udp(_)) == want_udp))
}

/// The local IP this host uses to reach the host of `url` (no packet is sent: a UDP socket
/// is connected and asked for its address).
fn local_ip_towards(url: &str) -> Result<std::net::IpAddr, PoolError> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let target = hostport
        .to_socket_addrs()
        .map_err(|e| PoolError::Http(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| PoolError::Http(format!("{url}: no address")))?;
    let any: std::net::SocketAddr = if target.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .expect("literal");
    let s = UdpSocket::bind(any).map_err(|e| PoolError::Http(e.to_string()))?;
    s.connect(target)
        .map_err(|e| PoolError::Http(e.to_string()))?;
    Ok(s.local_addr()
        .map_err(|e| PoolError::Http(e.to_string()))?
        .ip())
}

/// Parses `udp://IP:PORT` or `eth/MAC`.
pub fn parse_peer(s: &str) -> Option<PeerAddr> {
    if let Some(a) = s.strip_prefix("udp://") {
        return a.parse().ok().map(PeerAddr::Udp);
    }
    s.strip_prefix("eth/")
        .and_then(EthernetAddress::parse)
        .map(PeerAddr::Ethernet)
}

/// Formats a peer the way the API writes it.
pub fn format_peer(p: &PeerAddr) -> String {
    match p {
        PeerAddr::Udp(a) => format!("udp://{a}"),
        PeerAddr::Ethernet(m) => format!("eth/{m}"),
    }
}

/// A session with the coordinator, and the data-path client its regions are used through.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Opens a session with the coordinator at `url` (e.g. `http://127.0.0.1:7500`) with a
    /// tenant's `token`, and starts heartbeating it.
    ///
    /// # Errors
    /// [`PoolError::Api`] with `Unauthorized` for a bad token, [`PoolError::Http`] when the
    /// coordinator cannot be reached, [`PoolError::Data`] when the socket cannot be opened.
    pub fn connect(url: &str, token: &str, options: PoolOptions) -> Result<Pool, PoolError> {
        let client = match &options.ethernet {
            Some(iface) => Client::ethernet(iface, options.client.clone())?,
            None => {
                let ip = match options.bind_ip {
                    Some(ip) => ip,
                    None => local_ip_towards(url)?,
                };
                Client::udp_at(std::net::SocketAddr::new(ip, 0), options.client.clone())?
            }
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PoolError::Http(e.to_string()))?;
        let base = url.trim_end_matches('/').to_string();
        let open = OpenSession {
            client_addr: format_peer(&client.local_addr()),
        };
        let resp = http
            .post(format!("{base}/v1/sessions"))
            .bearer_auth(token)
            .json(&open)
            .send()
            .map_err(|e| PoolError::Http(e.to_string()))?;
        let opened: SessionOpened = decode(resp)?;
        let stop = Arc::new(AtomicBool::new(false));
        let inner = Arc::new(Inner {
            http,
            base,
            token: token.to_string(),
            session: opened.session_id,
            client,
            connected: Mutex::new(Default::default()),
            stop: stop.clone(),
        });
        spawn_heartbeat(Arc::downgrade(&inner), opened.lease, stop);
        Ok(Pool { inner })
    }

    /// The session id.
    pub fn session(&self) -> &SessionId {
        &self.inner.session
    }

    /// The data-path client (its address is what the nodes grant).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Allocates a region of `bytes`.
    ///
    /// # Errors
    /// [`PoolError::Api`] with `OutOfCapacity`, `QuotaExceeded`, `BadRequest`…
    pub fn alloc(&self, bytes: u64, options: AllocOptions) -> Result<Region, PoolError> {
        let req = AllocRequest {
            session_id: self.inner.session.clone(),
            bytes,
            replicas: options.replicas,
            stripe_size: options.stripe_size,
        };
        let info: RegionInfo = self.inner.call(
            self.inner
                .http
                .post(self.inner.url("/v1/regions"))
                .json(&req),
        )?;
        self.inner.connect_nodes(&info.nodes);
        Ok(Region {
            pool: self.inner.clone(),
            info: Mutex::new(info),
            freed: false,
            owned: true,
            write_refreshed: Mutex::new(None),
            moves: AtomicU64::new(0),
        })
    }

    /// Uses region `id`, allocated by another session of the same tenant (another process
    /// sharing it): the coordinator grants this session's client access to every extent,
    /// for as long as this session lives. Dropping the returned [`Region`] does not free it;
    /// [`Region::free`] does.
    ///
    /// # Errors
    /// [`PoolError::Api`] with `UnknownRegion`, `NotYours` (another tenant's region), or
    /// `NodeDown` when a node could not take the grant (attaching again retries).
    pub fn attach(&self, id: RegionId) -> Result<Region, PoolError> {
        let req = AttachRequest {
            session_id: self.inner.session.clone(),
        };
        let path = format!("/v1/regions/{id}/attach");
        let info: RegionInfo = self
            .inner
            .call(self.inner.http.post(self.inner.url(&path)).json(&req))?;
        self.inner.connect_nodes(&info.nodes);
        Ok(Region {
            pool: self.inner.clone(),
            info: Mutex::new(info),
            freed: false,
            owned: false,
            write_refreshed: Mutex::new(None),
            moves: AtomicU64::new(0),
        })
    }

    /// The regions of this tenant.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn regions(&self) -> Result<Vec<RegionInfo>, PoolError> {
        self.inner
            .call(self.inner.http.get(self.inner.url("/v1/regions")))
    }

    /// Stops heartbeating the session without ending it, as if the program had died: once
    /// its lease runs out the coordinator frees its regions. For tests of session expiry.
    #[doc(hidden)]
    pub fn stop_heartbeat(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }

    /// Ends the session: the coordinator frees its regions.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn close(self) -> Result<(), PoolError> {
        self.inner.stop.store(true, Ordering::Relaxed);
        let path = format!("/v1/sessions/{}", self.inner.session);
        self.inner
            .call::<()>(self.inner.http.delete(self.inner.url(&path)))
    }
}

fn spawn_heartbeat(inner: std::sync::Weak<Inner>, lease: Lease, stop: Arc<AtomicBool>) {
    let every = Duration::from_millis((lease.lease_ms / 3).max(50));
    let _ = std::thread::Builder::new()
        .name("oxmem-pool-heartbeat".into())
        .spawn(move || {
            let mut wait = every;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(wait);
                let Some(inner) = inner.upgrade() else { return };
                let path = format!("/v1/sessions/{}/heartbeat", inner.session);
                // An answer that takes longer than the interval is given up on, and the next
                // heartbeat sent: the coordinator counts a heartbeat from its arrival, even one
                // it was too busy to answer, so a busy coordinator keeps hearing from us.
                let request = inner.http.post(inner.url(&path)).timeout(every);
                // After a failure (the coordinator restarting, say) try again soon.
                wait = match inner.call::<Lease>(request) {
                    Ok(_) => every,
                    Err(_) => every.min(Duration::from_millis(100)),
                };
            }
        });
}

/// Memory from the pool: bytes `0..len()`, striped and possibly replicated over nodes.
///
/// Dropping a region allocated by this pool frees it on the coordinator (use
/// [`Region::free`] to see the result); dropping one from [`Pool::attach`] does not.
#[derive(Debug)]
pub struct Region {
    pool: Arc<Inner>,
    info: Mutex<RegionInfo>,
    freed: bool,
    /// Allocated by this pool (freed on drop), not attached.
    owned: bool,
    /// When a failed write last asked the coordinator for the placement.
    write_refreshed: Mutex<Option<Instant>>,
    /// How many times a refresh found the copies at other addresses (see `Region::write`).
    moves: AtomicU64,
}

/// Where every copy of `info` is, (node, address) per stripe, health aside: what a move changes.
fn addresses(info: &RegionInfo) -> impl Iterator<Item = (&NodeId, u64)> + '_ {
    info.stripes
        .iter()
        .flat_map(|s| s.copies.iter().map(|c| (&c.node_id, c.address)))
}

/// How often failed writes may ask the coordinator where the stripes are.
const WRITE_REFRESH_EVERY: Duration = Duration::from_millis(200);

/// A copy of a stripe: its node and the address of its first byte there.
type CopyAddr = (PeerAddr, u64);

/// A piece of a transfer inside one stripe.
#[derive(Debug, Clone, Copy)]
struct Span {
    stripe: usize,
    /// Offset inside the stripe.
    within: u64,
    /// Offset in the caller's buffer.
    at: usize,
    len: usize,
}

impl Region {
    /// Its id.
    pub fn id(&self) -> RegionId {
        self.lock().region_id
    }

    /// Bytes in the region.
    pub fn len(&self) -> u64 {
        self.lock().bytes
    }

    /// Whether the region is empty (never: the coordinator refuses empty regions).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where its stripes are, as last learned from the coordinator.
    pub fn info(&self) -> RegionInfo {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegionInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the coordinator where the stripes are now (after a node failed and its stripes
    /// were copied elsewhere) and connects to new nodes.
    ///
    /// # Errors
    /// As [`Pool::alloc`].
    pub fn refresh(&self) -> Result<RegionHealth, PoolError> {
        let path = format!("/v1/regions/{}", self.id());
        let info: RegionInfo = self.pool.call(self.pool.http.get(self.pool.url(&path)))?;
        self.pool.connect_nodes(&info.nodes);
        let health = info.health;
        let mut known = self.lock();
        if addresses(&known).ne(addresses(&info)) {
            self.moves.fetch_add(1, Ordering::Relaxed);
        }
        *known = info;
        Ok(health)
    }

    fn spans(&self, offset: u64, len: usize) -> Result<Vec<Span>, PoolError> {
        let info = self.lock();
        let region_len = info.bytes;
        let end = offset.checked_add(len as u64).filter(|&e| e <= region_len);
        if end.is_none() || len == 0 {
            return Err(PoolError::OutOfRange {
                offset,
                len: len as u64,
                region_len,
            });
        }
        let stripe = info.stripe_size;
        let mut out = Vec::new();
        let mut at = 0usize;
        let mut pos = offset;
        while at < len {
            let idx = pos / stripe;
            let within = pos % stripe;
            let n = ((stripe - within) as usize).min(len - at);
            out.push(Span {
                stripe: idx as usize,
                within,
                at,
                len: n,
            });
            at += n;
            pos += n as u64;
        }
        Ok(out)
    }

    /// The data-path addresses of the copies of stripe `index`, healthy ones first.
    fn copies(&self, index: usize) -> Vec<(PeerAddr, u64)> {
        self.copies_with_health(index)
            .into_iter()
            .map(|(_, p, a)| (p, a))
            .collect()
    }

    /// The copies of stripe `index` with whether each is healthy, healthy ones first.
    fn copies_with_health(&self, index: usize) -> Vec<(bool, PeerAddr, u64)> {
        let info = self.lock();
        let Some(stripe) = info.stripes.get(index) else {
            return Vec::new();
        };
        let mut copies: Vec<(bool, PeerAddr, u64)> = stripe
            .copies
            .iter()
            .filter_map(|c| {
                let node = info.nodes.iter().find(|n| n.node_id == c.node_id)?;
                let peer = pick_addr(&self.pool.client, &node.data_addrs)?;
                Some((c.healthy, peer, c.address))
            })
            .collect();
        copies.sort_by_key(|(healthy, ..)| !healthy);
        copies
    }

    /// Reads `buf.len()` bytes at `offset`: every stripe at once, each from a healthy copy,
    /// failing over to another healthy copy (and asking the coordinator for news) when one
    /// fails. Copies that are not healthy (stale, or being filled) are never read.
    ///
    /// # Errors
    /// [`PoolError::OutOfRange`], [`PoolError::NoCopy`] when a stripe has no healthy copy,
    /// or the data-path error when no healthy copy of a stripe answers.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PoolError> {
        let spans = self.spans(offset, buf.len())?;
        // Each span with the copies tried so far (the one under way last).
        let mut pending: Vec<(Span, Vec<CopyAddr>, Ticket)> = Vec::with_capacity(spans.len());
        let mut refreshed = false;
        for s in &spans {
            let (copy, ticket) = match self.start_read_copy(*s, &[]) {
                // No copy known healthy: the cached placement may be old.
                Err(PoolError::NoCopy { .. }) if !refreshed => {
                    let _ = self.refresh();
                    refreshed = true;
                    self.start_read_copy(*s, &[])?
                }
                r => r?,
            };
            pending.push((*s, vec![copy], ticket));
        }
        while let Some((span, mut tried, ticket)) = pending.pop() {
            match ticket.wait() {
                Ok(Completed::Read(data)) => {
                    buf[span.at..span.at + span.len].copy_from_slice(&data)
                }
                Ok(_) => return Err(Error::Protocol("reply kind").into()),
                Err(e) => {
                    if let Some(&(peer, _)) = tried.last() {
                        self.pool.note_error(peer, &e);
                    }
                    // That copy failed: try one not tried yet, after learning the latest
                    // placement. (Copies are picked by address, not by position: a refresh
                    // reorders them, healthy first, and drops the replaced ones.)
                    if !refreshed {
                        let _ = self.refresh();
                        refreshed = true;
                    }
                    match self.start_read_copy(span, &tried) {
                        Ok((copy, ticket)) => {
                            tried.push(copy);
                            pending.push((span, tried, ticket));
                        }
                        Err(PoolError::NoCopy { .. }) => return Err(e.into()),
                        Err(other) => return Err(other),
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts reading `span` from its first healthy copy not in `tried`. Never from a copy
    /// that is not healthy: a stale copy misses writes, and one being filled by a
    /// re-replication holds zeros where the copy has not reached yet.
    fn start_read_copy(
        &self,
        span: Span,
        tried: &[CopyAddr],
    ) -> Result<(CopyAddr, Ticket), PoolError> {
        let (_, peer, base) = self
            .copies_with_health(span.stripe)
            .into_iter()
            .find(|(healthy, p, a)| *healthy && !tried.contains(&(*p, *a)))
            .ok_or(PoolError::NoCopy {
                stripe: span.stripe as u64,
            })?;
        let t = self
            .pool
            .client
            .start_read(peer, base + span.within, span.len)?;
        Ok(((peer, base), t))
    }

    /// Writes `data` at `offset`, to every copy of every stripe touched, all at once. When a
    /// node denies it because the region's copies have moved (a re-replication starts by
    /// moving them to new addresses), it learns where they are and writes once more there.
    ///
    /// # Errors
    /// The first error of any copy: the write may then be applied to some copies only. A
    /// failed write also asks the coordinator for the latest placement, so that once a lost
    /// copy has been replaced, the next writes go to the new one.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), PoolError> {
        let moves = self.moves.load(Ordering::Relaxed);
        match self.write_once(offset, data) {
            // A copy denied it: the region may have moved to new addresses (a re-replication
            // moves it first). If the copies are not where this write sent it, write again
            // to where they are: the bytes are the same, so copies the first try reached are
            // not harmed.
            Err(PoolError::Data(Error::Denied { .. })) if self.moved_since(moves) => {
                self.write_once(offset, data)
            }
            r => r,
        }
    }

    /// Whether a refresh has found the copies elsewhere since the count was `moves`, after
    /// asking the coordinator (unless the failed write's own refresh already found that).
    fn moved_since(&self, moves: u64) -> bool {
        let moved = || self.moves.load(Ordering::Relaxed) != moves;
        moved() || (self.refresh().is_ok() && moved())
    }

    fn write_once(&self, offset: u64, data: &[u8]) -> Result<(), PoolError> {
        // While the region is not healthy the coordinator is adding copies: learn them (at
        // most every `WRITE_REFRESH_EVERY`) so this write reaches the copy being made too,
        // and the copier's comparison of both ends converges.
        if self.lock().health != RegionHealth::Healthy {
            self.refresh_after_write_error();
        }
        let spans = self.spans(offset, data.len())?;
        let mut tickets = Vec::new();
        for s in &spans {
            let copies = self.copies(s.stripe);
            if copies.is_empty() {
                return Err(PoolError::NoCopy {
                    stripe: s.stripe as u64,
                });
            }
            for (peer, base) in copies {
                let t = self.pool.client.start_write(
                    peer,
                    base + s.within,
                    &data[s.at..s.at + s.len],
                )?;
                tickets.push((peer, t));
            }
        }
        // The first error, but a denial rather than anything else: a denial says the copies
        // may have moved (see `write`).
        let mut first_error: Option<Error> = None;
        for (peer, t) in tickets {
            if let Err(e) = t.wait() {
                self.pool.note_error(peer, &e);
                let denied = |e: &Error| matches!(e, Error::Denied { .. });
                if first_error
                    .as_ref()
                    .is_none_or(|f| !denied(f) && denied(&e))
                {
                    first_error = Some(e);
                }
            }
        }
        match first_error {
            Some(e) => {
                // A copy failed: its node may be down and the stripe copied elsewhere. Learn
                // the placement now (at most every `WRITE_REFRESH_EVERY`), or a client that
                // only writes would keep writing to the dead copy, and failing, forever.
                self.refresh_after_write_error();
                Err(e.into())
            }
            None => Ok(()),
        }
    }

    fn refresh_after_write_error(&self) {
        {
            let mut last = self
                .write_refreshed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < WRITE_REFRESH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let _ = self.refresh();
    }

    /// Applies an atomic operation to the `width`-byte integer at `offset` on every copy, in
    /// copy order, and returns the previous value from the first. Copies stay equal as long as
    /// atomics on a replicated word come from one client at a time.
    ///
    /// # Errors
    /// [`PoolError::OutOfRange`], or the data-path error.
    pub fn atomic(
        &self,
        offset: u64,
        op: AtomicOp,
        width: u8,
        operand: u64,
    ) -> Result<u64, PoolError> {
        let spans = self.spans(offset, usize::from(width))?;
        let [span] = spans.as_slice() else {
            return Err(Error::InvalidRequest("an atomic may not cross a stripe").into());
        };
        // The previous value comes from the first copy: it must be a healthy one (copies are
        // listed healthy first), not a stale copy or one being filled.
        if !self
            .copies_with_health(span.stripe)
            .first()
            .is_some_and(|(healthy, ..)| *healthy)
        {
            let _ = self.refresh();
        }
        let copies = self.copies_with_health(span.stripe);
        if !copies.first().is_some_and(|(healthy, ..)| *healthy) {
            return Err(PoolError::NoCopy {
                stripe: span.stripe as u64,
            });
        }
        let mut old = None;
        for (_, peer, base) in copies {
            let done = self
                .pool
                .client
                .start_atomic(peer, base + span.within, op, width, operand)?
                .wait();
            if let Err(e) = &done {
                self.pool.note_error(peer, e);
                self.refresh_after_write_error();
            }
            match done? {
                Completed::Atomic(v) => {
                    old.get_or_insert(v);
                }
                _ => return Err(Error::Protocol("reply kind").into()),
            }
        }
        old.ok_or(PoolError::NoCopy {
            stripe: span.stripe as u64,
        })
    }

    /// Adds `v` to the u64 at `offset`; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn fetch_add(&self, offset: u64, v: u64) -> Result<u64, PoolError> {
        self.atomic(offset, AtomicOp::Add, 8, v)
    }

    /// Frees the region: when this returns, every node denies access to it.
    ///
    /// # Errors
    /// As [`Pool::alloc`].
    pub fn free(mut self) -> Result<(), PoolError> {
        self.freed = true;
        self.free_now()
    }

    fn free_now(&self) -> Result<(), PoolError> {
        let path = format!("/v1/regions/{}", self.id());
        match self
            .pool
            .call::<()>(self.pool.http.delete(self.pool.url(&path)))
        {
            // Already gone (its session ended): nothing leaked.
            Err(PoolError::Api(ApiError {
                code: ErrorCode::UnknownRegion,
                ..
            })) => Ok(()),
            r => r,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.owned && !self.freed {
            let _ = self.free_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_format_both_ways() {
        let p = parse_peer("udp://127.0.0.1:7447").unwrap();
        assert_eq!(format_peer(&p), "udp://127.0.0.1:7447");
        let m = parse_peer("eth/02:00:00:00:00:01").unwrap();
        assert_eq!(format_peer(&m), "eth/02:00:00:00:00:01");
        assert!(parse_peer("tcp://x").is_none());
    }
}
