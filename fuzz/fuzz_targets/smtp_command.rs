#![no_main]
// The body and its invariants: relayward_fuzz::smtp_command (crates/relayward-fuzz).
libfuzzer_sys::fuzz_target!(|data: &[u8]| relayward_fuzz::smtp_command(data));
