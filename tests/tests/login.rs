//! `sidecred-agent login` end to end: the paste and browser flows and `--output -`, against the fake in
//! `sidecred_tests::fakes::claude_oauth`.
//!
//! Every run's stderr is checked for the `sctest` marker that all fake tokens and codes carry; stdout
//! too, except for `login --output -`, whose stdout is the credentials by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sidecred_proto::anthropic::{
    DEFAULT_AUTHORIZE_URL, DEFAULT_MANUAL_REDIRECT_URI, DEFAULT_SCOPES, LONG_LIVED_EXPIRES_IN_SECS,
};
use sidecred_tests::fakes::claude_oauth::FakeOAuth;
use sidecred_tests::harness::{
    assert_no_secrets, mode_of, now_ms, read_json, wait_until, write_json, Sandbox, Seeded, HOUR_MS,
};
use sidecred_tests::oneshot::{agent_command, os, run, Finished, Run, TIMEOUT};
use sidecred_tests::terminal::Terminal;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// login helpers

fn login_args(fake: &FakeOAuth, creds: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args = os(&[
        &"login",
        &"--authorize-url",
        &fake.authorize_url(),
        &"--token-url",
        &fake.token_url(),
        &"--api-base",
        &fake.api_base(),
        &"--credentials",
        &creds,
    ]);
    if !extra.contains(&"--timeout") {
        args.extend(os(&[&"--timeout", &"30s"]));
    }
    args.extend(extra.iter().map(OsString::from));
    args
}

/// The authorize URL the command printed on a line of its own.
fn printed_url(fake: &FakeOAuth, text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with(&fake.authorize_url()))
        .map(str::to_owned)
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url).expect("url").query_pairs().into_owned().collect()
}

/// Plays the person in the browser: opens the authorize URL and reads the code and state from the
/// redirect (what Claude's callback page shows as `CODE#STATE`).
async fn sign_in(url: &str) -> (String, String) {
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap();
    let resp = client.get(url).send().await.expect("authorize request");
    assert_eq!(
        resp.status(),
        302,
        "authorize answered {}: {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let q = query(&location);
    (q["code"].clone(), q["state"].clone())
}

/// Starts a paste-mode login and waits for its prompt; returns it with the printed URL.
async fn start_paste_login(sb: &Sandbox, fake: &FakeOAuth, creds: &Path, extra: &[&str]) -> (Run, String) {
    let mut all = vec!["--mode", "paste"];
    all.extend_from_slice(extra);
    let login = Run::start("login", agent_command(sb, &login_args(fake, creds, &all)));
    login.wait_for_stderr("Paste the code here and press Enter:").await;
    let url = printed_url(fake, &login.stderr()).expect("the URL is printed on its own line");
    (login, url)
}

/// A whole paste-mode login: the person signs in and pastes what the page shows. Answers how the
/// command ended and the authorize URL it printed.
async fn paste_login(sb: &Sandbox, fake: &FakeOAuth, creds: &Path, extra: &[&str]) -> (Finished, String) {
    let (mut login, url) = start_paste_login(sb, fake, creds, extra).await;
    let (code, state) = sign_in(&url).await;
    login.type_line(&format!("{code}#{state}")).await;
    (login.finish().await, url)
}

/// A fake endpoint and a sandbox no one has logged in to yet; answers them and where a login writes.
async fn logged_out() -> (FakeOAuth, Sandbox, PathBuf) {
    let sb = Sandbox::new();
    let creds = sb.seed();
    (FakeOAuth::start().await, sb, creds)
}

/// Checks a freshly written Claude Code credentials block against the fake.
fn assert_fresh_login(fake: &FakeOAuth, doc: &Value, before_ms: u64) {
    let oauth = &doc["claudeAiOauth"];
    let access = oauth["accessToken"].as_str().expect("accessToken");
    let refresh = oauth["refreshToken"].as_str().expect("refreshToken");
    assert!(fake.is_valid_access_token(access), "the access token is one the fake issued");
    assert!(fake.is_live_refresh_token(refresh), "the refresh token is live");
    let expires_at = oauth["expiresAt"].as_u64().expect("expiresAt is epoch ms");
    let eight_hours = 8 * HOUR_MS;
    assert!(
        expires_at >= before_ms + eight_hours && expires_at <= now_ms() + eight_hours,
        "expiresAt {expires_at}"
    );
    assert_eq!(oauth["scopes"], json!(DEFAULT_SCOPES.split(' ').collect::<Vec<_>>()));
    assert_eq!(oauth["subscriptionType"], "max");
    assert_eq!(oauth["rateLimitTier"], "default_claude_max_20x");
}

// ---------------------------------------------------------------------------------------------
// login: paste

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_login_writes_credentials_and_keeps_unknown_fields() {
    let (fake, sb, creds) = logged_out().await;
    let old = fake.unknown_pair();
    write_json(&creds, &old.credentials(now_ms()));
    let before = now_ms();

    let (done, url) = paste_login(&sb, &fake, &creds, &[]).await;
    let q = query(&url);
    // Where Claude Code sends a Pro/Max login today, with Claude Code's scopes (the fake refuses others).
    let default = reqwest::Url::parse(DEFAULT_AUTHORIZE_URL).unwrap();
    assert_eq!(reqwest::Url::parse(&url).unwrap().path(), default.path());
    assert_eq!(default.as_str(), "https://claude.com/cai/oauth/authorize");
    assert_eq!(q["redirect_uri"], DEFAULT_MANUAL_REDIRECT_URI);
    assert_eq!(q["code"], "true");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], DEFAULT_SCOPES);
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    assert!(done.stdout.is_empty(), "nothing on stdout without --output -");
    assert!(done.stderr.contains("Logged in as someone@example.com (Claude Max)"), "{}", done.stderr);

    // The fake saw one JSON exchange whose verifier, state, redirect URI and client id all matched.
    assert_eq!(fake.exchange_requests(), 1);
    assert_eq!(fake.exchanges(), 1);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    let mut keys = fake.last_exchange_keys();
    keys.sort();
    assert_eq!(keys, ["client_id", "code", "code_verifier", "grant_type", "redirect_uri", "state"]);
    assert_eq!(fake.last_exchange_expires_in(), None, "a full login leaves the lifetime to the endpoint");

    assert_eq!(mode_of(&creds), 0o600);
    let doc = read_json(&creds);
    assert_fresh_login(&fake, &doc, before);
    // Everything the old file held besides the tokens is still there.
    assert_eq!(doc["mcpOAuth"], json!({ "some-server": { "nested": [1, 2, {"deep": true}] } }));
    assert_eq!(doc["claudeAiOauth"]["organizationUuid"], "org-unknown-field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_login_creates_the_directory_and_accepts_the_callback_url() {
    let fake = FakeOAuth::start().await;
    let sb = Sandbox::new();
    let creds = sb.path().join("home/.claude/.credentials.json");
    let before = now_ms();
    let (mut login, url) = start_paste_login(&sb, &fake, &creds, &[]).await;
    let (code, state) = sign_in(&url).await;
    // A blank line and junk get a hint and a new prompt; the whole callback URL is accepted too.
    login.type_line("").await;
    login.type_line("not-a-code").await;
    login.wait_for_stderr("is not a code of the form CODE#STATE").await;
    let mut callback = reqwest::Url::parse(DEFAULT_MANUAL_REDIRECT_URI).unwrap();
    callback.query_pairs_mut().append_pair("code", &code).append_pair("state", &state);
    login.type_line(callback.as_str()).await;
    let done = login.finish().await;
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    assert_eq!(mode_of(&creds), 0o600);
    assert_eq!(mode_of(creds.parent().unwrap()), 0o700);
    let doc = read_json(&creds);
    assert_fresh_login(&fake, &doc, before);
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["claudeAiOauth", "sidecred"], "a fresh file holds the login and when it was made");
    assert_eq!(doc["sidecred"]["loginClock"], "login", "a login starts a new clock");
    let started = doc["sidecred"]["loginStartedAt"].as_u64().unwrap();
    assert!(started >= before && started <= now_ms(), "{started} not in [{before}, now]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_state_is_refused_before_the_exchange_and_nothing_is_written() {
    let (fake, sb, creds) = logged_out().await;
    let (mut login, url) = start_paste_login(&sb, &fake, &creds, &[]).await;
    let (code, _state) = sign_in(&url).await;
    login.type_line(&format!("{code}#some-other-attempts-state")).await;
    let done = login.finish().await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("does not match this login's"), "{}", done.stderr);
    assert!(done.stderr.contains("nothing was written"), "{}", done.stderr);
    assert_eq!(fake.exchange_requests(), 0, "the code never left the machine");
    assert!(!creds.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_code_is_refused_and_nothing_is_written() {
    let fake = FakeOAuth::start().await;
    let sb = Sandbox::new();
    let first = sb.path().join("first.json");
    let (mut login, url) = start_paste_login(&sb, &fake, &first, &[]).await;
    let (code, state) = sign_in(&url).await;
    login.type_line(&format!("{code}#{state}")).await;
    assert_eq!(login.finish().await.code, Some(0));

    // A second login, fed the first one's (spent) code with its own state.
    let second = sb.seed();
    let (mut login, url) = start_paste_login(&sb, &fake, &second, &[]).await;
    let state2 = query(&url)["state"].clone();
    login.type_line(&format!("{code}#{state2}")).await;
    let done = login.finish().await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("refused the authorization code"), "{}", done.stderr);
    assert!(done.stderr.contains("invalid_grant") && done.stderr.contains("single-use"), "{}", done.stderr);
    assert_eq!(fake.rejections(), ["authorization code already used"]);
    assert_eq!(fake.exchanges(), 1);
    assert!(!second.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_verifier_is_refused_and_the_existing_file_is_untouched() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + HOUR_MS).await;
    let creds = sb.seed();
    let before = std::fs::read(&creds).unwrap();

    fake.swap_next_challenge();
    let (done, _url) = paste_login(&sb, &fake, &creds, &[]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("refused the authorization code"), "{}", done.stderr);
    assert_eq!(fake.rejections(), ["code_verifier does not match the code_challenge"]);
    assert_eq!(std::fs::read(&creds).unwrap(), before, "the file is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdin_and_timeout_are_clear_errors() {
    let (fake, sb, creds) = logged_out().await;
    let (login, _url) = start_paste_login(&sb, &fake, &creds, &[]).await;
    let done = login.finish().await; // closes stdin
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("stdin was closed before a code was pasted"), "{}", done.stderr);

    let args = login_args(&fake, &creds, &["--mode", "paste", "--timeout", "300ms"]);
    let login = Run::start("login", agent_command(&sb, &args));
    login.wait_for_stderr("no authorization code arrived within 300ms (--timeout)").await;
    let done = login.finish().await;
    assert_eq!(done.code, Some(1));
    assert!(!creds.exists());
}

// ---------------------------------------------------------------------------------------------
// login: browser, --output -

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_receives_the_code_on_the_loopback_listener() {
    let (fake, sb, creds) = logged_out().await;
    // A stand-in for xdg-open that records the URL it was asked to open.
    let bin = sb.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let opened = sb.path().join("opened-url");
    std::fs::write(bin.join("xdg-open"), format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()))
        .unwrap();
    std::fs::set_permissions(bin.join("xdg-open"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = agent_command(&sb, &login_args(&fake, &creds, &["--mode", "browser", "--port", "0"]));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path);
    let before = now_ms();

    let login = Run::start("login", cmd);
    login.wait_for_stderr("Waiting up to 30s for the browser").await;
    let url = printed_url(&fake, &login.stderr()).expect("the URL is printed even when a browser opens");
    assert!(login.stderr().contains("Opening a browser"), "{}", login.stderr());
    wait_until("xdg-open to be called", TIMEOUT, || opened.exists()).await;
    wait_until("xdg-open to write the URL", TIMEOUT, || {
        std::fs::read_to_string(&opened).is_ok_and(|u| u == url)
    })
    .await;
    let redirect = query(&url)["redirect_uri"].clone();
    assert!(redirect.starts_with("http://localhost:") && redirect.ends_with("/callback"), "{redirect}");

    // The browser: follows the authorize page's redirect to the loopback listener.
    let browser = reqwest::Client::builder().no_proxy().build().unwrap();
    let page = browser.get(&url).send().await.expect("browser round trip");
    assert_eq!(page.status(), 200);
    assert!(page.url().as_str().starts_with(&redirect), "ended at {}", page.url());
    let body = page.text().await.unwrap();
    assert!(body.contains("You can close this tab"), "{body}");
    assert!(body.contains("someone@example.com"), "{body}");
    assert_no_secrets("the callback page", &body);

    let done = login.finish().await;
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    assert_eq!(mode_of(&creds), 0o600);
    assert_fresh_login(&fake, &read_json(&creds), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_reports_a_denied_authorization() {
    let (fake, sb, creds) = logged_out().await;
    let login = Run::start(
        "login",
        agent_command(&sb, &login_args(&fake, &creds, &["--mode", "browser", "--no-open"])),
    );
    login.wait_for_stderr("Waiting up to").await;
    let url = printed_url(&fake, &login.stderr()).unwrap();
    let mut denied = reqwest::Url::parse(&query(&url)["redirect_uri"]).unwrap();
    denied
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("state", &query(&url)["state"]);
    let page =
        reqwest::Client::builder().no_proxy().build().unwrap().get(denied.as_str()).send().await.unwrap();
    assert_eq!(page.status(), 400);
    assert!(page.text().await.unwrap().contains("access_denied"));
    let done = login.finish().await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("answered `access_denied`"), "{}", done.stderr);
    assert!(!creds.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_dash_prints_the_credentials_on_stdout_only() {
    let (fake, sb, creds) = logged_out().await;
    let before = now_ms();
    let (done, _url) = paste_login(&sb, &fake, &creds, &["--output", "-"]).await; // checks stderr for leaks
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    let doc: Value = serde_json::from_str(&done.stdout).expect("stdout is the credentials JSON");
    assert_fresh_login(&fake, &doc, before);
    assert!(done.stderr.contains("Credentials written to stdout"), "{}", done.stderr);
    assert!(!creds.exists(), "--output - writes no file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_login_in_a_terminal_shows_the_url_and_a_clear_prompt() {
    let (fake, sb, creds) = logged_out().await;
    let before = now_ms();
    // No --mode: without a display the default is paste.
    let mut term = Terminal::spawn(agent_command(&sb, &login_args(&fake, &creds, &[])));
    term.expect("Paste the code here and press Enter: ").await;
    let screen = term.screen();
    assert!(screen.contains("open this URL in a browser"), "{screen}");
    assert!(screen.contains("the page shows a code of the form CODE#STATE"), "{screen}");
    let url = printed_url(&fake, &screen).expect("the URL has a line of its own");
    assert!(url.contains("code_challenge_method=S256"), "{url}");

    let (code, state) = sign_in(&url).await;
    term.type_line(&format!("{code}#{state}"));
    term.expect("Logged in as someone@example.com (Claude Max).").await;
    assert_eq!(term.exit_code().await, Some(0), "{}", term.screen());
    assert!(term.screen().contains(&format!("Credentials saved to {}", creds.display())));
    assert_fresh_login(&fake, &read_json(&creds), before);
}

// ---------------------------------------------------------------------------------------------
// login --long-lived

/// Checks a long-lived login's credentials block: the inference-only token the fake issued, a year
/// from the exchange, and no refresh token whatever the endpoint sent.
fn assert_long_lived_login(fake: &FakeOAuth, doc: &Value, before_ms: u64) {
    let oauth = &doc["claudeAiOauth"];
    let access = oauth["accessToken"].as_str().expect("accessToken");
    assert!(fake.is_valid_access_token(access), "the access token is one the fake issued");
    assert_eq!(oauth.get("refreshToken"), None, "a long-lived login keeps no refresh token: {oauth}");
    assert_eq!(oauth["scopes"], json!(["user:inference"]));
    let year_ms = LONG_LIVED_EXPIRES_IN_SECS * 1000;
    let expires_at = oauth["expiresAt"].as_u64().expect("expiresAt is epoch ms");
    assert!(expires_at >= before_ms + year_ms && expires_at <= now_ms() + year_ms, "expiresAt {expires_at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_login_asks_for_inference_only_for_a_year_and_keeps_no_refresh_token() {
    let (fake, sb, creds) = logged_out().await;
    let before = now_ms();
    let (done, url) = paste_login(&sb, &fake, &creds, &["--long-lived"]).await;
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    let q = query(&url);
    assert_eq!(q["scope"], "user:inference", "as `claude setup-token` asks");
    assert_eq!(
        reqwest::Url::parse(&url).unwrap().path(),
        reqwest::Url::parse(DEFAULT_AUTHORIZE_URL).unwrap().path()
    );
    assert_eq!(fake.last_exchange_expires_in(), Some(json!(LONG_LIVED_EXPIRES_IN_SECS)));
    let mut keys = fake.last_exchange_keys();
    keys.sort();
    assert_eq!(
        keys,
        ["client_id", "code", "code_verifier", "expires_in", "grant_type", "redirect_uri", "state"]
    );
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    assert_eq!(fake.profile_requests(), 0, "an inference-only token cannot read the profile: not even asked");
    assert!(
        done.stderr.contains("Logged in as someone@example.com with a long-lived, inference-only token"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("never refreshed"), "{}", done.stderr);
    assert_eq!(mode_of(&creds), 0o600);
    // The endpoint sent a refresh token along (the fake does unless told): it was not kept.
    assert_long_lived_login(&fake, &read_json(&creds), before);

    // An endpoint that sends none is just as fine; straight to stdout this time.
    fake.set_long_lived_refresh_token(false);
    let other = sb.path().join("other.json");
    let (done, _url) = paste_login(&sb, &fake, &other, &["--long-lived", "--output", "-"]).await;
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    let doc: Value = serde_json::from_str(&done.stdout).expect("stdout is the credentials JSON");
    assert_long_lived_login(&fake, &doc, before);
    assert!(!other.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_login_never_replaces_a_login_that_refreshes() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + HOUR_MS).await;
    let creds = sb.seed();
    let before = std::fs::read(&creds).unwrap();
    let done = run(&sb, "login", &login_args(&fake, &creds, &["--mode", "paste", "--long-lived"])).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("holds a login that refreshes"), "{}", done.stderr);
    assert!(done.stderr.contains("--output -"), "{}", done.stderr);
    assert_eq!(fake.authorize_requests(), 0, "refused before anyone signs in");
    assert_eq!(std::fs::read(&creds).unwrap(), before, "the file is untouched");

    // Over an older long-lived login it goes ahead, keeping the file's other fields.
    let first = sb.path().join("long.json");
    let (done, _) = paste_login(&sb, &fake, &first, &["--long-lived"]).await;
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    let mut doc = read_json(&first);
    doc["mcpOAuth"] = json!({"kept": true});
    write_json(&first, &doc);
    let again = now_ms();
    let (done, _) = paste_login(&sb, &fake, &first, &["--long-lived"]).await;
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    let doc = read_json(&first);
    assert_long_lived_login(&fake, &doc, again);
    assert_eq!(doc["mcpOAuth"], json!({"kept": true}));
}
