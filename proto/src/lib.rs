//! The protocol spoken on the agent's Unix socket.
//!
//! A connection carries any number of request/response exchanges, one at a time, or, once it asks
//! [`Request::Subscribe`], becomes a subscription: the agent pushes a response each time what it would
//! answer a token request changes (a new token, a revocation, a degraded state), and nothing else is
//! asked on it. Each message is a frame: a 4-byte big-endian length, then that many bytes of JSON.
//! Every request names the protocol version it speaks, so an old forwarder talking to a new agent gets
//! a typed error instead of a guess.
//!
//! This crate holds the messages, the framing and the secret wrapper. It does no I/O of its own except
//! the framing helpers: [`blocking`] on any `std::io` stream, and the async ones (feature `tokio`) on any
//! `AsyncRead`/`AsyncWrite`.

pub mod anthropic;
pub mod blocking;
pub mod exposition;
mod frame;
/// The properties the fuzz targets check; not part of the protocol's API.
#[doc(hidden)]
pub mod fuzzing;
mod message;
mod secret;

#[cfg(feature = "tokio")]
pub mod client;
#[cfg(feature = "tokio")]
mod io;

pub use frame::{decode_frame, encode_frame, frame_len, FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use message::{
    ErrorCode, ProtoError, Request, RequestFrame, Response, ResponseFrame, Role, StatusReport, TokenGrant,
    TokenState, EXPIRY_GUARD,
};
pub use secret::{fingerprint, Secret};

#[cfg(feature = "tokio")]
pub use io::{read_frame, write_frame};

/// Where the agent listens and the forwarder connects when no `--socket` is given:
/// `$XDG_RUNTIME_DIR/sidecred/agent.sock`, or `/tmp/sidecred-<uid>/agent.sock` without a runtime dir
/// (a per-user directory, so two users on one machine never share a socket).
pub fn default_socket_path() -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => std::path::Path::new(&dir).join("sidecred").join("agent.sock"),
        _ => std::path::PathBuf::from(format!("/tmp/sidecred-{}", current_uid())).join("agent.sock"),
    }
}

fn current_uid() -> u32 {
    // Avoids a libc dependency in the protocol crate: the owner of /proc/self is the process's uid.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}
