//! [`MemTier`]: an in-process [`KvTier`] (a `HashMap` with a block capacity and LRU eviction)
//! for tests and for the "ideal remote memory" row of the benchmark.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use oxmem_kv::{BlockKey, KvError, KvStats, KvTier};

#[derive(Debug, Default)]
struct Inner {
    blocks: HashMap<BlockKey, (Vec<u8>, u64)>,
    lru: BTreeMap<u64, BlockKey>,
    clock: u64,
    stats: KvStats,
    /// Buffers of dropped blocks, reused by later puts.
    free: Vec<Vec<u8>>,
}

/// An in-memory tier holding up to `capacity_blocks` blocks; the least recently used block is
/// dropped when a new one does not fit. Thread-safe (one mutex).
#[derive(Debug)]
pub struct MemTier {
    block_bytes: usize,
    capacity_blocks: u64,
    inner: Mutex<Inner>,
}

impl MemTier {
    /// A tier of `capacity_blocks` blocks of `block_bytes` each.
    pub fn new(block_bytes: usize, capacity_blocks: u64) -> Self {
        MemTier {
            block_bytes,
            capacity_blocks,
            inner: Mutex::new(Inner {
                stats: KvStats {
                    capacity_blocks,
                    ..KvStats::default()
                },
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KvTier for MemTier {
    fn name(&self) -> &str {
        "mem"
    }

    fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    fn put_many(&self, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        if let Some((_, b)) = blocks.iter().find(|(_, b)| b.len() != self.block_bytes) {
            return Err(KvError::BadArgument(format!(
                "block of {} bytes, expected {}",
                b.len(),
                self.block_bytes
            )));
        }
        let mut g = self.lock();
        for (key, data) in blocks {
            g.clock += 1;
            let clock = g.clock;
            if let Some((old, tick)) = g.blocks.remove(key) {
                g.lru.remove(&tick);
                g.free.push(old);
            } else {
                while g.blocks.len() as u64 >= self.capacity_blocks {
                    let Some((_, victim)) = g.lru.pop_first() else {
                        break;
                    };
                    if let Some((old, _)) = g.blocks.remove(&victim) {
                        g.free.push(old);
                    }
                    g.stats.evictions += 1;
                }
            }
            if self.capacity_blocks == 0 {
                continue;
            }
            // Reuse a dropped block's buffer when there is one (no fresh pages to fault in).
            let buf = match g.free.pop() {
                Some(mut b) => {
                    b.copy_from_slice(data);
                    b
                }
                None => data.to_vec(),
            };
            g.free.truncate(16);
            g.blocks.insert(*key, (buf, clock));
            g.lru.insert(clock, *key);
            g.stats.puts += 1;
            g.stats.bytes_written += data.len() as u64;
        }
        g.stats.stored_blocks = g.blocks.len() as u64;
        Ok(())
    }

    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        if keys.len() != out.len() {
            return Err(KvError::BadArgument(
                "keys and buffers differ in number".into(),
            ));
        }
        let mut g = self.lock();
        let mut found = Vec::with_capacity(keys.len());
        for (key, buf) in keys.iter().zip(out.iter_mut()) {
            if buf.len() != self.block_bytes {
                return Err(KvError::BadArgument("buffer of the wrong size".into()));
            }
            g.clock += 1;
            let clock = g.clock;
            let hit = match g.blocks.get_mut(key) {
                Some((data, tick)) => {
                    buf.copy_from_slice(data);
                    let old = std::mem::replace(tick, clock);
                    Some(old)
                }
                None => None,
            };
            match hit {
                Some(old) => {
                    g.lru.remove(&old);
                    g.lru.insert(clock, *key);
                    g.stats.hits += 1;
                    g.stats.bytes_read += self.block_bytes as u64;
                    found.push(true);
                }
                None => {
                    g.stats.misses += 1;
                    found.push(false);
                }
            }
        }
        Ok(found)
    }

    fn contains_prefix(&self, keys: &[BlockKey]) -> Result<usize, KvError> {
        let g = self.lock();
        Ok(keys.iter().take_while(|k| g.blocks.contains_key(k)).count())
    }

    fn stats(&self) -> KvStats {
        self.lock().stats
    }
}
