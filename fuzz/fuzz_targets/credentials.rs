//! Any credentials file, either shape, and any update of it. The properties are
//! `sidecred_agent::fuzzing::credentials`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecred_agent::fuzzing::credentials(data));
