//! One-Hub's Anthropic channel exactly as the deployment guide configures it (Base URL
//! `http://<host>:8000/api/v1`, any key) and exactly as One-Hub sends its requests: base URL +
//! `/v1/messages?beta=true` and base URL + `/v1/models`, with the headers of its Claude provider
//! (`providers/claude/base.go`: the channel key as both `x-api-key` and `Authorization: Bearer`, Claude
//! Code's betas, `accept-encoding: gzip, deflate`, its Stainless and app headers). One-Hub is a Go
//! server of its own, so its requests are replayed here byte for byte instead of running it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sidecred_proto::anthropic::{OAUTH_BETA, SHOULD_RETRY_HEADER};
use sidecred_tests::compat::{Setup, Stack};
use sidecred_tests::fakes::upstream::{sha256_of, Seen, MODELS};
use sidecred_tests::forwarder_harness::http_client;

/// The guide's channel: Base URL `http://claude-proxy:8000/api/v1`.
const GUIDE_BASE_PATH: &str = "/api/v1";
/// The betas One-Hub always sends.
const ONE_HUB_BETAS: &str = "claude-code-20250219,interleaved-thinking-2025-05-14";

/// One-Hub's headers for a channel whose key is `key`.
fn one_hub_headers(key: &str) -> Vec<(&'static str, String)> {
    let fixed = [
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
        ("accept-language", "*"),
        ("accept-encoding", "gzip, deflate"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-timeout", "600"),
        ("x-stainless-lang", "js"),
        ("x-stainless-package-version", "0.70.0"),
        ("x-stainless-os", "MacOS"),
        ("x-stainless-arch", "arm64"),
        ("x-stainless-runtime", "node"),
        ("x-stainless-runtime-version", "v22.19.0"),
        ("anthropic-dangerous-direct-browser-access", "true"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", ONE_HUB_BETAS),
        ("x-app", "cli"),
        ("user-agent", "claude-cli/2.1.12 (external, cli)"),
        ("sec-fetch-mode", "cors"),
        ("app-code", "HVNB1579"),
    ];
    let mut headers: Vec<(&'static str, String)> = fixed.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    headers.push(("x-api-key", key.to_owned()));
    headers.push(("authorization", format!("Bearer {key}")));
    headers
}

fn one_hub(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
) -> reqwest::RequestBuilder {
    one_hub_headers(key).into_iter().fold(client.request(method, url), |req, (k, v)| req.header(k, v))
}

/// A chat request as One-Hub converts it for its Anthropic channel.
fn body(stream: bool) -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-20250514","messages":[{{"role":"user","content":[{{"type":"text","text":"hi"}}]}}],"max_tokens":4096,"stream":{stream}}}"#
    )
}

/// What the API must receive from One-Hub's request: the agent's token alone, One-Hub's betas after
/// the OAuth beta, its other headers untouched.
fn assert_as_one_hub_sent_it(stack: &Stack, seen: &Seen) {
    assert_eq!(seen.bearer(), Some(stack.pair.access_token.as_str()));
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);
    assert!(seen.headers.get("x-api-key").is_none(), "the channel key must not reach the API");
    assert_eq!(seen.header("anthropic-beta"), Some(format!("{OAUTH_BETA},{ONE_HUB_BETAS}")));
    for (name, value) in one_hub_headers("unused") {
        if !matches!(name, "x-api-key" | "authorization" | "anthropic-beta") {
            assert_eq!(seen.header(name).as_deref(), Some(value.as_str()), "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_channel_works_as_one_hub_sends_it() {
    let stack = Stack::start(Setup::default()).await;
    let client = http_client();
    let base = stack.base_url(GUIDE_BASE_PATH);
    let messages = format!("{base}/v1/messages?beta=true");

    for stream in [false, true] {
        let body = body(stream);
        let resp = one_hub(&client, reqwest::Method::POST, &messages, "dummy-key")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "stream {stream}: {}", stack.upstream.log());
        let text = resp.text().await.unwrap();
        if stream {
            assert!(
                text.contains("event: message_start")
                    && text.ends_with("data: {\"type\":\"message_stop\"}\n\n"),
                "{text}"
            );
        } else {
            let message: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (message["type"].as_str(), message["role"].as_str()),
                (Some("message"), Some("assistant"))
            );
        }
        let seen = stack.upstream.last_seen().unwrap();
        assert_eq!((seen.path.as_str(), seen.query.as_deref()), ("/v1/messages", Some("beta=true")));
        assert_eq!(
            (seen.body_sha256.as_str(), seen.body_len),
            (sha256_of(body.as_bytes()).as_str(), body.len())
        );
        assert_as_one_hub_sent_it(&stack, &seen);
    }

    // The channel's model list (One-Hub's "fetch models").
    let resp = one_hub(&client, reqwest::Method::GET, &format!("{base}/v1/models"), "dummy-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, MODELS);
    let seen = stack.upstream.last_seen().unwrap();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/v1/models"));
    assert_as_one_hub_sent_it(&stack, &seen);
}

/// With inbound keys, the channel's key is one of them; a wrong one is refused for good, before the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_key_is_checked_as_an_inbound_key() {
    let stack = Stack::start(Setup { keys: &["sctest-channel-key"], ..Setup::default() }).await;
    let client = http_client();
    let messages = format!("{}/v1/messages?beta=true", stack.base_url(GUIDE_BASE_PATH));

    let resp = one_hub(&client, reqwest::Method::POST, &messages, "sctest-channel-key")
        .body(body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_as_one_hub_sent_it(&stack, &stack.upstream.last_seen().unwrap());

    let resp = one_hub(&client, reqwest::Method::POST, &messages, "sctest-other-key")
        .body(body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()[SHOULD_RETRY_HEADER], "false");
    let error: Value = resp.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    assert_eq!(stack.upstream.seen_count(), 1, "the refused request never reached the API");
}
