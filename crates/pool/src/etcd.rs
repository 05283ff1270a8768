//! The etcd backend: a [`MetadataStore`] shared by several coordinators, and the leader
//! election that decides which one of them may write to it.
//!
//! # Layout in etcd
//!
//! Everything of one cluster lives under `/oxmem/<cluster>/`:
//!
//! - `/oxmem/<cluster>/data/<key>`: the records ([`EtcdStore::load_all`] returns `<key>`).
//! - `/oxmem/<cluster>/election/<lease id>`: one key per campaigner, made by etcd's election
//!   API (v3election, served by etcd 3.4 and later). Its value is the name the campaigner gave
//!   (its address, say); the key with the lowest create revision is the leader.
//!
//! # How a cluster of coordinators uses it
//!
//! Every coordinator connects with the same endpoints and cluster name and campaigns:
//!
//! ```no_run
//! # async fn run() -> Result<(), oxmem_pool::store::StoreError> {
//! use oxmem_pool::etcd::{EtcdConfig, EtcdLeadership};
//! use oxmem_pool::store::MetadataStore;
//!
//! let config = EtcdConfig::new(vec!["http://10.0.0.1:2379".into()], "prod");
//! let leadership = EtcdLeadership::connect(config).await?;
//! let store = leadership.store();
//! // Followers serve NotLeader (and can name the leader: `leadership.leader().await`) while
//! // they wait here.
//! leadership.campaign("10.0.0.7:8080").await?;
//! // Leader now: load everything (a previous leader may have written up to a moment ago)
//! // and serve, writing through `store.apply`.
//! let records = store.load_all().await?;
//! # drop(records);
//! let mut lost = leadership.subscribe();
//! lost.wait_for(|leader| !leader).await.ok();
//! // Lost leadership (lease expired, key deleted): stop serving, drop the in-memory state,
//! // answer NotLeader, and campaign again.
//! # Ok(()) }
//! ```
//!
//! 1. Each coordinator calls [`EtcdLeadership::campaign`], which returns once it is leader.
//!    While it waits, it is a follower and answers requests with `NotLeader`
//!    ([`EtcdLeadership::leader`] names the current leader so clients can be redirected).
//! 2. The new leader loads every record with [`MetadataStore::load_all`] — never trusting
//!    state it had in memory from an earlier term — and serves, writing through
//!    [`MetadataStore::apply`].
//! 3. When leadership is lost ([`EtcdLeadership::subscribe`] turns `false`, or an `apply`
//!    fails with [`StoreError::NotLeader`]) the coordinator stops serving, forgets its state
//!    and campaigns again. A graceful shutdown calls [`EtcdLeadership::resign`], so a follower
//!    takes over at once; a crashed leader's lease expires after [`EtcdConfig::lease_ttl`] and
//!    a follower takes over then.
//!
//! # Fencing
//!
//! Leadership is held through an etcd lease (TTL [`EtcdConfig::lease_ttl`], kept alive by a
//! background task every third of it). A process may believe it still leads when it does not
//! (a long pause, a partition: its lease expired and another coordinator was elected), so
//! every [`MetadataStore::apply`] is one etcd transaction guarded by the comparison
//! `create_revision(our election key) == the revision it had when we won`. Once the key is
//! gone (lease expired, resigned, deleted) the comparison fails, the whole batch is rejected
//! and `apply` returns [`StoreError::NotLeader`]: a deposed leader can never write, whatever
//! it believes. A newer leader's key has a higher create revision than ours, and ours is the
//! lowest as long as it exists, so "our key still exists with its revision" is exactly "we
//! are still the leader".
//!
//! # Limits
//!
//! A batch is one etcd transaction: at most `--max-txn-ops` distinct keys (128 by default)
//! and `--max-request-bytes` (1.5 MiB by default) in all. Several changes to one key in a
//! batch are folded into the last one (etcd refuses a key twice in one transaction).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaderKey, LeaseKeepAliveStream,
    LeaseKeeper, ResignOptions, Txn, TxnOp,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{Change, MetadataStore, StoreError};

/// How to reach etcd and which cluster's keys to use.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// etcd client URLs, such as `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The cluster's name: its keys live under `/oxmem/<cluster>/`.
    pub cluster: String,
    /// The leadership lease's time to live: a crashed leader is replaced after at most this
    /// long. Whole seconds, at least 1 (etcd's unit); default 3 s.
    pub lease_ttl: Duration,
    /// Limit on each request other than the campaign itself; default 5 s.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration with a 3 s lease and 5 s request timeout.
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>) -> Self {
        Self {
            endpoints,
            cluster: cluster.into(),
            lease_ttl: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The prefix of every key of this cluster: `/oxmem/<cluster>/`.
    pub fn root(&self) -> String {
        format!("/oxmem/{}/", self.cluster)
    }

    /// The prefix of the records: `/oxmem/<cluster>/data/`.
    pub fn data_prefix(&self) -> String {
        format!("{}data/", self.root())
    }

    /// The election's name: `/oxmem/<cluster>/election` (campaigners' keys are below it).
    pub fn election_name(&self) -> String {
        format!("{}election", self.root())
    }

    fn ttl_secs(&self) -> i64 {
        (self.lease_ttl.as_secs() as i64).max(1)
    }
}

fn backend(e: impl fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(backend),
        Err(_) => Err(StoreError::Backend(format!("etcd: no answer in {limit:?}"))),
    }
}

/// The term this process won: its election key and that key's create revision.
#[derive(Debug, Clone)]
struct Term {
    leader: LeaderKey,
}

impl Term {
    fn key(&self) -> &[u8] {
        self.leader.key()
    }
    fn rev(&self) -> i64 {
        self.leader.rev()
    }
    fn lease(&self) -> i64 {
        self.leader.lease()
    }
}

/// State shared by the leadership, its stores and its keep-alive task.
struct Shared {
    client: Client,
    config: EtcdConfig,
    term: Mutex<Option<Term>>,
    leader_tx: watch::Sender<bool>,
}

impl Shared {
    fn term(&self) -> MutexGuard<'_, Option<Term>> {
        self.term.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Option<Term> {
        self.term().clone()
    }

    fn install(&self, term: Term) {
        *self.term() = Some(term);
        self.leader_tx.send_replace(true);
    }

    /// Forgets the term held with `lease`, if it is the current one.
    fn lose(&self, lease: i64) {
        let mut term = self.term();
        if term.as_ref().is_some_and(|t| t.lease() == lease) {
            *term = None;
            drop(term);
            self.leader_tx.send_replace(false);
        }
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A lease granted for one campaign, kept alive by a background task until dropped.
#[derive(Debug)]
struct Session {
    lease: i64,
    keepalive: AbortOnDrop,
}

/// A session not yet backing a term: revoked (best effort, in the background) when dropped.
struct Candidacy(Option<Session>, Arc<Shared>);

impl Candidacy {
    fn lease(&self) -> i64 {
        self.0.as_ref().map_or(0, |s| s.lease)
    }
}

impl Drop for Candidacy {
    fn drop(&mut self) {
        let Some(session) = self.0.take() else { return };
        drop(session.keepalive);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut client = self.1.client.clone();
            let limit = self.1.config.request_timeout;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(limit, client.lease_revoke(session.lease)).await;
            });
        }
    }
}

/// This process's part in the election of the cluster's leader.
///
/// [`campaign`](Self::campaign) waits until this process leads; [`is_leader`](Self::is_leader)
/// and [`subscribe`](Self::subscribe) tell whether it still does; [`resign`](Self::resign)
/// hands leadership over. Writes go through [`store`](Self::store), fenced by the term.
///
/// Dropping it without resigning stops keeping the lease alive, as if the process had
/// crashed: another campaigner takes over once the lease expires, and the stores from
/// [`store`](Self::store) are fenced off from then on.
pub struct EtcdLeadership {
    shared: Arc<Shared>,
    session: tokio::sync::Mutex<Option<Session>>,
}

impl fmt::Debug for EtcdLeadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLeadership")
            .field("config", &self.shared.config)
            .field("term", &self.shared.current())
            .finish_non_exhaustive()
    }
}

impl EtcdLeadership {
    /// Connects to etcd. Nothing is campaigned for yet.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Backend("etcd: no endpoints".into()));
        }
        if config.cluster.is_empty() || config.cluster.contains('/') {
            return Err(StoreError::Backend(format!(
                "etcd: bad cluster name {:?} (empty or with '/')",
                config.cluster
            )));
        }
        let options = ConnectOptions::new().with_connect_timeout(config.request_timeout);
        let client = timed(
            config.request_timeout,
            Client::connect(config.endpoints.clone(), Some(options)),
        )
        .await?;
        let (leader_tx, _) = watch::channel(false);
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                term: Mutex::new(None),
                leader_tx,
            }),
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.shared.config
    }

    /// The etcd client, for callers that need more of etcd.
    pub fn client(&self) -> Client {
        self.shared.client.clone()
    }

    /// A store over this cluster's records whose writes succeed only while this process leads.
    pub fn store(&self) -> EtcdStore {
        EtcdStore {
            shared: self.shared.clone(),
        }
    }

    /// Whether this process leads, as far as it knows (the keep-alive task checks every third
    /// of the lease TTL; [`MetadataStore::apply`] checks with etcd on each write).
    pub fn is_leader(&self) -> bool {
        self.shared.term().is_some()
    }

    /// A channel that holds `true` while this process leads: wait on it to learn of becoming
    /// or ceasing to be the leader.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shared.leader_tx.subscribe()
    }

    /// The current leader's name (what it passed to [`campaign`](Self::campaign)), or `None`
    /// when there is none.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.shared.client.clone();
        let prefix = format!("{}/", self.shared.config.election_name());
        // What the election API's `leader` does, without its error for "no leader".
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(
                etcd_client::SortTarget::Create,
                etcd_client::SortOrder::Ascend,
            )
            .with_limit(1);
        let resp = timed(
            self.shared.config.request_timeout,
            client.get(prefix, Some(options)),
        )
        .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Waits until this process is the leader, under `name` (which [`leader`](Self::leader)
    /// reports to the others: an address, say). Returns at once if it already leads.
    ///
    /// Cancel-safe: dropping the future withdraws the candidacy (etcd drops the key of a
    /// cancelled campaign; at worst the lease expires after its TTL). Fails on etcd errors;
    /// the caller may campaign again.
    pub async fn campaign(&self, name: &str) -> Result<(), StoreError> {
        let mut session = self.session.lock().await;
        loop {
            if self.is_leader() {
                return Ok(());
            }
            // A new lease for each term: an earlier one may have expired.
            if let Some(old) = session.take() {
                self.revoke(old).await;
            }
            // Until the term is installed the session belongs to this future: cancelled, it
            // revokes the lease, so that a campaign etcd decided for us just as we stopped
            // listening cannot leave a leader that does not know it leads.
            let mut candidacy = Candidacy(Some(self.start_session().await?), self.shared.clone());
            let lease = candidacy.lease();

            let mut election = self.shared.client.election_client();
            let resp = election
                .campaign(self.shared.config.election_name(), name, lease)
                .await
                .map_err(backend)?;
            let leader = resp.leader().cloned().ok_or_else(|| {
                StoreError::Backend("etcd: campaign answered no leader key".into())
            })?;

            // etcd answers a campaign whose lease expired while it waited as won; check that
            // the key is still there, ours, with its revision.
            if !self.still_holds(&leader).await? {
                continue;
            }
            self.shared.install(Term { leader });
            let fresh = candidacy.0.take().expect("session held until here");
            let finished = fresh.keepalive.0.is_finished();
            *session = Some(fresh);
            // If the keep-alive task gave up before the term was installed, it could not
            // clear it: do it here.
            if finished {
                self.shared.lose(lease);
                continue;
            }
            return Ok(());
        }
    }

    /// Hands leadership over (a follower takes over at once) and withdraws any candidacy.
    /// Stores from [`store`](Self::store) fail with [`StoreError::NotLeader`] afterwards.
    pub async fn resign(&self) -> Result<(), StoreError> {
        let mut session = self.session.lock().await;
        let term = self.shared.current();
        if let Some(term) = &term {
            self.shared.lose(term.lease());
        }
        let mut result = Ok(());
        if let Some(term) = term {
            let mut election = self.shared.client.election_client();
            let resign = ResignOptions::new().with_leader(term.leader.clone());
            result = timed(
                self.shared.config.request_timeout,
                election.resign(Some(resign)),
            )
            .await
            .map(drop);
        }
        if let Some(old) = session.take() {
            // Revoking deletes the election key too, should the resignation have failed.
            self.revoke(old).await;
        }
        result
    }

    async fn revoke(&self, session: Session) {
        drop(session.keepalive);
        let mut client = self.shared.client.clone();
        // Best effort: otherwise the lease expires by itself.
        let _ = timed(
            self.shared.config.request_timeout,
            client.lease_revoke(session.lease),
        )
        .await;
    }

    async fn start_session(&self) -> Result<Session, StoreError> {
        let mut client = self.shared.client.clone();
        let config = &self.shared.config;
        let granted = Instant::now();
        let grant = timed(
            config.request_timeout,
            client.lease_grant(config.ttl_secs(), None),
        )
        .await?;
        let lease = grant.id();
        let ttl = Duration::from_secs(grant.ttl().max(1) as u64);
        let task = tokio::spawn(keep_alive(self.shared.clone(), lease, ttl, granted));
        Ok(Session {
            lease,
            keepalive: AbortOnDrop(task),
        })
    }

    async fn still_holds(&self, leader: &LeaderKey) -> Result<bool, StoreError> {
        let mut client = self.shared.client.clone();
        let resp = timed(
            self.shared.config.request_timeout,
            client.get(leader.key(), None),
        )
        .await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == leader.rev() && kv.lease() == leader.lease()))
    }
}

/// Keeps `lease` alive every third of its TTL; while it backs the current term, also checks
/// that the election key is still there. Gives up, and clears the term, when the lease has
/// expired (or no keep-alive got through for a whole TTL) or the key is gone.
///
/// `granted` is when the lease was asked for: it expires at the latest one TTL after the last
/// keep-alive that got through was sent.
async fn keep_alive(shared: Arc<Shared>, lease: i64, ttl: Duration, granted: Instant) {
    let interval = ttl / 3;
    let mut last_ok = granted;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        let sent = Instant::now();
        let once = keep_alive_once(&shared.client, &mut stream, lease);
        match tokio::time::timeout(interval, once).await {
            Ok(Ok(remaining)) if remaining > 0 => last_ok = sent,
            Ok(Ok(_)) => break, // expired
            _ => {
                stream = None; // reconnect, soon
                if last_ok.elapsed() >= ttl {
                    break;
                }
                tokio::time::sleep(interval / 4).await;
                continue;
            }
        }
        if let Some(term) = shared.current().filter(|t| t.lease() == lease) {
            let mut client = shared.client.clone();
            let check = tokio::time::timeout(interval, client.get(term.key(), None)).await;
            if let Ok(Ok(resp)) = check {
                let held = resp
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == term.rev());
                if !held {
                    let _ = tokio::time::timeout(interval, client.lease_revoke(lease)).await;
                    break;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
    shared.lose(lease);
}

async fn keep_alive_once(
    client: &Client,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    lease: i64,
) -> Result<i64, etcd_client::Error> {
    let (keeper, responses) = match stream {
        Some(s) => s,
        None => stream.insert(client.clone().lease_keep_alive(lease).await?),
    };
    keeper.keep_alive().await?;
    match responses.message().await? {
        Some(resp) => Ok(resp.ttl()),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "stream closed".into(),
        )),
    }
}

/// The cluster's records in etcd, under `/oxmem/<cluster>/data/`. Made by
/// [`EtcdLeadership::store`]; writes succeed only while that leadership holds (see the
/// module docs on fencing). Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.shared.config.data_prefix())
            .finish_non_exhaustive()
    }
}

/// Records per range request of [`EtcdStore::load_all`].
const PAGE: i64 = 1000;

impl MetadataStore for EtcdStore {
    async fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.shared.config.data_prefix();
        let limit = self.shared.config.request_timeout;
        let mut client = self.shared.client.clone();
        let range_end = {
            // The end of the prefix range: the prefix with its last byte incremented ('/' + 1).
            let mut end = prefix.clone().into_bytes();
            *end.last_mut().expect("non-empty prefix") += 1;
            end
        };
        let mut out = Vec::new();
        let mut from = prefix.clone().into_bytes();
        let mut revision = 0; // pinned after the first page: one consistent snapshot
        loop {
            let mut options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(PAGE);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let resp = timed(limit, client.get(from.clone(), Some(options))).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let key = kv.key_str().map_err(backend)?;
                let key = key.strip_prefix(prefix.as_str()).unwrap_or(key);
                out.push((key.to_owned(), kv.value().to_vec()));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let Some(term) = self.shared.current() else {
            return Err(StoreError::NotLeader);
        };
        let prefix = self.shared.config.data_prefix();
        // etcd refuses a key twice in one transaction: keep each key's last change.
        let mut last: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for change in changes {
            match change {
                Change::Put { key, value } => last.insert(key, Some(value)),
                Change::Delete { key } => last.insert(key, None),
            };
        }
        let ops: Vec<TxnOp> = last
            .into_iter()
            .map(|(key, value)| {
                let key = format!("{prefix}{key}");
                match value {
                    Some(value) => TxnOp::put(key, value, None),
                    None => TxnOp::delete(key, None),
                }
            })
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(
                term.key(),
                CompareOp::Equal,
                term.rev(),
            )])
            .and_then(ops);
        let mut client = self.shared.client.clone();
        let resp = timed(self.shared.config.request_timeout, client.txn(txn)).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            self.shared.lose(term.lease());
            Err(StoreError::NotLeader)
        }
    }
}
