//! The executor's fuzz body holds for hand-made and random inputs.

use oxmem_node::fuzz::{fuzz_execute, fuzz_execute_counted};
use oxmem_wire::{ByteOrder, Message};
use proptest::prelude::*;

/// A control byte for "build from fields" for `peer`, then the fields.
fn built(peer: u8, op: u8, param: u8, size: u8, address: u16, flags: u8, seed: u8) -> Vec<u8> {
    let [lo, hi] = address.to_le_bytes();
    vec![4 | peer, op, param, size, lo, hi, flags, seed]
}

#[test]
fn fuzz_body_accepts_empty_and_garbage_input() {
    let empty = fuzz_execute_counted(&[]).expect("arena");
    assert_eq!(empty.requests.total(), 0);
    fuzz_execute(&[0xff; 300]);
    fuzz_execute(&[0x00; 300]);
}

#[test]
fn fuzz_body_runs_parsed_wire_messages() {
    let mut input = Vec::new();
    for (peer, msg) in [
        (1, Message::get(1, 0x400, 6)),
        (0, Message::get(2, 0x400, 6)),
        (3, Message::get(3, 0xc00, 3)),
    ] {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf, ByteOrder::Spec).expect("emit");
        input.push(peer);
        input.extend_from_slice(&buf);
    }
    let data = [0x5au8; 64];
    let put = Message::put_full_data(4, 0xd00, 6, &data);
    let mut buf = vec![0u8; put.buffer_len()];
    put.emit(&mut buf, ByteOrder::Memory).expect("emit");
    input.push(8 | 2);
    input.extend_from_slice(&buf);
    let counters = fuzz_execute_counted(&input).expect("arena");
    assert_eq!(counters.requests.get, 3);
    assert_eq!(counters.requests.put_full_data, 1);
    // Peer 1's get and peer 2's put through the open window are served; peer 0 has no grant
    // at 0x400.
    assert_eq!(counters.denied.no_grant, 1);
    assert_eq!(counters.bytes_read, 64 + 8);
    assert_eq!(counters.bytes_written, 64);
}

#[test]
fn fuzz_body_runs_messages_built_from_fields() {
    let mut input = Vec::new();
    // Every op index, on granted, ungranted, unaligned and oversized accesses.
    for op in 0..10 {
        for (peer, address, size, flags) in [
            (1, 0x400, 3, 0),
            (1, 0x403, 0, 0),
            (2, 0x400, 3, 0),
            (0, 0xd05, 1, 2),
            (1, 0x800, 2, 0),
            (3, 0x0000, 12, 0),
            (1, 0x400, 20, 1),
            (1, 0x400, 6, 4),
            (1, 0x408, 3, 8),
        ] {
            input.extend(built(peer, op, 1, size, address, flags, op));
        }
    }
    let counters = fuzz_execute_counted(&input).expect("arena");
    assert!(counters.bytes_read > 0 && counters.bytes_written > 0);
    assert!(counters.denied.total() > 0);
    assert!(counters.unsupported > 0 && counters.dropped > 0);
}

#[test]
fn fuzz_body_reaches_a_grant_at_addresses_of_its_own() {
    // Peer 3's grant maps 0x8e00.. onto arena 0xe00..: a write and a read there are served
    // (and checked against the arena at 0xe00), its arena address itself is not granted.
    let mut input = Vec::new();
    input.extend(built(3, 1, 0, 3, 0x8e08, 0, 9)); // PutFullData, 8 bytes
    input.extend(built(3, 0, 0, 6, 0x8e00, 0, 0)); // Get, 64 bytes
    input.extend(built(3, 0, 0, 6, 0x0e00, 0, 0)); // Get at the arena address
    let counters = fuzz_execute_counted(&input).expect("arena");
    assert_eq!(counters.bytes_written, 8);
    assert_eq!(counters.bytes_read, 64);
    assert_eq!(counters.denied.no_grant, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_body_holds_for_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_execute(&data);
    }

    #[test]
    fn fuzz_body_holds_for_random_built_messages(
        msgs in proptest::collection::vec(
            (0u8..4, 0u8..10, any::<u8>(), 0u8..10, 0x3f0u16..0xe10, any::<u8>(), any::<u8>()),
            1..32,
        )
    ) {
        let mut input = Vec::new();
        for (peer, op, param, size, address, flags, seed) in msgs {
            input.extend(built(peer, op, param, size, address, flags & !1, seed));
        }
        fuzz_execute(&input);
    }
}

/// The seed scripts (`seed-wire-*`: each channel A op parsed from both byte orders;
/// `seed-built-*`: every op index built from fields) are at least this many.
const MIN_NODE_CORPUS: usize = 22;

/// Replays every input of the `node_executor` fuzz corpus, so an input the fuzzer once found
/// fails `cargo test` without cargo-fuzz, and checks the corpus still reaches the paths that
/// matter.
#[test]
fn node_executor_corpus_replays() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/node_executor"
    );
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("corpus directory {dir} is missing");
    };
    let (mut n, mut requests, mut read, mut written) = (0, 0, 0, 0);
    let (mut no_grant, mut read_only, mut unaligned, mut unsupported, mut dropped) =
        (0, 0, 0, 0, 0);
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| fuzz_execute_counted(&bytes));
        let Ok(counters) = outcome else {
            panic!("{} breaks an executor rule", path.display());
        };
        let c = counters.expect("arena");
        requests += c.requests.total();
        read += c.bytes_read;
        written += c.bytes_written;
        no_grant += c.denied.no_grant;
        read_only += c.denied.read_only;
        unaligned += c.denied.unaligned;
        unsupported += c.unsupported;
        dropped += c.dropped;
        n += 1;
    }
    assert!(n >= MIN_NODE_CORPUS, "only {n} corpus files in {dir}");
    assert!(requests > 0 && read > 0 && written > 0);
    assert!(no_grant > 0 && read_only > 0 && unaligned > 0);
    assert!(unsupported > 0 && dropped > 0);
}
