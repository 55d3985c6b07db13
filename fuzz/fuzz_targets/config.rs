#![no_main]
// The body and its invariants: relayward_fuzz::config (crates/relayward-fuzz).
libfuzzer_sys::fuzz_target!(|data: &[u8]| relayward_fuzz::config(data));
