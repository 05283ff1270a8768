//! `PoolTier` on a pool running in this process: the suite with LRU within two sets, the
//! documented layout, damaged blocks, a half-full store that keeps every block, opening a
//! region twice, and two OS processes sharing one store.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use oxmem_api::RegionId;
use oxmem_client::AllocOptions;
use oxmem_kv::{BlockKey, KvError, KvTier, PoolTier, PoolTierOptions};

use crate::conformance::{Eviction, SetsOf, bytes_of, concurrent_use, conformance, random_key};
use crate::pool_harness::{TestPool, connect};

const BB: usize = 5000;

/// One pool for every test of this binary (starting one costs a few hundred milliseconds).
fn pool() -> &'static TestPool {
    static POOL: OnceLock<TestPool> = OnceLock::new();
    POOL.get_or_init(|| TestPool::start(2, 256 << 20))
}

fn session() -> &'static oxmem_client::Pool {
    static SESSION: OnceLock<oxmem_client::Pool> = OnceLock::new();
    SESSION.get_or_init(|| pool().connect())
}

/// A new store of at least `capacity` blocks of `BB` in sets of 8.
fn store(capacity: u64) -> PoolTier {
    let bytes = PoolTier::region_bytes(BB, capacity, 8).unwrap();
    let region = session().alloc(bytes, AllocOptions::default()).unwrap();
    PoolTier::create(region, BB, PoolTierOptions::default()).unwrap()
}

/// The two sets of a key, as the module docs define them.
fn sets_of(sets: u64) -> SetsOf {
    Box::new(move |k| {
        let h = |at: usize| u64::from_le_bytes(k.0[at..at + 8].try_into().unwrap());
        let first = h(0) % sets;
        if sets < 2 {
            return [first, first];
        }
        [first, (first + 1 + h(8) % (sets - 1)) % sets]
    })
}

#[test]
fn pool_tier_passes_the_suite_with_lru_within_two_sets() {
    conformance(&|| Box::new(store(32)) as Box<dyn KvTier>, &|t| {
        let ways = 8;
        let sets = t.stats().capacity_blocks / ways;
        Eviction::TwoChoiceLru {
            ways: ways as usize,
            sets_of: sets_of(sets),
        }
    });
}

#[test]
fn pool_tier_reads_back_whole_blocks_under_concurrent_use() {
    let tier = store(16);
    assert!(concurrent_use(&tier, 4, 100) > 0);
    assert!(tier.count_stored().unwrap() <= 16);
}

#[test]
fn geometry_follows_the_region_and_the_set_mapping_is_the_documented_one() {
    let tier = store(100);
    assert_eq!(tier.ways(), 8);
    // 100 blocks round up to 13 sets; the pool may round the region up and give more.
    assert!(tier.sets() >= 13);
    assert_eq!(tier.stats().capacity_blocks, tier.sets() * 8);
    let f = sets_of(tier.sets());
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    for _ in 0..100 {
        let k = random_key(&mut rng);
        let [a, b] = tier.sets_of(&k);
        assert_eq!([a, b], f(&k));
        assert!(a != b && b < tier.sets(), "two different sets");
    }
    assert!(PoolTier::region_bytes(BB, 100, 8).unwrap() <= tier.region().len());
    assert!(matches!(
        PoolTier::region_bytes(0, 1, 8),
        Err(KvError::BadArgument(_))
    ));
    let small = session().alloc(4096, AllocOptions::default()).unwrap();
    assert!(matches!(
        PoolTier::create(small, BB, PoolTierOptions::default()),
        Err(KvError::BadArgument(_))
    ));
}

/// Reads a little-endian u64 of the region.
fn u64_at(tier: &PoolTier, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    tier.region().read(offset, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// The slot whose directory entry holds `key`, found by scanning the directory as documented.
fn slot_of(tier: &PoolTier, key: &BlockKey) -> u64 {
    let dir = u64_at(tier, 40);
    let slots = tier.sets() * u64::from(tier.ways());
    let mut d = vec![0u8; slots as usize * 64];
    tier.region().read(dir, &mut d).unwrap();
    let slot = d
        .chunks_exact(64)
        .position(|e| &e[0..8] == b"OXKVENT1" && e[8..24] == key.0)
        .expect("the key has a directory entry") as u64;
    assert!(
        tier.sets_of(key).contains(&(slot / u64::from(tier.ways()))),
        "in one of its sets"
    );
    slot
}

#[test]
fn damaged_blocks_and_entries_read_as_misses_and_can_be_stored_again() {
    let tier = store(16);
    let keys: Vec<BlockKey> = (1..=4u8).map(|i| BlockKey([i; 16])).collect();
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    tier.put_many(&batch).unwrap();
    let data = u64_at(&tier, 48);
    let slot_bytes = u64_at(&tier, 32);
    let dir = u64_at(&tier, 40);
    // A flipped byte in block 1; another key in block 2's trailer; another key in block 3's
    // directory entry.
    let s1 = slot_of(&tier, &keys[1]);
    let s2 = slot_of(&tier, &keys[2]);
    let s3 = slot_of(&tier, &keys[3]);
    tier.region()
        .write(data + s1 * slot_bytes + 7, &[blocks[1][7] ^ 1])
        .unwrap();
    tier.region()
        .write(data + s2 * slot_bytes + BB as u64, &[0x66; 16])
        .unwrap();
    tier.region().write(dir + s3 * 64 + 8, &[0x77; 16]).unwrap();
    let mut out = vec![vec![0u8; BB]; 4];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        tier.get_many(&keys[..3], &mut bufs[..3]).unwrap()
    };
    assert_eq!(found, vec![true, false, false]);
    assert!(out[0] == blocks[0]);
    // Another session, which has seen no slot yet, goes by the directory: block 3 is gone.
    let other = pool().connect();
    let second = PoolTier::open(
        other.attach(tier.region().id()).unwrap(),
        PoolTierOptions::default(),
    )
    .unwrap();
    assert_eq!(second.contains_prefix(&keys).unwrap(), 3);
    assert!(!second.get(keys[3], &mut out[3]).unwrap());
    // Stored again, every block comes back whole, to both.
    tier.put_many(&batch[1..]).unwrap();
    for t in [&tier, &second] {
        let found = {
            let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
            t.get_many(&keys, &mut bufs).unwrap()
        };
        assert_eq!(found, vec![true; 4]);
        assert!(out == blocks);
    }
    // A store emptied by clear finds nothing. (Another process may still find a block in the
    // slot it last saw it in, until the slot is reused: then with exactly its bytes.)
    tier.clear().unwrap();
    assert_eq!(tier.count_stored().unwrap(), 0);
    assert_eq!(tier.contains_prefix(&keys).unwrap(), 0);
    assert_eq!(second.contains_prefix(&keys).unwrap(), 0);
    let mut one = vec![0u8; BB];
    assert!(!tier.get(keys[0], &mut one).unwrap());
    if second.get(keys[0], &mut one).unwrap() {
        assert!(one == blocks[0]);
    }
}

#[test]
fn garbage_in_the_region_is_never_returned_and_never_panics() {
    use rand::{RngCore, SeedableRng};
    let tier = store(32);
    let keys: Vec<BlockKey> = (1..=8u8).map(|i| BlockKey([i; 16])).collect();
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    tier.put_many(&batch).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let len = tier.region().len();
    // Everything after the header: random bytes, and then some directory entries that carry
    // the tag and a real key but point at garbage.
    let mut junk = vec![0u8; (len - 4096) as usize];
    rng.fill_bytes(&mut junk);
    tier.region().write(4096, &junk).unwrap();
    let dir = u64_at(&tier, 40);
    for (i, k) in keys.iter().enumerate() {
        let mut e = [0u8; 64];
        rng.fill_bytes(&mut e);
        e[0..8].copy_from_slice(b"OXKVENT1");
        e[8..24].copy_from_slice(&k.0);
        tier.region()
            .write(dir + slot_of_set(&tier, k, i) * 64, &e)
            .unwrap();
    }
    let other = pool().connect();
    let second = PoolTier::open(
        other.attach(tier.region().id()).unwrap(),
        PoolTierOptions::default(),
    )
    .unwrap();
    let get_all = |t: &PoolTier, out: &mut Vec<Vec<u8>>| {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        t.get_many(&keys, &mut bufs).unwrap()
    };
    let mut out = vec![vec![0u8; BB]; keys.len()];
    for t in [&tier, &second] {
        assert_eq!(
            get_all(t, &mut out),
            vec![false; keys.len()],
            "garbage is never a block"
        );
        assert!(t.stats().stored_blocks <= t.stats().capacity_blocks);
    }
    // The store still works on top of the garbage.
    second.put_many(&batch).unwrap();
    for t in [&tier, &second] {
        assert_eq!(get_all(t, &mut out), vec![true; keys.len()]);
        assert!(out == blocks);
    }
    // A header of random bytes: refused, not a panic.
    let mut h = [0u8; 4096];
    rng.fill_bytes(&mut h);
    tier.region().write(0, &h).unwrap();
    assert!(matches!(
        PoolTier::open(
            other.attach(tier.region().id()).unwrap(),
            PoolTierOptions::default()
        ),
        Err(KvError::Corrupt(_))
    ));
}

/// A slot of `key`'s first set (way `i mod ways`).
fn slot_of_set(tier: &PoolTier, key: &BlockKey, i: usize) -> u64 {
    tier.sets_of(key)[0] * u64::from(tier.ways()) + (i as u64 % u64::from(tier.ways()))
}

#[test]
fn a_second_session_opens_the_store_and_sees_every_block() {
    let tier = store(64);
    let keys = BlockKey::chain(5, &(0..16 * 20).collect::<Vec<u32>>(), 16);
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    tier.put_many(&batch).unwrap();
    let stored = tier.count_stored().unwrap();
    assert_eq!(stored, tier.stats().stored_blocks);
    let other = pool().connect();
    let attached = other.attach(tier.region().id()).unwrap();
    let second = PoolTier::open(attached, PoolTierOptions::default()).unwrap();
    assert_eq!(second.sets(), tier.sets());
    assert_eq!(second.block_bytes(), BB);
    assert_eq!(second.stats().stored_blocks, stored, "counted at open");
    let n = second.contains_prefix(&keys).unwrap();
    assert_eq!(n, tier.contains_prefix(&keys).unwrap());
    let mut out = vec![vec![0u8; BB]; keys.len()];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        second.get_many(&keys, &mut bufs).unwrap()
    };
    for i in 0..keys.len() {
        assert_eq!(found[i], tier.contains_prefix(&keys[i..=i]).unwrap() == 1);
        if found[i] {
            assert!(out[i] == blocks[i]);
        }
    }
    // What the second one stores, the first one finds.
    let k = BlockKey([0x42; 16]);
    second.put(k, &bytes_of(&k, BB)).unwrap();
    let mut one = vec![0u8; BB];
    assert!(tier.get(k, &mut one).unwrap());
    assert!(one == bytes_of(&k, BB));
}

#[test]
fn open_refuses_a_region_without_a_store_and_a_store_of_another_version() {
    let bare = session().alloc(1 << 20, AllocOptions::default()).unwrap();
    assert!(matches!(
        PoolTier::open(bare, PoolTierOptions::default()),
        Err(KvError::Corrupt(_))
    ));
    let tier = store(16);
    let other = pool().connect();
    // Version 1 (one set per key) is another format.
    tier.region().write(8, &1u32.to_le_bytes()).unwrap();
    let attached = other.attach(tier.region().id()).unwrap();
    assert!(matches!(
        PoolTier::open(attached, PoolTierOptions::default()),
        Err(KvError::Incompatible(_))
    ));
    // A damaged header field (the checksum no longer matches).
    tier.region().write(8, &2u32.to_le_bytes()).unwrap();
    tier.region().write(24, &7u64.to_le_bytes()).unwrap();
    let attached = other.attach(tier.region().id()).unwrap();
    assert!(matches!(
        PoolTier::open(attached, PoolTierOptions::default()),
        Err(KvError::Corrupt(_))
    ));
}

/// Runs `cmd` to its end, killing it after `limit`; its exit status and its output.
fn run_for_at_most(mut cmd: Command, limit: Duration) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    (status, text)
}

const HELPER: &str = "pool::second_process_reads_the_prefix_and_stores_its_own";
const PROCESS_SEED: u64 = 77;

fn prefix(namespace: u64, blocks: usize) -> Vec<BlockKey> {
    BlockKey::chain(
        namespace,
        &(0..(16 * blocks) as u32).collect::<Vec<_>>(),
        16,
    )
}

#[test]
fn two_processes_share_one_store() {
    let tier = store(256);
    let keys = prefix(PROCESS_SEED, 24);
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    tier.put_many(&batch).unwrap();
    let held = tier.contains_prefix(&keys).unwrap();
    assert!(held >= 8, "most of the prefix is held ({held})");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        HELPER,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("OXMEM_KV_TEST_COORDINATOR", &pool().url)
    .env("OXMEM_KV_TEST_TOKEN", &pool().token)
    .env("OXMEM_KV_TEST_REGION", tier.region().id().0.to_string())
    .env("OXMEM_KV_TEST_HELD", held.to_string());
    let (status, text) = run_for_at_most(cmd, Duration::from_secs(60));
    assert!(
        status.success(),
        "second process failed ({status}):\n{text}"
    );
    assert!(text.contains("1 passed"), "the helper ran:\n{text}");
    // The second process's own blocks are here now.
    let theirs = prefix(PROCESS_SEED + 1, 8);
    assert_eq!(tier.contains_prefix(&theirs).unwrap(), 8);
    let mut out = vec![vec![0u8; BB]; theirs.len()];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        tier.get_many(&theirs, &mut bufs).unwrap()
    };
    assert_eq!(found, vec![true; 8]);
    for (k, o) in theirs.iter().zip(&out) {
        assert!(*o == bytes_of(k, BB));
    }
}

/// The second process of [`two_processes_share_one_store`] (run by it, with the pool and the
/// region in its environment; ignored otherwise).
#[test]
#[ignore = "run by two_processes_share_one_store as a second process"]
fn second_process_reads_the_prefix_and_stores_its_own() {
    let var =
        |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} is set by the first process"));
    let session = connect(
        &var("OXMEM_KV_TEST_COORDINATOR"),
        &var("OXMEM_KV_TEST_TOKEN"),
    );
    let id = RegionId(var("OXMEM_KV_TEST_REGION").parse().unwrap());
    let held: usize = var("OXMEM_KV_TEST_HELD").parse().unwrap();
    let region = session.attach(id).unwrap();
    let tier = PoolTier::open(region, PoolTierOptions::default()).unwrap();
    let keys = prefix(PROCESS_SEED, 24);
    assert_eq!(tier.contains_prefix(&keys).unwrap(), held);
    let mut out = vec![vec![0u8; BB]; held];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        tier.get_many(&keys[..held], &mut bufs).unwrap()
    };
    assert_eq!(found, vec![true; held]);
    for (k, o) in keys.iter().zip(&out) {
        assert!(
            *o == bytes_of(k, BB),
            "block {k:?} as the first process stored it"
        );
    }
    let mine = prefix(PROCESS_SEED + 1, 8);
    let blocks: Vec<Vec<u8>> = mine.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = mine
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    tier.put_many(&batch).unwrap();
}

/// The `h100-8b` replay's shape: a store of twice the working set, filled with the working set
/// in write-back batches of 64. With one set per key some 8-way set receives more than 8 of
/// these keys and evicts one (then every block after it in its prefix is recomputed); with two
/// choices of set every block stays.
#[test]
fn a_store_half_full_keeps_every_block() {
    let tier = store(848);
    // Documents of 53 blocks each, 8 of them: 424 blocks.
    let keys: Vec<BlockKey> = (0..8u64)
        .flat_map(|doc| {
            let tokens: Vec<u32> = (0..53 * 32).map(|t| t * 7 + doc as u32).collect();
            BlockKey::chain(11, &tokens, 32)
        })
        .collect();
    assert_eq!(keys.len(), 424);
    // The case this guards against: one first set alone would have to hold more than 8.
    let mut first = std::collections::HashMap::<u64, usize>::new();
    for k in &keys {
        *first.entry(tier.sets_of(k)[0]).or_default() += 1;
    }
    assert!(
        first.values().any(|&n| n > 8),
        "some set gets more than its ways by the first choice"
    );
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    for part in batch.chunks(64) {
        tier.put_many(part).unwrap();
    }
    assert_eq!(
        tier.stats().evictions,
        0,
        "nothing evicted from a half-full store"
    );
    assert_eq!(tier.count_stored().unwrap(), 424);
    assert_eq!(tier.contains_prefix(&keys).unwrap(), keys.len());
    // Another process (which has seen no slot) finds every block by the directory.
    let other = pool().connect();
    let second = PoolTier::open(
        other.attach(tier.region().id()).unwrap(),
        PoolTierOptions::default(),
    )
    .unwrap();
    assert_eq!(second.contains_prefix(&keys).unwrap(), keys.len());
    let mut out = vec![vec![0u8; BB]; keys.len()];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        second.get_many(&keys, &mut bufs).unwrap()
    };
    assert_eq!(found, vec![true; keys.len()]);
    assert!(out == blocks);
}
