//! Any bytes a peer sends on the agent's socket: a length prefix, a frame body of either direction, a
//! stream of frames. The properties are `sidecred_proto::fuzzing::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecred_proto::fuzzing::frames(data));
