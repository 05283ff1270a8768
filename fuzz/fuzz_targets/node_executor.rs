//! Arbitrary requests against a memory node's executor, checking that nothing outside the
//! grants ever comes back: the body lives in `oxmem_node::fuzz` so the corpus replays as an
//! ordinary test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oxmem_node::fuzz::fuzz_execute(data));
