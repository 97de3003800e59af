//! How the upstream is reached: through a CONNECT proxy, over TLS with HTTP/2 or HTTP/1.1, with a CA file.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_is_reached_through_a_connect_proxy_unless_no_proxy_says_otherwise() {
    let world = World::new().await;
    let proxy = ConnectProxy::start().await;
    let client = http_client();
    let upstream_hostport = world.upstream.url().trim_start_matches("http://").to_owned();

    // The upstream here is plain http, so HTTP_PROXY applies (HTTPS_PROXY would for https).
    let mut cmd = forwarder_cmd(&world.sandbox, &world.upstream.url());
    cmd.env("HTTP_PROXY", format!("http://sc-user:sc-pass@{}", proxy.addr))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let fwd = start_forwarder(&world.sandbox, "forwarder", cmd).await;
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "one tunnel, reused: {seen:?}");
    assert_eq!(seen[0].0, format!("CONNECT {upstream_hostport} HTTP/1.1"));
    // base64("sc-user:sc-pass")
    assert_eq!(seen[0].1.as_deref(), Some("Basic c2MtdXNlcjpzYy1wYXNz"));
    assert_eq!(world.upstream.last_seen().unwrap().bearer(), Some(world.pair.access_token.as_str()));
    drop(fwd);

    let mut cmd = forwarder_cmd(&world.sandbox, &world.upstream.url());
    cmd.env("HTTP_PROXY", format!("http://{}", proxy.addr)).env("NO_PROXY", "localhost,127.0.0.1");
    let fwd = start_forwarder(&world.sandbox, "forwarder-no-proxy", cmd).await;
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
    assert_eq!(proxy.seen().len(), 1, "NO_PROXY exempts the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_offering_h2_gets_http2_with_streams_bodies_and_retries_intact() {
    let mut world = World::new().await;
    let pki = TestPki::new();
    let ca = world.use_tls_upstream(&pki, &[b"h2", b"http/1.1"]).await;
    world.upstream.set_sse(5, Duration::from_millis(200));
    // One worker, so one upstream pool: every request can share one connection.
    let fwd = world.forwarder("forwarder", &["--upstream-ca-file", &ca, "--workers", "1"]).await;
    let client = http_client();

    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 200, "{body}");
    let seen = world.upstream.last_seen().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2, "ALPN offered h2, so the forwarder must use it");
    assert_eq!(seen.bearer(), Some(world.pair.access_token.as_str()));
    assert_eq!(seen.header("anthropic-beta").as_deref(), Some(OAUTH_BETA));

    // A body well past HTTP/2's initial flow-control window arrives whole.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let resp = client.post(fwd.url("/v1/messages")).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = world.upstream.last_seen().unwrap();
    assert_eq!((seen.body_sha256.as_str(), seen.body_len), (sha256_of(&big).as_str(), big.len()));

    // SSE over an HTTP/2 upstream stream still reaches the client event by event.
    let resp = stream_request(&client, &fwd.url("/v1/messages")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (arrivals, text) = read_deltas(resp).await;
    assert_eq!(arrivals.len(), 5, "{text}");
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap > Duration::from_millis(100), "events bunched together: gap {gap:?}");
    }

    // A 401 on the HTTP/2 connection: one refresh, the retry carries the same body and the new token.
    world.upstream.reject_next(1);
    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(world.fake.refresh_requests(), 1, "exactly one refresh");
    let seen = world.upstream.seen();
    let (rejected, retried) = (&seen[seen.len() - 2], &seen[seen.len() - 1]);
    assert_eq!((rejected.status, retried.status), (401, 200));
    assert_eq!(retried.bearer(), world.fake.latest_access_token().as_deref());
    assert_eq!(retried.body_sha256, rejected.body_sha256);
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    assert_eq!(world.upstream.connections(), 1, "every request shared one multiplexed connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_without_h2_gets_http1_and_an_untrusted_one_a_clear_502() {
    let mut world = World::new().await;
    let pki = TestPki::new();
    let ca = world.use_tls_upstream(&pki, &[b"http/1.1"]).await;
    let client = http_client();

    let fwd = world.forwarder("forwarder", &["--upstream-ca-file", &ca]).await;
    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 200, "{body}");
    let seen = world.upstream.last_seen().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.bearer(), Some(world.pair.access_token.as_str()));
    drop(fwd);

    // Without the CA the certificate is not trusted: nothing reaches the API and the client learns why.
    let fwd = world.forwarder("forwarder-no-ca", &[]).await;
    let before = world.upstream.seen_count();
    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 502, "{body}");
    assert_anthropic_error(&body, "api_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("certificate"), "the 502 must say the certificate is the problem: {message}");
    assert_eq!(world.upstream.seen_count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_upstream_ca_file_stops_the_start_naming_the_file() {
    let world = World::new().await;
    let not_pem = world.sandbox.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just some text\n").unwrap();
    let missing = world.sandbox.path().join("missing.pem");
    for (path, why) in [(&not_pem, "no `BEGIN CERTIFICATE` block"), (&missing, "No such file")] {
        let mut cmd = forwarder_cmd(&world.sandbox, &world.upstream.url());
        cmd.arg("--upstream-ca-file").arg(path);
        let out = tokio::time::timeout(Duration::from_secs(20), tokio::process::Command::from(cmd).output())
            .await
            .expect("the forwarder must exit")
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--upstream-ca-file") && stderr.contains(&path.display().to_string()),
            "{stderr}"
        );
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_behind_https_proxy_gets_tls_and_h2_inside_the_tunnel() {
    let mut world = World::new().await;
    let pki = TestPki::new();
    let ca = world.use_tls_upstream(&pki, &[b"h2", b"http/1.1"]).await;
    let proxy = ConnectProxy::start().await;
    let upstream_hostport = world.upstream.url().trim_start_matches("https://").to_owned();

    // One worker, so one upstream pool: every request can share one tunnel.
    let mut cmd = forwarder_cmd(&world.sandbox, &world.upstream.url());
    cmd.args(["--workers", "1", "--upstream-ca-file"])
        .arg(&ca)
        .env("HTTPS_PROXY", format!("http://{}", proxy.addr))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let fwd = start_forwarder(&world.sandbox, "forwarder", cmd).await;
    let client = http_client();
    for _ in 0..3 {
        let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
        assert_eq!(status, 200, "{body}");
    }
    let tunnels = proxy.seen();
    assert_eq!(tunnels.len(), 1, "one tunnel, reused: {tunnels:?}");
    assert_eq!(tunnels[0].0, format!("CONNECT {upstream_hostport} HTTP/1.1"));
    let seen = world.upstream.last_seen().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2, "TLS and ALPN run end to end through the tunnel");
    assert_eq!(seen.bearer(), Some(world.pair.access_token.as_str()));
}
