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
//! Store header: magic `OXKVPOOL` (0..8), version 1 (8..12, u32), ways (12..16, u32),
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
//! Set-associative: a key lives in set `u64::from_le_bytes(key[0..8]) mod sets`, in one of
//! its `ways` slots (default 8). A `put` reads the set's directory (512 bytes), then takes the
//! way that already holds the key, else an empty way, else the way with the smallest stamp:
//! LRU within the set. Stamps come from a clock that is the wall clock in nanoseconds, made
//! strictly increasing within a process; a `get` that finds a block writes a new stamp into its
//! entry (unless [`PoolTierOptions::touch_on_get`] is off). `contains_prefix` only looks.
//!
//! # Concurrency
//!
//! A `put` writes the slot (block and trailer) first and the directory entry second. A reader
//! accepts a block only if the trailer holds its key and the checksum of the bytes it read
//! matches, so a torn or concurrent overwrite reads as a miss, never as wrong bytes. Two
//! processes putting into the same set at the same moment may both pick the same way; then
//! one of the two blocks is lost (a miss later), which a cache may do. (Threads of one process
//! take a lock per set, so they never collide.)
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
//! (one per key for `get_many`, one per set for `put_many`) on
//! [`PoolTierOptions::threads`] threads, so that many requests are in flight at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use oxmem_client::Region;

use crate::{BlockKey, Counters, KvError, KvStats, KvTier, block_checksum, check_get, check_put};

const MAGIC: &[u8; 8] = b"OXKVPOOL";
const VERSION: u32 = 1;
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

    fn set_of(&self, key: &BlockKey) -> u64 {
        u64::from_le_bytes(key.0[..8].try_into().unwrap_or_default()) % self.sets
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

/// What a worker of `put_many` did to one set.
#[derive(Debug, Default)]
struct SetPut {
    placed: Vec<(BlockKey, u64)>,
    evicted: Vec<BlockKey>,
    filled: u64,
    written: u64,
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

    /// The set `key` lives in (for tests that model the eviction).
    pub fn set_of(&self, key: &BlockKey) -> u64 {
        self.geo.set_of(key)
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

    /// Places the batch entries `idx` (all of set `set`, in batch order) as if put one by one.
    fn put_set(
        &self,
        set: u64,
        idx: &[usize],
        blocks: &[(BlockKey, &[u8])],
        base_stamp: u64,
    ) -> Result<SetPut, KvError> {
        let _set_lock = self.set_locks[(set % SET_LOCKS) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut ways: Vec<Option<Entry>> = self.read_set(set)?;
        // Which batch entry each way ends up holding (None: untouched).
        let mut source: Vec<Option<usize>> = vec![None; ways.len()];
        let mut done = SetPut::default();
        for &i in idx {
            let key = blocks[i].0;
            let stamp = base_stamp + i as u64;
            let way = if let Some(w) = ways.iter().position(|e| e.is_some_and(|e| e.key == key)) {
                w
            } else if let Some(w) = ways.iter().position(Option::is_none) {
                done.filled += 1;
                w
            } else {
                let (w, old) = ways
                    .iter()
                    .enumerate()
                    .filter_map(|(w, e)| e.map(|e| (w, e)))
                    .min_by_key(|(_, e)| e.stamp)
                    .unwrap_or((
                        0,
                        Entry {
                            key,
                            checksum: 0,
                            stamp: 0,
                        },
                    ));
                done.evicted.push(old.key);
                w
            };
            ways[way] = Some(Entry {
                key,
                checksum: 0,
                stamp,
            });
            source[way] = Some(i);
        }
        let first = set * u64::from(self.geo.ways);
        for (w, src) in source.iter().enumerate() {
            let Some(i) = *src else { continue };
            let (key, data) = &blocks[i];
            let slot = first + w as u64;
            let checksum = self.geo.checksum(key, data);
            self.write_block(slot, key, data, checksum)?;
            let entry = Entry {
                key: *key,
                checksum,
                stamp: ways[w].map_or(0, |e| e.stamp),
            };
            self.region
                .write(self.geo.entry_offset(slot), &encode_entry(&entry))?;
            done.placed.push((*key, slot));
            done.written += 1;
        }
        Ok(done)
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
        let set = self.geo.set_of(key);
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
        let mut by_set: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, (key, _)) in blocks.iter().enumerate() {
            by_set.entry(self.geo.set_of(key)).or_default().push(i);
        }
        let sets: Vec<(u64, Vec<usize>)> = by_set.into_iter().collect();
        let result = crate::par::run(sets.len(), self.threads, |s| {
            let (set, idx) = &sets[s];
            self.put_set(*set, idx, blocks, base)
        });
        let done = match result {
            Ok(d) => d,
            Err(e) => {
                // Some slots may hold a block of this batch now: forget where they were.
                let mut seen = self.seen_lock();
                for (key, _) in blocks {
                    seen.forget(key);
                }
                return Err(e);
            }
        };
        let mut seen = self.seen_lock();
        let (mut evicted, mut filled, mut written) = (0u64, 0u64, 0u64);
        for d in &done {
            for key in &d.evicted {
                seen.forget(key);
            }
            for &(key, slot) in &d.placed {
                seen.learn(key, slot);
            }
            evicted += d.evicted.len() as u64;
            filled += d.filled;
            written += d.written;
        }
        drop(seen);
        self.stored.fetch_add(filled, Ordering::Relaxed);
        Counters::add(&self.counters.puts, blocks.len() as u64);
        Counters::add(&self.counters.evictions, evicted);
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
                let set = self.geo.set_of(key);
                let first = set * u64::from(self.geo.ways);
                let entries = self.read_set(set)?;
                Ok::<_, KvError>(
                    entries
                        .iter()
                        .position(|e| e.is_some_and(|e| e.key == *key))
                        .map(|w| first + w as u64),
                )
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
