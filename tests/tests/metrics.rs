//! What an operator's tools see: the forwarder's `/metrics` counts what clients sent, the account's
//! usage windows reach the client unchanged and are kept as gauges and in `/health`; and a real
//! Prometheus scrapes the forwarder and the agent (`prometheus.rs` beside this file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sidecred_proto::anthropic::RATELIMIT_UNIFIED_PREFIX;
use sidecred_tests::fakes::upstream::DEFAULT_USAGE;
use sidecred_tests::forwarder_harness::{http_client, Backends};

/// The value of the one sample of `page` whose line starts with `series` (name and labels as written).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

async fn message(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .post(url)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_counts_requests_by_route_status_and_outcome() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let client = http_client();
    for _ in 0..3 {
        assert_eq!(message(&client, &fwd.url("/v1/messages")).await.status(), 200);
    }
    assert_eq!(client.get(fwd.url("/v1/models")).send().await.unwrap().status(), 200);
    backends.upstream.fail_next(&[529]);
    assert_eq!(message(&client, &fwd.url("/api/v1/messages")).await.status(), 529);
    // A path with user data in it is counted as `other`, never by its path.
    let odd = client.get(fwd.url("/v1/files/user-secret-name")).send().await.unwrap();
    assert_eq!(odd.status(), 404);

    let page = client.get(fwd.url("/metrics")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let page = page.text().await.unwrap();
    let requests = "sidecred_forwarder_requests_total";
    assert_eq!(
        sample(&page, &format!(r#"{requests}{{route="messages",status_class="2xx",outcome="ok"}}"#)),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, &format!(r#"{requests}{{route="models",status_class="2xx",outcome="ok"}}"#)),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            &format!(r#"{requests}{{route="messages",status_class="5xx",outcome="upstream_error"}}"#)
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, &format!(r#"{requests}{{route="other",status_class="4xx",outcome="ok"}}"#)),
        Some(1.0),
        "{page}"
    );
    assert!(!page.contains("user-secret-name"), "a path became a label:\n{page}");
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_upstream_response_seconds_count{route="messages"}"#),
        Some(4.0)
    );
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_time_to_first_byte_seconds_count{route="messages"}"#),
        Some(4.0)
    );
    assert_eq!(sample(&page, "sidecred_forwarder_open_streams"), Some(0.0), "{page}");
    assert!(sample(&page, "sidecred_forwarder_response_bytes_total").is_some_and(|b| b > 0.0), "{page}");
    assert!(sample(&page, "sidecred_forwarder_request_bytes_total").is_some_and(|b| b > 0.0), "{page}");
    assert!(
        sample(&page, "sidecred_forwarder_agent_exchange_seconds_count").is_some_and(|n| n >= 1.0),
        "{page}"
    );

    // Prometheus asks for OpenMetrics and gets it.
    let om = client
        .get(fwd.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(om.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(om.text().await.unwrap().ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_windows_pass_through_unchanged_and_are_kept_as_gauges_and_in_health() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let client = http_client();

    let health: Value = client.get(fwd.url("/health")).send().await.unwrap().json().await.unwrap();
    assert!(health.get("usage").is_none(), "nothing reported yet: {health}");

    let resp = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(resp.status(), 200);
    for (name, value) in DEFAULT_USAGE {
        let name = format!("{RATELIMIT_UNIFIED_PREFIX}{name}");
        assert_eq!(resp.headers().get(&name).map(|v| v.to_str().unwrap()), Some(*value), "{name}");
    }

    let page = client.get(fwd.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_usage_utilization_ratio{window="5h"}"#),
        Some(0.25),
        "{page}"
    );
    assert_eq!(sample(&page, r#"sidecred_forwarder_usage_utilization_ratio{window="7d"}"#), Some(0.4));
    assert_eq!(sample(&page, r#"sidecred_forwarder_usage_utilization_ratio{window="7d_oi"}"#), Some(0.125));
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_usage_reset_timestamp_seconds{window="5h"}"#),
        Some(1_764_511_200.0)
    );
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_usage_status{window="overall",status="allowed"}"#),
        Some(1.0)
    );

    let health: Value = client.get(fwd.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["usage"]["windows"]["5h"]["utilization"], 0.25, "{health}");
    assert_eq!(health["usage"]["windows"]["5h"]["resets_at"], "2025-11-30T14:00:00Z", "{health}");
    assert_eq!(health["usage"]["windows"]["7d"]["status"], "allowed", "{health}");

    // Malformed values from the API are ignored (the last good one stays), never a failure.
    backends.upstream.set_usage(&[
        ("5h-utilization", "lots"),
        ("7d-utilization", "1.5"),
        ("status", "rejected"),
    ]);
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.status(), 200);
    let page = client.get(fwd.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_usage_utilization_ratio{window="5h"}"#),
        Some(0.25),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_usage_utilization_ratio{window="7d"}"#),
        Some(1.0),
        "clamped"
    );
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_usage_status{window="overall",status="rejected"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&page, r#"sidecred_forwarder_usage_status{window="overall",status="allowed"}"#),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_the_same_page_on_its_own_port() {
    let backends = Backends::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let fwd = backends.forwarder("forwarder", &["--metrics-listen", &addr]).await;
    let client = http_client();
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.status(), 200);
    let page = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(
        sample(
            &page,
            r#"sidecred_forwarder_requests_total{route="messages",status_class="2xx",outcome="ok"}"#
        ),
        Some(1.0),
        "{page}"
    );
    let other = client.get(format!("http://{addr}/v1/messages")).send().await.unwrap();
    assert_eq!(other.status(), 404, "only /metrics on the metrics port");
}
