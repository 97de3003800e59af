//! Shared pieces of the end-to-end tests: starting the real binaries, temp layouts, fakes of the
//! outside services, and running the real clients of the compatibility tests (`compat`). The tests
//! themselves live in `tests/tests/*.rs`. The demo's stand-in for Claude's endpoints,
//! `sidecred-demo-backend` (`src/bin/`), runs the same fakes as a program.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod compat;
pub mod fakes;
pub mod forwarder_harness;
pub mod harness;
pub mod oneshot;
pub mod raw_http;
pub mod terminal;
pub mod tls;
