//! `DiskTier`: the suite with `O_DIRECT` and in the buffered fallback, damaged slots, the
//! file's size and lifetime, and a file system that refuses `O_DIRECT`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oxmem_kv::{BlockKey, DiskIo, DiskOptions, DiskTier, KvError, KvTier};

use crate::conformance::{Eviction, bytes_of, concurrent_use, conformance};

/// Blocks of an odd size, so that slots have padding.
const BB: usize = 5000;

/// A directory on the file system of the build directory (a disk, normally) rather than
/// `/tmp`, which may be tmpfs.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory")
}

/// Creates a direct-IO tier at `path`, or prints why the test is skipped.
fn direct(path: &Path, capacity: u64) -> Option<DiskTier> {
    match DiskTier::create(path, BB, capacity, DiskOptions::default()) {
        Ok(t) => {
            assert_eq!(t.io(), DiskIo::Direct);
            Some(t)
        }
        Err(e @ KvError::DirectIoUnsupported { .. }) => {
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn disk_tier_passes_the_suite_with_o_direct_and_whole_store_lru() {
    let dir = scratch();
    let path = dir.path().join("kv.bin");
    if direct(&path, 24).is_none() {
        return;
    }
    conformance(
        &|| Box::new(direct(&path, 24).expect("direct IO worked above")) as Box<dyn KvTier>,
        &|t| Eviction::Lru {
            capacity: t.stats().capacity_blocks as usize,
        },
    );
}

#[test]
fn disk_tier_in_buffered_fallback_passes_the_suite() {
    let dir = scratch();
    let path = dir.path().join("kv.bin");
    let options = DiskOptions {
        force_buffered: true,
        ..DiskOptions::default()
    };
    conformance(
        &|| {
            let t = DiskTier::create(&path, BB, 24, options.clone()).unwrap();
            assert_eq!(t.io(), DiskIo::Buffered);
            Box::new(t) as Box<dyn KvTier>
        },
        &|t| Eviction::Lru {
            capacity: t.stats().capacity_blocks as usize,
        },
    );
}

#[test]
fn disk_tier_reads_back_whole_blocks_under_concurrent_use() {
    let dir = scratch();
    let Some(tier) = direct(&dir.path().join("kv.bin"), 16) else {
        return;
    };
    let hits = concurrent_use(&tier, 4, 200);
    assert!(hits > 0, "some gets found their block");
}

#[test]
fn the_file_has_one_aligned_slot_per_block_clears_and_is_deleted_on_drop() {
    let dir = scratch();
    let path = dir.path().join("kv.bin");
    let Some(tier) = direct(&path, 10) else {
        return;
    };
    // 64-byte header + 5000 bytes, rounded up to 4096.
    assert_eq!(tier.slot_bytes(), 8192);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 * 8192);
    assert_eq!(tier.path(), path);
    // clear forgets every block; the slots are used again from the first.
    let k = BlockKey([3; 16]);
    tier.put(k, &bytes_of(&k, BB)).unwrap();
    tier.clear();
    assert_eq!(tier.contains_prefix(&[k]).unwrap(), 0);
    assert_eq!(tier.stats().stored_blocks, 0);
    let mut out = vec![0u8; BB];
    assert!(!tier.get(k, &mut out).unwrap());
    tier.put(k, &bytes_of(&k, BB)).unwrap();
    assert!(tier.get(k, &mut out).unwrap());
    drop(tier);
    assert!(!path.exists(), "deleted with the tier");
    let kept = DiskTier::create(
        &path,
        BB,
        10,
        DiskOptions {
            keep_file: true,
            ..DiskOptions::default()
        },
    )
    .unwrap();
    drop(kept);
    assert!(path.exists(), "kept on request");
}

#[test]
fn damaged_slots_read_as_misses_and_a_short_file_as_an_io_error() {
    let dir = scratch();
    let path = dir.path().join("kv.bin");
    let Some(tier) = direct(&path, 8) else {
        return;
    };
    let keys: Vec<BlockKey> = (0..3u8).map(|i| BlockKey([i + 1; 16])).collect();
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    tier.put_many(&batch).unwrap();
    // Find each key's slot the way the layout says: the key at bytes 8..24 of its header.
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let slot = tier.slot_bytes() as u64;
    let slot_of = |k: &BlockKey| -> u64 {
        (0..8u64)
            .find(|s| {
                let mut h = [0u8; 24];
                raw.read_exact_at(&mut h, s * slot).unwrap();
                &h[0..8] == b"OXKVDISK" && h[8..24] == k.0
            })
            .expect("every stored key has a slot")
    };
    // One flipped data byte in block 1, a foreign key in block 2's header.
    let s1 = slot_of(&keys[1]);
    let s2 = slot_of(&keys[2]);
    raw.write_all_at(&[blocks[1][100] ^ 0xff], s1 * slot + 64 + 100)
        .unwrap();
    raw.write_all_at(&[0xee; 16], s2 * slot + 8).unwrap();
    let mut out = vec![vec![0u8; BB]; 3];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        tier.get_many(&keys, &mut bufs).unwrap()
    };
    assert_eq!(found, vec![true, false, false]);
    assert!(out[0] == blocks[0]);
    // The damaged blocks are forgotten, and their slots reused.
    assert_eq!(tier.contains_prefix(&keys).unwrap(), 1);
    assert_eq!(tier.stats().stored_blocks, 1);
    tier.put_many(&batch[1..]).unwrap();
    assert_eq!(tier.contains_prefix(&keys).unwrap(), 3);
    let mut one = vec![0u8; BB];
    assert!(tier.get(keys[2], &mut one).unwrap());
    assert!(one == blocks[2]);
    // A file cut short under the tier: an error, not a panic.
    raw.set_len(0).unwrap();
    assert!(matches!(tier.get(keys[0], &mut one), Err(KvError::Io(_))));
}

#[test]
fn a_file_of_random_bytes_is_never_returned_as_a_block() {
    use rand::{RngCore, SeedableRng};
    let dir = scratch();
    let path = dir.path().join("kv.bin");
    let Some(tier) = direct(&path, 8) else {
        return;
    };
    let keys: Vec<BlockKey> = (1..=8u8).map(|i| BlockKey([i; 16])).collect();
    let blocks: Vec<Vec<u8>> = keys.iter().map(|k| bytes_of(k, BB)).collect();
    let batch: Vec<(BlockKey, &[u8])> = keys
        .iter()
        .zip(&blocks)
        .map(|(k, b)| (*k, &b[..]))
        .collect();
    tier.put_many(&batch).unwrap();
    let mut junk = vec![0u8; 8 * tier.slot_bytes()];
    rand_chacha::ChaCha8Rng::seed_from_u64(1).fill_bytes(&mut junk);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&junk, 0)
        .unwrap();
    let mut out = vec![vec![0u8; BB]; 8];
    let found = {
        let mut bufs: Vec<&mut [u8]> = out.iter_mut().map(|b| &mut b[..]).collect();
        tier.get_many(&keys, &mut bufs).unwrap()
    };
    assert_eq!(found, vec![false; 8]);
    assert_eq!(
        tier.stats().stored_blocks,
        0,
        "every damaged block forgotten"
    );
}

#[test]
fn zero_sizes_are_bad_arguments() {
    let dir = scratch();
    let path = dir.path().join("kv.bin");
    for (bb, cap) in [(0, 8), (BB, 0)] {
        assert!(matches!(
            DiskTier::create(&path, bb, cap, DiskOptions::default()),
            Err(KvError::BadArgument(_))
        ));
    }
}

/// A tmpfs directory, if the machine has one.
fn tmpfs_dir() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fs) = (f.next()?, f.next()?, f.next()?);
        let at = PathBuf::from(at);
        (fs == "tmpfs" && at.starts_with("/dev/shm") && at.is_dir()).then_some(at)
    })
}

#[test]
fn a_file_system_that_refuses_o_direct_is_named_in_the_error_unless_buffered_is_allowed() {
    let Some(shm) = tmpfs_dir() else {
        println!("skipped: no tmpfs at /dev/shm");
        return;
    };
    let dir = tempfile::tempdir_in(&shm).unwrap();
    let path = dir.path().join("kv.bin");
    match DiskTier::create(&path, BB, 4, DiskOptions::default()) {
        Err(KvError::DirectIoUnsupported { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(!reason.is_empty());
            assert!(!path.exists(), "no file left behind");
            let t = DiskTier::create(
                &path,
                BB,
                4,
                DiskOptions {
                    allow_buffered: true,
                    ..DiskOptions::default()
                },
            )
            .unwrap();
            assert_eq!(t.io(), DiskIo::Buffered);
            let k = BlockKey([9; 16]);
            t.put(k, &bytes_of(&k, BB)).unwrap();
            let mut out = vec![0u8; BB];
            assert!(t.get(k, &mut out).unwrap());
            assert!(out == bytes_of(&k, BB));
        }
        Ok(t) => {
            // Linux 6.6 and later: tmpfs takes O_DIRECT.
            println!("note: tmpfs at {} accepts O_DIRECT here", shm.display());
            assert_eq!(t.io(), DiskIo::Direct);
        }
        Err(e) => panic!("{e}"),
    }
}
