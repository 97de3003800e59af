//! End-to-end tests of `sidecred-forwarder`: the real agent (against the fake token endpoint), the real
//! forwarder, and a fake Anthropic API that records what it was sent.
//!
//! Build the binaries first: `cargo build -p sidecred-agent -p sidecred-forwarder`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use serde_json::Value;
use sidecred_proto::anthropic::{ANTHROPIC_VERSION, OAUTH_BETA};
use sidecred_proto::TokenState;
use sidecred_tests::fakes::claude_oauth::{FakeOAuth, Pair};
use sidecred_tests::fakes::connect_proxy::ConnectProxy;
use sidecred_tests::fakes::upstream::{sha256_of, FakeUpstream, TokenCheck};
use sidecred_tests::forwarder_harness::{forwarder_cmd, http_client, start_forwarder, Forwarder};
use sidecred_tests::harness::{now_ms, wait_until, wait_until_async, Proc, Sandbox, Seeded, HOUR_MS};
use sidecred_tests::tls::TestPki;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agent, its token endpoint, and the fake API: everything but the forwarder.
struct World {
    agent: Option<Proc>,
    upstream: FakeUpstream,
    fake: FakeOAuth,
    pair: Pair,
    sandbox: Sandbox,
}

impl World {
    /// An agent seeded with a live pair valid for hours; the fake API accepts every token the token
    /// endpoint ever issued and has not revoked.
    async fn new() -> World {
        World::with_check(FakeOAuth::access_check).await
    }

    async fn with_check(check: impl FnOnce(&FakeOAuth) -> TokenCheck) -> World {
        World::seeded(Seeded::start(now_ms() + 8 * HOUR_MS).await, check).await
    }

    async fn seeded(seeded: Seeded, check: impl FnOnce(&FakeOAuth) -> TokenCheck) -> World {
        let Seeded { fake, pair, sb: sandbox } = seeded;
        let upstream = FakeUpstream::start(check(&fake)).await;
        let agent = sandbox.start_agent("agent", sandbox.agent_cmd(&fake.token_url())).await;
        World { agent: Some(agent), upstream, fake, pair, sandbox }
    }

    async fn forwarder(&self, name: &str, args: &[&str]) -> Forwarder {
        let mut cmd = forwarder_cmd(&self.sandbox, &self.upstream.url());
        cmd.args(args);
        start_forwarder(&self.sandbox, name, cmd).await
    }

    /// Replaces the fake API by one that speaks TLS with `pki`'s certificate, offering `alpn`; answers
    /// the path of the CA file to give the forwarder.
    async fn use_tls_upstream(&mut self, pki: &TestPki, alpn: &[&[u8]]) -> String {
        self.upstream = FakeUpstream::start_tls(self.fake.access_check(), pki.server_config(alpn)).await;
        let ca = self.sandbox.path().join("upstream-ca.pem");
        pki.write_ca(&ca);
        ca.display().to_string()
    }

    fn kill_agent(&mut self) {
        let mut agent = self.agent.take().expect("an agent is running");
        agent.kill9();
    }

    async fn restart_agent(&mut self, name: &str) {
        assert!(self.agent.is_none(), "kill the agent first");
        self.agent =
            Some(self.sandbox.start_agent(name, self.sandbox.agent_cmd(&self.fake.token_url())).await);
    }

    async fn agent_status(&self) -> sidecred_proto::StatusReport {
        self.sandbox.client().await.status().await.expect("agent status")
    }
}

/// POSTs a small non-streaming message request; answers status and JSON body.
async fn message(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .expect("request to the forwarder");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

fn assert_anthropic_error(body: &Value, kind: &str) {
    assert_eq!(body["type"], "error", "not an Anthropic error body: {body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// Reads an SSE response, noting when each `content_block_delta` event arrived.
async fn read_deltas(resp: reqwest::Response) -> (Vec<Instant>, String) {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("stream chunk")).expect("utf-8"));
        let now = Instant::now();
        while arrivals.len() < text.matches("event: content_block_delta").count() {
            arrivals.push(now);
        }
    }
    (arrivals, text)
}

/// `bytes` as a body of 64 KiB chunks without a Content-Length.
fn chunked(bytes: &[u8]) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// Reads an SSE response up to its first `content_block_delta`; answers the rest of the stream and
/// the text so far.
async fn first_delta(
    resp: reqwest::Response,
) -> (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin, String) {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("event: content_block_delta") {
        text.push_str(std::str::from_utf8(&stream.next().await.unwrap().unwrap()).unwrap());
    }
    (stream, text)
}

fn stream_request(client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
}

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
async fn a_dead_agent_gives_503_after_the_window_and_a_restarted_one_serves_again() {
    let mut world = World::new().await;
    let fwd = world.forwarder("forwarder", &["--agent-wait", "500ms"]).await;
    let client = http_client();
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
    let health: Value = client.get(fwd.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["authenticated"], true);
    assert!(health["expires_in"].as_u64().unwrap() > 3600, "{health}");

    world.kill_agent();
    let started = Instant::now();
    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_anthropic_error(&body, "api_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("unavailable"), "{body}");
    assert!(waited >= Duration::from_millis(450), "answered after {waited:?}, before the window");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");

    let resp = client.get(fwd.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let health: Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["authenticated"], false);
    assert!(health["reason"].as_str().unwrap().contains("unavailable"), "{health}");
    assert_eq!(client.get(fwd.url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(client.get(fwd.url("/livez")).send().await.unwrap().status(), 200);

    // A forwarder that starts before its agent says so (once its start-up check has waited out the
    // window, in the background: /livez answers meanwhile) and serves as soon as the agent is back, like
    // the one that saw it go.
    let early = world.forwarder("forwarder-early", &["--agent-wait", "500ms"]).await;
    early.proc.wait_for_log("the agent has no token for us yet", Duration::from_secs(10)).await;

    world.restart_agent("agent-2").await;
    assert_eq!(message(&client, &early.url("/v1/messages")).await.0, 200);
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
    assert_eq!(client.get(fwd.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(fwd.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_within_the_window_fails_no_request() {
    let mut world = World::new().await;
    let fwd = world.forwarder("forwarder", &["--agent-wait", "10s"]).await;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // When each request started and ended, to find those the forwarder held through the outage.
    let spans = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (ok, failed, stop, url) = (ok.clone(), failed.clone(), stop.clone(), fwd.url("/v1/messages"));
        let spans = spans.clone();
        workers.push(tokio::spawn(async move {
            let client = http_client();
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (status, body) = message(&client, &url).await;
                spans.lock().unwrap().push((started, Instant::now()));
                if status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    eprintln!("failed request: {status} {body}");
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    wait_until("traffic before the restart", Duration::from_secs(20), || ok.load(Ordering::SeqCst) >= 20)
        .await;
    world.kill_agent();
    // The agent stays down until the forwarder has found it gone (a probe fails as soon as the agent
    // does not answer), so requests surely meet the outage however the machine schedules the workers:
    // a restart right after the kill could complete between two requests of every worker.
    let client = http_client();
    assert_eq!(client.get(fwd.url("/readyz")).send().await.unwrap().status(), 503);
    let outage_seen = Instant::now();
    world.restart_agent("agent-2").await;
    let after = ok.load(Ordering::SeqCst);
    wait_until("traffic after the restart", Duration::from_secs(20), || {
        ok.load(Ordering::SeqCst) >= after + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let spans = spans.lock().unwrap();
    let held = spans.iter().filter(|(start, end)| *start < outage_seen && *end > outage_seen).count();
    let slowest = spans.iter().map(|(start, end)| end.duration_since(*start)).max().unwrap_or_default();
    eprintln!("requests in flight while the forwarder had no agent: {held}, slowest request: {slowest:?}");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed across an agent restart");
    assert!(held >= 1, "no request met the restart");
    assert!(ok.load(Ordering::SeqCst) >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_restart_leaves_the_agent_untouched() {
    let world = World::new().await;
    let client = http_client();
    let mut first = world.forwarder("forwarder", &[]).await;
    assert_eq!(message(&client, &first.url("/v1/messages")).await.0, 200);
    let token_before = world.upstream.last_seen().unwrap().bearer().unwrap().to_owned();
    let status_before = world.agent_status().await;
    let received_before = world.fake.refresh_requests();

    first.proc.kill9();
    let second = world.forwarder("forwarder-2", &[]).await;
    assert_eq!(message(&client, &second.url("/v1/messages")).await.0, 200);
    assert_eq!(world.upstream.last_seen().unwrap().bearer().unwrap(), token_before);
    assert_eq!(world.fake.refresh_requests(), received_before, "no request reached the token endpoint");
    let status_after = world.agent_status().await;
    assert_eq!(status_after.refresh_count, 0);
    assert_eq!(status_after.token_fingerprint, status_before.token_fingerprint);
    assert_eq!(status_after.state, Some(TokenState::Valid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_401_means_one_refresh_and_a_successful_retry() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &[]).await;
    let client = http_client();
    world.upstream.reject_next(1);

    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(world.fake.refresh_requests(), 1, "exactly one refresh");
    assert_eq!(world.fake.rotations(), 1);
    let seen = world.upstream.seen();
    assert_eq!(seen.len(), 2, "the rejected request and its retry");
    assert_eq!(seen[0].status, 401);
    assert_eq!(seen[0].bearer(), Some(world.pair.access_token.as_str()));
    assert_eq!(seen[1].status, 200);
    assert_eq!(seen[1].bearer(), world.fake.latest_access_token().as_deref());
    assert_ne!(seen[1].bearer(), seen[0].bearer());
    assert_eq!(seen[1].body_sha256, seen[0].body_sha256, "the retry carries the same body");
    assert!(seen[1].body_len > 0);
    let log = fwd.proc.log();
    assert!(log.lines().any(|l| l.contains("retried=true") && l.contains("status=200")), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_a_body_too_large_to_keep_is_passed_on() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &["--retry-body-limit", "1KiB"]).await;
    let client = http_client();
    world.upstream.reject_next(1);
    let big = format!(
        r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );

    let resp = client.post(fwd.url("/v1/messages")).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_anthropic_error(&resp.json().await.unwrap(), "authentication_error");
    assert_eq!(world.upstream.seen_count(), 1, "no retry");
    // The rejection was still reported, so the next request carries the new token.
    assert_eq!(world.fake.refresh_requests(), 1);
    let resp = client.post(fwd.url("/v1/messages")).body(big).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(world.upstream.last_seen().unwrap().bearer(), world.fake.latest_access_token().as_deref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_refreshes_during_1000_requests_show_no_client_a_401() {
    // Strict upstream: only the newest token works, so every rotation invalidates tokens in flight and
    // the forwarder's report-and-retry has to cover them.
    let world = World::with_check(FakeOAuth::latest_access_check).await;
    let fwd = world.forwarder("forwarder", &[]).await;
    const TOTAL: u64 = 1000;
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (issued, done, url) = (issued.clone(), done.clone(), fwd.url("/v1/messages"));
        workers.push(tokio::spawn(async move {
            let client = http_client();
            let mut failures = Vec::new();
            while issued.fetch_add(1, Ordering::SeqCst) < TOTAL {
                let (status, body) = message(&client, &url).await;
                if status != 200 {
                    failures.push(format!("{status} {body}"));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    let refresher = {
        let (done, socket) = (done.clone(), world.sandbox.socket());
        tokio::spawn(async move {
            let mut client = sidecred_proto::client::Client::connect(&socket).await.unwrap();
            for at in [200, 450, 700] {
                while done.load(Ordering::SeqCst) < at {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                client.refresh().await.expect("forced refresh");
            }
        })
    };
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    refresher.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(done.load(Ordering::SeqCst), TOTAL);
    assert_eq!(world.fake.rotations(), 3, "the three forced refreshes, and no others");
    let rejected = world.upstream.seen().iter().filter(|s| s.status == 401).count();
    eprintln!("upstream 401s absorbed by retries: {rejected}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauth_required_becomes_a_401_that_says_to_log_in_again() {
    // An expired access token and a refresh token the endpoint does not know: the agent's first refresh
    // gets invalid_grant.
    let fake = FakeOAuth::start().await;
    let pair = fake.unknown_pair();
    let world = World::seeded(Seeded::new(fake, pair, now_ms() - 60_000), FakeOAuth::access_check).await;
    wait_until_async("the agent to need a new login", Duration::from_secs(20), || async {
        world.agent_status().await.state == Some(TokenState::ReauthRequired)
    })
    .await;
    let fwd = world.forwarder("forwarder", &[]).await;
    let client = http_client();

    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 401, "{body}");
    assert_anthropic_error(&body, "authentication_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("log in again"), "{body}");
    assert_eq!(world.upstream.seen_count(), 0);

    let resp = client.get(fwd.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let health: Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["reauth_required"], true);
    assert_eq!(client.get(fwd.url("/readyz")).send().await.unwrap().status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_stream_finish_then_exits_0() {
    let world = World::new().await;
    world.upstream.set_sse(5, Duration::from_millis(300));
    let mut fwd = world.forwarder("forwarder", &[]).await;
    let client = http_client();
    let resp = stream_request(&client, &fwd.url("/v1/messages")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (mut stream, mut text) = first_delta(resp).await;

    fwd.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let addr = fwd.addr;
    wait_until_async("the forwarder to stop accepting", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(fwd.proc.is_running(), "the forwarder must wait for the stream");

    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("the stream must not be cut")).unwrap());
    }
    assert_eq!(text.matches("event: content_block_delta").count(), 5, "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
    let status = fwd.proc.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(world.upstream.streams_completed(), 1);
}

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
