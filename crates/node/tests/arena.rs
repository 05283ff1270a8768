//! The arena maps, reports its backing and bounds-checks every access.

use oxmem_node::{Arena, ArenaOptions, Error, PageKind};

#[test]
fn zero_capacity_is_refused() {
    assert!(matches!(Arena::new(0), Err(Error::ZeroCapacity)));
}

#[test]
fn capacity_beyond_the_address_space_is_refused_with_a_typed_error() {
    assert!(matches!(
        Arena::new(u64::MAX),
        Err(Error::CapacityTooLarge(u64::MAX))
    ));
    // Fits isize but no host has 2^62 bytes of address space to map.
    assert!(matches!(
        Arena::new(1 << 62),
        Err(Error::Map { capacity, .. }) if capacity == 1 << 62
    ));
}

#[test]
fn a_new_arena_is_zero_filled_and_has_its_capacity() {
    let arena = Arena::new(12345).expect("map");
    assert_eq!(arena.capacity(), 12345);
    assert_eq!(arena.as_slice().len(), 12345);
    assert!(arena.as_slice().iter().all(|&b| b == 0));
}

#[test]
fn accessors_refuse_ranges_past_the_end_without_overflowing() {
    let mut arena = Arena::new(4096).expect("map");
    assert!(arena.get(4095, 1).is_some());
    assert!(arena.get(4096, 0).is_some());
    assert!(arena.get(4095, 2).is_none());
    assert!(arena.get(4097, 0).is_none());
    assert!(arena.get(u64::MAX, 2).is_none());
    assert!(arena.get(1, u64::MAX).is_none());
    assert!(arena.get_mut(4000, 200).is_none());
    assert!(!arena.contains(u64::MAX, u64::MAX));
    assert!(matches!(
        arena.write(4090, &[1; 8]),
        Err(Error::OutOfArena {
            address: 4090,
            len: 8,
            capacity: 4096
        })
    ));
    let mut out = [0u8; 8];
    assert!(matches!(
        arena.read(u64::MAX - 3, &mut out),
        Err(Error::OutOfArena { .. })
    ));
    assert!(matches!(
        arena.fill(0, 4097, 0),
        Err(Error::OutOfArena { .. })
    ));
    // A failed write changed nothing.
    assert!(arena.as_slice().iter().all(|&b| b == 0));
}

#[test]
fn write_read_and_fill_round_trip() {
    let mut arena = Arena::new(4096).expect("map");
    arena.write(100, b"oxmem").expect("write");
    let mut out = [0u8; 5];
    arena.read(100, &mut out).expect("read");
    assert_eq!(&out, b"oxmem");
    arena.fill(101, 3, 0xee).expect("fill");
    assert_eq!(arena.get(100, 5).expect("in range"), b"o\xee\xee\xeem");
    arena.get_mut(4095, 1).expect("last byte")[0] = 9;
    assert_eq!(arena.as_slice()[4095], 9);
}

#[test]
fn a_small_arena_reports_normal_unlocked_pages() {
    let arena = Arena::new(4096).expect("map");
    // Too small for a huge page, transparent or not.
    assert_eq!(arena.backing().pages, PageKind::Normal);
    assert!(!arena.backing().locked);
    assert_eq!(arena.backing().to_string(), "normal pages");
}

#[test]
fn asking_for_huge_pages_falls_back_when_the_size_is_not_a_whole_huge_page() {
    let options = ArenaOptions {
        huge_pages: true,
        lock: false,
    };
    let arena = Arena::with_options(3 * 4096, options).expect("falls back, does not fail");
    assert!(!matches!(arena.backing().pages, PageKind::HugePages { .. }));
    assert_eq!(arena.capacity(), 3 * 4096);
}

#[test]
fn asking_for_huge_pages_maps_something_usable_whatever_the_host_has() {
    let options = ArenaOptions {
        huge_pages: true,
        lock: false,
    };
    // 4 MiB: a whole number of 2 MiB huge pages. Hosts without reserved huge pages fall back.
    let mut arena = Arena::with_options(4 << 20, options).expect("map");
    if let PageKind::HugePages { page_size } = arena.backing().pages {
        assert_eq!((4 << 20) % page_size, 0);
    }
    arena
        .write((4 << 20) - 8, &[7; 8])
        .expect("write the last bytes");
    assert_eq!(arena.get((4 << 20) - 8, 8).expect("read"), &[7; 8]);
}

#[test]
fn locking_either_succeeds_and_says_so_or_fails_with_a_lock_error() {
    let options = ArenaOptions {
        huge_pages: false,
        lock: true,
    };
    match Arena::with_options(4096, options) {
        Ok(arena) => {
            assert!(arena.backing().locked);
            assert!(arena.backing().to_string().ends_with(", locked"));
        }
        Err(e) => assert!(matches!(e, Error::Lock(_)), "unexpected {e}"),
    }
}
