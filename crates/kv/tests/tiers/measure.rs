//! Throughput of `get_many` and `put_many` of 64 blocks of 128 KiB on each store (ignored by
//! default; run with
//! `cargo nextest run -p oxmem-kv --release --run-ignored only -E 'test(measure)' --no-capture`).

use std::time::{Duration, Instant};

use oxmem_client::AllocOptions;
use oxmem_kv::{
    BlockKey, DiskOptions, DiskTier, KvTier, PoolTier, PoolTierOptions, RedisOptions, RedisTier,
};

use crate::conformance::bytes_of;

const BB: usize = 128 << 10;
const BLOCKS: usize = 64;

/// MB/s of `put_many` and `get_many` of the same 64 blocks, each repeated for about `time`.
fn measure(tier: &dyn KvTier, time: Duration) -> (f64, f64, u64) {
    let keys = BlockKey::chain(9, &(0..(16 * BLOCKS) as u32).collect::<Vec<_>>(), 16);
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    let rate = |f: &mut dyn FnMut()| {
        f();
        let start = Instant::now();
        let mut n = 0u64;
        while n < 3 || start.elapsed() < time {
            f();
            n += 1;
        }
        (n * (BLOCKS * BB) as u64) as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let put = rate(&mut || tier.put_many(&batch).unwrap());
    let mut out = vec![vec![0u8; BB]; BLOCKS];
    let mut hits = 0u64;
    let get = rate(&mut || {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        let found = tier.get_many(&keys, &mut bufs).unwrap();
        hits = found.iter().filter(|&&f| f).count() as u64;
    });
    for (i, o) in out.iter().enumerate() {
        assert!(*o == blocks[i], "block {i} read back");
    }
    (put, get, hits)
}

#[test]
#[ignore = "a measurement: run by hand in release mode"]
fn measure_put_and_get_many_of_64_blocks_of_128_kib() {
    let time = Duration::from_secs(2);
    let mut rows = Vec::new();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for threads in [1, 4, 8] {
        let disk = DiskTier::create(
            dir.path().join("kv.bin"),
            BB,
            256,
            DiskOptions {
                threads,
                ..DiskOptions::default()
            },
        )
        .unwrap();
        rows.push((
            format!("disk O_DIRECT, {threads} threads"),
            measure(&disk, time),
        ));
    }
    if let Some(server) = crate::redis_server::start_or_skip("measure redis") {
        let redis = RedisTier::connect(&server.url(), BB, 256, RedisOptions::default()).unwrap();
        rows.push(("redis".into(), measure(&redis, time)));
    }
    let pool = crate::pool_harness::TestPool::start(2, 512 << 20);
    let session = pool.connect();
    for (threads, touch) in [(1, true), (4, true), (8, true), (16, true), (8, false)] {
        let bytes = PoolTier::region_bytes(BB, 512, 8).unwrap();
        let region = session.alloc(bytes, AllocOptions::default()).unwrap();
        let options = PoolTierOptions {
            threads,
            touch_on_get: touch,
            ..PoolTierOptions::default()
        };
        let tier = PoolTier::create(region, BB, options).unwrap();
        rows.push((
            format!("pool (2 nodes), {threads} threads, touch {touch}"),
            measure(&tier, time),
        ));
    }
    // The ceiling: the region itself, one read of all 64 blocks, or 64 reads on 8 threads.
    let region = session
        .alloc((BLOCKS * BB) as u64, AllocOptions::default())
        .unwrap();
    region.write(0, &vec![7u8; BLOCKS * BB]).unwrap();
    let mut all = vec![0u8; BLOCKS * BB];
    let rate = |f: &mut dyn FnMut()| {
        f();
        let start = Instant::now();
        let mut n = 0u64;
        while n < 3 || start.elapsed() < time {
            f();
            n += 1;
        }
        (n * (BLOCKS * BB) as u64) as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let one = rate(&mut || region.read(0, &mut all).unwrap());
    let eight = rate(&mut || {
        std::thread::scope(|s| {
            for (c, chunk) in all.chunks_mut(BLOCKS * BB / 8).enumerate() {
                let region = &region;
                s.spawn(move || {
                    for (i, b) in chunk.chunks_mut(BB).enumerate() {
                        let at = c * (BLOCKS * BB / 8) + i * BB;
                        region.read(at as u64, b).unwrap();
                    }
                });
            }
        })
    });
    rows.push((
        "region.read, one call of 8 MiB".into(),
        (0.0, one, BLOCKS as u64),
    ));
    rows.push((
        "region.read, 64 x 128 KiB on 8 threads".into(),
        (0.0, eight, BLOCKS as u64),
    ));
    println!("\n{BLOCKS} blocks of {} KiB per batch", BB >> 10);
    println!(
        "{:<40} {:>12} {:>12} {:>6}",
        "store", "put MB/s", "get MB/s", "hits"
    );
    for (name, (put, get, hits)) in &rows {
        println!("{name:<40} {put:>12.0} {get:>12.0} {hits:>6}");
        assert_eq!(*hits, BLOCKS as u64, "{name}: every block found");
    }
}
