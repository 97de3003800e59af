//! Requests written by hand against the real forwarder, as no client library would send them: paths
//! that climb out of `/v1` once normalised, and a `Connection` header that names a header the
//! forwarder sets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidecred_proto::anthropic::ANTHROPIC_VERSION;
use sidecred_tests::forwarder_harness::Backends;
use sidecred_tests::raw_http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_answered_400_and_never_forwarded_with_the_token() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    for path in [
        "/v1/../x",
        "/v1/%2e%2e/x",
        "/v1/%2E%2E/x",
        "/v1/.%2e/admin",
        "/v1/./messages",
        "/api/v1/../../x",
        "/v1/..;/x",
        "/v1/..%2fx",
        "/v1/%5c..%5cx",
    ] {
        let resp = raw_http::send(fwd.addr, &format!("POST {path} HTTP/1.1\r\nHost: f"), "{}").await;
        assert_eq!(resp.status, 400, "{path}: {resp:?}");
        assert_eq!(resp.json()["error"]["type"], "invalid_request_error", "{path}: {resp:?}");
        assert_eq!(
            resp.header("x-should-retry"),
            Some("false"),
            "{path}: the same path gets the same answer"
        );
    }
    assert_eq!(
        backends.upstream.seen_count(),
        0,
        "a dot-segment path went upstream: {:?}",
        backends.upstream.seen()
    );

    let resp = raw_http::send(fwd.addr, "POST /v1/messages HTTP/1.1\r\nHost: f", "{}").await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_naming_anthropic_version_keeps_the_default() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &[]).await;
    let head = "POST /v1/messages HTTP/1.1\r\nHost: f\r\nConnection: anthropic-version\r\n\
                anthropic-version: 2099-01-01\r\nx-request-id: raw-1";
    let resp = raw_http::send(fwd.addr, head, "{}").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-request-id"), Some("raw-1"));
    let seen = backends.upstream.last_seen().unwrap();
    // The header the client named is gone, and the default takes its place (before: none at all).
    assert_eq!(seen.header("anthropic-version").as_deref(), Some(ANTHROPIC_VERSION));
    assert_eq!(seen.header("x-request-id").as_deref(), Some("raw-1"));
    assert!(seen.header("connection").is_none());
}

/// `sidecred-forwarder --probe`, as the sidecar's startup probe runs it: the listen address from
/// SIDECRED_LISTEN (an unspecified one means loopback), exit 0 while a forwarder serves there, exit 1
/// with the address in its message once none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_while_a_forwarder_listens_and_fails_once_it_is_gone() {
    let backends = Backends::start().await;
    let mut fwd = backends.forwarder("forwarder", &[]).await;
    let probe = |listen: String| {
        std::process::Command::new(sidecred_tests::harness::forwarder_bin())
            .arg("--probe")
            .env("SIDECRED_LISTEN", listen)
            .output()
            .unwrap()
    };
    for listen in [fwd.addr.to_string(), format!("0.0.0.0:{}", fwd.addr.port())] {
        let out = probe(listen.clone());
        assert!(out.status.success(), "{listen}: {out:?}");
    }
    fwd.proc.kill9();
    let out = probe(fwd.addr.to_string());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&fwd.addr.to_string()) && stderr.contains("--probe"), "{stderr}");
}
