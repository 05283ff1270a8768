//! `oxmem-kv`: a KV-cache block store for LLM serving.
//!
//! A *block* is the K and V of `block_tokens` consecutive tokens for every layer of a model,
//! serialized to a fixed number of bytes. Blocks are addressed by a [`BlockKey`]: a chained
//! hash of every token id up to and including the block, so equal prefixes map to equal keys
//! in every request and every process.
//!
//! Every store implements [`KvTier`]: the oxmem pool ([`PoolTier`], the real thing), a local
//! file opened with `O_DIRECT` ([`DiskTier`]), a real Redis server ([`RedisTier`]), and
//! [`NoTier`] (keeps nothing: evicted blocks are recomputed).
//!
//! # What every store does
//!
//! - Blocks have a fixed size, [`KvTier::block_bytes`]; a block of another length, or a
//!   `get_many` whose buffers do not match its keys, is [`KvError::BadArgument`].
//! - A `put` of a key already stored refreshes it (new bytes, most recently used).
//! - When the store holds its capacity, a `put` evicts: [`DiskTier`] and [`RedisTier`] the
//!   least recently used block of the whole store, [`PoolTier`] the least recently used block
//!   of the key's two *sets* (it is set-associative with two choices of set, so that several
//!   processes can share it without a global index; a new key goes into the emptier set, so it
//!   evicts only when nearly full). "Used" means stored or found by `get`; `contains_prefix`
//!   only looks.
//! - Bytes read back from a medium are checked (a header, a key copy, a checksum) before they
//!   are returned: a block that is not what was stored is a miss, never wrong bytes.
//! - [`KvStats`] counts block payloads: `bytes_written` and `bytes_read` exclude headers,
//!   padding and lookups.
//!
//! # Example
//!
//! ```
//! use oxmem_kv::{BlockKey, DiskOptions, DiskTier, KvTier};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // 64 blocks of 16 KiB in a file opened with O_DIRECT (buffered if the file system refuses).
//! let options = DiskOptions { allow_buffered: true, ..DiskOptions::default() };
//! let tier = DiskTier::create(dir.path().join("kv.bin"), 16 << 10, 64, options)?;
//!
//! let tokens: Vec<u32> = (0..64).collect();
//! let keys = BlockKey::chain(1, &tokens, 16); // 4 blocks of 16 tokens
//! let block = vec![7u8; 16 << 10];
//! tier.put_many(&[(keys[0], &block[..]), (keys[1], &block[..])])?;
//! assert_eq!(tier.contains_prefix(&keys)?, 2);
//!
//! let mut out = vec![vec![0u8; 16 << 10]; 4];
//! let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
//! assert_eq!(tier.get_many(&keys, &mut bufs)?, [true, true, false, false]);
//! assert_eq!(out[1], block);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::fmt;

pub mod disk;
mod lru;
mod par;
pub mod pool_tier;
pub mod redis_tier;

pub use disk::{DiskIo, DiskOptions, DiskTier};
pub use pool_tier::{PoolTier, PoolTierOptions};
pub use redis_tier::{RedisOptions, RedisTier};

/// The key of one block: a 128-bit chained hash of the tokens up to and including the block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey(pub [u8; 16]);

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl BlockKey {
    /// The keys of every *full* block of `tokens` (a trailing partial block has none).
    ///
    /// `namespace` separates models (or anything else whose KV differs for equal tokens):
    /// equal tokens under different namespaces give different keys.
    pub fn chain(namespace: u64, tokens: &[u32], block_tokens: usize) -> Vec<BlockKey> {
        assert!(block_tokens > 0, "block_tokens must be positive");
        let mut keys = Vec::with_capacity(tokens.len() / block_tokens);
        let mut prev = xxhash_rust::xxh3::xxh3_128_with_seed(b"oxmem-kv", namespace).to_le_bytes();
        let mut buf = Vec::with_capacity(16 + 4 * block_tokens);
        for block in tokens.chunks_exact(block_tokens) {
            buf.clear();
            buf.extend_from_slice(&prev);
            for t in block {
                buf.extend_from_slice(&t.to_le_bytes());
            }
            prev = xxhash_rust::xxh3::xxh3_128_with_seed(&buf, namespace).to_le_bytes();
            keys.push(BlockKey(prev));
        }
        keys
    }
}

/// Why a store operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Caller: a block of the wrong size, or mismatched argument lengths.
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// The pool failed (coordinator or data path).
    #[error("pool: {0}")]
    Pool(#[from] oxmem_client::PoolError),
    /// Local disk IO failed.
    #[error("disk: {0}")]
    Io(#[from] std::io::Error),
    /// The Redis server failed or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// A stored block or store header is not what this store wrote (another format or a
    /// torn concurrent overwrite that could not be resolved).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The file system holding a [`DiskTier`] refuses `O_DIRECT` (tmpfs, some FUSE and
    /// network file systems); [`DiskOptions::allow_buffered`] opts into buffered IO instead.
    #[error(
        "{path}: O_DIRECT is not supported here ({reason}); use a directory on a disk file system, or allow buffered IO"
    )]
    DirectIoUnsupported {
        /// The file.
        path: std::path::PathBuf,
        /// What the kernel said.
        reason: String,
    },
    /// A store was made by another (incompatible) version of this crate or with another
    /// geometry than the caller asked for.
    #[error("incompatible store: {0}")]
    Incompatible(String),
}

/// The checksum every store keeps beside a block: xxh3-64 of the bytes, seeded by the key, so
/// the right bytes under another key do not pass either.
pub(crate) fn block_checksum(key: &BlockKey, data: &[u8]) -> u64 {
    let lo = u64::from_le_bytes(key.0[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(key.0[8..].try_into().unwrap_or_default());
    xxhash_rust::xxh3::xxh3_64_with_seed(data, lo ^ hi.rotate_left(32))
}

/// The counters behind [`KvStats`], shared by the stores.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) puts: std::sync::atomic::AtomicU64,
    pub(crate) hits: std::sync::atomic::AtomicU64,
    pub(crate) misses: std::sync::atomic::AtomicU64,
    pub(crate) evictions: std::sync::atomic::AtomicU64,
    pub(crate) bytes_written: std::sync::atomic::AtomicU64,
    pub(crate) bytes_read: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counters, with the capacity and the count held filled in.
    pub(crate) fn snapshot(&self, capacity_blocks: u64, stored_blocks: u64) -> KvStats {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        KvStats {
            capacity_blocks,
            stored_blocks,
            puts: get(&self.puts),
            hits: get(&self.hits),
            misses: get(&self.misses),
            evictions: get(&self.evictions),
            bytes_written: get(&self.bytes_written),
            bytes_read: get(&self.bytes_read),
        }
    }
}

/// Checks the arguments of [`KvTier::put_many`].
pub(crate) fn check_put(block_bytes: usize, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
    if let Some((i, (key, b))) = blocks
        .iter()
        .enumerate()
        .find(|(_, (_, b))| b.len() != block_bytes)
    {
        return Err(KvError::BadArgument(format!(
            "block {i} ({key:?}) has {} bytes, the store's blocks have {block_bytes}",
            b.len()
        )));
    }
    Ok(())
}

/// Checks the arguments of [`KvTier::get_many`].
pub(crate) fn check_get(
    block_bytes: usize,
    keys: &[BlockKey],
    out: &[&mut [u8]],
) -> Result<(), KvError> {
    if keys.len() != out.len() {
        return Err(KvError::BadArgument(format!(
            "{} keys but {} buffers",
            keys.len(),
            out.len()
        )));
    }
    if let Some((i, b)) = out.iter().enumerate().find(|(_, b)| b.len() != block_bytes) {
        return Err(KvError::BadArgument(format!(
            "buffer {i} has {} bytes, the store's blocks have {block_bytes}",
            b.len()
        )));
    }
    Ok(())
}

/// Usage counters of a store, since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Blocks the store can hold.
    pub capacity_blocks: u64,
    /// Blocks held now (as far as this process knows).
    pub stored_blocks: u64,
    /// Blocks written by `put`.
    pub puts: u64,
    /// `get` lookups that found their block.
    pub hits: u64,
    /// `get` lookups that did not.
    pub misses: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
    /// Bytes written to the store's medium.
    pub bytes_written: u64,
    /// Bytes read from the store's medium.
    pub bytes_read: u64,
}

/// A place where evicted KV blocks go and come back from.
///
/// All methods take `&self`: a store may be shared between threads. Every block has exactly
/// [`block_bytes`](KvTier::block_bytes) bytes.
pub trait KvTier: Send + Sync + fmt::Debug {
    /// A short name for tables: `none`, `disk`, `redis`, `pool`.
    fn name(&self) -> &str;

    /// The size of every block in bytes.
    fn block_bytes(&self) -> usize;

    /// Stores every `(key, bytes)`; evicts older blocks when the store is full. Storing a key
    /// that is already present refreshes it.
    fn put_many(&self, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError>;

    /// Reads each `keys[i]` into `out[i]`; returns, for each, whether it was found (a block
    /// not found leaves its buffer with unspecified contents).
    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError>;

    /// How many leading keys of `keys` are stored (stops at the first missing one).
    fn contains_prefix(&self, keys: &[BlockKey]) -> Result<usize, KvError>;

    /// Usage counters.
    fn stats(&self) -> KvStats;

    /// Stores one block.
    fn put(&self, key: BlockKey, block: &[u8]) -> Result<(), KvError> {
        self.put_many(&[(key, block)])
    }

    /// Reads one block; `Ok(false)` when it is not stored.
    fn get(&self, key: BlockKey, out: &mut [u8]) -> Result<bool, KvError> {
        Ok(self.get_many(&[key], &mut [out])?[0])
    }
}

/// The tier that keeps nothing: every evicted block must be recomputed. It still counts puts
/// and misses, and refuses bad arguments like every store.
#[derive(Debug)]
pub struct NoTier {
    block_bytes: usize,
    counters: Counters,
}

impl Clone for NoTier {
    /// A tier for the same block size, with counters from zero.
    fn clone(&self) -> Self {
        NoTier::new(self.block_bytes)
    }
}

impl NoTier {
    /// A tier for blocks of `block_bytes` that stores none of them.
    pub fn new(block_bytes: usize) -> NoTier {
        NoTier {
            block_bytes,
            counters: Counters::default(),
        }
    }
}

impl KvTier for NoTier {
    fn name(&self) -> &str {
        "none"
    }
    fn block_bytes(&self) -> usize {
        self.block_bytes
    }
    fn put_many(&self, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        check_put(self.block_bytes, blocks)?;
        Counters::add(&self.counters.puts, blocks.len() as u64);
        Ok(())
    }
    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        check_get(self.block_bytes, keys, out)?;
        Counters::add(&self.counters.misses, keys.len() as u64);
        Ok(vec![false; keys.len()])
    }
    fn contains_prefix(&self, _keys: &[BlockKey]) -> Result<usize, KvError> {
        Ok(0)
    }
    fn stats(&self) -> KvStats {
        self.counters.snapshot(0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_prefixes_give_equal_keys_and_a_change_changes_every_later_key() {
        let a: Vec<u32> = (0..64).collect();
        let mut b = a.clone();
        b[40] = 9999;
        let ka = BlockKey::chain(1, &a, 16);
        let kb = BlockKey::chain(1, &b, 16);
        assert_eq!(ka.len(), 4);
        assert_eq!(ka[..2], kb[..2]);
        assert_ne!(ka[2], kb[2]);
        assert_ne!(ka[3], kb[3]);
        // A trailing partial block has no key; another namespace gives other keys.
        assert_eq!(BlockKey::chain(1, &a[..63], 16).len(), 3);
        assert_ne!(BlockKey::chain(2, &a, 16)[0], ka[0]);
        // Same block tokens at a different position (other prefix) give another key.
        let shifted: Vec<u32> = (16..32).chain(0..16).collect();
        assert_ne!(BlockKey::chain(1, &shifted, 16)[1], ka[1]);
    }
}
