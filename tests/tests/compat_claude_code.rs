//! Claude Code (`@anthropic-ai/claude-code`, the version pinned in tests/compat/versions) in print mode
//! (`claude -p`) against the real agent and forwarder and a fake API, configured as the README says:
//! `ANTHROPIC_BASE_URL` at the forwarder, any key. Its non-essential traffic is off and every other
//! destination goes to a proxy that refuses it, so nothing leaves the machine; each test checks that
//! nothing tried.
//!
//! What it needs to run headless against a fake, found by running it: a writable `HOME` (it writes
//! `~/.claude.json` and `~/.claude/`), a key in `ANTHROPIC_API_KEY` (print mode uses it without asking),
//! and `NO_PROXY=127.0.0.1`, since it sends even the base URL's requests through `HTTP_PROXY`. Nothing
//! else: no login, no onboarding file. Its `Read` tool needs no permission inside the working directory,
//! so a tool turn runs without `--dangerously-skip-permissions` (which it refuses as root anyway).
//!
//! Install the clients first: tests/compat/install.sh (the README's test command does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidecred_proto::anthropic::OAUTH_BETA;
use sidecred_tests::compat::{run, Clients, Login, Run, Setup, Stack};
use sidecred_tests::fakes::upstream::{Billing, USE_TOOL};
use std::time::Duration;

const ANSWER: &str = "Hello from the fake API, through sidecred.";
/// Long enough for a Claude Code that retries with backoff to show it: the old forwarder's 401 kept it
/// going for minutes. A prompt answer takes a second or two.
const LIMIT: Duration = Duration::from_secs(45);
/// What "promptly" means for an error.
const PROMPTLY: Duration = Duration::from_secs(20);

async fn claude(stack: &Stack, prompt: &str, base_path: &str, key: &str) -> Run {
    run(stack.claude_code(&Clients::installed(), prompt, base_path, key), LIMIT).await
}

async fn answered(setup: Setup<'_>, base_path: &str) -> Stack {
    let stack = Stack::start(setup).await;
    stack.upstream.set_answer(ANSWER);
    let run = claude(&stack, "Say hello.", base_path, "unused-by-sidecred").await;
    assert!(run.succeeded(), "{run}\nthe API saw:\n{}", stack.upstream.log());
    assert_eq!(run.stdout.trim(), ANSWER, "{run}");
    stack.assert_nothing_left();
    stack
}

/// Every request as the API must see it: the agent's token, Claude Code's betas with the OAuth beta.
fn assert_forwarded(stack: &Stack) {
    let seen = stack.upstream.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(
            (s.path.as_str(), s.query.as_deref()),
            ("/v1/messages", Some("beta=true")),
            "{}",
            s.summary()
        );
        assert!(s.headers.get("x-api-key").is_none(), "the client's key must not reach the API");
        let betas = s.header("anthropic-beta").unwrap_or_default();
        assert!(betas.starts_with(&format!("{OAUTH_BETA},claude-code-20250219")), "{betas}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_prompt() {
    let stack = answered(Setup::default(), "").await;
    assert_forwarded(&stack);
    let seen = stack.upstream.last_seen().unwrap();
    assert_eq!(seen.bearer(), Some(stack.pair.access_token.as_str()));
    assert!(seen.header("user-agent").is_some_and(|ua| ua.starts_with("claude-cli/")), "{seen:?}");
}

/// `ANTHROPIC_BASE_URL` copied as the base URL of the deployment guide, `…/api/v1`: Claude Code appends
/// `/v1/messages` itself. The old forwarder sent `/v1/v1/messages` upstream, and Claude Code reported
/// a problem with the selected model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_on_a_base_url_ending_in_api_v1() {
    let stack = answered(Setup::default(), "/api/v1").await;
    assert_forwarded(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_tool_and_answers_with_its_result() {
    let stack = Stack::start(Setup::default()).await;
    let note = stack.workdir().join("note.txt");
    std::fs::write(&note, "the note says 42\n").unwrap();
    let prompt =
        format!("Read the note. {USE_TOOL}Read {{\"file_path\":{:?}}}]]", note.display().to_string());
    let run = claude(&stack, &prompt, "", "unused-by-sidecred").await;
    assert!(run.succeeded(), "{run}\nthe API saw:\n{}", stack.upstream.log());
    assert!(run.stdout.contains("the tool said:") && run.stdout.contains("the note says 42"), "{run}");
    stack.assert_nothing_left();
    assert_forwarded(&stack);
    let seen = stack.upstream.seen();
    assert_eq!(seen.len(), 2, "the tool call and the answer:\n{}", stack.upstream.log());
    let turn = seen[1].json().unwrap();
    let results = turn["messages"].as_array().unwrap().iter().rev().find(|m| m["role"] == "user").unwrap();
    assert!(results.to_string().contains("tool_result"), "{results}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_without_it_noticing() {
    let stack = Stack::start(Setup::default()).await;
    stack.upstream.set_answer(ANSWER);
    stack.upstream.reject_next(1);
    let run = claude(&stack, "Say hello.", "", "unused-by-sidecred").await;
    assert!(run.succeeded(), "{run}\nthe API saw:\n{}", stack.upstream.log());
    assert_eq!(run.stdout.trim(), ANSWER);
    assert_eq!(stack.fake.refresh_requests(), 1, "exactly one refresh");
    let seen = stack.upstream.seen();
    assert_eq!(seen.iter().map(|s| s.status).collect::<Vec<_>>(), [401, 200], "{}", stack.upstream.log());
    assert_eq!(seen[1].bearer(), stack.fake.latest_access_token().as_deref());
    assert_eq!(seen[0].body_sha256, seen[1].body_sha256, "the same request, sent again by the forwarder");
}

/// The forwarder's own 401 says `x-should-retry: false`; without it Claude Code retried the 401 with
/// backoff for minutes, printing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_ends_promptly_with_an_error() {
    let stack = Stack::start(Setup { keys: &["sctest-compat-key"], ..Setup::default() }).await;
    let run = claude(&stack, "Say hello.", "", "sctest-wrong-key").await;
    assert!(run.status.is_some_and(|s| !s.success()), "{run}");
    assert!(run.took < PROMPTLY, "{run}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("401") && said.contains("invalid API key"), "{run}");
    assert_eq!(stack.upstream.seen_count(), 0);
    stack.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_needs_renewing_ends_promptly_with_an_error() {
    let stack = Stack::start(Setup { login: Login::NeedsNewLogin, ..Setup::default() }).await;
    let run = claude(&stack, "Say hello.", "", "unused-by-sidecred").await;
    assert!(run.status.is_some_and(|s| !s.success()), "{run}");
    assert!(run.took < PROMPTLY, "{run}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("log in again"), "{run}");
    assert_eq!(stack.upstream.seen_count(), 0);
    stack.assert_nothing_left();
}

/// A credentials file as the agent writes it (with its record of when the login was made, beside
/// Claude Code's block) is still a file Claude Code logs in with: pointed straight at the API, it sends
/// the file's access token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_credentials_file_that_carries_the_login_clock() {
    let stack = Stack::start(Setup::default()).await;
    stack.upstream.set_answer(ANSWER);
    let mut agent = stack.sandbox.client().await;
    agent.refresh().await.expect("a refresh writes the file back");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stack.sandbox.seed()).unwrap()).unwrap();
    assert!(doc["sidecred"]["loginStartedAt"].is_u64(), "the record is in the file: {doc}");
    let dot_claude = stack.home().join(".claude");
    std::fs::create_dir_all(&dot_claude).unwrap();
    std::fs::write(dot_claude.join(".credentials.json"), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    let mut cmd = stack.client(Clients::installed().claude());
    cmd.arg("-p")
        .arg("Say hello.")
        .env("ANTHROPIC_BASE_URL", stack.upstream.url())
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    let run = run(cmd, LIMIT).await;
    assert!(run.succeeded(), "{run}\nthe API saw:\n{}", stack.upstream.log());
    assert_eq!(run.stdout.trim(), ANSWER, "{run}");
    let seen = stack.upstream.last_seen().unwrap();
    assert_eq!(seen.bearer(), doc["claudeAiOauth"]["accessToken"].as_str(), "{}", seen.summary());
}

/// `--clients claude-code`, the mode for teams that run Claude Code itself: its requests pass untouched
/// and are answered; the API (which would bill other clients) bills nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_through_clients_claude_code() {
    let stack =
        answered(Setup { forwarder_args: &["--clients", "claude-code"], ..Setup::default() }, "").await;
    assert_forwarded(&stack);
    assert_eq!(stack.upstream.billed(), 0);
}

/// The default guard on an account that bills other clients: Claude Code is recognised as itself,
/// answered on the plan, and nothing is billed or paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_served_on_the_plan_where_other_clients_are_billed() {
    let stack = Stack::start(Setup::default()).await;
    stack.upstream.set_answer(ANSWER);
    stack.upstream.set_billing(Billing::BillsOthers);
    for _ in 0..2 {
        let run = claude(&stack, "Say hello.", "", "unused-by-sidecred").await;
        assert!(run.succeeded(), "{run}\nthe API saw:\n{}", stack.upstream.log());
        assert_eq!(run.stdout.trim(), ANSWER);
    }
    assert_eq!(stack.upstream.billed(), 0, "{}", stack.upstream.log());
    stack.assert_nothing_left();
}
