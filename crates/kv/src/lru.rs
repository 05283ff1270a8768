//! A least-recently-used index with a fixed capacity, for the stores whose index lives in the
//! process ([`DiskTier`](crate::DiskTier), [`RedisTier`](crate::RedisTier)).
//!
//! Every entry carries a tick from a counter that grows at every use; a `BTreeMap` from tick to
//! key gives the oldest entry in `O(log n)`.

use std::collections::{BTreeMap, HashMap};

use crate::BlockKey;

/// What [`Lru::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted<V> {
    /// The key was there: it is the most recently used now, with its value `V`.
    Refreshed(V),
    /// The key is new and took the value `V` (a free one).
    New(V),
    /// The key is new and took the value `V` of the evicted key.
    Evicted(BlockKey, V),
}

/// Keys with a value each (a slot number, or nothing), at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct Lru<V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<BlockKey, (V, u64)>,
    by_age: BTreeMap<u64, BlockKey>,
}

impl<V: Copy> Lru<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Lru {
            capacity,
            tick: 0,
            entries: HashMap::with_capacity(capacity.min(1 << 20)),
            by_age: BTreeMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The value of `key` without making it more recent.
    pub(crate) fn peek(&self, key: &BlockKey) -> Option<V> {
        self.entries.get(key).map(|&(v, _)| v)
    }

    /// Makes `key` the most recently used; its value, if present.
    pub(crate) fn touch(&mut self, key: &BlockKey) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let (v, old) = self.entries.get_mut(key)?;
        self.by_age.remove(old);
        *old = tick;
        self.by_age.insert(tick, *key);
        Some(*v)
    }

    /// Inserts `key` as the most recently used. A new key takes `fresh()` while the index is
    /// not full, else the value of the least recently used key, which is removed.
    /// `capacity` must be positive.
    pub(crate) fn insert(&mut self, key: BlockKey, fresh: impl FnOnce() -> V) -> Inserted<V> {
        if let Some(v) = self.touch(&key) {
            return Inserted::Refreshed(v);
        }
        let tick = self.tick;
        let outcome = if self.entries.len() < self.capacity {
            Inserted::New(fresh())
        } else {
            match self.by_age.pop_first() {
                Some((_, old)) => match self.entries.remove(&old) {
                    Some((v, _)) => Inserted::Evicted(old, v),
                    None => Inserted::New(fresh()),
                },
                None => Inserted::New(fresh()),
            }
        };
        let v = match outcome {
            Inserted::Refreshed(v) | Inserted::New(v) | Inserted::Evicted(_, v) => v,
        };
        self.entries.insert(key, (v, tick));
        self.by_age.insert(tick, key);
        outcome
    }

    /// Forgets `key`; its value, if it was there.
    pub(crate) fn remove(&mut self, key: &BlockKey) -> Option<V> {
        let (v, tick) = self.entries.remove(key)?;
        self.by_age.remove(&tick);
        Some(v)
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.by_age.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> BlockKey {
        BlockKey([i; 16])
    }

    #[test]
    fn evicts_the_least_recently_used_and_reuses_its_value() {
        let mut next = 0u32;
        let mut lru = Lru::new(2);
        let mut fresh = || {
            next += 1;
            next
        };
        assert_eq!(lru.insert(k(1), &mut fresh), Inserted::New(1));
        assert_eq!(lru.insert(k(2), &mut fresh), Inserted::New(2));
        assert_eq!(lru.touch(&k(1)), Some(1));
        assert_eq!(lru.insert(k(3), &mut fresh), Inserted::Evicted(k(2), 2));
        assert_eq!(lru.insert(k(1), &mut fresh), Inserted::Refreshed(1));
        assert_eq!(lru.insert(k(4), &mut fresh), Inserted::Evicted(k(3), 2));
        assert_eq!(lru.peek(&k(3)), None);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.remove(&k(1)), Some(1));
        assert_eq!(lru.insert(k(5), &mut fresh), Inserted::New(3));
    }
}
