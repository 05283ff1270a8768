//! Replays every input of the `frame_parser` fuzz corpus through the fuzz body, so a
//! regression that the fuzzer once found fails `cargo test` without cargo-fuzz.

use std::fs;
use std::path::Path;

/// The corpus holds the 7 spec vectors and the 20 SiFive U540 frames at least.
const MIN_CORPUS: usize = 27;

#[test]
fn every_frame_parser_corpus_input_parses_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/frame_parser");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).expect("fuzz corpus directory") {
        let path = entry.expect("corpus entry").path();
        let bytes = fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| oxmem_wire::fuzz::frame_parser(&bytes));
        assert!(outcome.is_ok(), "{} panics the parser", path.display());
        replayed += 1;
    }
    assert!(
        replayed >= MIN_CORPUS,
        "only {replayed} corpus files in {}",
        dir.display()
    );
}
