//! `oxmem-kv`: a KV-cache block store for LLM serving.
//!
//! A *block* is the K and V of `block_tokens` consecutive tokens for every layer of a model,
//! serialized to a fixed number of bytes. Blocks are addressed by a [`BlockKey`]: a chained
//! hash of every token id up to and including the block, so equal prefixes map to equal keys
//! in every request and every process.
//!
//! Every store implements [`KvTier`]: the oxmem pool (the real thing), a local file opened with
//! `O_DIRECT`, a real Redis server, and [`NoTier`] (keeps nothing: evicted blocks are
//! recomputed).

#![forbid(unsafe_code)]

use std::fmt;

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

/// The tier that keeps nothing: every evicted block must be recomputed.
#[derive(Debug, Clone)]
pub struct NoTier {
    block_bytes: usize,
}

impl NoTier {
    /// A tier for blocks of `block_bytes` that stores none of them.
    pub fn new(block_bytes: usize) -> NoTier {
        NoTier { block_bytes }
    }
}

impl KvTier for NoTier {
    fn name(&self) -> &str {
        "none"
    }
    fn block_bytes(&self) -> usize {
        self.block_bytes
    }
    fn put_many(&self, _blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        Ok(())
    }
    fn get_many(&self, keys: &[BlockKey], _out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        Ok(vec![false; keys.len()])
    }
    fn contains_prefix(&self, _keys: &[BlockKey]) -> Result<usize, KvError> {
        Ok(0)
    }
    fn stats(&self) -> KvStats {
        KvStats::default()
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
