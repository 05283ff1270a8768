//! `RedisTier` against a `redis-server` of the test's own.

use oxmem_kv::{BlockKey, KvError, KvTier, RedisOptions, RedisTier};

use crate::conformance::{Eviction, bytes_of, concurrent_use, conformance};
use crate::redis_server::start_or_skip;

const BB: usize = 5000;

fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn dbsize(url: &str) -> u64 {
    redis::cmd("DBSIZE").query(&mut raw(url)).unwrap()
}

#[test]
fn redis_tier_passes_the_suite_with_whole_store_lru() {
    let Some(server) = start_or_skip("redis_tier_passes_the_suite") else {
        return;
    };
    let url = server.url();
    conformance(
        &|| {
            // Each part starts from an empty server.
            redis::cmd("FLUSHALL").exec(&mut raw(&url)).unwrap();
            Box::new(RedisTier::connect(&url, BB, 24, RedisOptions::default()).unwrap())
                as Box<dyn KvTier>
        },
        &|t| Eviction::Lru {
            capacity: t.stats().capacity_blocks as usize,
        },
    );
    // The random run filled the store: the server holds exactly what the index holds.
    assert_eq!(dbsize(&url), 24);
}

#[test]
fn redis_tier_reads_back_whole_blocks_under_concurrent_use() {
    let Some(server) = start_or_skip("redis concurrent use") else {
        return;
    };
    let tier = RedisTier::connect(&server.url(), BB, 16, RedisOptions::default()).unwrap();
    assert!(concurrent_use(&tier, 4, 100) > 0);
    assert!(dbsize(&server.url()) <= 16);
}

#[test]
fn keys_are_prefixed_foreign_values_are_misses_and_clear_deletes_only_the_prefix() {
    let Some(server) = start_or_skip("redis prefixes") else {
        return;
    };
    let url = server.url();
    let options = RedisOptions {
        prefix: "test*[kv]:".into(),
        ..RedisOptions::default()
    };
    let tier = RedisTier::connect(&url, BB, 8, options).unwrap();
    let k = BlockKey([0xab; 16]);
    assert_eq!(tier.redis_key(&k), format!("test*[kv]:{}", "ab".repeat(16)));
    tier.put(k, &bytes_of(&k, BB)).unwrap();
    let mut c = raw(&url);
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(tier.redis_key(&k))
        .query(&mut c)
        .unwrap();
    assert!(stored == bytes_of(&k, BB), "the value is the block's bytes");
    // Another client's value of the wrong size under a block's key: a miss, not an error.
    let foreign = BlockKey([0xcd; 16]);
    redis::cmd("SET")
        .arg(tier.redis_key(&foreign))
        .arg(&b"not a block"[..])
        .exec(&mut c)
        .unwrap();
    let mut out = vec![0u8; BB];
    assert!(!tier.get(foreign, &mut out).unwrap());
    // Someone else's key survives clear; ours do not.
    redis::cmd("SET")
        .arg("other:key")
        .arg(1)
        .exec(&mut c)
        .unwrap();
    tier.clear().unwrap();
    assert_eq!(dbsize(&url), 1);
    assert_eq!(tier.stats().stored_blocks, 0);
    assert!(!tier.get(k, &mut out).unwrap());
}

#[test]
fn evicted_blocks_are_deleted_from_the_server() {
    let Some(server) = start_or_skip("redis eviction") else {
        return;
    };
    let url = server.url();
    let tier = RedisTier::connect(&url, BB, 4, RedisOptions::default()).unwrap();
    let keys: Vec<BlockKey> = (1..=6u8).map(|i| BlockKey([i; 16])).collect();
    for k in &keys {
        tier.put(*k, &bytes_of(k, BB)).unwrap();
    }
    assert_eq!(dbsize(&url), 4);
    assert_eq!(tier.stats().evictions, 2);
    let mut c = raw(&url);
    for (i, k) in keys.iter().enumerate() {
        let exists: bool = redis::cmd("EXISTS")
            .arg(tier.redis_key(k))
            .query(&mut c)
            .unwrap();
        assert_eq!(exists, i >= 2, "key {i}");
    }
    // One batch larger than the store keeps its last blocks and writes only those.
    let before = tier.stats().bytes_written;
    let big: Vec<BlockKey> = (10..=19u8).map(|i| BlockKey([i; 16])).collect();
    let blocks: Vec<Vec<u8>> = big.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> =
        big.iter().zip(&blocks).map(|(k, b)| (*k, &b[..])).collect();
    tier.put_many(&batch).unwrap();
    assert_eq!(dbsize(&url), 4);
    assert_eq!(tier.contains_prefix(&big[6..]).unwrap(), 4);
    assert_eq!(tier.stats().bytes_written - before, 4 * BB as u64);
}

#[test]
fn a_server_that_goes_away_is_an_error_and_one_that_returns_is_used_again() {
    let Some(mut server) = start_or_skip("redis outage") else {
        return;
    };
    let port = server.port;
    let options = RedisOptions {
        timeout: std::time::Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let tier = RedisTier::connect(&server.url(), BB, 4, options).unwrap();
    let k = BlockKey([1; 16]);
    tier.put(k, &bytes_of(&k, BB)).unwrap();
    server.kill();
    let mut out = vec![0u8; BB];
    assert!(matches!(tier.get(k, &mut out), Err(KvError::Redis(_))));
    assert!(matches!(tier.put(k, &out), Err(KvError::Redis(_))));
    // A new server on the same port (empty: no persistence): the tier reconnects.
    let again = std::process::Command::new("redis-server")
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _again = Kill(again);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "restarted server listens"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!tier.get(k, &mut out).unwrap(), "the new server is empty");
    tier.put(k, &bytes_of(&k, BB)).unwrap();
    assert!(tier.get(k, &mut out).unwrap());
    assert!(out == bytes_of(&k, BB));
}

#[test]
fn an_unreachable_server_fails_at_connect() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = RedisTier::connect(
        &format!("redis://127.0.0.1:{port}/"),
        BB,
        4,
        RedisOptions::default(),
    );
    assert!(matches!(r, Err(KvError::Redis(_))), "{r:?}");
    assert!(matches!(
        RedisTier::connect("not a url", BB, 4, RedisOptions::default()),
        Err(KvError::BadArgument(_))
    ));
}
