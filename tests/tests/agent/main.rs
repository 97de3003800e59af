//! End-to-end tests of `sidecred-agent` against the fake token endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::{json, Value};
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{ErrorCode, Secret, TokenState};
use sidecred_tests::fakes::claude_oauth::{FakeOAuth, Fault, Pair};
use sidecred_tests::fakes::kubelet::{can_mount_readonly, with_readonly_mount, SecretDir};
use sidecred_tests::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

mod files;
mod fixed_tokens;
mod login_clock;
mod metrics_flood;
mod process;
mod refresh;
mod refusals;
mod socket;

fn agent_code(err: &ClientError) -> Option<ErrorCode> {
    match err {
        ClientError::Agent(e) => Some(e.code),
        _ => None,
    }
}

async fn token(sb: &Sandbox) -> String {
    sb.client().await.get_token().await.expect("get_token").access_token.expose().to_owned()
}

/// Runs `sidecred-agent <args>` to completion; returns (exit code, stdout, stderr).
fn agent_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin()).args(args).output().expect("run sidecred-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_no_secrets("sidecred-agent cli stderr", &stderr);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}
