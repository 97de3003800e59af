//! Per-key limits against the real forwarder: a key over its rate or its concurrent requests gets the
//! API's 429 with `retry-after`, other keys are not touched, the refusals are counted by key name, and a
//! keys file that does not parse stops the start naming its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sidecred_tests::forwarder_harness::{forwarder_cmd, http_client, Backends};
use sidecred_tests::harness::Proc;
use std::time::{Duration, Instant};

const KEYS: &str = "# the original format: a key alone, unlimited\n\
                    sctest-plain\n\
                    sctest-ci name=ci rpm=1 burst=2\n\
                    sctest-laptop name=laptop rpm=1 burst=1\n\
                    sctest-streamer name=streamer concurrent=1\n";

async fn message(client: &reqwest::Client, url: &str, key: &str, stream: bool) -> reqwest::Response {
    client
        .post(url)
        .header("x-api-key", key)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": stream,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_the_apis_429_and_other_keys_do_not_notice() {
    let backends = Backends::start().await;
    let keys = backends.sandbox.path().join("keys");
    std::fs::write(&keys, KEYS).unwrap();
    let fwd = backends.forwarder("forwarder", &["--api-keys-file", keys.to_str().unwrap()]).await;
    let client = http_client();
    let url = fwd.url("/v1/messages");

    for _ in 0..2 {
        assert_eq!(message(&client, &url, "sctest-ci", false).await.status(), 200, "within the burst");
    }
    let over = message(&client, &url, "sctest-ci", false).await;
    assert_eq!(over.status(), 429);
    let retry_after: u64 = over.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("`ci`"), "{body}");
    assert_eq!(backends.upstream.seen_count(), 2, "a refused request went upstream");

    // Per-key isolation: the others have their own buckets (or none).
    assert_eq!(message(&client, &url, "sctest-laptop", false).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(message(&client, &url, "sctest-plain", false).await.status(), 200);
    }
    assert_eq!(message(&client, &url, "sctest-laptop", false).await.status(), 429);
    assert_eq!(message(&client, &url, "sctest-wrong", false).await.status(), 401);

    let page = client.get(fwd.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"sidecred_forwarder_key_rate_limited_total{key="ci"} 1"#), "{page}");
    assert!(page.contains(r#"sidecred_forwarder_key_rate_limited_total{key="laptop"} 1"#), "{page}");
    assert!(
        page.contains(r#"sidecred_forwarder_requests_total{route="messages",status_class="4xx",outcome="rate_limited"} 2"#),
        "{page}"
    );
    assert!(!page.contains("sctest-"), "a key reached the metrics:\n{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_stream_in_flight_waits_for_it_to_end() {
    let backends = Backends::start().await;
    // A stream that lasts while the test looks.
    backends.upstream.set_sse(200, Duration::from_millis(50));
    let keys = backends.sandbox.path().join("keys");
    std::fs::write(&keys, KEYS).unwrap();
    let fwd = backends.forwarder("forwarder", &["--api-keys-file", keys.to_str().unwrap()]).await;
    let client = http_client();
    let url = fwd.url("/v1/messages");

    let stream = message(&client, &url, "sctest-streamer", true).await;
    assert_eq!(stream.status(), 200);
    let second = message(&client, &url, "sctest-streamer", false).await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("in flight"), "{body}");
    // Another key is not held up by this one's stream.
    assert_eq!(message(&client, &url, "sctest-plain", false).await.status(), 200);

    // The client goes away: the slot comes back once the forwarder has dropped the stream.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = message(&client, &url, "sctest-streamer", false).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "the stream's slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_file_that_does_not_parse_stops_the_start_naming_its_line() {
    let backends = Backends::start().await;
    let keys = backends.sandbox.path().join("keys");
    std::fs::write(&keys, "sctest-ok\nsctest-bad rpm=lots\n").unwrap();
    let mut cmd = forwarder_cmd(&backends.sandbox, &backends.upstream.url());
    cmd.args(["--api-keys-file", keys.to_str().unwrap()]);
    let mut proc = Proc::spawn("forwarder", cmd, &backends.sandbox.log("forwarder"));
    let status = proc.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = proc.log();
    assert!(log.contains("line 2") && log.contains("rpm="), "{log}");
    assert!(!log.contains("sctest-bad"), "the key was repeated:\n{log}");
}
