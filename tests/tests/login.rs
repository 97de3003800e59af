//! The account commands of `sidecred-agent` end to end: `login` (paste and browser flows, `--output -`),
//! `status` without an agent, `validate`, `info` and `logout`, against the fake in
//! `sidecred_tests::fake_login`.
//!
//! Every run's stderr is checked for the `sctest` marker that all fake tokens and codes carry; stdout
//! too, except for `login --output -`, whose stdout is the credentials by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sidecred_tests::fake_login::{self, FakeLogin};
use sidecred_tests::harness::{
    self, agent_bin, assert_no_secrets, now_ms, read_json, wait_until, write_json, Sandbox,
};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous: a busy 2-core machine is slow, never early.
const T: Duration = Duration::from_secs(40);
const HOUR_MS: u64 = 3_600_000;

// ---------------------------------------------------------------------------------------------
// running the binary

/// A `sidecred-agent` command with the test's environment: debug logs (so a leak at any level is
/// caught), no proxies, no desktop, no inherited SIDECRED_* settings, HOME in the sandbox.
fn agent_command(sb: &Sandbox, args: &[OsString]) -> std::process::Command {
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.args(args).env("SIDECRED_LOG", "debug").env("HOME", sb.path());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("SIDECRED_")
            || k.to_ascii_lowercase().ends_with("_proxy")
            || k == "DISPLAY"
            || k == "WAYLAND_DISPLAY"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("SIDECRED_LOG", "debug");
    cmd
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// A running command with piped stdio whose output is collected as it comes; killed on drop.
struct Run {
    name: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn collect(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Run {
    fn start(name: &str, cmd: std::process::Command) -> Run {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Run { name: name.to_owned(), stdin: child.stdin.take(), child, stdout, stderr, readers }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    async fn wait_for_stderr(&self, needle: &str) {
        let what = format!("{} to print {needle:?}", self.name);
        let deadline = Instant::now() + T;
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; stderr so far:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Waits for the exit, collects all output and checks stderr for leaked secrets.
    async fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let status = tokio::time::timeout(T, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {T:?}; stderr:\n{}", self.name, self.stderr()))
            .expect("wait");
        for r in self.readers.drain(..) {
            tokio::time::timeout(T, r).await.expect("output readers finish").expect("reader task");
        }
        let done = Finished {
            code: status.code(),
            stdout: String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            stderr: self.stderr(),
        };
        assert_no_secrets(&format!("{} (stderr)", self.name), &done.stderr);
        done
    }
}

/// Runs a one-shot command to the end with stdin closed; its stdout must not carry secrets either.
async fn run(sb: &Sandbox, name: &str, args: &[OsString]) -> Finished {
    let done = Run::start(name, agent_command(sb, args)).finish().await;
    assert_no_secrets(&format!("{name} (stdout)"), &done.stdout);
    done
}

// ---------------------------------------------------------------------------------------------
// login helpers

fn login_args(fake: &FakeLogin, creds: &Path, extra: &[&str]) -> Vec<OsString> {
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
fn printed_url(fake: &FakeLogin, text: &str) -> Option<String> {
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
async fn start_paste_login(sb: &Sandbox, fake: &FakeLogin, creds: &Path, extra: &[&str]) -> (Run, String) {
    let mut all = vec!["--mode", "paste"];
    all.extend_from_slice(extra);
    let login = Run::start("login", agent_command(sb, &login_args(fake, creds, &all)));
    login.wait_for_stderr("Paste the code here and press Enter:").await;
    let url = printed_url(fake, &login.stderr()).expect("the URL is printed on its own line");
    (login, url)
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn creds_file(sb: &Sandbox) -> PathBuf {
    sb.seed()
}

/// Checks a freshly written Claude Code credentials block against the fake.
fn assert_fresh_login(fake: &FakeLogin, doc: &Value, before_ms: u64) {
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
    assert_eq!(oauth["scopes"], json!(fake_login::DEFAULT_SCOPES));
    assert_eq!(oauth["subscriptionType"], "max");
    assert_eq!(oauth["rateLimitTier"], "default_claude_max_20x");
}

// ---------------------------------------------------------------------------------------------
// login: paste

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_login_writes_credentials_and_keeps_unknown_fields() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    let old = fake.unknown_pair();
    write_json(&creds, &harness::claude_code_credentials(&old.access_token, &old.refresh_token, now_ms()));
    let before = now_ms();

    let (mut login, url) = start_paste_login(&sb, &fake, &creds, &[]).await;
    let q = query(&url);
    assert_eq!(q["redirect_uri"], fake_login::MANUAL_REDIRECT_URI);
    assert_eq!(q["code"], "true");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "org:create_api_key user:profile user:inference");
    let (code, state) = sign_in(&url).await;
    login.type_line(&format!("{code}#{state}")).await;
    let done = login.finish().await;
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

    assert_eq!(mode_of(&creds), 0o600);
    let doc = read_json(&creds);
    assert_fresh_login(&fake, &doc, before);
    // Everything the old file held besides the tokens is still there.
    assert_eq!(doc["mcpOAuth"], json!({ "some-server": { "nested": [1, 2, {"deep": true}] } }));
    assert_eq!(doc["claudeAiOauth"]["organizationUuid"], "org-unknown-field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_login_creates_the_directory_and_accepts_the_callback_url() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = sb.path().join("home/.claude/.credentials.json");
    let before = now_ms();
    let (mut login, url) = start_paste_login(&sb, &fake, &creds, &[]).await;
    let (code, state) = sign_in(&url).await;
    // A blank line and junk get a hint and a new prompt; the whole callback URL is accepted too.
    login.type_line("").await;
    login.type_line("not-a-code").await;
    login.wait_for_stderr("is not a code of the form CODE#STATE").await;
    let mut callback = reqwest::Url::parse(fake_login::MANUAL_REDIRECT_URI).unwrap();
    callback.query_pairs_mut().append_pair("code", &code).append_pair("state", &state);
    login.type_line(callback.as_str()).await;
    let done = login.finish().await;
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    assert_eq!(mode_of(&creds), 0o600);
    assert_eq!(mode_of(creds.parent().unwrap()), 0o700);
    let doc = read_json(&creds);
    assert_fresh_login(&fake, &doc, before);
    assert_eq!(doc.as_object().unwrap().len(), 1, "a fresh file holds only claudeAiOauth: {doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_state_is_refused_before_the_exchange_and_nothing_is_written() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
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
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let first = sb.path().join("first.json");
    let (mut login, url) = start_paste_login(&sb, &fake, &first, &[]).await;
    let (code, state) = sign_in(&url).await;
    login.type_line(&format!("{code}#{state}")).await;
    assert_eq!(login.finish().await.code, Some(0));

    // A second login, fed the first one's (spent) code with its own state.
    let second = creds_file(&sb);
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
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    let old = fake.issue_pair(fake_login::DEFAULT_SCOPES);
    write_json(
        &creds,
        &harness::claude_code_credentials(&old.access_token, &old.refresh_token, now_ms() + HOUR_MS),
    );
    let before = std::fs::read(&creds).unwrap();

    fake.swap_next_challenge();
    let (mut login, url) = start_paste_login(&sb, &fake, &creds, &[]).await;
    let (code, state) = sign_in(&url).await;
    login.type_line(&format!("{code}#{state}")).await;
    let done = login.finish().await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("refused the authorization code"), "{}", done.stderr);
    assert_eq!(fake.rejections(), ["code_verifier does not match the code_challenge"]);
    assert_eq!(std::fs::read(&creds).unwrap(), before, "the file is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdin_and_timeout_are_clear_errors() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
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
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
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
    wait_until("xdg-open to be called", T, || opened.exists()).await;
    wait_until("xdg-open to write the URL", T, || std::fs::read_to_string(&opened).is_ok_and(|u| u == url))
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
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
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
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    let before = now_ms();
    let (mut login, url) = start_paste_login(&sb, &fake, &creds, &["--output", "-"]).await;
    let (code, state) = sign_in(&url).await;
    login.type_line(&format!("{code}#{state}")).await;
    let done = login.finish().await; // checks stderr for leaks
    assert_eq!(done.code, Some(0), "stderr:\n{}", done.stderr);
    let doc: Value = serde_json::from_str(&done.stdout).expect("stdout is the credentials JSON");
    assert_fresh_login(&fake, &doc, before);
    assert!(done.stderr.contains("Credentials written to stdout"), "{}", done.stderr);
    assert!(!creds.exists(), "--output - writes no file");
}

// ---------------------------------------------------------------------------------------------
// status without an agent

fn status_args(sb: &Sandbox, creds: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args = os(&[&"status", &"--socket", &sb.socket(), &"--credentials", &creds]);
    args.extend(extra.iter().map(OsString::from));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_file_when_no_agent_answers() {
    let sb = Sandbox::new();
    let creds = creds_file(&sb);

    // Missing.
    let done = run(&sb, "status", &status_args(&sb, &creds, &[])).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.contains("source:        file (no agent answered on"), "{}", done.stdout);
    assert!(done.stdout.contains("state:         missing"), "{}", done.stdout);

    // Valid, text and JSON.
    let expires = now_ms() + 2 * HOUR_MS;
    write_json(&creds, &harness::claude_code_credentials("sctest-at-status", "sctest-rt-status", expires));
    let done = run(&sb, "status", &status_args(&sb, &creds, &[])).await;
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
    let done = run(&sb, "status", &status_args(&sb, &creds, &["--json"])).await;
    assert_eq!(done.code, Some(0));
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["source"], "file");
    assert_eq!(v["state"], "valid");
    assert_eq!(v["expires_at_ms"], expires);
    assert_eq!(v["subscription_type"], "max");
    assert!(v["agent"].as_str().unwrap().contains("no agent answered"));

    // Expired.
    write_json(
        &creds,
        &harness::claude_code_credentials("sctest-at-status", "sctest-rt-status", now_ms() - HOUR_MS),
    );
    let done = run(&sb, "status", &status_args(&sb, &creds, &["--json"])).await;
    assert_eq!(done.code, Some(1));
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["state"], "expired");
    assert!(v["expires_in_s"].as_i64().unwrap() < 0);

    // A damaged field is named.
    let mut doc = harness::claude_code_credentials("sctest-at-status", "sctest-rt-status", 0);
    doc["claudeAiOauth"]["expiresAt"] = json!("tomorrow");
    write_json(&creds, &doc);
    let done = run(&sb, "status", &status_args(&sb, &creds, &[])).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.contains("state:         unreadable"), "{}", done.stdout);
    assert!(done.stdout.contains("field:         claudeAiOauth.expiresAt"), "{}", done.stdout);
    let done = run(&sb, "status", &status_args(&sb, &creds, &["--json"])).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["field"], "claudeAiOauth.expiresAt");

    // Garbage: not JSON at all (and holding a token-like string that must not be echoed).
    std::fs::write(&creds, "sctest-garbage {{{").unwrap();
    let done = run(&sb, "status", &status_args(&sb, &creds, &[])).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.contains("state:         unreadable"), "{}", done.stdout);
    assert!(done.stdout.contains("is not valid JSON"), "{}", done.stdout);

    // --source agent never falls back: a probe must fail while the agent is down.
    write_json(
        &creds,
        &harness::claude_code_credentials("sctest-at-status", "sctest-rt-status", now_ms() + HOUR_MS),
    );
    let done = run(&sb, "status", &status_args(&sb, &creds, &["--source", "agent"])).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("cannot connect to the agent"), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_validate_and_info_ask_a_running_agent_first() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let pair = fake.issue_pair(fake_login::DEFAULT_SCOPES);
    write_json(
        &sb.seed(),
        &harness::claude_code_credentials(&pair.access_token, &pair.refresh_token, now_ms() + 4 * HOUR_MS),
    );
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;

    // The file given to the commands is garbage; the agent answers, so it is never read.
    let other = sb.path().join("other.json");
    std::fs::write(&other, "garbage").unwrap();
    let done = run(&sb, "status", &status_args(&sb, &other, &[])).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.starts_with("source:        agent\n"), "{}", done.stdout);
    let done = run(&sb, "status", &status_args(&sb, &other, &["--json"])).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["source"], "agent");

    let done = run(&sb, "validate", &api_args("validate", &sb, &fake, &other, &["--json"])).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["source"], "agent");
    assert_eq!(v["socket"], sb.socket().display().to_string());
    let done = run(&sb, "info", &api_args("info", &sb, &fake, &other, &[])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(done.stdout.contains("source:        agent ("), "{}", done.stdout);
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "garbage",
        "the file was neither read nor refreshed"
    );

    // --source file skips the agent.
    let done = run(&sb, "status", &status_args(&sb, &other, &["--source", "file"])).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stdout.starts_with("source:        file\n"), "{}", done.stdout);
    drop(agent);
}

// ---------------------------------------------------------------------------------------------
// validate and info

fn api_args(cmd: &str, sb: &Sandbox, fake: &FakeLogin, creds: &Path, extra: &[&str]) -> Vec<OsString> {
    api_args_with_base(cmd, sb, fake, &fake.api_base(), creds, extra)
}

fn api_args_with_base(
    cmd: &str,
    sb: &Sandbox,
    fake: &FakeLogin,
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
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    let pair = fake.issue_pair(fake_login::DEFAULT_SCOPES);
    write_json(
        &creds,
        &harness::claude_code_credentials(&pair.access_token, &pair.refresh_token, now_ms() + HOUR_MS),
    );
    let done = run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &[])).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("valid:         yes"), "{}", done.stdout);
    assert!(done.stdout.contains("source:        file"), "{}", done.stdout);
    assert_eq!(fake.models_requests(), 1);
    assert_eq!(fake.refresh_requests(), 0, "a live token is not refreshed");
    let done = run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &["--json"])).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["source"], "file");
    assert_eq!(v["http_status"], 200);
    assert_eq!(v["refreshed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_refreshes_an_expired_token_and_saves_the_rotated_pair() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    let pair = fake.issue_pair(fake_login::DEFAULT_SCOPES);
    write_json(
        &creds,
        &harness::claude_code_credentials(&pair.access_token, &pair.refresh_token, now_ms() - HOUR_MS),
    );
    let done = run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &["--json"])).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["refreshed"], true);
    assert_eq!(fake.rotations(), 1);
    assert!(fake.was_rotated(&pair.refresh_token));

    let doc = read_json(&creds);
    let new_refresh = harness::refresh_token_of(&doc).unwrap();
    let new_access = harness::access_token_of(&doc).unwrap();
    assert!(fake.is_live_refresh_token(&new_refresh), "the rotated refresh token was saved");
    assert!(fake.is_valid_access_token(&new_access));
    assert!(doc["claudeAiOauth"]["expiresAt"].as_u64().unwrap() > now_ms() + 7 * HOUR_MS);
    assert_eq!(doc["mcpOAuth"], json!({ "some-server": { "nested": [1, 2, {"deep": true}] } }));
    assert_eq!(doc["claudeAiOauth"]["rateLimitTier"], "default_claude_max_20x");
    assert_eq!(mode_of(&creds), 0o600);

    // Text form, and the saved pair is used as is the next time.
    let done = run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &[])).await;
    assert_eq!(done.code, Some(0));
    assert_eq!(fake.rotations(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_explains_each_failure() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
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
    write_json(
        &creds,
        &harness::claude_code_credentials(&unknown.access_token, &unknown.refresh_token, now_ms() + HOUR_MS),
    );
    let reason = check(
        &run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &["--json"])).await,
        "revoked",
        Some(401),
    );
    assert!(reason.contains("revoked or invalid") && reason.contains("sidecred-agent login"), "{reason}");
    let done = run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &[])).await;
    assert!(
        done.stdout.contains("valid:         no") && done.stdout.contains("reason:        the API rejected"),
        "{}",
        done.stdout
    );

    // 403: a token minted without user:inference.
    let narrow = fake.issue_pair(&["user:profile"]);
    write_json(
        &creds,
        &harness::claude_code_credentials(&narrow.access_token, &narrow.refresh_token, now_ms() + HOUR_MS),
    );
    let reason = check(
        &run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &["--json"])).await,
        "scope_missing",
        Some(403),
    );
    assert!(reason.contains("user:inference"), "{reason}");

    // Expired, and the refresh token is dead: nothing is written.
    write_json(
        &creds,
        &harness::claude_code_credentials(&unknown.access_token, &unknown.refresh_token, now_ms() - HOUR_MS),
    );
    let before = std::fs::read(&creds).unwrap();
    let reason = check(
        &run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &["--json"])).await,
        "expired_refresh_rejected",
        None,
    );
    assert!(
        reason.contains("has expired and refreshing it failed") && reason.contains("invalid_grant"),
        "{reason}"
    );
    assert_eq!(std::fs::read(&creds).unwrap(), before);

    // The API cannot be reached.
    let live = fake.issue_pair(fake_login::DEFAULT_SCOPES);
    write_json(
        &creds,
        &harness::claude_code_credentials(&live.access_token, &live.refresh_token, now_ms() + HOUR_MS),
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let args = api_args_with_base("validate", &sb, &fake, &format!("http://{closed}"), &creds, &["--json"]);
    let reason = check(&run(&sb, "validate", &args).await, "network", None);
    assert!(reason.contains("could not reach the API") && reason.contains(&closed.to_string()), "{reason}");

    // No credentials at all.
    std::fs::remove_file(&creds).unwrap();
    check(
        &run(&sb, "validate", &api_args("validate", &sb, &fake, &creds, &["--json"])).await,
        "missing",
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_shows_the_account_without_secrets() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    let pair = fake.issue_pair(fake_login::DEFAULT_SCOPES);
    write_json(
        &creds,
        &harness::claude_code_credentials(&pair.access_token, &pair.refresh_token, now_ms() + HOUR_MS),
    );
    let done = run(&sb, "info", &api_args("info", &sb, &fake, &creds, &[])).await;
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
    let done = run(&sb, "info", &api_args("info", &sb, &fake, &creds, &["--json"])).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["email"], "someone@example.com");
    assert_eq!(v["organization_uuid"], "org-2222-fake");
    assert_eq!(v["subscription_type"], "max");
    assert_eq!(v["plan"], "Claude Max");
    assert_eq!(v["source"], "file");

    // A Pro account described only by the account flags; missing fields are tolerated.
    fake.set_profile(json!({"account": {"email": "pro@example.com", "has_claude_pro": true}}));
    let done = run(&sb, "info", &api_args("info", &sb, &fake, &creds, &["--json"])).await;
    let v: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["plan"], "Claude Pro");
    assert_eq!(v["organization_uuid"], Value::Null);

    // Revoked: a clear error, exit 1.
    fake.revoke_access_tokens();
    let done = run(&sb, "info", &api_args("info", &sb, &fake, &creds, &[])).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("revoked or invalid"), "{}", done.stderr);
}

// ---------------------------------------------------------------------------------------------
// logout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_removes_only_the_login_and_refuses_without_a_terminal() {
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    let doc = harness::claude_code_credentials("sctest-at-logout", "sctest-rt-logout", now_ms() + HOUR_MS);
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
    let status = run(&sb, "status", &status_args(&sb, &creds, &[])).await;
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

// ---------------------------------------------------------------------------------------------
// a person at a terminal

/// A command running on a pseudo-terminal, as in an interactive shell (or `docker run -it`).
/// Echo is off, so the transcript is exactly what the program wrote.
struct Terminal {
    child: std::process::Child,
    master: std::fs::File,
    transcript: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    fn spawn(cmd: std::process::Command) -> Terminal {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let mut cmd = cmd;
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut attrs = tcgetattr(&pty.slave).expect("tcgetattr");
        attrs.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).expect("tcsetattr");
        cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave));
        let child = cmd.spawn().expect("spawn on the pty");
        // The parent's copies of the terminal's slave side must go, so reads end when the child exits.
        drop(cmd);
        let mut reading = std::fs::File::from(pty.master.try_clone().unwrap());
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let sink = transcript.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last slave descriptor is closed.
            while let Ok(n) = reading.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, master: std::fs::File::from(pty.master), transcript, reader: Some(reader) }
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.transcript.lock().unwrap()).into_owned()
    }

    async fn expect(&self, needle: &str) {
        let deadline = Instant::now() + T;
        while !self.screen().contains(needle) {
            if Instant::now() > deadline {
                panic!("the terminal never showed {needle:?}; it shows:\n{}", self.screen());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Types a line and presses Enter.
    fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\r").as_bytes()).expect("type");
    }

    async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                panic!("the command did not exit; the terminal shows:\n{}", self.screen());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(r) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || r.join()).await;
        }
        assert_no_secrets("the terminal", &self.screen());
        status.code()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_login_in_a_terminal_shows_the_url_and_a_clear_prompt() {
    let fake = FakeLogin::start().await;
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_in_a_terminal_asks_first() {
    let sb = Sandbox::new();
    let creds = creds_file(&sb);
    write_json(&creds, &harness::claude_code_credentials("sctest-at-lo", "sctest-rt-lo", now_ms() + HOUR_MS));
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
    let creds = creds_file(&sb);
    write_json(
        &creds,
        &harness::claude_code_credentials("sctest-at-log", "sctest-rt-log", now_ms() + 2 * HOUR_MS),
    );
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
