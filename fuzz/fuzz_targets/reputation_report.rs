#![no_main]
//! Fuzz target: see `rendertrust_protocol::fuzz::reputation_report`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rendertrust_protocol::fuzz::reputation_report(data);
});
