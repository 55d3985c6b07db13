#![no_main]
// The body and its invariants: relayward_fuzz::session (crates/relayward-fuzz).
libfuzzer_sys::fuzz_target!(|data: &[u8]| relayward_fuzz::session(data));
