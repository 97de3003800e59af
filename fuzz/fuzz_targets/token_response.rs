//! Any answer of the token endpoint: status, `Retry-After` and body. The properties are
//! `sidecred_agent::fuzzing::token_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecred_agent::fuzzing::token_response(data));
