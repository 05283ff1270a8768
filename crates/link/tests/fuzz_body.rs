//! The connection fuzz body on random scripts, and the committed corpus replayed.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn connection_survives_arbitrary_peer_scripts(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        oxmem_link::fuzz::connection(&data);
    }
}

#[test]
fn connection_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/connection");
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("corpus directory {dir} is missing");
    };
    let mut n = 0;
    let mut total = oxmem_link::Stats::default();
    for entry in entries {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let s = oxmem_link::fuzz::connection(&bytes);
        total.messages_delivered += s.messages_delivered;
        total.messages_sent += s.messages_sent;
        total.duplicates_received += s.duplicates_received;
        total.out_of_order_received += s.out_of_order_received;
        total.frames_retransmitted += s.frames_retransmitted;
        total.integrity_failures += s.integrity_failures;
        total.credit_overruns += s.credit_overruns;
        n += 1;
    }
    assert!(
        n >= 10,
        "the corpus holds at least the seed scripts ({n} found)"
    );
    // The scripts reach past the handshake into every path that matters.
    println!("corpus of {n} scripts reached: {total:?}");
    assert!(total.messages_delivered > 0 && total.messages_sent > 0);
    assert!(total.duplicates_received > 0 && total.out_of_order_received > 0);
    assert!(total.frames_retransmitted > 0 && total.integrity_failures > 0);
    assert!(total.credit_overruns > 0);
}
