//! Grants decide which peer may read or write which bytes; sizes and windows parse.

use std::net::SocketAddr;

use oxmem_node::{Access, Error, Grant, GrantTable, PeerMatch, Window, parse_size};

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7447))
}

fn window(base: u64, len: u64) -> Window {
    Window { base, len }
}

#[test]
fn parse_size_reads_numbers_and_binary_units() {
    assert_eq!(parse_size("0").unwrap(), 0);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("1_048_576").unwrap(), 1 << 20);
    assert_eq!(parse_size("0x1000").unwrap(), 0x1000);
    assert_eq!(parse_size("0X1f").unwrap(), 0x1f);
    assert_eq!(parse_size("512B").unwrap(), 512);
    assert_eq!(parse_size("4k").unwrap(), 4096);
    assert_eq!(parse_size("4KiB").unwrap(), 4096);
    assert_eq!(parse_size("2M").unwrap(), 2 << 20);
    assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
    assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
    assert_eq!(parse_size("8gib").unwrap(), 8 << 30);
    assert_eq!(parse_size(" 1 GiB ").unwrap(), 1 << 30);
    assert_eq!(parse_size("3T").unwrap(), 3 << 40);
    assert_eq!(parse_size("0x4KiB").unwrap(), 4 << 10);
    assert_eq!(parse_size("16777215TiB").unwrap(), 16_777_215 << 40);
    assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
}

#[test]
fn parse_size_refuses_bad_numbers_ambiguous_units_and_overflow() {
    for bad in [
        "",
        "GiB",
        "x",
        "-1",
        "1.5GiB",
        "4 KB",
        "1GB",
        "1mb",
        "1TB",
        "0x",
        "0xg",
        "12Q",
        "18446744073709551616",
        "16777216TiB",
        "0x1_0000_0000_0000_0000",
    ] {
        assert!(
            matches!(parse_size(bad), Err(Error::InvalidSize { .. })),
            "{bad:?} parsed"
        );
    }
}

#[test]
fn windows_parse_base_colon_len() {
    assert_eq!("0:1GiB".parse::<Window>().unwrap(), window(0, 1 << 30));
    assert_eq!(
        "0x1000:4KiB".parse::<Window>().unwrap(),
        window(0x1000, 4096)
    );
    assert_eq!(
        "1GiB:0x100".parse::<Window>().unwrap(),
        window(1 << 30, 0x100)
    );
    let w = window(0x1000, 0x1000);
    assert_eq!(w.to_string().parse::<Window>().unwrap(), w);
    assert_eq!(w.end(), 0x2000);
}

#[test]
fn windows_refuse_missing_parts_empty_length_and_overflow() {
    for bad in [
        "",
        "0",
        "1GiB",
        ":4K",
        "0:",
        "0:0",
        "a:4K",
        "0:4KB",
        "0xffffffffffffffff:2",
        "16777215TiB:1TiB",
    ] {
        assert!(
            matches!(bad.parse::<Window>(), Err(Error::InvalidWindow { .. })),
            "{bad:?} parsed"
        );
    }
}

#[test]
fn a_grant_covers_exactly_its_range() {
    let mut table = GrantTable::new(1 << 20);
    table
        .add(Grant::peer(
            peer(1),
            window(0x1000, 0x1000),
            Access::ReadWrite,
        ))
        .unwrap();
    let p = peer(1);
    assert!(table.check(&p, 0x1000, 0x1000, true));
    assert!(table.check(&p, 0x1ff8, 8, true));
    assert!(!table.check(&p, 0xff8, 16, false), "starts before");
    assert!(!table.check(&p, 0x1ff8, 16, false), "ends after");
    assert!(!table.check(&p, 0x2000, 1, false), "just past");
    assert!(
        !table.check(&p, 0x1000, 0, false),
        "empty ranges are never granted"
    );
    assert!(!table.check(&p, u64::MAX, 2, false), "overflowing range");
    assert!(
        !table.check(&p, 0x1000, u64::MAX, false),
        "overflowing length"
    );
}

#[test]
fn a_read_grant_allows_reads_only() {
    let mut table = GrantTable::new(1 << 20);
    table
        .add(Grant::peer(peer(1), window(0, 4096), Access::Read))
        .unwrap();
    assert!(table.check(&peer(1), 0, 64, false));
    assert!(!table.check(&peer(1), 0, 64, true));
    assert_eq!(table.access(&peer(1), 0, 64), Some(Access::Read));
}

#[test]
fn a_peers_grant_is_not_usable_by_another_peer_but_an_open_window_is() {
    let mut table = GrantTable::new(1 << 20);
    table
        .add(Grant::peer(peer(1), window(0, 4096), Access::ReadWrite))
        .unwrap();
    table
        .add(Grant::any(window(0x8000, 4096), Access::ReadWrite))
        .unwrap();
    assert!(table.check(&peer(1), 0, 64, true));
    assert!(!table.check(&peer(2), 0, 64, false));
    for p in [peer(1), peer(2), peer(200)] {
        assert!(table.check(&p, 0x8000, 4096, true));
    }
}

#[test]
fn the_widest_single_grant_wins_and_straddling_two_grants_is_refused() {
    let mut table = GrantTable::new(1 << 20);
    table
        .add(Grant::any(window(0, 0x2000), Access::Read))
        .unwrap();
    table
        .add(Grant::peer(
            peer(1),
            window(0x1000, 0x1000),
            Access::ReadWrite,
        ))
        .unwrap();
    table
        .add(Grant::peer(
            peer(1),
            window(0x2000, 0x1000),
            Access::ReadWrite,
        ))
        .unwrap();
    assert_eq!(table.access(&peer(1), 0x1000, 8), Some(Access::ReadWrite));
    assert_eq!(table.access(&peer(2), 0x1000, 8), Some(Access::Read));
    // [0x1ff8, 0x2008) lies in two adjacent read-write grants but in no single one; the open
    // window does not reach 0x2008 either.
    assert_eq!(table.access(&peer(1), 0x1ff8, 16), None);
}

#[test]
fn grants_past_the_arena_or_empty_are_refused() {
    let mut table: GrantTable<SocketAddr> = GrantTable::new(4096);
    assert_eq!(table.limit(), 4096);
    for (base, len) in [(0, 0), (0, 4097), (4096, 1), (u64::MAX, 1), (1, u64::MAX)] {
        assert!(
            matches!(
                table.add(Grant::any(window(base, len), Access::Read)),
                Err(Error::InvalidGrant { limit: 4096, .. })
            ),
            "{base:#x}+{len:#x} accepted"
        );
    }
    assert!(table.is_empty());
    assert!(table.add(Grant::any(window(0, 4096), Access::Read)).is_ok());
}

#[test]
fn grants_can_be_listed_removed_and_revoked_per_peer() {
    let mut table = GrantTable::new(1 << 20);
    let a = table
        .add(Grant::peer(peer(1), window(0, 4096), Access::ReadWrite))
        .unwrap();
    let b = table
        .add(Grant::peer(peer(1), window(8192, 4096), Access::Read))
        .unwrap();
    let c = table
        .add(Grant::any(window(65536, 4096), Access::Read))
        .unwrap();
    let d = table
        .add(Grant::peer(peer(2), window(0, 4096), Access::Read))
        .unwrap();
    assert_eq!(table.len(), 4);
    assert_eq!(
        table.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![a, b, c, d]
    );
    assert_eq!(table.get(c).unwrap().peer, PeerMatch::Any);

    let removed = table.remove(a).expect("present");
    assert_eq!(removed.base, 0);
    assert!(table.remove(a).is_none(), "removed twice");
    assert!(!table.check(&peer(1), 0, 8, false));
    assert!(table.check(&peer(1), 8192, 8, false));

    assert_eq!(table.revoke_peer(&peer(1)), 1);
    assert!(!table.check(&peer(1), 8192, 8, false));
    assert!(
        table.check(&peer(1), 65536, 8, false),
        "open windows survive"
    );
    assert!(
        table.check(&peer(2), 0, 8, false),
        "other peers keep theirs"
    );
    assert_eq!(table.len(), 2);
}
