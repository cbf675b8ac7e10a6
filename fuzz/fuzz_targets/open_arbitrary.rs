//! cargo-fuzz target: see rust/wal/tests/fuzz_decoder.rs (the harness, shared with `cargo test`).
#![no_main]

#[path = "../../rust/wal/tests/fuzz_decoder.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzz_arbitrary(data, true));
