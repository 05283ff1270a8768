//! [`DiskTier`]: blocks in a local file opened with `O_DIRECT`.
//!
//! `O_DIRECT` keeps the page cache out of the way, so that a "disk" tier is a disk and not
//! quietly the RAM the benchmark pretends is short. It needs every buffer, file offset and
//! length aligned to the device's logical block size; this tier aligns everything to
//! [`ALIGN`] (4096), which covers every common device.
//!
//! # Layout
//!
//! The file is `capacity_blocks` slots of [`DiskTier::slot_bytes`] bytes:
//! `round_up(64 + block_bytes, 4096)`. A slot is a 64-byte header, then the block, then zeros:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `OXKVDISK` |
//! | 8..24 | the key |
//! | 24..32 | block bytes (u64 LE) |
//! | 32..40 | xxh3-64 of the block seeded by the key |
//! | 40..48 | xxh3-64 of bytes 0..40 |
//!
//! A read checks all of it: a slot that is not exactly what was written under that key (a bad
//! sector, a slot rewritten by a concurrent `put`) is a miss.
//!
//! # Index and eviction
//!
//! The index (key → slot) lives in this process; the file is scratch space that dies with the
//! tier (it is deleted on drop unless [`DiskOptions::keep_file`]). Eviction is LRU over the
//! whole store: a new key takes a free slot, or the slot of the least recently stored or found
//! block. `contains_prefix` answers from the index without IO. Reads of a batch run on
//! [`DiskOptions::threads`] threads (a device serves several requests at once); writes of a
//! batch too, after the batch has been placed in the index.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::lru::{Inserted, Lru};
use crate::{BlockKey, Counters, KvError, KvStats, KvTier, block_checksum, check_get, check_put};

/// The alignment of every buffer, offset and length given to the file.
pub const ALIGN: usize = 4096;

const HEADER: usize = 64;
const MAGIC: &[u8; 8] = b"OXKVDISK";

/// How a [`DiskTier`] opens its file.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// If the file system refuses `O_DIRECT`, use buffered IO and drop each range from the page
    /// cache after use (`posix_fadvise(DONTNEED)`), instead of failing. Only for tests on
    /// tmpfs: the page cache may still hold written pages for a while. Default false.
    pub allow_buffered: bool,
    /// Reads and writes of a batch in flight at once (default 4).
    pub threads: usize,
    /// Keep the file when the tier is dropped (default false: it is deleted, since its index
    /// is gone with the tier).
    pub keep_file: bool,
    /// Use buffered IO even where `O_DIRECT` works (tests of the fallback only).
    #[doc(hidden)]
    pub force_buffered: bool,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            allow_buffered: false,
            threads: 4,
            keep_file: false,
            force_buffered: false,
        }
    }
}

/// How a [`DiskTier`] ended up doing IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskIo {
    /// `O_DIRECT`: no page cache.
    Direct,
    /// Buffered IO with `posix_fadvise(DONTNEED)` (the file system refused `O_DIRECT` and the
    /// caller allowed this).
    Buffered,
}

#[derive(Debug)]
struct Index {
    lru: Lru<u64>,
    free: Vec<u64>,
    next_slot: u64,
}

/// Blocks in a local file opened with `O_DIRECT`; see the [module docs](self).
#[derive(Debug)]
pub struct DiskTier {
    path: PathBuf,
    file: File,
    io: DiskIo,
    block_bytes: usize,
    slot_bytes: usize,
    capacity: u64,
    threads: usize,
    keep_file: bool,
    index: Mutex<Index>,
    counters: Counters,
}

/// A buffer whose start is aligned to [`ALIGN`], without unsafe code: a vector `ALIGN` bytes
/// longer than needed, used from its first aligned byte.
#[derive(Debug)]
struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let vec = vec![0u8; len + ALIGN];
        let misalign = vec.as_ptr() as usize % ALIGN;
        let start = if misalign == 0 { 0 } else { ALIGN - misalign };
        AlignedBuf { vec, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|n| n / to * to)
}

fn is_einval(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

impl DiskTier {
    /// Creates (or truncates) the file at `path` for `capacity_blocks` blocks of
    /// `block_bytes`, opened with `O_DIRECT`, and reserves its space.
    ///
    /// # Errors
    /// [`KvError::BadArgument`] for a zero block size or capacity;
    /// [`KvError::DirectIoUnsupported`] when the file system refuses `O_DIRECT` and
    /// [`DiskOptions::allow_buffered`] is false; [`KvError::Io`] when the file cannot be
    /// created or its space reserved (the message names the path).
    pub fn create(
        path: impl AsRef<Path>,
        block_bytes: usize,
        capacity_blocks: u64,
        options: DiskOptions,
    ) -> Result<DiskTier, KvError> {
        let path = path.as_ref().to_path_buf();
        if block_bytes == 0 || capacity_blocks == 0 {
            return Err(KvError::BadArgument(format!(
                "a disk tier needs a positive block size and capacity (got {block_bytes} bytes, \
                 {capacity_blocks} blocks)"
            )));
        }
        let slot_bytes = round_up(block_bytes + HEADER, ALIGN)
            .ok_or_else(|| KvError::BadArgument(format!("block size {block_bytes} too large")))?;
        let file_bytes = (slot_bytes as u64)
            .checked_mul(capacity_blocks)
            .ok_or_else(|| KvError::BadArgument("capacity too large".into()))?;
        let with_path = |what: &str, e: std::io::Error| {
            KvError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {what}: {e}", path.display()),
            ))
        };
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).create(true).truncate(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path)
        };
        let refused = |e: &std::io::Error| KvError::DirectIoUnsupported {
            path: path.clone(),
            reason: e.to_string(),
        };
        // Some file systems refuse O_DIRECT at open, others at the first IO: try both.
        let mut io = DiskIo::Direct;
        let file = match open(!options.force_buffered) {
            Ok(f) if options.force_buffered => {
                io = DiskIo::Buffered;
                f
            }
            Ok(f) => match probe(&f) {
                Ok(()) => f,
                Err(e) if is_einval(&e) => {
                    if !options.allow_buffered {
                        drop(f);
                        let _ = std::fs::remove_file(&path);
                        return Err(refused(&e));
                    }
                    io = DiskIo::Buffered;
                    open(false).map_err(|e| with_path("open", e))?
                }
                Err(e) => return Err(with_path("first direct IO", e)),
            },
            Err(e) if is_einval(&e) => {
                if !options.allow_buffered {
                    return Err(refused(&e));
                }
                io = DiskIo::Buffered;
                open(false).map_err(|e| with_path("open", e))?
            }
            Err(e) => return Err(with_path("open", e)),
        };
        file.set_len(file_bytes)
            .map_err(|e| with_path("set length", e))?;
        // Reserve the space now, so that a full disk shows here rather than mid-benchmark.
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, file_bytes) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(with_path("reserve space", e.into())),
        }
        Ok(DiskTier {
            path,
            file,
            io,
            block_bytes,
            slot_bytes,
            capacity: capacity_blocks,
            threads: options.threads.max(1),
            keep_file: options.keep_file,
            index: Mutex::new(Index {
                lru: Lru::new(usize::try_from(capacity_blocks).unwrap_or(usize::MAX)),
                free: Vec::new(),
                next_slot: 0,
            }),
            counters: Counters::default(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether IO bypasses the page cache.
    pub fn io(&self) -> DiskIo {
        self.io
    }

    /// Bytes of one slot in the file (header, block, padding to 4096).
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Forgets every block (the file keeps its bytes; they are never read again).
    pub fn clear(&self) {
        let mut index = self.lock();
        index.lru.clear();
        index.free.clear();
        index.next_slot = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn offset(&self, slot: u64) -> u64 {
        slot * self.slot_bytes as u64
    }

    /// Drops `offset..offset + len` from the page cache in buffered mode.
    fn forget_cached(&self, offset: u64, len: usize) {
        if self.io == DiskIo::Buffered {
            let _ = rustix::fs::fadvise(
                &self.file,
                offset,
                std::num::NonZeroU64::new(len as u64),
                rustix::fs::Advice::DontNeed,
            );
        }
    }

    fn write_slot(&self, slot: u64, key: &BlockKey, data: &[u8]) -> std::io::Result<()> {
        let mut buf = AlignedBuf::zeroed(self.slot_bytes);
        let b = buf.as_mut_slice();
        b[0..8].copy_from_slice(MAGIC);
        b[8..24].copy_from_slice(&key.0);
        b[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
        b[32..40].copy_from_slice(&block_checksum(key, data).to_le_bytes());
        let h = xxhash_rust::xxh3::xxh3_64(&b[0..40]);
        b[40..48].copy_from_slice(&h.to_le_bytes());
        b[HEADER..HEADER + data.len()].copy_from_slice(data);
        let offset = self.offset(slot);
        self.file.write_all_at(buf.as_slice(), offset)?;
        self.forget_cached(offset, self.slot_bytes);
        Ok(())
    }

    /// Reads `slot` and copies its block into `out` if it holds `key`; `Ok(false)` if not.
    fn read_slot(&self, slot: u64, key: &BlockKey, out: &mut [u8]) -> std::io::Result<bool> {
        let mut buf = AlignedBuf::zeroed(self.slot_bytes);
        let offset = self.offset(slot);
        self.file.read_exact_at(buf.as_mut_slice(), offset)?;
        self.forget_cached(offset, self.slot_bytes);
        let b = buf.as_slice();
        let field = |r: std::ops::Range<usize>| -> u64 {
            b.get(r)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        let valid = &b[0..8] == MAGIC
            && b[8..24] == key.0
            && field(24..32) == self.block_bytes as u64
            && field(40..48) == xxhash_rust::xxh3::xxh3_64(&b[0..40]);
        if !valid {
            return Ok(false);
        }
        let data = &b[HEADER..HEADER + self.block_bytes];
        if field(32..40) != block_checksum(key, data) {
            return Ok(false);
        }
        out.copy_from_slice(data);
        Ok(true)
    }
}

/// Writes and reads one aligned page at offset 0 of a new file: the file systems that accept
/// `O_DIRECT` at open but not in IO answer `EINVAL` here.
fn probe(file: &File) -> std::io::Result<()> {
    let mut buf = AlignedBuf::zeroed(ALIGN);
    file.write_all_at(buf.as_slice(), 0)?;
    file.read_exact_at(buf.as_mut_slice(), 0)?;
    file.set_len(0)
}

impl KvTier for DiskTier {
    fn name(&self) -> &str {
        "disk"
    }

    fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    fn put_many(&self, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        check_put(self.block_bytes, blocks)?;
        // Writers hold the index for the whole batch: they place the blocks in order (as if
        // put one by one), then write each slot's final block, several at once.
        let mut index = self.lock();
        let mut last_in_slot: std::collections::HashMap<u64, usize> = Default::default();
        let mut evictions = 0u64;
        let Index {
            lru,
            free,
            next_slot,
        } = &mut *index;
        for (i, (key, _)) in blocks.iter().enumerate() {
            let slot = match lru.insert(*key, || {
                free.pop().unwrap_or_else(|| {
                    *next_slot += 1;
                    *next_slot - 1
                })
            }) {
                Inserted::Refreshed(s) | Inserted::New(s) => s,
                Inserted::Evicted(_, s) => {
                    evictions += 1;
                    s
                }
            };
            last_in_slot.insert(slot, i);
        }
        let writes: Vec<(u64, usize)> = last_in_slot.into_iter().collect();
        let result = crate::par::run(writes.len(), self.threads, |w| {
            let (slot, i) = writes[w];
            let (key, data) = &blocks[i];
            self.write_slot(slot, key, data)
        });
        if let Err(e) = result {
            // Which writes landed is unknown: forget the whole batch (a miss, never bad bytes).
            for (key, _) in blocks {
                if let Some(slot) = index.lru.remove(key) {
                    index.free.push(slot);
                }
            }
            return Err(KvError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: write: {e}", self.path.display()),
            )));
        }
        Counters::add(&self.counters.puts, blocks.len() as u64);
        Counters::add(&self.counters.evictions, evictions);
        Counters::add(
            &self.counters.bytes_written,
            (writes.len() * self.block_bytes) as u64,
        );
        Ok(())
    }

    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        check_get(self.block_bytes, keys, out)?;
        let slots: Vec<Option<u64>> = {
            let mut index = self.lock();
            keys.iter().map(|k| index.lru.touch(k)).collect()
        };
        // Reads run without the index lock: a slot rewritten meanwhile fails its check.
        let wanted: Vec<usize> = (0..keys.len()).filter(|&i| slots[i].is_some()).collect();
        let outs: Vec<Mutex<&mut [u8]>> = out.iter_mut().map(|b| Mutex::new(&mut **b)).collect();
        let found = crate::par::run(wanted.len(), self.threads, |w| {
            let i = wanted[w];
            let slot = slots[i].unwrap_or(0);
            let mut buf = outs[i].lock().unwrap_or_else(|p| p.into_inner());
            self.read_slot(slot, &keys[i], &mut buf)
        })
        .map_err(|e| {
            KvError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: read: {e}", self.path.display()),
            ))
        })?;
        let mut hits = vec![false; keys.len()];
        let mut bad = Vec::new();
        for (w, ok) in found.into_iter().enumerate() {
            let i = wanted[w];
            hits[i] = ok;
            if !ok {
                bad.push(i);
            }
        }
        if !bad.is_empty() {
            let mut index = self.lock();
            for i in bad {
                if index.lru.peek(&keys[i]) == slots[i] {
                    if let Some(slot) = index.lru.remove(&keys[i]) {
                        index.free.push(slot);
                    }
                }
            }
        }
        let n_hits = hits.iter().filter(|&&h| h).count() as u64;
        Counters::add(&self.counters.hits, n_hits);
        Counters::add(&self.counters.misses, keys.len() as u64 - n_hits);
        Counters::add(&self.counters.bytes_read, n_hits * self.block_bytes as u64);
        Ok(hits)
    }

    fn contains_prefix(&self, keys: &[BlockKey]) -> Result<usize, KvError> {
        let index = self.lock();
        Ok(keys
            .iter()
            .take_while(|k| index.lru.peek(k).is_some())
            .count())
    }

    fn stats(&self) -> KvStats {
        let stored = self.lock().lru.len() as u64;
        self.counters.snapshot(self.capacity, stored)
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        if !self.keep_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
