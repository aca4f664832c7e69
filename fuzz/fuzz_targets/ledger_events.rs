#![no_main]
//! Fuzz target: see `rendertrust_protocol::fuzz::ledger_events`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rendertrust_protocol::fuzz::ledger_events(data);
});
