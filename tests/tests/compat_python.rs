//! The official Python SDK (`anthropic`, the version pinned in tests/compat/versions) against the real
//! agent and forwarder and a fake API: every case of tests/compat/python_sdk.py, checked on both sides,
//! what the client got and what the API received.
//!
//! Install the clients first: tests/compat/install.sh (the README's test command does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sidecred_proto::anthropic::OAUTH_BETA;
use sidecred_tests::compat::{run, Clients, Run, Setup, Stack};
use sidecred_tests::fakes::upstream::account::now_epoch;
use sidecred_tests::fakes::upstream::{count_tokens, Billing, Seen, MODELS};
use sidecred_tests::harness::wait_until;
use std::time::Duration;

const ANSWER: &str = "Hello from the fake API, through sidecred.";
/// Far more than any case needs; a client that hangs fails here instead of stalling the suite.
const LIMIT: Duration = Duration::from_secs(60);

async fn stack(setup: Setup<'_>) -> Stack {
    let stack = Stack::start(setup).await;
    stack.upstream.set_answer(ANSWER);
    stack
}

async fn python(stack: &Stack, case: &str, base_path: &str) -> Run {
    run(stack.python_sdk(&Clients::installed(), case, base_path), LIMIT).await
}

/// What the client printed, after checking it succeeded and reached nothing but the forwarder.
fn result(stack: &Stack, run: &Run) -> Value {
    assert!(run.succeeded(), "{run}\nthe API saw:\n{}", stack.upstream.log());
    stack.assert_nothing_left();
    run.json()
}

/// The request as the API must see it from a client of the forwarder: the agent's token instead of the
/// client's key, the OAuth beta, an API version (the client's own: this SDK names a newer one than
/// the forwarder's default).
fn assert_forwarded(stack: &Stack, seen: &Seen) {
    assert_eq!(seen.bearer(), Some(stack.pair.access_token.as_str()), "{}", seen.summary());
    assert!(seen.headers.get("x-api-key").is_none(), "the client's key must not reach the API");
    assert!(seen.header("anthropic-beta").is_some_and(|b| b.split(',').any(|b| b == OAUTH_BETA)));
    assert!(seen.header("anthropic-version").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_a_message() {
    let stack = stack(Setup::default()).await;
    let got = result(&stack, &python(&stack, "create", "").await);
    assert_eq!((got["text"].as_str(), got["stop_reason"].as_str()), (Some(ANSWER), Some("end_turn")));
    assert_eq!(got["model"], "claude-sonnet-4-5");
    let seen = stack.upstream.seen();
    assert_eq!(seen.len(), 1, "{}", stack.upstream.log());
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("POST", "/v1/messages"));
    assert_forwarded(&stack, &seen[0]);
    assert_eq!(seen[0].json().unwrap()["model"], "claude-sonnet-4-5");
}

/// A base URL copied from the deployment guide (`…/api/v1`) or ending in `/v1`: the SDK appends
/// `/v1/messages` itself, and the doubled `/v1` must reach the API once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_base_url_ending_in_api_v1_or_v1() {
    let stack = stack(Setup::default()).await;
    for base_path in ["/api/v1", "/v1"] {
        let got = result(&stack, &python(&stack, "create", base_path).await);
        assert_eq!(got["text"], ANSWER, "base URL {base_path}");
        let seen = stack.upstream.last_seen().unwrap();
        assert_eq!(seen.path, "/v1/messages", "base URL {base_path}");
        assert_forwarded(&stack, &seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_message() {
    let stack = stack(Setup::default()).await;
    stack.upstream.set_sse(5, Duration::from_millis(50));
    let got = result(&stack, &python(&stack, "stream", "").await);
    let pieces: Vec<&str> = got["pieces"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(pieces.len() >= 5, "the text arrived in pieces: {got}");
    assert_eq!(pieces.concat(), ANSWER);
    assert_eq!((got["text"].as_str(), got["stop_reason"].as_str()), (Some(ANSWER), Some("end_turn")));
    assert_eq!(stack.upstream.streams_completed(), 1);
    assert_forwarded(&stack, &stack.upstream.last_seen().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_20_async_streams_at_once() {
    let stack = stack(Setup::default()).await;
    // Each stream takes 4 gaps, 0.8 s: twenty in a row would take 16 s.
    stack.upstream.set_sse(5, Duration::from_millis(200));
    let got = result(&stack, &python(&stack, "concurrent_streams", "").await);
    let texts = got["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 20);
    assert!(texts.iter().all(|t| t == ANSWER), "{got}");
    let seconds = got["seconds"].as_f64().unwrap();
    assert!(seconds < 8.0, "the streams did not run at once: {seconds} s");
    assert_eq!((stack.upstream.streams_started(), stack.upstream.streams_completed()), (20, 20));
    assert!(stack.upstream.seen().iter().all(|s| s.bearer() == Some(stack.pair.access_token.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_tokens() {
    let stack = stack(Setup::default()).await;
    let got = result(&stack, &python(&stack, "count_tokens", "").await);
    let seen = stack.upstream.last_seen().unwrap();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    assert_eq!(got["input_tokens"].as_u64(), Some(count_tokens(seen.body_len)));
    assert_forwarded(&stack, &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_retrieves_models() {
    let stack = stack(Setup::default()).await;
    let got = result(&stack, &python(&stack, "models", "").await);
    assert_eq!(got["ids"], serde_json::json!(MODELS));
    assert_eq!(got["retrieved"].as_str(), MODELS.last().copied());
    let seen = stack.upstream.seen();
    assert_eq!(seen[0].path, "/v1/models");
    assert_eq!(seen[1].path, format!("/v1/models/{}", MODELS[1]));
    assert_forwarded(&stack, &seen[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_its_betas_merged_with_the_oauth_beta() {
    let stack = stack(Setup::default()).await;
    let got = result(&stack, &python(&stack, "betas", "").await);
    assert_eq!(got["text"], ANSWER);
    let seen = stack.upstream.last_seen().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(
        seen.header("anthropic-beta"),
        Some(format!("{OAUTH_BETA},interleaved-thinking-2025-05-14,context-management-2025-06-27"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_a_429_and_a_529_by_itself() {
    let stack = stack(Setup::default()).await;
    stack.upstream.fail_next(&[429, 529]);
    let got = result(&stack, &python(&stack, "create", "").await);
    assert_eq!(got["text"], ANSWER);
    let seen = stack.upstream.seen();
    let answered: Vec<(u16, Option<String>)> =
        seen.iter().map(|s| (s.status, s.header("x-stainless-retry-count"))).collect();
    let retry = |n: &str| Some(n.to_owned());
    assert_eq!(
        answered,
        [(429, retry("0")), (529, retry("1")), (200, retry("2"))],
        "{}",
        stack.upstream.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_is_cancelled_upstream() {
    let stack = stack(Setup::default()).await;
    stack.upstream.set_sse(50, Duration::from_millis(100));
    let got = result(&stack, &python(&stack, "cancel", "").await);
    assert!(got["first"].as_str().is_some_and(|t| ANSWER.starts_with(t)), "{got}");
    wait_until("the API to see the stream cancelled", Duration::from_secs(10), || {
        stack.upstream.streams_cancelled() == 1
    })
    .await;
    assert_eq!(stack.upstream.streams_completed(), 0);
}

/// A token revoked upstream before the agent knew: the forwarder reports it, the agent refreshes once,
/// and the forwarder sends the request again itself; the client sees one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_without_the_client_noticing() {
    let stack = stack(Setup::default()).await;
    stack.upstream.reject_next(1);
    let got = result(&stack, &python(&stack, "create", "").await);
    assert_eq!(got["text"], ANSWER);
    assert_eq!(stack.fake.refresh_requests(), 1, "exactly one refresh");
    let seen = stack.upstream.seen();
    assert_eq!(seen.iter().map(|s| s.status).collect::<Vec<_>>(), [401, 200], "{}", stack.upstream.log());
    assert_eq!(seen[0].bearer(), Some(stack.pair.access_token.as_str()));
    assert_eq!(seen[1].bearer(), stack.fake.latest_access_token().as_deref());
    assert!(
        seen.iter().all(|s| s.header("x-stainless-retry-count").as_deref() == Some("0")),
        "one client request"
    );
}

/// The same with a body over `--retry-body-limit`, which the forwarder cannot send again: the 401 goes
/// to the client with `x-should-retry: true` (the agent already serves a newer token), and the SDK,
/// which does not retry a 401 on its own, sends it again and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_with_a_body_too_large_to_keep_is_retried_by_the_sdk() {
    let stack = stack(Setup { forwarder_args: &["--retry-body-limit", "1KiB"], ..Setup::default() }).await;
    stack.upstream.reject_next(1);
    let got = result(&stack, &python(&stack, "large_prompt", "").await);
    assert_eq!(got["text"], ANSWER);
    assert_eq!(stack.fake.refresh_requests(), 1, "exactly one refresh");
    let seen = stack.upstream.seen();
    let answered: Vec<(u16, Option<String>)> =
        seen.iter().map(|s| (s.status, s.header("x-stainless-retry-count"))).collect();
    assert_eq!(answered, [(401, Some("0".into())), (200, Some("1".into()))], "{}", stack.upstream.log());
    assert!(seen.iter().all(|s| s.body_len > 4096));
    assert_eq!(seen[1].bearer(), stack.fake.latest_access_token().as_deref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_an_authentication_error_at_once() {
    let stack = stack(Setup { keys: &["sctest-compat-key"], ..Setup::default() }).await;
    let mut cmd = stack.python_sdk(&Clients::installed(), "wrong_key", "");
    cmd.env("SIDECRED_API_KEY", "sctest-wrong-key");
    let got = result(&stack, &run(cmd, LIMIT).await);
    assert_eq!((got["error"].as_str(), got["status"].as_u64()), (Some("AuthenticationError"), Some(401)));
    assert_eq!(got["should_retry"], "false");
    assert!(got["message"].as_str().unwrap().contains("invalid API key"), "{got}");
    assert!(got["seconds"].as_f64().unwrap() < 5.0, "{got}");
    assert_eq!(stack.upstream.seen_count(), 0);

    // The right key goes through.
    let mut cmd = stack.python_sdk(&Clients::installed(), "create", "");
    cmd.env("SIDECRED_API_KEY", "sctest-compat-key");
    assert_eq!(result(&stack, &run(cmd, LIMIT).await)["text"], ANSWER);
}

/// `--clients claude-code`: the SDK is refused with 403 and the explanation, raises
/// `PermissionDeniedError` at once, and nothing reaches the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_refused_with_the_explanation_under_clients_claude_code() {
    let stack = stack(Setup { forwarder_args: &["--clients", "claude-code"], ..Setup::default() }).await;
    let got = result(&stack, &python(&stack, "refused", "").await);
    assert_eq!(
        (got["error"].as_str(), got["status"].as_u64()),
        (Some("PermissionDeniedError"), Some(403)),
        "{got}"
    );
    assert_eq!(
        (got["type"].as_str(), got["should_retry"].as_str()),
        (Some("permission_error"), Some("false"))
    );
    assert!(got["message"].as_str().unwrap().contains("--clients claude-code"), "{got}");
    assert!(got["seconds"].as_f64().unwrap() < 5.0, "{got}");
    assert_eq!(stack.upstream.seen_count(), 0);
}

/// The account billed the SDK's first request as extra usage: the next is answered by the forwarder,
/// and the SDK raises `RateLimitError` at once (no retries: `x-should-retry: false`), with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billed_request_stops_the_next_with_a_rate_limit_error_it_does_not_retry() {
    let stack = stack(Setup::default()).await;
    stack.upstream.set_billing(Billing::BillsOthers);
    assert_eq!(result(&stack, &python(&stack, "create", "").await)["text"], ANSWER);
    let got = result(&stack, &python(&stack, "refused", "").await);
    assert_eq!((got["error"].as_str(), got["status"].as_u64()), (Some("RateLimitError"), Some(429)), "{got}");
    assert_eq!(
        (got["type"].as_str(), got["should_retry"].as_str()),
        (Some("rate_limit_error"), Some("false"))
    );
    let after: u64 = got["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((200..=300).contains(&after), "to the end of the 5 min probe interval: {got}");
    assert!(got["message"].as_str().unwrap().contains("--allow-extra-usage"), "{got}");
    assert!(got["seconds"].as_f64().unwrap() < 5.0, "it did not retry: {got}");
    assert_eq!((stack.upstream.seen_count(), stack.upstream.billed()), (1, 1), "{}", stack.upstream.log());
}

/// A used-up window: the API's own 429 reaches the SDK with the honest `retry-after` the forwarder
/// added (its reset, hours away) and `x-should-retry: false`, so the SDK raises at once instead of
/// retrying; the next request is answered by the forwarder without reaching the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_window_is_a_rate_limit_error_with_its_reset() {
    let stack = stack(Setup::default()).await;
    let until = now_epoch() + 3 * 3600;
    stack.upstream.set_billing(Billing::WindowExhausted { reset: until.to_string(), until });
    for (attempt, upstream) in [(0, 1), (1, 1)] {
        let got = result(&stack, &python(&stack, "refused", "").await);
        assert_eq!(
            (got["error"].as_str(), got["status"].as_u64()),
            (Some("RateLimitError"), Some(429)),
            "{got}"
        );
        assert_eq!(got["should_retry"], "false", "{attempt}: {got}");
        let after: u64 = got["retry_after"].as_str().unwrap().parse().unwrap();
        assert!((3 * 3600 - 60..=3 * 3600).contains(&after), "{attempt}: {got}");
        assert_eq!(stack.upstream.seen_count(), upstream, "{attempt}: {}", stack.upstream.log());
    }
}
