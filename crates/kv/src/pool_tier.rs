//! [`PoolTier`]: blocks in a region of the oxmem pool, shared by every process that opens it.
//!
//! The store keeps *all* its state in the region, so that two processes (two serving replicas,
//! or a serving process and its successor after a crash) that open the same region see each
//! other's blocks. A process only caches where it last saw a key; every read is checked
//! against what the region says.
//!
//! # Layout
//!
//! All integers little-endian.
//!
//! | offset | what |
//! |---|---|
//! | 0 | store header, 4096 bytes reserved (below) |
//! | `dir_offset` (4096) | directory: `sets × ways` entries of 64 bytes, set by set |
//! | `data_offset` (4096-aligned) | data: `sets × ways` slots of `slot_bytes`, same order |
//!
//! Store header: magic `OXKVPOOL` (0..8), version 2 (8..12, u32), ways (12..16, u32),
//! block bytes (16..24), sets (24..32), slot bytes (32..40), `dir_offset` (40..48),
//! `data_offset` (48..56), end of the store (56..64), a random *format nonce* (64..72), and
//! xxh3-64 of bytes 0..72 (72..80).
//!
//! Directory entry of slot `set × ways + way`: tag `OXKVENT1` when occupied, zero when empty
//! (0..8), the key (8..24), the block's checksum (24..32), and the LRU stamp (32..40; written
//! on its own when a `get` finds the block). 40..64 are reserved (zero).
//!
//! Data slot: the block, then a 32-byte trailer: the key (16), the checksum (8), magic
//! `OXKVTRL1` (8); `slot_bytes` is that rounded up to 4096 bytes when that wastes at most a
//! sixteenth of the slot (so large blocks start page-aligned and travel in whole TileLink
//! messages), else to 64. The checksum is xxh3-64 of the block seeded by the key, xor the
//! format nonce.
//!
//! # Placement and eviction
//!
//! Set-associative with two choices of set: a key may live in one of the `ways` slots (default
//! 8) of either of its two sets, its *first* set `a = u64::from_le_bytes(key[0..8]) mod sets`
//! and its *second* set `(a + 1 + u64::from_le_bytes(key[8..16]) mod (sets - 1)) mod sets`
//! (the same as the first when there is one set). A `put` reads both sets' directories
//! (512 bytes each), then takes the way (of either set) that already holds the key, else an
//! empty way of the set with fewer occupied ways (the first set on a tie), else the way with
//! the smallest stamp of the two sets: LRU within the pair. Stamps come from a clock that is
//! the wall clock in nanoseconds, made strictly increasing within a process; a `get` that finds
//! a block writes a new stamp into its entry (unless [`PoolTierOptions::touch_on_get`] is off).
//! `contains_prefix` only looks (the first set, then the second).
//!
//! Why two sets: with one, a set receives a Poisson number of keys, and at half the capacity
//! about one 8-way set in fifty gets more than 8 keys, so a store half full already evicts
//! (a seeded `h100-8b` replay: 424 blocks into 106 sets lost 2 blocks, and a lost block in the
//! middle of a prefix costs the recompute of every block after it: 178 blocks). Putting each key
//! into the emptier of two sets keeps the fullest set within a few blocks of the mean
//! ("power of two choices"): a store evicts only when it is nearly full.
//!
//! # Concurrency
//!
//! A `put` writes the slot (block and trailer) first and the directory entry second. A reader
//! accepts a block only if the trailer holds its key and the checksum of the bytes it read
//! matches, so a torn or concurrent overwrite reads as a miss, never as wrong bytes. Two
//! processes putting into the same set at the same moment may both pick the same way; then
//! one of the two blocks is lost (a miss later), which a cache may do. (Threads of one process
//! take a lock per set, a `put_many` those of every set its keys may go to, so they never
//! collide.)
//!
//! A process remembers the slot where it last saw each key and reads it directly (one round
//! trip), falling back to the directory when the slot holds something else. So it may still
//! find a block that another process evicted from the directory or cleared, until that slot is
//! overwritten; the bytes it gets are then still exactly the block's. A block whose bytes fail
//! the check is a miss for `get`, though `contains_prefix`, which reads only the directory,
//! still counts it until it is overwritten or evicted.
//!
//! # Speed
//!
//! [`Region::read`] and [`Region::write`] block for one range each. A batch runs its pieces
//! (one per key for `get_many`; for `put_many` one per set whose directory it reads, then one
//! per slot it writes) on
//! [`PoolTierOptions::threads`] threads, so that many requests are in flight at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use oxmem_client::Region;

use crate::{BlockKey, Counters, KvError, KvStats, KvTier, block_checksum, check_get, check_put};

const MAGIC: &[u8; 8] = b"OXKVPOOL";
/// Version 2: two choices of set (version 1 had one; its stores are not read).
const VERSION: u32 = 2;
const ENTRY_TAG: &[u8; 8] = b"OXKVENT1";
const TRAILER_MAGIC: &[u8; 8] = b"OXKVTRL1";
const HEADER_BYTES: u64 = 4096;
const ENTRY: usize = 64;
const TRAILER: usize = 32;
/// Offset of the stamp in a directory entry.
const STAMP_AT: u64 = 32;
/// Most slots per set (a set's directory is read whole at every put).
pub const MAX_WAYS: u32 = 1024;
/// Locks serialising this process's puts per set (a set uses lock `set % SET_LOCKS`).
const SET_LOCKS: u64 = 64;

/// How a [`PoolTier`] is laid out and how it runs.
#[derive(Debug, Clone)]
pub struct PoolTierOptions {
    /// Slots per set when formatting (default 8; ignored by [`PoolTier::open`], which reads
    /// the region's own).
    pub ways: u32,
    /// Pieces of a batch in flight at once (default 8).
    pub threads: usize,
    /// Write a new LRU stamp into the directory when a `get` finds a block (default true).
    /// Off, eviction is by the time a block was stored (FIFO within a set), and a hit costs
    /// one write less.
    pub touch_on_get: bool,
}

impl Default for PoolTierOptions {
    fn default() -> Self {
        PoolTierOptions {
            ways: 8,
            threads: 8,
            touch_on_get: true,
        }
    }
}

/// Where everything is in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    block_bytes: usize,
    ways: u32,
    sets: u64,
    slot_bytes: u64,
    dir_offset: u64,
    data_offset: u64,
    end: u64,
    nonce: u64,
}

fn round_up(n: u64, to: u64) -> Option<u64> {
    n.checked_add(to - 1).map(|n| n / to * to)
}

fn slot_bytes_for(block_bytes: usize) -> Option<u64> {
    let raw = (block_bytes as u64).checked_add(TRAILER as u64)?;
    let page = round_up(raw, 4096)?;
    if (page - raw) * 16 <= page {
        Some(page)
    } else {
        round_up(raw, 64)
    }
}

impl Geometry {
    /// The geometry of `sets` sets, or `None` on overflow.
    fn with_sets(block_bytes: usize, ways: u32, sets: u64, nonce: u64) -> Option<Geometry> {
        let slot_bytes = slot_bytes_for(block_bytes)?;
        let slots = sets.checked_mul(u64::from(ways))?;
        let dir_offset = HEADER_BYTES;
        let data_offset = round_up(
            dir_offset.checked_add(slots.checked_mul(ENTRY as u64)?)?,
            4096,
        )?;
        let end = data_offset.checked_add(slots.checked_mul(slot_bytes)?)?;
        Some(Geometry {
            block_bytes,
            ways,
            sets,
            slot_bytes,
            dir_offset,
            data_offset,
            end,
            nonce,
        })
    }

    /// The most sets that fit `region_len` bytes.
    fn fit(block_bytes: usize, ways: u32, region_len: u64, nonce: u64) -> Option<Geometry> {
        let slot_bytes = slot_bytes_for(block_bytes)?;
        let per_set = u64::from(ways).checked_mul(slot_bytes + ENTRY as u64)?;
        let mut sets = region_len.saturating_sub(HEADER_BYTES) / per_set;
        while sets > 0 {
            let g = Geometry::with_sets(block_bytes, ways, sets, nonce)?;
            if g.end <= region_len {
                return Some(g);
            }
            sets -= 1;
        }
        None
    }

    fn slots(&self) -> u64 {
        self.sets * u64::from(self.ways)
    }

    /// The key's first and second set (equal only when there is one set).
    fn sets_of(&self, key: &BlockKey) -> [u64; 2] {
        let h = |at: usize| u64::from_le_bytes(key.0[at..at + 8].try_into().unwrap_or_default());
        let first = h(0) % self.sets;
        if self.sets < 2 {
            return [first, first];
        }
        [first, (first + 1 + h(8) % (self.sets - 1)) % self.sets]
    }

    fn entry_offset(&self, slot: u64) -> u64 {
        self.dir_offset + slot * ENTRY as u64
    }

    fn slot_offset(&self, slot: u64) -> u64 {
        self.data_offset + slot * self.slot_bytes
    }

    fn checksum(&self, key: &BlockKey, data: &[u8]) -> u64 {
        block_checksum(key, data) ^ self.nonce
    }

    fn encode(&self) -> [u8; 80] {
        let mut h = [0u8; 80];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.ways.to_le_bytes());
        h[16..24].copy_from_slice(&(self.block_bytes as u64).to_le_bytes());
        h[24..32].copy_from_slice(&self.sets.to_le_bytes());
        h[32..40].copy_from_slice(&self.slot_bytes.to_le_bytes());
        h[40..48].copy_from_slice(&self.dir_offset.to_le_bytes());
        h[48..56].copy_from_slice(&self.data_offset.to_le_bytes());
        h[56..64].copy_from_slice(&self.end.to_le_bytes());
        h[64..72].copy_from_slice(&self.nonce.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&h[0..72]);
        h[72..80].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Reads a header; checks it is one, and that it describes a store that fits
    /// `region_len` bytes.
    fn decode(h: &[u8], region_len: u64) -> Result<Geometry, KvError> {
        if h.len() < 80 || &h[0..8] != MAGIC {
            return Err(KvError::Corrupt(
                "the region holds no KV store (no OXKVPOOL header)".into(),
            ));
        }
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
        let version = u32_at(8);
        if version != VERSION {
            return Err(KvError::Incompatible(format!(
                "store format version {version}, this build reads {VERSION}"
            )));
        }
        if u64_at(72) != xxhash_rust::xxh3::xxh3_64(&h[0..72]) {
            return Err(KvError::Corrupt("store header checksum mismatch".into()));
        }
        let ways = u32_at(12);
        if ways > MAX_WAYS {
            return Err(KvError::Incompatible(format!(
                "{ways} ways per set (at most {MAX_WAYS})"
            )));
        }
        let block_bytes = usize::try_from(u64_at(16)).unwrap_or(0);
        let sets = u64_at(24);
        let nonce = u64_at(64);
        let expected = (ways > 0 && block_bytes > 0 && sets > 0)
            .then(|| Geometry::with_sets(block_bytes, ways, sets, nonce))
            .flatten();
        let found = Geometry {
            block_bytes,
            ways,
            sets,
            slot_bytes: u64_at(32),
            dir_offset: u64_at(40),
            data_offset: u64_at(48),
            end: u64_at(56),
            nonce,
        };
        match expected {
            Some(g) if g == found && g.end <= region_len => Ok(g),
            Some(g) if g == found => Err(KvError::Corrupt(format!(
                "the store needs {} bytes but the region has {region_len}",
                g.end
            ))),
            _ => Err(KvError::Incompatible(format!(
                "store geometry {found:?} is not the one this build computes"
            ))),
        }
    }
}

/// A directory entry that holds a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    key: BlockKey,
    checksum: u64,
    stamp: u64,
}

fn parse_entry(b: &[u8]) -> Option<Entry> {
    if b.len() < ENTRY || &b[0..8] != ENTRY_TAG {
        return None;
    }
    Some(Entry {
        key: BlockKey(b[8..24].try_into().ok()?),
        checksum: u64::from_le_bytes(b[24..32].try_into().ok()?),
        stamp: u64::from_le_bytes(b[32..40].try_into().ok()?),
    })
}

fn encode_entry(e: &Entry) -> [u8; ENTRY] {
    let mut b = [0u8; ENTRY];
    b[0..8].copy_from_slice(ENTRY_TAG);
    b[8..24].copy_from_slice(&e.key.0);
    b[24..32].copy_from_slice(&e.checksum.to_le_bytes());
    b[32..40].copy_from_slice(&e.stamp.to_le_bytes());
    b
}

/// Where this process last saw keys: key → slot and slot → key (so it never holds more
/// entries than the store has slots).
#[derive(Debug, Default)]
struct Locations {
    slot_of: HashMap<BlockKey, u64>,
    key_in: HashMap<u64, BlockKey>,
}

impl Locations {
    fn learn(&mut self, key: BlockKey, slot: u64) {
        if let Some(old) = self.key_in.insert(slot, key) {
            if old != key {
                self.slot_of.remove(&old);
            }
        }
        if let Some(prev) = self.slot_of.insert(key, slot) {
            if prev != slot {
                self.key_in.remove(&prev);
            }
        }
    }

    fn forget(&mut self, key: &BlockKey) {
        if let Some(slot) = self.slot_of.remove(key) {
            self.key_in.remove(&slot);
        }
    }

    fn clear(&mut self) {
        self.slot_of.clear();
        self.key_in.clear();
    }
}

/// A KV block store in a pool region; see the [module docs](self).
#[derive(Debug)]
pub struct PoolTier {
    region: Region,
    geo: Geometry,
    threads: usize,
    touch_on_get: bool,
    clock: AtomicU64,
    seen: Mutex<Locations>,
    /// Puts of this process into set `s` hold `set_locks[s % len]`, so that two of its threads
    /// never pick the same way (processes may; see the module docs).
    set_locks: Vec<Mutex<()>>,
    /// Blocks this process placed into empty slots (or found by counting).
    stored: AtomicU64,
    counters: Counters,
}

/// Where `put_many` puts a batch, decided from the directories of every set it may touch.
#[derive(Debug, Default)]
struct Placement {
    /// The slots written and the batch entry each ends up holding (the last of the batch that
    /// went there), in slot order.
    writes: Vec<(u64, usize)>,
    /// Keys whose entries were taken by another key (possibly an entry of the same batch).
    evicted: Vec<BlockKey>,
    /// Empty slots taken.
    filled: u64,
}

/// What a worker of `get_many` found for one key.
#[derive(Debug, Clone, Copy)]
struct GetOne {
    /// The slot the block was found in.
    found: Option<u64>,
}

fn nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl PoolTier {
    /// Bytes of region a store of at least `capacity_blocks` blocks of `block_bytes` needs
    /// with `ways` slots per set (the capacity is rounded up to whole sets).
    ///
    /// # Errors
    /// [`KvError::BadArgument`] for zero arguments or sizes that overflow.
    pub fn region_bytes(
        block_bytes: usize,
        capacity_blocks: u64,
        ways: u32,
    ) -> Result<u64, KvError> {
        if block_bytes == 0 || capacity_blocks == 0 || ways == 0 || ways > MAX_WAYS {
            return Err(KvError::BadArgument(format!(
                "block size and capacity must be positive and ways in 1..={MAX_WAYS}"
            )));
        }
        let sets = capacity_blocks.div_ceil(u64::from(ways));
        Geometry::with_sets(block_bytes, ways, sets, 0)
            .map(|g| g.end)
            .ok_or_else(|| KvError::BadArgument("store too large".into()))
    }

    /// Formats `region` as an empty store of blocks of `block_bytes` (as many as fit, in sets
    /// of `options.ways`), erasing whatever store it held.
    ///
    /// # Errors
    /// [`KvError::BadArgument`] when not one set fits; [`KvError::Pool`] when the region
    /// cannot be written. On error the region is dropped (an allocated one is freed).
    pub fn create(
        region: Region,
        block_bytes: usize,
        options: PoolTierOptions,
    ) -> Result<PoolTier, KvError> {
        if block_bytes == 0 || options.ways == 0 || options.ways > MAX_WAYS {
            return Err(KvError::BadArgument(format!(
                "block size must be positive and ways in 1..={MAX_WAYS} (got {block_bytes} \
                 bytes, {} ways)",
                options.ways
            )));
        }
        let nonce = xxhash_rust::xxh3::xxh3_64(
            format!("{}:{}:{:?}", nanos_now(), std::process::id(), region.id()).as_bytes(),
        );
        let geo = Geometry::fit(block_bytes, options.ways, region.len(), nonce).ok_or_else(|| {
            KvError::BadArgument(format!(
                "a region of {} bytes holds no set of {} blocks of {block_bytes} bytes (needs {})",
                region.len(),
                options.ways,
                PoolTier::region_bytes(block_bytes, u64::from(options.ways), options.ways)
                    .unwrap_or(0)
            ))
        })?;
        // Invalidate any previous store first, then empty the directory, then publish.
        region.write(0, &[0u8; 80])?;
        zero(&region, geo.dir_offset, geo.slots() * ENTRY as u64)?;
        region.write(0, &geo.encode())?;
        Ok(PoolTier::with(region, geo, &options, 0))
    }

    /// Opens the store `region` holds (formatted by [`create`](Self::create), here or in
    /// another process); `options.ways` is ignored.
    ///
    /// # Errors
    /// [`KvError::Corrupt`] when the region holds no store or a damaged header;
    /// [`KvError::Incompatible`] when it holds another format version; [`KvError::Pool`]
    /// when it cannot be read. On error the region is dropped (an allocated one is freed,
    /// an attached one is not).
    pub fn open(region: Region, options: PoolTierOptions) -> Result<PoolTier, KvError> {
        let mut h = [0u8; 80];
        region.read(0, &mut h)?;
        let geo = Geometry::decode(&h, region.len())?;
        let tier = PoolTier::with(region, geo, &options, 0);
        let stored = tier.count_stored()?;
        tier.stored.store(stored, Ordering::Relaxed);
        Ok(tier)
    }

    fn with(region: Region, geo: Geometry, options: &PoolTierOptions, stored: u64) -> PoolTier {
        PoolTier {
            region,
            geo,
            threads: options.threads.max(1),
            touch_on_get: options.touch_on_get,
            clock: AtomicU64::new(0),
            seen: Mutex::new(Locations::default()),
            set_locks: (0..SET_LOCKS).map(|_| Mutex::new(())).collect(),
            stored: AtomicU64::new(stored),
            counters: Counters::default(),
        }
    }

    /// The region (for its id, to share it with another process).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Gives the region back (dropping an allocated region frees it).
    pub fn into_region(self) -> Region {
        self.region
    }

    /// Slots per set.
    pub fn ways(&self) -> u32 {
        self.geo.ways
    }

    /// Number of sets.
    pub fn sets(&self) -> u64 {
        self.geo.sets
    }

    /// The two sets `key` may live in, first and second (for tests that model the eviction;
    /// equal only when there is one set).
    pub fn sets_of(&self, key: &BlockKey) -> [u64; 2] {
        self.geo.sets_of(key)
    }

    /// Counts the occupied directory entries (reads the whole directory).
    ///
    /// # Errors
    /// [`KvError::Pool`].
    pub fn count_stored(&self) -> Result<u64, KvError> {
        let mut n = 0u64;
        let total = self.geo.slots() * ENTRY as u64;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < total {
            let len = (total - at).min(buf.len() as u64) as usize;
            self.region
                .read(self.geo.dir_offset + at, &mut buf[..len])?;
            n += buf[..len]
                .chunks_exact(ENTRY)
                .filter(|e| parse_entry(e).is_some())
                .count() as u64;
            at += len as u64;
        }
        Ok(n)
    }

    /// Forgets every block (empties the directory, for every process sharing the store).
    ///
    /// # Errors
    /// [`KvError::Pool`].
    pub fn clear(&self) -> Result<(), KvError> {
        zero(
            &self.region,
            self.geo.dir_offset,
            self.geo.slots() * ENTRY as u64,
        )?;
        self.seen_lock().clear();
        self.stored.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn seen_lock(&self) -> std::sync::MutexGuard<'_, Locations> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` consecutive stamps, above every stamp this process gave before and at least the
    /// wall clock in nanoseconds.
    fn stamps(&self, n: u64) -> u64 {
        let now = nanos_now();
        let mut base = 0;
        let _ = self
            .clock
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                base = now.max(last.saturating_add(1));
                Some(base.saturating_add(n.saturating_sub(1)))
            });
        base
    }

    fn read_set(&self, set: u64) -> Result<Vec<Option<Entry>>, KvError> {
        let ways = self.geo.ways as usize;
        let mut buf = vec![0u8; ways * ENTRY];
        let first = set * u64::from(self.geo.ways);
        self.region.read(self.geo.entry_offset(first), &mut buf)?;
        Ok(buf.chunks_exact(ENTRY).map(parse_entry).collect())
    }

    /// Reads `slot` and copies its block to `out` if the slot holds `key`, intact.
    fn read_block(&self, slot: u64, key: &BlockKey, out: &mut [u8]) -> Result<bool, KvError> {
        let bb = self.geo.block_bytes;
        let mut buf = vec![0u8; bb + TRAILER];
        self.region.read(self.geo.slot_offset(slot), &mut buf)?;
        let (data, trailer) = buf.split_at(bb);
        let stored = u64::from_le_bytes(trailer[16..24].try_into().unwrap_or_default());
        let ok = trailer[0..16] == key.0
            && &trailer[24..32] == TRAILER_MAGIC
            && stored == self.geo.checksum(key, data);
        if ok {
            out.copy_from_slice(data);
        }
        Ok(ok)
    }

    fn write_block(
        &self,
        slot: u64,
        key: &BlockKey,
        data: &[u8],
        checksum: u64,
    ) -> Result<(), KvError> {
        let mut buf = Vec::with_capacity(data.len() + TRAILER);
        buf.extend_from_slice(data);
        buf.extend_from_slice(&key.0);
        buf.extend_from_slice(&checksum.to_le_bytes());
        buf.extend_from_slice(TRAILER_MAGIC);
        self.region.write(self.geo.slot_offset(slot), &buf)?;
        Ok(())
    }

    /// The distinct sets `key` may live in (one when there is one set).
    fn candidates(&self, key: &BlockKey) -> Vec<u64> {
        let [a, b] = self.geo.sets_of(key);
        if a == b { vec![a] } else { vec![a, b] }
    }

    /// Places the batch as if put one by one, given the directories of every set it may touch
    /// (`dirs`, updated as it goes). Writes nothing.
    fn place(
        &self,
        blocks: &[(BlockKey, &[u8])],
        base_stamp: u64,
        dirs: &mut HashMap<u64, Vec<Option<Entry>>>,
    ) -> Placement {
        let ways = u64::from(self.geo.ways);
        let mut done = Placement::default();
        let mut source: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, (key, _)) in blocks.iter().enumerate() {
            let stamp = base_stamp + i as u64;
            let cands = self.candidates(key);
            let ways_of = |s: u64| dirs.get(&s).map_or(&[][..], Vec::as_slice);
            let holding = cands.iter().find_map(|&s| {
                ways_of(s)
                    .iter()
                    .position(|e| e.is_some_and(|e| e.key == *key))
                    .map(|w| (s, w))
            });
            let (set, way) = if let Some(at) = holding {
                at
            } else {
                let load = |s: u64| ways_of(s).iter().filter(|e| e.is_some()).count();
                let emptier = cands
                    .iter()
                    .copied()
                    .min_by_key(|&s| load(s))
                    .unwrap_or(cands[0]);
                if let Some(w) = ways_of(emptier).iter().position(Option::is_none) {
                    done.filled += 1;
                    (emptier, w)
                } else {
                    // Both sets full: the least recently used entry of the pair.
                    let oldest = cands
                        .iter()
                        .flat_map(|&s| {
                            ways_of(s)
                                .iter()
                                .enumerate()
                                .filter_map(move |(w, e)| e.map(|e| (s, w, e)))
                        })
                        .min_by_key(|(_, _, e)| e.stamp);
                    let Some((s, w, old)) = oldest else { continue };
                    done.evicted.push(old.key);
                    (s, w)
                }
            };
            if let Some(e) = dirs.get_mut(&set).and_then(|d| d.get_mut(way)) {
                *e = Some(Entry {
                    key: *key,
                    checksum: 0,
                    stamp,
                });
                source.insert(set * ways + way as u64, i);
            }
        }
        done.writes = source.into_iter().collect();
        done
    }

    /// Finds `key` and reads its block into `out`: at the slot this process last saw it,
    /// else where the directory says.
    fn get_one(
        &self,
        key: &BlockKey,
        guess: Option<u64>,
        out: &mut [u8],
    ) -> Result<GetOne, KvError> {
        if let Some(slot) = guess {
            if self.read_block(slot, key, out)? {
                return Ok(GetOne { found: Some(slot) });
            }
        }
        for set in self.candidates(key) {
            let entries = self.read_set(set)?;
            let first = set * u64::from(self.geo.ways);
            for (w, e) in entries.iter().enumerate() {
                let slot = first + w as u64;
                if e.is_some_and(|e| e.key == *key)
                    && Some(slot) != guess
                    && self.read_block(slot, key, out)?
                {
                    return Ok(GetOne { found: Some(slot) });
                }
            }
        }
        Ok(GetOne { found: None })
    }
}

/// Writes `len` zero bytes at `offset`, a megabyte at a time.
fn zero(region: &Region, offset: u64, len: u64) -> Result<(), KvError> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(chunk.len() as u64) as usize;
        region.write(offset + at, &chunk[..n])?;
        at += n as u64;
    }
    Ok(())
}

impl KvTier for PoolTier {
    fn name(&self) -> &str {
        "pool"
    }

    fn block_bytes(&self) -> usize {
        self.geo.block_bytes
    }

    fn put_many(&self, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        check_put(self.geo.block_bytes, blocks)?;
        if blocks.is_empty() {
            return Ok(());
        }
        let base = self.stamps(blocks.len() as u64);
        let sets: Vec<u64> = blocks
            .iter()
            .flat_map(|(key, _)| self.geo.sets_of(key))
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        // Every set the batch may touch stays locked until its blocks and entries are written,
        // so that two threads of this process never pick the same way. Taken in ascending
        // order: no deadlock.
        let lock_ids: BTreeSet<usize> = sets.iter().map(|s| (s % SET_LOCKS) as usize).collect();
        let _locks: Vec<_> = lock_ids
            .iter()
            .map(|&l| self.set_locks[l].lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let read = crate::par::run(sets.len(), self.threads, |i| self.read_set(sets[i]))?;
        let mut dirs: HashMap<u64, Vec<Option<Entry>>> = sets.iter().copied().zip(read).collect();
        let placed = self.place(blocks, base, &mut dirs);
        let result = crate::par::run(placed.writes.len(), self.threads, |j| {
            let (slot, i) = placed.writes[j];
            let (key, data) = &blocks[i];
            let checksum = self.geo.checksum(key, data);
            self.write_block(slot, key, data, checksum)?;
            let entry = Entry {
                key: *key,
                checksum,
                stamp: base + i as u64,
            };
            self.region
                .write(self.geo.entry_offset(slot), &encode_entry(&entry))?;
            Ok::<_, KvError>(())
        });
        if let Err(e) = result {
            // Some slots may hold a block of this batch now: forget where they were.
            let mut seen = self.seen_lock();
            for (key, _) in blocks {
                seen.forget(key);
            }
            return Err(e);
        }
        let mut seen = self.seen_lock();
        for key in &placed.evicted {
            seen.forget(key);
        }
        for &(slot, i) in &placed.writes {
            seen.learn(blocks[i].0, slot);
        }
        drop(seen);
        let written = placed.writes.len() as u64;
        self.stored.fetch_add(placed.filled, Ordering::Relaxed);
        Counters::add(&self.counters.puts, blocks.len() as u64);
        Counters::add(&self.counters.evictions, placed.evicted.len() as u64);
        Counters::add(
            &self.counters.bytes_written,
            written * self.geo.block_bytes as u64,
        );
        Ok(())
    }

    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        check_get(self.geo.block_bytes, keys, out)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.stamps(keys.len() as u64);
        let guesses: Vec<Option<u64>> = {
            let seen = self.seen_lock();
            keys.iter().map(|k| seen.slot_of.get(k).copied()).collect()
        };
        let outs: Vec<Mutex<&mut [u8]>> = out.iter_mut().map(|b| Mutex::new(&mut **b)).collect();
        let found = crate::par::run(keys.len(), self.threads, |i| {
            let mut buf = outs[i].lock().unwrap_or_else(|p| p.into_inner());
            let got = self.get_one(&keys[i], guesses[i], &mut buf)?;
            if let (Some(slot), true) = (got.found, self.touch_on_get) {
                // The stamp is a hint for eviction: the block was read whole, so a stamp that
                // could not be written does not fail the get.
                let stamp = base + i as u64;
                let _ = self
                    .region
                    .write(self.geo.entry_offset(slot) + STAMP_AT, &stamp.to_le_bytes());
            }
            Ok::<_, KvError>(got)
        })?;
        let mut seen = self.seen_lock();
        let mut hits = 0u64;
        let flags = keys
            .iter()
            .zip(&found)
            .map(|(key, got)| match got.found {
                Some(slot) => {
                    seen.learn(*key, slot);
                    hits += 1;
                    true
                }
                None => {
                    seen.forget(key);
                    false
                }
            })
            .collect();
        drop(seen);
        Counters::add(&self.counters.hits, hits);
        Counters::add(&self.counters.misses, keys.len() as u64 - hits);
        Counters::add(
            &self.counters.bytes_read,
            hits * self.geo.block_bytes as u64,
        );
        Ok(flags)
    }

    fn contains_prefix(&self, keys: &[BlockKey]) -> Result<usize, KvError> {
        // Directory lookups, a few at a time, stopping at the first key missing.
        let step = self.threads.max(1) * 2;
        let mut present = 0usize;
        for chunk in keys.chunks(step) {
            let found = crate::par::run(chunk.len(), self.threads, |i| {
                let key = &chunk[i];
                for set in self.candidates(key) {
                    let first = set * u64::from(self.geo.ways);
                    let entries = self.read_set(set)?;
                    if let Some(w) = entries
                        .iter()
                        .position(|e| e.is_some_and(|e| e.key == *key))
                    {
                        return Ok(Some(first + w as u64));
                    }
                }
                Ok::<_, KvError>(None)
            })?;
            let mut seen = self.seen_lock();
            for (key, slot) in chunk.iter().zip(&found) {
                match slot {
                    Some(slot) => {
                        seen.learn(*key, *slot);
                        present += 1;
                    }
                    None => return Ok(present),
                }
            }
        }
        Ok(present)
    }

    fn stats(&self) -> KvStats {
        let slots = self.geo.slots();
        // Other processes' puts are not counted: never say more than fits.
        let stored = self.stored.load(Ordering::Relaxed).min(slots);
        self.counters.snapshot(slots, stored)
    }
}
