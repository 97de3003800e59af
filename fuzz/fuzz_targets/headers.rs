//! Any headers a client or the upstream sends, and any token the agent serves. The properties are
//! `sidecred_forwarder::fuzzing::headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecred_forwarder::fuzzing::headers(data));
