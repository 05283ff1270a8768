//! The local paged KV cache: blocks kept as bytes under a byte budget (the part GPU memory
//! plays in a real server), LRU eviction, and asynchronous write-back of evicted blocks to a
//! [`KvTier`].
//!
//! **Write-back.** Evicted blocks are not written by the serving thread. They are queued in
//! batches (at most [`WRITE_BATCH`] blocks; a partial batch is handed over at the end of each
//! request by [`LocalCache::unpin_all`]) and sent over a bounded channel to a background writer
//! thread, which stores each batch with one [`KvTier::put_many`] and reports back. The channel
//! holds at most [`WRITE_QUEUE`] batches: when the tier is slower than eviction the serving
//! thread blocks handing over the next batch (back-pressure), so the evicted bytes held in
//! memory are bounded by about `(WRITE_QUEUE + 2) × WRITE_BATCH` blocks (queued, being
//! written, being filled). That time is counted in [`CacheCounters::write_wait`].
//!
//! **Read-through.** A block from the moment it is evicted until its write is acknowledged is
//! *in flight*: the cache keeps a reference to its bytes ([`LocalCache::copy_in_flight`]), so
//! a request needing it takes it from there instead of recomputing it or racing the tier. A
//! block is recorded as held by the tier only once its write succeeded, and an in-flight block
//! evicted again is not queued twice.
//!
//! **Errors.** A failed `put_many` loses that batch's blocks (they are recomputed if needed
//! again) and its error is kept and returned by the next [`LocalCache::flush`],
//! [`LocalCache::unpin_all`] or [`LocalCache::finish`]. [`LocalCache::finish`] waits until
//! every write handed over has completed: call it before reading [`CacheCounters`] as totals
//! or stopping a clock. Dropping the cache hands over what is queued, lets the writer finish
//! and joins it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oxmem_kv::{BlockKey, KvError, KvTier};

use crate::LlmError;

#[derive(Debug)]
struct Entry {
    data: Vec<u8>,
    tick: u64,
    pins: u32,
}

/// Counters of a [`LocalCache`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Blocks evicted from the local budget.
    pub evictions: u64,
    /// Evicted blocks written to the tier (writes acknowledged so far).
    pub tier_writes: u64,
    /// Evicted blocks not written because the tier already holds them or they are in flight.
    pub tier_writes_skipped: u64,
    /// Evicted blocks whose write failed (lost; recomputed if needed again).
    pub tier_write_failures: u64,
    /// Bytes written to the tier (writes acknowledged so far).
    pub bytes_written: u64,
    /// In-flight blocks copied back into the cache ([`LocalCache::copy_in_flight`]).
    pub in_flight_reads: u64,
    /// Time the serving thread waited for the writer: handing a batch to a full queue
    /// (back-pressure) or waiting in [`LocalCache::finish`].
    pub write_wait: Duration,
    /// Largest number of bytes held locally at once (above the budget only while one request's
    /// pinned blocks do not fit). In-flight blocks are not counted.
    pub peak_bytes: u64,
}

/// Evicted blocks are handed to the writer in batches of at most this many (one `put_many`
/// each).
pub const WRITE_BATCH: usize = 64;

/// Batches the write-back channel holds before handing over another blocks the serving thread.
/// Four batches absorb a burst of evictions (a long prompt evicting hundreds of blocks) while
/// bounding the memory of evicted-but-unwritten blocks.
pub const WRITE_QUEUE: usize = 4;

type Batch = Vec<(BlockKey, Arc<Vec<u8>>)>;

/// A batch the writer is done with, and how its `put_many` went.
struct Written {
    batch: Batch,
    result: Result<(), KvError>,
}

/// The serving side of the write-back thread.
#[derive(Debug)]
struct Writer {
    /// Batches to write; `None` once closed (drop).
    tx: Option<SyncSender<Batch>>,
    /// Batches written (or failed), in order.
    done: Receiver<Written>,
    thread: Option<JoinHandle<()>>,
    /// Batches handed over whose completion has not been received yet.
    outstanding: usize,
}

/// The writer thread: stores each batch with one `put_many` until the channel closes.
fn write_back(tier: Arc<dyn KvTier>, batches: Receiver<Batch>, done: Sender<Written>) {
    for batch in batches {
        let result = {
            let refs: Vec<(BlockKey, &[u8])> =
                batch.iter().map(|(k, d)| (*k, d.as_slice())).collect();
            tier.put_many(&refs)
        };
        if done.send(Written { batch, result }).is_err() {
            return;
        }
    }
}

fn writer_gone() -> LlmError {
    LlmError::Internal("the write-back thread stopped".into())
}

/// Blocks held locally under a byte budget; least recently used unpinned blocks are evicted to
/// the tier first, written asynchronously (see the [module docs](self)).
///
/// Blocks a request uses are *pinned* and never evicted under it. If one request's pinned
/// blocks alone exceed the budget, the cache overflows temporarily (it keeps them) and shrinks
/// back to the budget when they are unpinned: a request always completes.
///
/// The cache remembers which blocks the tier holds (written by it or read from it), so a block
/// evicted again is not written twice. A tier that drops blocks on its own (its capacity) makes
/// that memory stale; the only effect is that such a block is recomputed later.
#[derive(Debug)]
pub struct LocalCache {
    budget_bytes: u64,
    block_bytes: usize,
    tier: Arc<dyn KvTier>,
    /// `None` when the tier is `none` (nothing is written).
    writer: Option<Writer>,
    entries: HashMap<BlockKey, Entry>,
    lru: BTreeMap<u64, BlockKey>,
    clock: u64,
    in_tier: HashSet<BlockKey>,
    /// Evicted blocks whose write has not been acknowledged (queued, pending or being written).
    in_flight: HashMap<BlockKey, Arc<Vec<u8>>>,
    /// The batch being filled.
    pending: Batch,
    /// The first write error not returned yet.
    error: Option<KvError>,
    free: Vec<Vec<u8>>,
    counters: CacheCounters,
}

impl LocalCache {
    /// A cache of `budget_bytes` (`u64::MAX`: unlimited) for blocks of `block_bytes`, evicting
    /// to `tier`. A tier named `none` ([`oxmem_kv::NoTier`]) is never written to; any other
    /// gets a write-back thread. Fails only if that thread cannot be started.
    pub fn new(
        budget_bytes: u64,
        block_bytes: usize,
        tier: Arc<dyn KvTier>,
    ) -> Result<Self, LlmError> {
        let writer = if tier.name() != "none" {
            let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE);
            let (done_tx, done) = mpsc::channel();
            let t = Arc::clone(&tier);
            let thread = std::thread::Builder::new()
                .name("kv-write-back".into())
                .spawn(move || write_back(t, rx, done_tx))
                .map_err(LlmError::Thread)?;
            Some(Writer {
                tx: Some(tx),
                done,
                thread: Some(thread),
                outstanding: 0,
            })
        } else {
            None
        };
        Ok(LocalCache {
            budget_bytes,
            block_bytes,
            tier,
            writer,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            in_tier: HashSet::new(),
            in_flight: HashMap::new(),
            pending: Vec::new(),
            error: None,
            free: Vec::new(),
            counters: CacheCounters::default(),
        })
    }

    /// The tier behind this cache.
    pub fn tier(&self) -> &Arc<dyn KvTier> {
        &self.tier
    }

    /// Counters so far (writes count once acknowledged: call [`finish`](LocalCache::finish)
    /// first for totals).
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// A block-sized buffer with unspecified contents: a recycled one (an evicted block's)
    /// when there is one, so steady-state serving does not fault in fresh pages.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.block_bytes])
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.free.len() < 2 * WRITE_BATCH && buf.len() == self.block_bytes {
            self.free.push(buf);
        }
    }

    /// Bytes held locally now.
    pub fn used_bytes(&self) -> u64 {
        (self.entries.len() * self.block_bytes) as u64
    }

    /// Whether `key` is held locally.
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.entries.contains_key(key)
    }

    /// The bytes of a local block.
    pub fn get(&self, key: &BlockKey) -> Option<&[u8]> {
        self.entries.get(key).map(|e| e.data.as_slice())
    }

    /// Whether `key` was evicted and its tier write is not acknowledged yet (as of the last
    /// time the writer's reports were collected).
    pub fn is_in_flight(&self, key: &BlockKey) -> bool {
        self.in_flight.contains_key(key)
    }

    /// A copy of an in-flight block's bytes (in a recycled buffer), for a request that needs
    /// it before its write completes; `None` if `key` is not in flight.
    pub fn copy_in_flight(&mut self, key: &BlockKey) -> Option<Vec<u8>> {
        let data = Arc::clone(self.in_flight.get(key)?);
        let mut buf = self.take_buffer();
        buf.copy_from_slice(&data);
        self.counters.in_flight_reads += 1;
        Some(buf)
    }

    /// Marks `key` as used now and pins it (no effect if absent). Returns whether it is held.
    pub fn pin(&mut self, key: &BlockKey) -> bool {
        self.clock += 1;
        let clock = self.clock;
        match self.entries.get_mut(key) {
            Some(e) => {
                self.lru.remove(&e.tick);
                e.tick = clock;
                e.pins += 1;
                self.lru.insert(clock, *key);
                true
            }
            None => false,
        }
    }

    /// Undoes one [`pin`](LocalCache::pin) of each key, evicts down to the budget, then
    /// [`flush`](LocalCache::flush)es (hands the queued blocks over, returns a write error).
    pub fn unpin_all(&mut self, keys: &[BlockKey]) -> Result<(), LlmError> {
        for k in keys {
            if let Some(e) = self.entries.get_mut(k) {
                e.pins = e.pins.saturating_sub(1);
            }
        }
        self.evict_to_budget()?;
        self.flush()
    }

    /// Records that the tier holds `key` (it was just read from there).
    pub fn mark_in_tier(&mut self, key: BlockKey) {
        self.in_tier.insert(key);
    }

    /// Inserts a block (pinned once, most recently used) and evicts unpinned blocks over the
    /// budget. A key already held is only pinned. Evicted blocks are queued for the writer and
    /// handed over a full batch at a time; [`flush`](LocalCache::flush) hands over the rest.
    pub fn insert_pinned(&mut self, key: BlockKey, data: Vec<u8>) -> Result<(), LlmError> {
        debug_assert_eq!(data.len(), self.block_bytes);
        if self.pin(&key) {
            return Ok(());
        }
        self.clock += 1;
        self.entries.insert(
            key,
            Entry {
                data,
                tick: self.clock,
                pins: 1,
            },
        );
        self.lru.insert(self.clock, key);
        self.evict_to_budget()?;
        let used = self.used_bytes();
        self.counters.peak_bytes = self.counters.peak_bytes.max(used);
        Ok(())
    }

    fn evict_to_budget(&mut self) -> Result<(), LlmError> {
        while self.used_bytes() > self.budget_bytes {
            // Oldest unpinned block; pinned ones are skipped (temporary overflow).
            let victim = self
                .lru
                .values()
                .copied()
                .find(|k| self.entries.get(k).is_some_and(|e| e.pins == 0));
            let Some(victim) = victim else { break };
            let Some(e) = self.entries.remove(&victim) else {
                break;
            };
            self.lru.remove(&e.tick);
            self.counters.evictions += 1;
            let writes = self.writer.is_some();
            if writes && !self.in_tier.contains(&victim) && !self.in_flight.contains_key(&victim) {
                let data = Arc::new(e.data);
                self.in_flight.insert(victim, Arc::clone(&data));
                self.pending.push((victim, data));
                if self.pending.len() >= WRITE_BATCH {
                    self.hand_over()?;
                }
            } else {
                if writes {
                    self.counters.tier_writes_skipped += 1;
                }
                self.recycle(e.data);
            }
        }
        Ok(())
    }

    /// Hands the batch being filled to the writer without waiting for it to be written, and
    /// returns the first write error reported since the last call (if any).
    pub fn flush(&mut self) -> Result<(), LlmError> {
        self.hand_over()?;
        self.take_error()
    }

    /// Hands over what is queued, waits until every write handed over has completed, and
    /// returns the first write error not returned yet. Afterwards the counters are totals and
    /// the tier holds every evicted block (unless a write failed). The cache stays usable.
    pub fn finish(&mut self) -> Result<(), LlmError> {
        self.hand_over()?;
        let t = Instant::now();
        while self.writer.as_ref().is_some_and(|w| w.outstanding > 0) {
            let next = match &self.writer {
                Some(w) => w.done.recv(),
                None => break,
            };
            match next {
                Ok(done) => self.complete(done),
                Err(_) => {
                    self.counters.write_wait += t.elapsed();
                    return Err(writer_gone());
                }
            }
        }
        self.counters.write_wait += t.elapsed();
        self.take_error()
    }

    /// Collects the writer's reports without waiting: written blocks are recorded as held by
    /// the tier and leave the in-flight set.
    pub(crate) fn poll_writes(&mut self) {
        while let Some(w) = self.writer.as_ref().filter(|w| w.outstanding > 0) {
            match w.done.try_recv() {
                Ok(done) => self.complete(done),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }

    fn complete(&mut self, done: Written) {
        if let Some(w) = self.writer.as_mut() {
            w.outstanding = w.outstanding.saturating_sub(1);
        }
        let ok = done.result.is_ok();
        for (k, data) in done.batch {
            self.in_flight.remove(&k);
            if ok {
                self.in_tier.insert(k);
                self.counters.tier_writes += 1;
                self.counters.bytes_written += data.len() as u64;
            } else {
                self.counters.tier_write_failures += 1;
            }
            if let Ok(buf) = Arc::try_unwrap(data) {
                self.recycle(buf);
            }
        }
        if let Err(e) = done.result {
            self.error.get_or_insert(e);
        }
    }

    fn take_error(&mut self) -> Result<(), LlmError> {
        match self.error.take() {
            Some(e) => Err(LlmError::Tier(e)),
            None => Ok(()),
        }
    }

    /// Sends the batch being filled to the writer, blocking while the queue is full.
    fn hand_over(&mut self) -> Result<(), LlmError> {
        self.poll_writes();
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let Some(tx) = self.writer.as_ref().and_then(|w| w.tx.as_ref()) else {
            return Err(LlmError::Internal("blocks queued without a writer".into()));
        };
        let sent = match tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(batch)) => {
                let t = Instant::now();
                let sent = tx.send(batch).map_err(|e| e.0);
                self.counters.write_wait += t.elapsed();
                sent
            }
            Err(TrySendError::Disconnected(batch)) => Err(batch),
        };
        match sent {
            Ok(()) => {
                if let Some(w) = self.writer.as_mut() {
                    w.outstanding += 1;
                }
                Ok(())
            }
            Err(lost) => {
                for (k, _) in lost {
                    self.in_flight.remove(&k);
                    self.counters.tier_write_failures += 1;
                }
                Err(writer_gone())
            }
        }
    }
}

impl Drop for LocalCache {
    /// Hands over what is queued (errors ignored), lets the writer write every queued batch and
    /// joins it.
    fn drop(&mut self) {
        let _ = self.hand_over();
        if let Some(mut w) = self.writer.take() {
            drop(w.tx.take());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
