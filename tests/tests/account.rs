//! The account commands of `sidecred-agent` end to end: `status` (with and without an agent),
//! `validate` (which refreshes an expired token), `info` and `logout`, against the fake in
//! `sidecred_tests::fakes::claude_oauth`.
//!
//! Every run's stdout and stderr are checked for the `sctest` marker that all fake tokens carry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sidecred_tests::fakes::claude_oauth::FakeOAuth;
use sidecred_tests::harness::{
    access_token_of, claude_code_credentials, mode_of, now_ms, read_json, refresh_token_of, write_json,
    Sandbox, Seeded, HOUR_MS,
};
use sidecred_tests::oneshot::{agent_command, os, run, Finished, Run};
use sidecred_tests::terminal::Terminal;
use std::ffi::OsString;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// status without an agent

fn status_args(sb: &Sandbox, creds: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args = os(&[&"status", &"--socket", &sb.socket(), &"--credentials", &creds]);
    args.extend(extra.iter().map(OsString::from));
    args
}

/// Runs `status` to the end.
async fn status(sb: &Sandbox, creds: &Path, extra: &[&str]) -> Finished {
    run(sb, "status", &status_args(sb, creds, extra)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_file_when_no_agent_answers() {
    let sb = Sandbox::new();
    let creds = sb.seed();
    let write_creds = |expires_at_ms| {
        write_json(&creds, &claude_code_credentials("sctest-at-status", "sctest-rt-status", expires_at_ms));
    };

    // Missing.
    let done = status(&sb, &creds, &[]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.contains("source:        file (no agent answered on"), "{}", done.stdout);
    assert!(done.stdout.contains("state:         missing"), "{}", done.stdout);

    // Valid, text and JSON.
    let expires = now_ms() + 2 * HOUR_MS;
    write_creds(expires);
    let done = status(&sb, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    for needle in [
        "state:         valid",
        "expires in:    1h 59m",
        "scopes:        user:inference user:profile",
        "subscription:  max",
        &format!("credentials:   {}", creds.display()),
    ] {
        assert!(done.stdout.contains(needle), "{needle:?} in\n{}", done.stdout);
    }
    let done = status(&sb, &creds, &["--json"]).await;
    assert_eq!(done.code, Some(0));
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["source"], "file");
    assert_eq!(v["state"], "valid");
    assert_eq!(v["expires_at_ms"], expires);
    assert_eq!(v["subscription_type"], "max");
    assert!(v["agent"].as_str().unwrap().contains("no agent answered"));

    // Expired.
    write_creds(now_ms() - HOUR_MS);
    let done = status(&sb, &creds, &["--json"]).await;
    assert_eq!(done.code, Some(1));
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["state"], "expired");
    assert!(v["expires_in_s"].as_i64().unwrap() < 0);

    // A damaged field is named.
    let mut doc = claude_code_credentials("sctest-at-status", "sctest-rt-status", 0);
    doc["claudeAiOauth"]["expiresAt"] = json!("tomorrow");
    write_json(&creds, &doc);
    let done = status(&sb, &creds, &[]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.contains("state:         unreadable"), "{}", done.stdout);
    assert!(done.stdout.contains("field:         claudeAiOauth.expiresAt"), "{}", done.stdout);
    let done = status(&sb, &creds, &["--json"]).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["field"], "claudeAiOauth.expiresAt");

    // Garbage: not JSON at all (and holding a token-like string that must not be echoed).
    std::fs::write(&creds, "sctest-garbage {{{").unwrap();
    let done = status(&sb, &creds, &[]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.contains("state:         unreadable"), "{}", done.stdout);
    assert!(done.stdout.contains("is not valid JSON"), "{}", done.stdout);

    // --source agent never falls back: a probe must fail while the agent is down.
    write_creds(now_ms() + HOUR_MS);
    let done = status(&sb, &creds, &["--source", "agent"]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("cannot connect to the agent"), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_validate_and_info_ask_a_running_agent_first() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 4 * HOUR_MS).await;
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;

    // The file given to the commands is garbage; the agent answers, so it is never read.
    let other = sb.path().join("other.json");
    std::fs::write(&other, "garbage").unwrap();
    let done = status(&sb, &other, &[]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.starts_with("source:        agent\n"), "{}", done.stdout);
    let done = status(&sb, &other, &["--json"]).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["source"], "agent");

    let done = api_command("validate", &sb, &fake, &other, &["--json"]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["source"], "agent");
    assert_eq!(v["socket"], sb.socket().display().to_string());
    let done = api_command("info", &sb, &fake, &other, &[]).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(done.stdout.contains("source:        agent ("), "{}", done.stdout);
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "garbage",
        "the file was neither read nor refreshed"
    );

    // --source file skips the agent.
    let done = status(&sb, &other, &["--source", "file"]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.starts_with("source:        file\n"), "{}", done.stdout);
    drop(agent);
}

// ---------------------------------------------------------------------------------------------
// validate and info

fn api_args(cmd: &str, sb: &Sandbox, fake: &FakeOAuth, creds: &Path, extra: &[&str]) -> Vec<OsString> {
    api_args_with_base(cmd, sb, fake, &fake.api_base(), creds, extra)
}

/// Runs `validate` or `info` to the end, with the fake as token endpoint and API.
async fn api_command(cmd: &str, sb: &Sandbox, fake: &FakeOAuth, creds: &Path, extra: &[&str]) -> Finished {
    run(sb, cmd, &api_args(cmd, sb, fake, creds, extra)).await
}

fn api_args_with_base(
    cmd: &str,
    sb: &Sandbox,
    fake: &FakeOAuth,
    api_base: &str,
    creds: &Path,
    extra: &[&str],
) -> Vec<OsString> {
    let mut args = os(&[
        &cmd,
        &"--socket",
        &sb.socket(),
        &"--credentials",
        &creds,
        &"--token-url",
        &fake.token_url(),
        &"--api-base",
        &api_base,
        &"--request-timeout",
        &"10s",
    ]);
    args.extend(extra.iter().map(OsString::from));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_accepts_a_live_token() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + HOUR_MS).await;
    let creds = sb.seed();
    let done = api_command("validate", &sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("valid:         yes"), "{}", done.stdout);
    assert!(done.stdout.contains("source:        file"), "{}", done.stdout);
    assert_eq!(fake.models_requests(), 1);
    assert_eq!(fake.refresh_requests(), 0, "a live token is not refreshed");
    let done = api_command("validate", &sb, &fake, &creds, &["--json"]).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["source"], "file");
    assert_eq!(v["http_status"], 200);
    assert_eq!(v["refreshed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_refreshes_an_expired_token_and_saves_the_rotated_pair() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() - HOUR_MS).await;
    let creds = sb.seed();
    let done = api_command("validate", &sb, &fake, &creds, &["--json"]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["refreshed"], true);
    assert_eq!(fake.rotations(), 1);
    assert!(fake.was_rotated(&pair.refresh_token));

    let doc = read_json(&creds);
    let new_refresh = refresh_token_of(&doc).unwrap();
    let new_access = access_token_of(&doc).unwrap();
    assert!(fake.is_live_refresh_token(&new_refresh), "the rotated refresh token was saved");
    assert!(fake.is_valid_access_token(&new_access));
    assert!(doc["claudeAiOauth"]["expiresAt"].as_u64().unwrap() > now_ms() + 7 * HOUR_MS);
    assert_eq!(doc["mcpOAuth"], json!({ "some-server": { "nested": [1, 2, {"deep": true}] } }));
    assert_eq!(doc["claudeAiOauth"]["rateLimitTier"], "default_claude_max_20x");
    assert_eq!(mode_of(&creds), 0o600);

    // Text form, and the saved pair is used as is the next time.
    let done = api_command("validate", &sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(0));
    assert_eq!(fake.rotations(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_explains_each_failure() {
    let fake = FakeOAuth::start().await;
    let sb = Sandbox::new();
    let creds = sb.seed();
    let check = |done: &Finished, problem: &str, status: Option<u16>| {
        assert_eq!(done.code, Some(1), "{}", done.stdout);
        let v: Value = serde_json::from_str(&done.stdout).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["problem"], problem, "{v}");
        assert_eq!(v["http_status"].as_u64(), status.map(u64::from), "{v}");
        v["reason"].as_str().unwrap().to_owned()
    };

    // 401: a token the API does not know (revoked).
    let unknown = fake.unknown_pair();
    write_json(&creds, &unknown.credentials(now_ms() + HOUR_MS));
    let reason = check(&api_command("validate", &sb, &fake, &creds, &["--json"]).await, "revoked", Some(401));
    assert!(reason.contains("revoked or invalid") && reason.contains("sidecred-agent login"), "{reason}");
    let done = api_command("validate", &sb, &fake, &creds, &[]).await;
    assert!(
        done.stdout.contains("valid:         no") && done.stdout.contains("reason:        the API rejected"),
        "{}",
        done.stdout
    );

    // 403: a token minted without user:inference.
    let narrow = fake.issue_pair_with_scopes(&["user:profile"]);
    write_json(&creds, &narrow.credentials(now_ms() + HOUR_MS));
    let reason =
        check(&api_command("validate", &sb, &fake, &creds, &["--json"]).await, "scope_missing", Some(403));
    assert!(reason.contains("user:inference"), "{reason}");

    // Expired, and the refresh token is dead: nothing is written.
    write_json(&creds, &unknown.credentials(now_ms() - HOUR_MS));
    let before = std::fs::read(&creds).unwrap();
    let reason = check(
        &api_command("validate", &sb, &fake, &creds, &["--json"]).await,
        "expired_refresh_rejected",
        None,
    );
    assert!(
        reason.contains("has expired and refreshing it failed") && reason.contains("invalid_grant"),
        "{reason}"
    );
    assert_eq!(std::fs::read(&creds).unwrap(), before);

    // The API cannot be reached.
    let live = fake.issue_pair();
    write_json(&creds, &live.credentials(now_ms() + HOUR_MS));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let args = api_args_with_base("validate", &sb, &fake, &format!("http://{closed}"), &creds, &["--json"]);
    let reason = check(&run(&sb, "validate", &args).await, "network", None);
    assert!(reason.contains("could not reach the API") && reason.contains(&closed.to_string()), "{reason}");

    // No credentials at all.
    std::fs::remove_file(&creds).unwrap();
    check(&api_command("validate", &sb, &fake, &creds, &["--json"]).await, "missing", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_shows_the_account_without_secrets() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + HOUR_MS).await;
    let creds = sb.seed();
    let done = api_command("info", &sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    for needle in [
        "email:         someone@example.com",
        "organization:  Some One's Organization",
        "org uuid:      org-2222-fake",
        "plan:          Claude Max",
        "rate limits:   default_claude_max_20x",
        "source:        file",
    ] {
        assert!(done.stdout.contains(needle), "{needle:?} in\n{}", done.stdout);
    }
    let done = api_command("info", &sb, &fake, &creds, &["--json"]).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["email"], "someone@example.com");
    assert_eq!(v["organization_uuid"], "org-2222-fake");
    assert_eq!(v["subscription_type"], "max");
    assert_eq!(v["plan"], "Claude Max");
    assert_eq!(v["source"], "file");

    // A Pro account described only by the account flags; missing fields are tolerated.
    fake.set_profile(json!({"account": {"email": "pro@example.com", "has_claude_pro": true}}));
    let done = api_command("info", &sb, &fake, &creds, &["--json"]).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["plan"], "Claude Pro");
    assert_eq!(v["organization_uuid"], Value::Null);

    // Revoked: a clear error, exit 1.
    fake.revoke_access_tokens();
    let done = api_command("info", &sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("revoked or invalid"), "{}", done.stderr);
}

// ---------------------------------------------------------------------------------------------
// logout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_removes_only_the_login_and_refuses_without_a_terminal() {
    let sb = Sandbox::new();
    let creds = sb.seed();
    let doc = claude_code_credentials("sctest-at-logout", "sctest-rt-logout", now_ms() + HOUR_MS);
    write_json(&creds, &doc);
    let before = std::fs::read(&creds).unwrap();

    // stdin is a pipe here: no --yes, no logout.
    let done = run(&sb, "logout", &os(&[&"logout", &"--credentials", &creds])).await;
    assert_eq!(done.code, Some(1));
    assert!(
        done.stderr.contains("stdin is not a terminal") && done.stderr.contains("--yes"),
        "{}",
        done.stderr
    );
    assert_eq!(std::fs::read(&creds).unwrap(), before);

    let done = run(&sb, "logout", &os(&[&"logout", &"--yes", &"--credentials", &creds])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(done.stdout.contains("kept mcpOAuth"), "{}", done.stdout);
    assert!(done.stdout.contains("keep working") && done.stdout.contains("not revoked"), "{}", done.stdout);
    let after = read_json(&creds);
    assert_eq!(after, json!({"mcpOAuth": doc["mcpOAuth"]}));
    assert_eq!(mode_of(&creds), 0o600);
    let status = status(&sb, &creds, &[]).await;
    assert!(status.stdout.contains("state:         missing"), "{}", status.stdout);

    // Again: nothing to do. A file holding only the login is removed.
    let done = run(&sb, "logout", &os(&[&"logout", &"--yes", &"--credentials", &creds])).await;
    assert_eq!(done.code, Some(0));
    assert!(done.stdout.contains("Nothing to do"), "{}", done.stdout);
    write_json(&creds, &json!({"claudeAiOauth": doc["claudeAiOauth"]}));
    let done = run(&sb, "logout", &os(&[&"logout", &"--yes", &"--credentials", &creds])).await;
    assert_eq!(done.code, Some(0));
    assert!(!creds.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_in_a_terminal_asks_first() {
    let sb = Sandbox::new();
    let creds = sb.seed();
    write_json(&creds, &claude_code_credentials("sctest-at-lo", "sctest-rt-lo", now_ms() + HOUR_MS));
    let before = std::fs::read(&creds).unwrap();

    let mut term = Terminal::spawn(agent_command(&sb, &os(&[&"logout", &"--credentials", &creds])));
    term.expect("(mcpOAuth kept) [y/N] ").await;
    term.type_line("");
    assert_eq!(term.exit_code().await, Some(1));
    assert!(term.screen().contains("Not logged out"), "{}", term.screen());
    assert_eq!(std::fs::read(&creds).unwrap(), before);

    let mut term = Terminal::spawn(agent_command(&sb, &os(&[&"logout", &"--credentials", &creds])));
    term.expect("[y/N] ").await;
    term.type_line("y");
    assert_eq!(term.exit_code().await, Some(0), "{}", term.screen());
    assert!(read_json(&creds).get("claudeAiOauth").is_none());
}

/// A `SIDECRED_LOG` that is not a filter is named in a warning (the command still runs, at its default
/// level) instead of being ignored without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_log_filter_is_named_and_the_command_still_runs() {
    let sb = Sandbox::new();
    let creds = sb.seed();
    write_json(&creds, &claude_code_credentials("sctest-at-log", "sctest-rt-log", now_ms() + 2 * HOUR_MS));
    let mut cmd = agent_command(&sb, &status_args(&sb, &creds, &[]));
    cmd.env("SIDECRED_LOG", "sidecred_agent=loud");
    let done = Run::start("status", cmd).finish().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(done.stdout.contains("state:         valid"), "{}", done.stdout);
    assert!(
        done.stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("SIDECRED_LOG=") && l.contains("not a filter")),
        "{}",
        done.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// an inference-only (long-lived) login

/// A long-lived login's file, as `login --long-lived` writes it: one scope, no refresh token.
fn long_lived_credentials(access: &str, expires_at_ms: u64) -> Value {
    json!({"claudeAiOauth": {"accessToken": access, "expiresAt": expires_at_ms, "scopes": ["user:inference"]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_only_login_validates_and_status_and_info_say_what_it_is() {
    let fake = FakeOAuth::start().await;
    let sb = Sandbox::new();
    let creds = sb.seed();
    let pair = fake.issue_pair_with_scopes(&["user:inference"]);
    write_json(&creds, &long_lived_credentials(&pair.access_token, now_ms() + 300 * 24 * HOUR_MS));

    // The profile endpoint refuses such a token, as the real one does...
    let profile = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/api/oauth/profile", fake.api_base()))
        .bearer_auth(&pair.access_token)
        .header("anthropic-beta", sidecred_proto::anthropic::OAUTH_BETA)
        .header("anthropic-version", sidecred_proto::anthropic::ANTHROPIC_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 403);
    let asked = fake.profile_requests();

    // ...so nobody asks it: `info` says why there is no profile, and exits 0.
    let done = api_command("info", &sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(
        done.stdout.contains("note:          an inference-only token (a long-lived login)"),
        "{}",
        done.stdout
    );
    let done = api_command("info", &sb, &fake, &creds, &["--json"]).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert!(v["note"].as_str().unwrap().contains("cannot read the account profile"), "{v}");
    assert_eq!(fake.profile_requests(), asked, "info did not ask the profile endpoint");

    // The API takes it.
    let done = api_command("validate", &sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("valid:         yes"), "{}", done.stdout);

    // The file says it is never refreshed.
    let done = status(&sb, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    assert!(done.stdout.contains("refresh:       never (no refresh token"), "{}", done.stdout);

    // So does a running agent, and `info` through it knows the scopes too.
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let done = status(&sb, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    assert!(done.stdout.contains("state:         valid"), "{}", done.stdout);
    assert!(done.stdout.contains("never refreshed"), "{}", done.stdout);
    assert!(!done.stdout.contains("next refresh:"), "{}", done.stdout);
    let done = api_command("info", &sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("source:        agent ("), "{}", done.stdout);
    assert!(done.stdout.contains("note:"), "{}", done.stdout);
    assert_eq!(fake.profile_requests(), asked);
    drop(agent);

    // Expired: nothing to refresh with, and the way out is named.
    write_json(&creds, &long_lived_credentials(&pair.access_token, now_ms() - HOUR_MS));
    let done = api_command("validate", &sb, &fake, &creds, &["--json"]).await;
    assert_eq!(done.code, Some(1), "{}", done.stdout);
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["problem"], "expired_no_refresh_token", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("login --long-lived"), "{v}");
    let done = status(&sb, &creds, &[]).await;
    assert!(done.stdout.contains("next step:     sidecred-agent login --long-lived"), "{}", done.stdout);
    assert_eq!(fake.refresh_requests(), 0, "nothing was ever refreshed");
}
