//! A script of peer frames, timer expiries, sends and closes against one connection: the body
//! lives in `oxmem_link::fuzz` so the corpus replays as an ordinary test
//! (`crates/link/tests/fuzz_body.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxmem_link::fuzz::connection(data);
});
