//! Requests through the forwarder: headers and exact bodies, SSE timing, paths and keys, size caps, a client
//! leaving, the access log.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_the_agents_token_merged_betas_and_exact_bodies() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &[]).await;
    let client = http_client();

    let body =
        br#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi \u00e9"}]}"#;
    let resp = client
        .post(fwd.url("/v1/messages?beta=true"))
        .header("content-type", "application/json")
        .header("x-api-key", "client-own-key")
        .header("authorization", "Bearer client-own-token")
        .header("anthropic-beta", "tools-2024-04-04")
        .header("anthropic-beta", "prompt-caching-2024-07-31, tools-2024-04-04")
        .header("x-custom", "kept")
        .header("x-request-id", "test-request-1")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "test-request-1");
    assert_eq!(resp.headers()["request-id"], "req_fake_upstream", "upstream headers pass back");

    let seen = world.upstream.last_seen().unwrap();
    assert_eq!(seen.bearer(), Some(world.pair.access_token.as_str()), "the agent's token, not the client's");
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);
    assert!(seen.headers.get("x-api-key").is_none(), "the client's x-api-key must not reach the upstream");
    assert_eq!(
        seen.header("anthropic-beta"),
        Some(format!("{OAUTH_BETA},tools-2024-04-04,prompt-caching-2024-07-31"))
    );
    assert_eq!(seen.header("anthropic-version").as_deref(), Some(ANTHROPIC_VERSION));
    assert_eq!(seen.header("host"), Some(world.upstream.url().trim_start_matches("http://").to_owned()));
    assert_eq!(seen.header("x-custom").as_deref(), Some("kept"));
    assert_eq!(seen.header("x-request-id").as_deref(), Some("test-request-1"));
    assert_eq!((seen.path.as_str(), seen.query.as_deref()), ("/v1/messages", Some("beta=true")));
    assert_eq!((seen.body_sha256.as_str(), seen.body_len), (sha256_of(body).as_str(), body.len()));

    // Without a request id, one is made up, sent upstream and returned.
    let resp = client.get(fwd.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(world.upstream.last_seen().unwrap().header("x-request-id"), Some(id));
    assert_eq!(world.upstream.last_seen().unwrap().header("anthropic-beta").as_deref(), Some(OAUTH_BETA));

    // 10 MiB, with a Content-Length and then streamed chunked: the same bytes arrive.
    let big: Vec<u8> =
        (0..10 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let digest = sha256_of(&big);
    let resp = client.post(fwd.url("/v1/messages")).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = world.upstream.last_seen().unwrap();
    assert_eq!((seen.body_sha256.as_str(), seen.body_len), (digest.as_str(), big.len()));

    let resp = client.post(fwd.url("/v1/messages")).body(chunked(&big)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = world.upstream.last_seen().unwrap();
    assert!(seen.headers.get("content-length").is_none(), "sent chunked");
    assert_eq!((seen.body_sha256.as_str(), seen.body_len), (digest.as_str(), big.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_the_upstream_sends_them() {
    let world = World::new().await;
    world.upstream.set_sse(5, Duration::from_millis(200));
    let fwd = world.forwarder("forwarder", &[]).await;
    let h1 = http_client();
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();

    for (i, (client, version)) in
        [(h1, reqwest::Version::HTTP_11), (h2, reqwest::Version::HTTP_2)].into_iter().enumerate()
    {
        let resp = stream_request(&client, &fwd.url("/v1/messages")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), version);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let (arrivals, text) = read_deltas(resp).await;
        assert_eq!(arrivals.len(), 5, "{version:?}: {text}");
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"), "{text}");
        for pair in arrivals.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap > Duration::from_millis(100), "{version:?}: events bunched together: gap {gap:?}");
        }
        let sent = world.upstream.sent_at(i);
        assert_eq!(sent.len(), 5);
        assert!(
            arrivals[0] + Duration::from_millis(400) < sent[4],
            "{version:?}: the first event must arrive well before the last is sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_inbound_keys() {
    let world = World::new().await;
    let keys = world.sandbox.path().join("api-keys");
    std::fs::write(&keys, "# who may call\nsctest-inbound-key-1\n\n  sctest-inbound-key-2  # the laptop\n")
        .unwrap();
    let fwd = world.forwarder("forwarder", &["--api-keys-file", keys.to_str().unwrap()]).await;
    let client = http_client();

    let resp = client
        .post(fwd.url("/api/v1/messages"))
        .header("x-api-key", "sctest-inbound-key-1")
        .body(r#"{"model":"m","max_tokens":1,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = world.upstream.last_seen().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert!(seen.headers.get("x-api-key").is_none());

    let resp = client
        .get(fwd.url("/v1/models?limit=5"))
        .header("authorization", "Bearer sctest-inbound-key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let models: Value = resp.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "claude-fake-1");
    let seen = world.upstream.last_seen().unwrap();
    assert_eq!((seen.path.as_str(), seen.query.as_deref()), ("/v1/models", Some("limit=5")));
    assert_eq!(seen.bearer(), Some(world.pair.access_token.as_str()), "the inbound key is replaced");

    let resp =
        client.get(fwd.url("/v2/whatever")).header("x-api-key", "sctest-inbound-key-1").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_anthropic_error(&resp.json().await.unwrap(), "not_found_error");

    let upstream_before = world.upstream.seen_count();
    for (name, value) in [
        (None, ""),
        (Some("x-api-key"), "sctest-wrong-key"),
        (Some("authorization"), "Bearer sctest-wrong-key"),
        (Some("authorization"), "Basic c2N0ZXN0LWluYm91bmQta2V5LTE="),
    ] {
        let mut req = client.post(fwd.url("/v1/messages")).body("{}");
        if let Some(name) = name {
            req = req.header(name, value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{name:?}");
        assert_anthropic_error(&resp.json().await.unwrap(), "authentication_error");
    }
    assert_eq!(world.upstream.seen_count(), upstream_before, "refused requests never reach the upstream");
    // Probes need no key.
    assert_eq!(client.get(fwd.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_cancels_the_upstream_request() {
    let world = World::new().await;
    world.upstream.set_sse(50, Duration::from_millis(100));
    let fwd = world.forwarder("forwarder", &[]).await;
    let client = http_client();
    let resp = stream_request(&client, &fwd.url("/v1/messages")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (stream, _) = first_delta(resp).await;
    drop(stream);
    drop(client);
    wait_until("the upstream to see its stream cancelled", Duration::from_secs(10), || {
        world.upstream.streams_cancelled() == 1
    })
    .await;
    assert_eq!(world.upstream.streams_completed(), 0);
    fwd.proc.wait_for_log("outcome=client_closed", Duration::from_secs(5)).await;

    // A client that gives up before the answer's headers: the upstream request is dropped too.
    world.upstream.set_delay(Duration::from_secs(30));
    let client = http_client();
    let gave_up =
        stream_request(&client, &fwd.url("/v1/messages")).timeout(Duration::from_millis(300)).send().await;
    assert!(gave_up.is_err(), "the client should have timed out");
    wait_until("the upstream to see its request abandoned", Duration::from_secs(10), || {
        world.upstream.requests_abandoned() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_get_413() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &["--max-request-body", "1MiB"]).await;
    let client = http_client();
    let over = vec![b'x'; 2 * 1024 * 1024];

    // Declared up front: refused before anything is sent upstream.
    let resp = client.post(fwd.url("/v1/messages")).body(over.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_anthropic_error(&resp.json().await.unwrap(), "request_too_large");
    assert_eq!(world.upstream.seen_count(), 0);

    // Streamed without a length: refused once the count passes the cap.
    let resp = client.post(fwd.url("/v1/messages")).body(chunked(&over)).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_anthropic_error(&resp.json().await.unwrap(), "request_too_large");

    // At the cap: fine.
    let resp = client.post(fwd.url("/v1/messages")).body(vec![b'y'; 1024 * 1024]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(world.upstream.last_seen().unwrap().body_len, 1024 * 1024);
}

/// The access log: one line per proxied request with what an operator needs (method, path, status,
/// upstream time, bytes, request id), written by the time the client has the whole body; no line at all
/// when its target is filtered out; and a `SIDECRED_LOG` that is not a filter is named in a warning
/// rather than silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_unless_filtered_out() {
    let world = World::new().await;
    let client = http_client();
    let send = |fwd: &Forwarder, id: &str| {
        client
            .post(fwd.url("/api/v1/messages?beta=true"))
            .header("x-request-id", id)
            .body(r#"{"max_tokens":1}"#)
            .send()
    };

    let fwd = world.forwarder("forwarder", &[]).await;
    let resp = send(&fwd, "access-line-1").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    let log = fwd.proc.log();
    let line =
        log.lines().find(|l| l.contains("access-line-1")).expect("an access line once the body is read");
    for field in [
        "sidecred_forwarder::access",
        "method=POST",
        "path=/api/v1/messages",
        "status=200",
        "upstream_ms=",
        &format!("bytes={}", body.len()),
        "retried=false",
        "outcome=complete",
        "request_id=access-line-1",
    ] {
        assert!(line.contains(field), "{field:?} missing from {line:?}");
    }
    assert!(!line.contains(&world.pair.access_token), "no token in the access line");

    let mut cmd = forwarder_cmd(&world.sandbox, &world.upstream.url());
    cmd.env("SIDECRED_LOG", "info,sidecred_forwarder::access=off");
    let quiet = start_forwarder(&world.sandbox, "quiet", cmd).await;
    for id in ["access-line-2", "access-line-3"] {
        let resp = send(&quiet, id).await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.headers()["x-request-id"].to_str().unwrap()), (200, id));
        resp.bytes().await.unwrap();
    }
    let log = quiet.proc.log();
    assert!(!log.contains("access-line-"), "access lines despite access=off:\n{log}");
    assert!(log.contains(" listening "), "the rest of the log is kept:\n{log}");

    let mut cmd = forwarder_cmd(&world.sandbox, &world.upstream.url());
    cmd.env("SIDECRED_LOG", "sidecred_forwarder=loud");
    let misconfigured = start_forwarder(&world.sandbox, "misconfigured", cmd).await;
    assert_eq!(send(&misconfigured, "access-line-4").await.unwrap().status(), 200);
    let log = misconfigured.proc.log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("SIDECRED_LOG=") && l.contains("not a filter")),
        "the bad filter is named:\n{log}"
    );
}

/// Found by attack: any method went upstream with the account's token, and an upstream (or proxy)
/// that echoes TRACE handed the token back to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_the_api_does_not_serve_get_405_and_never_a_token() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &[]).await;
    let client = http_client();
    for method in ["TRACE", "OPTIONS", "PUT", "PATCH"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client.request(method.clone(), fwd.url("/v1/messages")).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method}");
        assert_eq!(resp.headers()["allow"], "GET, POST, DELETE", "{method}");
        let body: Value = resp.json().await.unwrap();
        assert_anthropic_error(&body, "invalid_request_error");
        assert!(!body.to_string().contains(&world.pair.access_token), "{method}: {body}");
    }
    assert_eq!(world.upstream.seen_count(), 0, "a request of another method went upstream");
    // The API's own methods still go through.
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
}
