#![no_main]
// The body and its invariants: relayward_fuzz::address (crates/relayward-fuzz).
libfuzzer_sys::fuzz_target!(|data: &[u8]| relayward_fuzz::address(data));
