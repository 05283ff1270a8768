//! [`RedisTier`]: blocks in a Redis server.
//!
//! Each block is one string value under the key `PREFIX` + the 32 hex digits of its
//! [`BlockKey`]. A batch is one round trip: `put_many` sends one `MSET` (plus a `DEL` of the
//! evicted keys) in a pipeline, `get_many` one `MGET`, `contains_prefix` a pipeline of
//! `EXISTS`.
//!
//! # Capacity and eviction
//!
//! The tier keeps an LRU index of the keys it stored, with a capacity in blocks, and deletes
//! the least recently stored or found key when a new one does not fit, exactly like
//! [`DiskTier`](crate::DiskTier), so that both behave the same under the same workload and are
//! tested against the same model. The alternative is to let the server evict
//! (`maxmemory` + `maxmemory-policy allkeys-lru`): cheaper for the client, but approximated
//! LRU by sampling, with a capacity in bytes that includes Redis' own overhead.
//!
//! Reads trust the server rather than the index: a key found by `MGET` is a hit even if
//! another client stored it (it does not enter this client's index), a value of another
//! length is a miss, and a key the index holds but the server lost is forgotten.

use std::sync::Mutex;
use std::time::Duration;

use crate::lru::{Inserted, Lru};
use crate::{BlockKey, Counters, KvError, KvStats, KvTier, check_get, check_put};

/// How a [`RedisTier`] talks to its server.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prepended to every key (default `oxmem-kv:`), so that several stores share a server.
    pub prefix: String,
    /// Longest wait to connect, and for any reply (default 10 s).
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "oxmem-kv:".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Blocks in a Redis server; see the [module docs](self).
pub struct RedisTier {
    client: redis::Client,
    url: String,
    connection: Mutex<Option<redis::Connection>>,
    options: RedisOptions,
    block_bytes: usize,
    capacity: u64,
    index: Mutex<Lru<()>>,
    counters: Counters,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("url", &self.url)
            .field("prefix", &self.options.prefix)
            .field("block_bytes", &self.block_bytes)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn redis_error(url: &str, e: redis::RedisError) -> KvError {
    KvError::Redis(format!("{url}: {e}"))
}

impl RedisTier {
    /// Connects to the server at `url` (`redis://HOST:PORT[/DB]`) for up to `capacity_blocks`
    /// blocks of `block_bytes`. Keys already on the server under the prefix are not counted
    /// against the capacity; [`clear`](Self::clear) deletes them.
    ///
    /// # Errors
    /// [`KvError::BadArgument`] for a zero block size or capacity or a bad URL;
    /// [`KvError::Redis`] when the server cannot be reached.
    pub fn connect(
        url: &str,
        block_bytes: usize,
        capacity_blocks: u64,
        options: RedisOptions,
    ) -> Result<RedisTier, KvError> {
        if block_bytes == 0 || capacity_blocks == 0 {
            return Err(KvError::BadArgument(format!(
                "a Redis tier needs a positive block size and capacity (got {block_bytes} \
                 bytes, {capacity_blocks} blocks)"
            )));
        }
        let client = redis::Client::open(url)
            .map_err(|e| KvError::BadArgument(format!("Redis URL {url}: {e}")))?;
        let tier = RedisTier {
            client,
            url: url.to_string(),
            connection: Mutex::new(None),
            options,
            block_bytes,
            capacity: capacity_blocks,
            index: Mutex::new(Lru::new(
                usize::try_from(capacity_blocks).unwrap_or(usize::MAX),
            )),
            counters: Counters::default(),
        };
        // Connect now, so that a wrong address fails here and not at the first eviction.
        tier.with_connection(|c| redis::cmd("PING").exec(c))?;
        Ok(tier)
    }

    /// The Redis key of `key`.
    pub fn redis_key(&self, key: &BlockKey) -> String {
        let mut s = String::with_capacity(self.options.prefix.len() + 32);
        s.push_str(&self.options.prefix);
        for b in key.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Deletes every key under the prefix from the server (`SCAN` + `DEL`) and empties the
    /// index.
    ///
    /// # Errors
    /// [`KvError::Redis`].
    pub fn clear(&self) -> Result<(), KvError> {
        let mut index = self.lock_index();
        let pattern = format!("{}*", glob_escape(&self.options.prefix));
        self.with_connection(|c| {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(keys).exec(c)?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })?;
        index.clear();
        Ok(())
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Lru<()>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection, connecting first if there is none; a connection that
    /// failed is dropped, so that the next call connects again.
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, KvError> {
        let mut guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let c = self
                .client
                .get_connection_with_timeout(self.options.timeout)
                .map_err(|e| redis_error(&self.url, e))?;
            c.set_read_timeout(Some(self.options.timeout))
                .and_then(|()| c.set_write_timeout(Some(self.options.timeout)))
                .map_err(|e| redis_error(&self.url, e))?;
            *guard = Some(c);
        }
        let Some(c) = guard.as_mut() else {
            return Err(KvError::Redis(format!("{}: not connected", self.url)));
        };
        match f(c) {
            Ok(t) => Ok(t),
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    *guard = None;
                }
                Err(redis_error(&self.url, e))
            }
        }
    }
}

/// `s` with the characters `SCAN MATCH` treats as a pattern escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

impl KvTier for RedisTier {
    fn name(&self) -> &str {
        "redis"
    }

    fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    fn put_many(&self, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        check_put(self.block_bytes, blocks)?;
        if blocks.is_empty() {
            return Ok(());
        }
        // Place the batch in order, as if put one by one; then store what the index holds at
        // the end (each key's last bytes) and delete what it evicted.
        let mut index = self.lock_index();
        let mut evicted = Vec::new();
        for (key, _) in blocks {
            if let Inserted::Evicted(old, ()) = index.insert(*key, || ()) {
                evicted.push(old);
            }
        }
        let mut last: std::collections::HashMap<BlockKey, usize> = Default::default();
        for (i, (key, _)) in blocks.iter().enumerate() {
            if index.peek(key).is_some() {
                last.insert(*key, i);
            }
        }
        let mut sets: Vec<usize> = last.into_values().collect();
        sets.sort_unstable();
        let mut dels: Vec<String> = evicted
            .iter()
            .filter(|k| index.peek(k).is_none())
            .map(|k| self.redis_key(k))
            .collect();
        dels.sort_unstable();
        dels.dedup();
        let result = self.with_connection(|c| {
            let mut pipe = redis::pipe();
            if !sets.is_empty() {
                let mut mset = redis::cmd("MSET");
                for &i in &sets {
                    let (key, data) = &blocks[i];
                    mset.arg(self.redis_key(key)).arg(*data);
                }
                pipe.add_command(mset).ignore();
            }
            if !dels.is_empty() {
                pipe.cmd("DEL").arg(&dels).ignore();
            }
            pipe.exec(c)
        });
        if let Err(e) = result {
            // Which commands were applied is unknown: forget the batch.
            for (key, _) in blocks {
                index.remove(key);
            }
            return Err(e);
        }
        Counters::add(&self.counters.puts, blocks.len() as u64);
        Counters::add(&self.counters.evictions, evicted.len() as u64);
        Counters::add(
            &self.counters.bytes_written,
            (sets.len() * self.block_bytes) as u64,
        );
        Ok(())
    }

    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        check_get(self.block_bytes, keys, out)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        // The index stays locked across the round trip: a put under way would otherwise store
        // a key this get just missed, and the miss would make the index forget a stored key
        // (which would then never be deleted). One connection serialises the calls anyway.
        let mut index = self.lock_index();
        let values: Vec<Option<Vec<u8>>> =
            self.with_connection(|c| redis::cmd("MGET").arg(&names).query(c))?;
        if values.len() != keys.len() {
            return Err(KvError::Redis(format!(
                "{}: MGET of {} keys answered {} values",
                self.url,
                keys.len(),
                values.len()
            )));
        }
        let mut found = vec![false; keys.len()];
        for (i, v) in values.into_iter().enumerate() {
            match v {
                Some(v) if v.len() == self.block_bytes => {
                    out[i].copy_from_slice(&v);
                    found[i] = true;
                    index.touch(&keys[i]);
                }
                _ => {
                    index.remove(&keys[i]);
                }
            }
        }
        drop(index);
        let hits = found.iter().filter(|&&f| f).count() as u64;
        Counters::add(&self.counters.hits, hits);
        Counters::add(&self.counters.misses, keys.len() as u64 - hits);
        Counters::add(&self.counters.bytes_read, hits * self.block_bytes as u64);
        Ok(found)
    }

    fn contains_prefix(&self, keys: &[BlockKey]) -> Result<usize, KvError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let exists: Vec<bool> = self.with_connection(|c| {
            let mut pipe = redis::pipe();
            for k in keys {
                pipe.cmd("EXISTS").arg(self.redis_key(k));
            }
            pipe.query(c)
        })?;
        Ok(exists.iter().take_while(|&&e| e).count())
    }

    fn stats(&self) -> KvStats {
        let stored = self.lock_index().len() as u64;
        self.counters.snapshot(self.capacity, stored)
    }
}
