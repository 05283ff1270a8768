//! Arbitrary bytes as an OmniXtend frame: the body lives in `oxmem_wire::fuzz` so the corpus
//! replays as an ordinary test (`crates/wire/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oxmem_wire::fuzz::frame_parser(data));
