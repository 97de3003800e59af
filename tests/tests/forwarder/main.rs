//! End-to-end tests of `sidecred-forwarder`: the real agent (against the fake token endpoint), the real
//! forwarder, and a fake Anthropic API that records what it was sent.
//!
//! Build the binaries first: `cargo build -p sidecred-agent -p sidecred-forwarder`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use serde_json::Value;
use sidecred_proto::anthropic::{ANTHROPIC_VERSION, OAUTH_BETA};
use sidecred_proto::{Secret, TokenState};
use sidecred_tests::fakes::claude_oauth::{FakeOAuth, Pair};
use sidecred_tests::fakes::connect_proxy::ConnectProxy;
use sidecred_tests::fakes::upstream::{sha256_of, FakeUpstream, TokenCheck};
use sidecred_tests::forwarder_harness::{forwarder_cmd, http_client, start_forwarder, Forwarder};
use sidecred_tests::harness::{now_ms, wait_until, wait_until_async, Proc, Sandbox, Seeded, HOUR_MS};
use sidecred_tests::tls::TestPki;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod pushed;
mod refresh;
mod restarts;
mod traffic;
mod upstream;

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

/// Four clients sending messages through `url` back to back until stopped: how many succeeded and
/// failed, and when each request started and ended.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    spans: Arc<Mutex<Vec<(Instant, Instant)>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let spans = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (ok, failed, stop, spans, url) =
                (ok.clone(), failed.clone(), stop.clone(), spans.clone(), url.clone());
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
        Load { ok, failed, stop, spans, workers }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `more` requests have succeeded beyond those counted now.
    async fn wait_for(&self, what: &str, more: u64) {
        let base = self.ok();
        wait_until(what, Duration::from_secs(20), || self.ok() >= base + more).await;
    }

    /// Stops the clients once their requests are done; answers how many failed, and every request's span.
    async fn stop(self) -> (u64, Vec<(Instant, Instant)>) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.await.unwrap();
        }
        let spans = std::mem::take(&mut *self.spans.lock().unwrap());
        (self.failed.load(Ordering::SeqCst), spans)
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
