//! The local paged KV cache: blocks kept as bytes under a byte budget (the part GPU memory
//! plays in a real server), LRU eviction, eviction to a [`KvTier`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use oxmem_kv::{BlockKey, KvTier};

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
    /// Evicted blocks written to the tier.
    pub tier_writes: u64,
    /// Evicted blocks not written because the tier already holds them.
    pub tier_writes_skipped: u64,
    /// Bytes written to the tier.
    pub bytes_written: u64,
    /// Largest number of bytes held locally at once (above the budget only while one request's
    /// pinned blocks do not fit).
    pub peak_bytes: u64,
}

/// Blocks held locally under a byte budget; least recently used unpinned blocks are evicted to
/// the tier first.
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
    writes_enabled: bool,
    entries: HashMap<BlockKey, Entry>,
    lru: BTreeMap<u64, BlockKey>,
    clock: u64,
    in_tier: HashSet<BlockKey>,
    pending: Vec<(BlockKey, Vec<u8>)>,
    free: Vec<Vec<u8>>,
    counters: CacheCounters,
}

/// Evicted blocks are written to the tier in batches of at most this many.
const WRITE_BATCH: usize = 64;

impl LocalCache {
    /// A cache of `budget_bytes` (`u64::MAX`: unlimited) for blocks of `block_bytes`, evicting
    /// to `tier`. A tier named `none` ([`oxmem_kv::NoTier`]) is never written to.
    pub fn new(budget_bytes: u64, block_bytes: usize, tier: Arc<dyn KvTier>) -> Self {
        let writes_enabled = tier.name() != "none";
        LocalCache {
            budget_bytes,
            block_bytes,
            tier,
            writes_enabled,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            in_tier: HashSet::new(),
            pending: Vec::new(),
            free: Vec::new(),
            counters: CacheCounters::default(),
        }
    }

    /// The tier behind this cache.
    pub fn tier(&self) -> &Arc<dyn KvTier> {
        &self.tier
    }

    /// Counters so far.
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

    /// Undoes one [`pin`](LocalCache::pin) of each key, then evicts down to the budget.
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
    /// budget. A key already held is only pinned. Evicted blocks are queued for the tier;
    /// [`flush`](LocalCache::flush) writes the queue.
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
            if self.writes_enabled && !self.in_tier.contains(&victim) {
                self.pending.push((victim, e.data));
                if self.pending.len() >= WRITE_BATCH {
                    self.flush()?;
                }
            } else {
                if self.writes_enabled {
                    self.counters.tier_writes_skipped += 1;
                }
                self.recycle(e.data);
            }
        }
        Ok(())
    }

    /// Writes the queued evicted blocks to the tier in one `put_many`.
    pub fn flush(&mut self) -> Result<(), LlmError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let refs: Vec<(BlockKey, &[u8])> =
            pending.iter().map(|(k, d)| (*k, d.as_slice())).collect();
        self.tier.put_many(&refs)?;
        drop(refs);
        for (k, d) in pending {
            self.in_tier.insert(k);
            self.counters.tier_writes += 1;
            self.counters.bytes_written += d.len() as u64;
            self.recycle(d);
        }
        Ok(())
    }
}
