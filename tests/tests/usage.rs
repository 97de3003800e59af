//! `sidecred-agent status --usage`: the account's usage windows read from the API with the token the
//! running agent serves; plain `status` (the probe) never calls the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sidecred_tests::fakes::claude_oauth::FakeOAuth;
use sidecred_tests::harness::Sandbox;
use sidecred_tests::harness::{now_ms, Seeded, HOUR_MS};
use sidecred_tests::oneshot::{os, run};
use std::ffi::{OsStr, OsString};

/// `status` with where it reads the token from (`source`), the sandbox's seed file, the fake's token
/// endpoint and API, then `extra`.
fn status_args(
    sb: &Sandbox,
    fake: &FakeOAuth,
    source: &[&dyn AsRef<OsStr>],
    extra: &[&str],
) -> Vec<OsString> {
    let mut args = os(&[&"status"]);
    args.extend(os(source));
    args.extend(os(&[
        &"--credentials",
        &sb.seed(),
        &"--token-url",
        &fake.token_url(),
        &"--api-base",
        &fake.api_base(),
    ]));
    args.extend(extra.iter().map(OsString::from));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_usage_shows_the_windows_from_the_api() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 4 * HOUR_MS).await;
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let args = |extra: &[&str]| status_args(&sb, &fake, &[&"--socket", &sb.socket()], extra);

    let done = run(&sb, "status", &args(&[])).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(!done.stdout.contains("usage"), "{}", done.stdout);
    assert_eq!(fake.usage_requests(), 0, "a status probe called the API");

    let done = run(&sb, "status", &args(&["--usage"])).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(
        done.stdout.contains("usage five_hour:")
            && done.stdout.contains("82 %, resets 2026-11-30T14:00:00.123456+00:00"),
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains("42 %, resets 2026-12-04T09:00:00+00:00"), "{}", done.stdout);
    assert!(!done.stdout.contains("seven_day_opus"), "a window the plan lacks: {}", done.stdout);
    assert_eq!(fake.usage_requests(), 1);

    let done = run(&sb, "status", &args(&["--usage", "--json"])).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["source"], "agent");
    let windows = v["usage"]["windows"].as_array().unwrap();
    assert_eq!(windows[0]["name"], "five_hour");
    assert_eq!(windows[0]["utilization_percent"], 82.0);
    assert_eq!(windows[1]["utilization_percent"], 41.5);

    // The API unreachable: status still reports the agent (and its exit code), and says why usage is missing.
    let mut bad = args(&["--usage"]);
    let i = bad.iter().position(|a| a == "--api-base").unwrap();
    bad[i + 1] = "http://127.0.0.1:9".into();
    let done = run(&sb, "status", &bad).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("usage:") && done.stdout.contains("not available"), "{}", done.stdout);
    drop(agent);
}

/// The extra-usage meter, when the endpoint reports it; and what the endpoint says is printed safely:
/// a window named with a newline cannot forge a `state: valid` line, and an endless answer is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_usage_shows_the_extra_usage_meter_and_prints_nothing_raw() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 4 * HOUR_MS).await;
    // No agent: the file's token, so `state` comes from the file and is not valid in the forged line.
    let args = |extra: &[&str]| status_args(&sb, &fake, &[&"--source", &"file"], extra);
    let done = run(&sb, "status", &args(&["--usage"])).await;
    assert!(
        done.stdout.contains("extra usage:")
            && done.stdout.contains("on, 1234.5 of 5000 used this month (25 %)"),
        "{}",
        done.stdout
    );
    let done = run(&sb, "status", &args(&["--usage", "--json"])).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["usage"]["extra_usage"]["enabled"], true);
    assert_eq!(v["usage"]["extra_usage"]["used_credits"], 1234.5);

    fake.set_usage(serde_json::json!({
        "x\nstate: valid\nforged": {"utilization": 1.0, "resets_at": "\u{1b}[2Jsoon"},
    }));
    let done = run(&sb, "status", &args(&["--usage"])).await;
    assert!(!done.stdout.lines().any(|l| l.trim_start().starts_with("state: valid")), "{}", done.stdout);
    assert!(!done.stdout.contains('\u{1b}'), "{:?}", done.stdout);
    assert!(done.stdout.contains("usage x?state: valid?forged"), "{}", done.stdout);

    fake.set_usage(serde_json::json!({"padding": "x".repeat(8 << 20)}));
    let done = run(&sb, "status", &args(&["--usage"])).await;
    assert!(done.stdout.contains("not available") && done.stdout.contains("larger than"), "{}", done.stdout);
}
