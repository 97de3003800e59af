//! What the forwarder tells clients about retrying (`x-should-retry`, which Anthropic's clients obey
//! over their own rules), and what `/health` says while the API rejects the token the agent serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sidecred_proto::anthropic::SHOULD_RETRY_HEADER;
use sidecred_tests::compat::{Setup, Stack};
use sidecred_tests::forwarder_harness::http_client;

const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;

async fn post(stack: &Stack, path: &str, key: &str, body: String) -> reqwest::Response {
    http_client()
        .post(stack.base_url(path))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn advice(resp: &reqwest::Response) -> Option<&str> {
    resp.headers().get(SHOULD_RETRY_HEADER).map(|v| v.to_str().unwrap())
}

async fn health(stack: &Stack) -> (u16, Value) {
    let resp = http_client().get(stack.base_url("/health")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarders_own_final_errors_say_a_retry_cannot_help() {
    let args = ["--max-request-body", "1KiB"];
    let stack =
        Stack::start(Setup { forwarder_args: &args, keys: &["sctest-advice-key"], ..Setup::default() }).await;
    let cases = [
        ("/v1/messages", "sctest-wrong-key", BODY.to_owned(), 401),
        ("/v2/messages", "sctest-advice-key", BODY.to_owned(), 404),
        ("/v1/messages", "sctest-advice-key", "x".repeat(2048), 413),
    ];
    for (path, key, body, status) in cases {
        let resp = post(&stack, path, key, body).await;
        assert_eq!(resp.status(), status);
        assert_eq!(advice(&resp), Some("false"), "{status}");
    }
    assert_eq!(stack.upstream.seen_count(), 0);
    let resp = post(&stack, "/v1/messages", "sctest-advice-key", BODY.to_owned()).await;
    assert_eq!(
        (resp.status().as_u16(), advice(&resp)),
        (200, None),
        "the API's answers carry no advice of ours"
    );
}

/// The API rejects a token the agent has since replaced, and the body was too large for the forwarder to
/// send again: the client's own retry will carry the newer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_passed_on_while_a_newer_token_is_served_says_retry() {
    let stack =
        Stack::start(Setup { forwarder_args: &["--retry-body-limit", "1KiB"], ..Setup::default() }).await;
    stack.upstream.reject_next(1);
    let big = BODY.replace("hi", &"x".repeat(4096));
    let resp = post(&stack, "/v1/messages", "any", big.clone()).await;
    assert_eq!((resp.status().as_u16(), advice(&resp)), (401, Some("true")));
    assert_eq!(stack.fake.refresh_requests(), 1);
    let resp = post(&stack, "/v1/messages", "any", big).await;
    assert_eq!(resp.status(), 200, "the retry the advice asked for succeeds");
    assert_eq!(stack.upstream.last_seen().unwrap().bearer(), stack.fake.latest_access_token().as_deref());
}

/// The API rejects every token (an account blocked upstream, say). The first 401 makes the agent refresh,
/// and the refreshed token is rejected too; from then on the agent will not refresh again within its
/// cooldown and keeps reporting a valid token. `/health` must say that requests are failing, and the
/// clients that a retry cannot help must hear so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rejected_right_after_a_refresh_shows_in_health() {
    let stack = Stack::start(Setup::default()).await;
    assert_eq!(health(&stack).await.0, 200);
    stack.upstream.reject_next(1000);

    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = post(&stack, "/v1/messages", "any", BODY.to_owned()).await;
        answers.push((resp.status().as_u16(), advice(&resp).map(str::to_owned)));
    }
    assert_eq!(stack.fake.refresh_requests(), 1, "one refresh, then the agent's cooldown");
    let (status, body) = health(&stack).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!((body["status"].as_str(), body["token_rejected"].as_bool()), (Some("degraded"), Some(true)));
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("rejected") && reason.contains("sidecred-agent validate"), "{reason}");
    let latest = stack.fake.latest_access_token().unwrap();
    assert!(
        reason.contains(&sidecred_proto::fingerprint(&latest)),
        "names the token by its fingerprint: {reason}"
    );
    let ready = http_client().get(stack.base_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "readiness is about the agent, which another replica would not fix");
    assert_eq!(answers, [(401, Some("false".to_owned())), (401, Some("false".to_owned()))]);

    // The API takes the token again: the next answer clears the state.
    stack.upstream.reject_next(0);
    let resp = post(&stack, "/v1/messages", "any", BODY.to_owned()).await;
    assert_eq!(resp.status(), 200);
    let (status, body) = health(&stack).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
}
