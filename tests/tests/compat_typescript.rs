//! The official TypeScript SDK (`@anthropic-ai/sdk`, the version pinned in tests/compat/versions) on
//! node against the real agent and forwarder and a fake API: tests/compat/typescript_sdk.mjs.
//!
//! Install the clients first: tests/compat/install.sh (the README's test command does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sidecred_proto::anthropic::OAUTH_BETA;
use sidecred_tests::compat::{run, Clients, Run, Setup, Stack};
use sidecred_tests::harness::wait_until;
use std::time::Duration;

const ANSWER: &str = "Hello from the fake API, through sidecred.";
const LIMIT: Duration = Duration::from_secs(60);

async fn typescript(stack: &Stack, case: &str, base_path: &str) -> Value {
    let run: Run = run(stack.typescript_sdk(&Clients::installed(), case, base_path), LIMIT).await;
    assert!(run.succeeded(), "{run}\nthe API saw:\n{}", stack.upstream.log());
    stack.assert_nothing_left();
    run.json()
}

/// On the forwarder's own URL and on one copied with `/api/v1` at its end (the SDK appends `/v1/...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_message() {
    let stack = Stack::start(Setup::default()).await;
    stack.upstream.set_answer(ANSWER);
    stack.upstream.set_sse(5, Duration::from_millis(50));
    for (i, base_path) in ["", "/api/v1"].into_iter().enumerate() {
        let got = typescript(&stack, "stream", base_path).await;
        let pieces: Vec<&str> = got["pieces"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(pieces.len() >= 5, "the text arrived in pieces: {got}");
        assert_eq!(pieces.concat(), ANSWER);
        assert_eq!((got["text"].as_str(), got["stop_reason"].as_str()), (Some(ANSWER), Some("end_turn")));
        let seen = stack.upstream.last_seen().unwrap();
        assert_eq!(seen.path, "/v1/messages", "base URL {base_path:?}");
        assert_eq!(seen.bearer(), Some(stack.pair.access_token.as_str()));
        assert!(seen.headers.get("x-api-key").is_none());
        assert_eq!(seen.header("anthropic-beta").as_deref(), Some(OAUTH_BETA));
        assert_eq!(stack.upstream.streams_completed(), i as u64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_stream_is_cancelled_upstream() {
    let stack = Stack::start(Setup::default()).await;
    stack.upstream.set_answer(ANSWER);
    stack.upstream.set_sse(50, Duration::from_millis(100));
    let got = typescript(&stack, "abort", "").await;
    assert!(got["first"].as_str().is_some_and(|t| !t.is_empty() && ANSWER.starts_with(t)), "{got}");
    wait_until("the API to see the stream cancelled", Duration::from_secs(10), || {
        stack.upstream.streams_cancelled() == 1
    })
    .await;
    assert_eq!(stack.upstream.streams_completed(), 0);
}
