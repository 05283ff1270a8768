//! The tests every store passes: bad arguments, put/get/refresh/prefix, and a long seeded run
//! of random batches compared, answer by answer, with a model of the store's eviction.

use std::collections::HashMap;

use oxmem_kv::{BlockKey, KvError, KvStats, KvTier};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The two sets a key may be in, the first one first.
pub type SetsOf = Box<dyn Fn(&BlockKey) -> [u64; 2]>;

/// Which blocks a store keeps when it is full.
pub enum Eviction {
    /// Keeps nothing ([`oxmem_kv::NoTier`]).
    Nothing,
    /// LRU over the whole store of `capacity` blocks.
    Lru { capacity: usize },
    /// Sets of `ways` blocks, two per key (`sets_of`, the first one first): a new key goes
    /// into the set of the two with fewer blocks (the first on a tie) while it has room, else
    /// replaces the least recently used block of the two sets.
    TwoChoiceLru { ways: usize, sets_of: SetsOf },
}

/// What a store should hold: key → (bytes, last use).
pub struct Model {
    eviction: Eviction,
    clock: u64,
    blocks: HashMap<BlockKey, (Vec<u8>, u64)>,
    /// The set each block is in ([`Eviction::TwoChoiceLru`] only).
    set_of_block: HashMap<BlockKey, u64>,
    pub stats: KvStats,
}

impl Model {
    pub fn new(eviction: Eviction, capacity_blocks: u64) -> Model {
        Model {
            eviction,
            clock: 0,
            blocks: HashMap::new(),
            set_of_block: HashMap::new(),
            stats: KvStats {
                capacity_blocks,
                ..KvStats::default()
            },
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub fn put(&mut self, key: BlockKey, data: &[u8]) {
        self.stats.puts += 1;
        if matches!(self.eviction, Eviction::Nothing) {
            return;
        }
        let now = self.tick();
        if let Some(b) = self.blocks.get_mut(&key) {
            *b = (data.to_vec(), now);
            return;
        }
        if let Eviction::TwoChoiceLru { ways, sets_of } = &self.eviction {
            let [a, b] = sets_of(&key);
            let load = |s: u64| self.set_of_block.values().filter(|&&x| x == s).count();
            let emptier = if load(b) < load(a) { b } else { a };
            let set = if load(emptier) < *ways {
                emptier
            } else {
                let oldest = self
                    .set_of_block
                    .iter()
                    .filter(|(_, s)| **s == a || **s == b)
                    .min_by_key(|(k, _)| self.blocks[*k].1)
                    .map(|(k, s)| (*k, *s))
                    .expect("full sets have blocks");
                self.blocks.remove(&oldest.0);
                self.set_of_block.remove(&oldest.0);
                self.stats.evictions += 1;
                oldest.1
            };
            self.blocks.insert(key, (data.to_vec(), now));
            self.set_of_block.insert(key, set);
            self.stats.stored_blocks = self.blocks.len() as u64;
            return;
        }
        // The keys competing with `key` for room, and how much room there is.
        let (rivals, room): (Vec<BlockKey>, usize) = match &self.eviction {
            Eviction::Nothing | Eviction::TwoChoiceLru { .. } => unreachable!(),
            Eviction::Lru { capacity } => (self.blocks.keys().copied().collect(), *capacity),
        };
        if rivals.len() >= room {
            let oldest = rivals
                .iter()
                .min_by_key(|k| self.blocks[*k].1)
                .copied()
                .expect("a full set has blocks");
            self.blocks.remove(&oldest);
            self.stats.evictions += 1;
        }
        self.blocks.insert(key, (data.to_vec(), now));
        self.stats.stored_blocks = self.blocks.len() as u64;
    }

    pub fn get(&mut self, key: &BlockKey) -> Option<Vec<u8>> {
        let now = self.tick();
        match self.blocks.get_mut(key) {
            Some(b) => {
                b.1 = now;
                self.stats.hits += 1;
                Some(b.0.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    pub fn contains_prefix(&self, keys: &[BlockKey]) -> usize {
        keys.iter()
            .take_while(|k| self.blocks.contains_key(k))
            .count()
    }
}

pub fn random_key(rng: &mut impl RngCore) -> BlockKey {
    let mut k = [0u8; 16];
    rng.fill_bytes(&mut k);
    BlockKey(k)
}

pub fn random_block(rng: &mut impl RngCore, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rng.fill_bytes(&mut b);
    b
}

fn is_bad_argument<T: std::fmt::Debug>(r: Result<T, KvError>) -> bool {
    matches!(r, Err(KvError::BadArgument(_)))
}

/// Wrong sizes and mismatched slices are `BadArgument`, and change nothing.
pub fn bad_arguments(tier: &dyn KvTier) {
    let bb = tier.block_bytes();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (good, bad) = (random_key(&mut rng), random_key(&mut rng));
    let ok = random_block(&mut rng, bb);
    let short = vec![1u8; bb - 1];
    let long = vec![1u8; bb + 1];
    assert!(is_bad_argument(tier.put(bad, &short)), "short block");
    assert!(is_bad_argument(tier.put(bad, &long)), "long block");
    assert!(is_bad_argument(tier.put(bad, &[])), "empty block");
    // One bad block in a batch refuses the whole batch.
    assert!(is_bad_argument(
        tier.put_many(&[(good, &ok[..]), (bad, &short[..])])
    ));
    assert_eq!(tier.contains_prefix(&[good]).unwrap(), 0, "nothing stored");
    let mut small = vec![0u8; bb - 1];
    assert!(is_bad_argument(tier.get(good, &mut small)), "short buffer");
    let mut b1 = vec![0u8; bb];
    let mut b2 = vec![0u8; bb];
    assert!(
        is_bad_argument(tier.get_many(&[good], &mut [&mut b1[..], &mut b2[..]])),
        "more buffers than keys"
    );
    assert!(
        is_bad_argument(tier.get_many(&[good, bad], &mut [&mut b1[..]])),
        "more keys than buffers"
    );
    // Empty batches are fine.
    tier.put_many(&[]).unwrap();
    assert!(tier.get_many(&[], &mut []).unwrap().is_empty());
    assert_eq!(tier.contains_prefix(&[]).unwrap(), 0);
    let s = tier.stats();
    assert_eq!(
        (s.puts, s.hits, s.misses),
        (0, 0, 0),
        "bad calls count nothing"
    );
}

/// Put, get, refresh and prefix lookups on a fresh store that holds at least 4 blocks.
pub fn basics(tier: &dyn KvTier, keeps_blocks: bool) {
    let bb = tier.block_bytes();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let keys: Vec<BlockKey> = (0..4).map(|_| random_key(&mut rng)).collect();
    let data: Vec<Vec<u8>> = (0..4).map(|_| random_block(&mut rng, bb)).collect();
    tier.put_many(&[
        (keys[0], &data[0][..]),
        (keys[1], &data[1][..]),
        (keys[2], &data[2][..]),
    ])
    .unwrap();
    let mut out = vec![vec![0u8; bb]; 4];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        tier.get_many(&keys, &mut bufs).unwrap()
    };
    if !keeps_blocks {
        assert_eq!(found, vec![false; 4]);
        assert_eq!(tier.contains_prefix(&keys).unwrap(), 0);
        return;
    }
    assert_eq!(found, vec![true, true, true, false]);
    for i in 0..3 {
        assert!(out[i] == data[i], "block {i} comes back as stored");
    }
    assert_eq!(tier.contains_prefix(&keys).unwrap(), 3);
    assert_eq!(tier.contains_prefix(&keys[..2]).unwrap(), 2);
    assert_eq!(tier.contains_prefix(&[keys[3], keys[0]]).unwrap(), 0);
    assert_eq!(
        tier.contains_prefix(&[keys[0], keys[3], keys[1]]).unwrap(),
        1
    );
    // A put of a stored key replaces its bytes.
    tier.put(keys[1], &data[3]).unwrap();
    let mut one = vec![0u8; bb];
    assert!(tier.get(keys[1], &mut one).unwrap());
    assert!(one == data[3], "the refreshed bytes");
    // The same key twice in one batch: the later bytes win.
    tier.put_many(&[(keys[3], &data[0][..]), (keys[3], &data[2][..])])
        .unwrap();
    assert!(tier.get(keys[3], &mut one).unwrap());
    assert!(one == data[2], "the last bytes of the batch");
    let s = tier.stats();
    assert_eq!(s.puts, 6);
    assert_eq!((s.hits, s.misses), (5, 1));
    assert_eq!(s.bytes_read, 5 * bb as u64);
    assert_eq!(s.stored_blocks, 4);
}

/// `ops` random batches against the model, each answer checked; the stats at the end too.
/// The store must be empty and its counters zero.
pub fn random_ops(tier: &dyn KvTier, eviction: Eviction, key_space: usize, ops: usize, seed: u64) {
    let bb = tier.block_bytes();
    let capacity = tier.stats().capacity_blocks;
    let mut model = Model::new(eviction, capacity);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keys: Vec<BlockKey> = (0..key_space).map(|_| random_key(&mut rng)).collect();
    for op in 0..ops {
        match rng.random_range(0..10) {
            0..4 => {
                let n = rng.random_range(1..=8);
                let batch: Vec<(BlockKey, Vec<u8>)> = (0..n)
                    .map(|_| {
                        let k = keys[rng.random_range(0..key_space)];
                        (k, random_block(&mut rng, bb))
                    })
                    .collect();
                let refs: Vec<(BlockKey, &[u8])> =
                    batch.iter().map(|(k, b)| (*k, &b[..])).collect();
                tier.put_many(&refs).unwrap();
                for (k, b) in &batch {
                    model.put(*k, b);
                }
            }
            4..8 => {
                let n = rng.random_range(1..=8);
                let want: Vec<BlockKey> = (0..n)
                    .map(|_| keys[rng.random_range(0..key_space)])
                    .collect();
                let mut out = vec![vec![0u8; bb]; n];
                let found = {
                    let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
                    tier.get_many(&want, &mut bufs).unwrap()
                };
                for (i, k) in want.iter().enumerate() {
                    let expected = model.get(k);
                    assert_eq!(
                        found[i],
                        expected.is_some(),
                        "op {op}: get {k:?} (#{i} of {n}): found flag"
                    );
                    if let Some(e) = expected {
                        assert!(out[i] == e, "op {op}: get {k:?}: the bytes put");
                    }
                }
            }
            _ => {
                // A chain whose first blocks are likely stored: recently used keys first.
                let n = rng.random_range(1..=12);
                let start = rng.random_range(0..key_space);
                let chain: Vec<BlockKey> = (0..n).map(|i| keys[(start + i) % key_space]).collect();
                assert_eq!(
                    tier.contains_prefix(&chain).unwrap(),
                    model.contains_prefix(&chain),
                    "op {op}: contains_prefix"
                );
            }
        }
    }
    let s = tier.stats();
    let m = model.stats;
    assert_eq!(s.capacity_blocks, m.capacity_blocks);
    assert_eq!((s.puts, s.hits, s.misses), (m.puts, m.hits, m.misses));
    assert_eq!(s.evictions, m.evictions, "evictions");
    assert_eq!(s.stored_blocks, m.stored_blocks, "blocks held");
    assert!(s.stored_blocks <= s.capacity_blocks);
    assert_eq!(s.bytes_read, s.hits * bb as u64);
    assert!(s.bytes_written <= s.puts * bb as u64);
    assert_eq!(s.bytes_written % bb as u64, 0);
    if matches!(model.eviction, Eviction::Nothing) {
        assert_eq!(s.hits, 0, "a store that keeps nothing finds nothing");
        assert!(s.misses > 0 && s.puts > 0);
    } else {
        assert!(
            m.hits > 0 && m.misses > 0,
            "the run exercised hits and misses"
        );
        assert!(m.evictions > 0, "the run filled the store");
    }
}

/// The whole suite on a fresh store of each kind, made by `make` (called once per part).
pub fn conformance(make: &dyn Fn() -> Box<dyn KvTier>, eviction: &dyn Fn(&dyn KvTier) -> Eviction) {
    let tier = make();
    bad_arguments(&*tier);
    drop(tier);
    let tier = make();
    let keeps = !matches!(eviction(&*tier), Eviction::Nothing);
    basics(&*tier, keeps);
    drop(tier);
    let tier = make();
    let capacity = tier.stats().capacity_blocks as usize;
    let e = eviction(&*tier);
    random_ops(&*tier, e, (capacity * 3).max(16), 600, 1234);
}

/// The bytes of block `key` in [`concurrent_use`]: a function of the key alone, so that any
/// block found must be exactly these bytes, whoever put it.
pub fn bytes_of(key: &BlockKey, len: usize) -> Vec<u8> {
    let seed = u64::from_le_bytes(key.0[..8].try_into().unwrap());
    random_block(&mut ChaCha8Rng::seed_from_u64(seed), len)
}

/// `threads` threads put and get overlapping keys at once for `rounds` rounds each; every
/// block found has exactly its bytes (no torn or mixed-up reads), and the store never holds
/// more than its capacity. Returns the hits seen.
pub fn concurrent_use(tier: &dyn KvTier, threads: usize, rounds: usize) -> u64 {
    let bb = tier.block_bytes();
    let capacity = tier.stats().capacity_blocks;
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let keys: Vec<BlockKey> = (0..(capacity as usize * 2).max(8))
        .map(|_| random_key(&mut rng))
        .collect();
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, bb)).collect();
    let hits = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (keys, blocks, hits) = (&keys, &blocks, &hits);
            s.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(t as u64);
                for _ in 0..rounds {
                    let idx: Vec<usize> = (0..4).map(|_| rng.random_range(0..keys.len())).collect();
                    if rng.random_bool(0.5) {
                        let batch: Vec<(BlockKey, &[u8])> =
                            idx.iter().map(|&i| (keys[i], &blocks[i][..])).collect();
                        tier.put_many(&batch).unwrap();
                    } else {
                        let want: Vec<BlockKey> = idx.iter().map(|&i| keys[i]).collect();
                        let mut out = vec![vec![0u8; bb]; want.len()];
                        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
                        let found = tier.get_many(&want, &mut bufs).unwrap();
                        for (j, &i) in idx.iter().enumerate() {
                            if found[j] {
                                assert!(out[j] == blocks[i], "block {:?} read back whole", keys[i]);
                                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    let s = tier.stats();
    assert!(s.stored_blocks <= s.capacity_blocks);
    hits.into_inner()
}
