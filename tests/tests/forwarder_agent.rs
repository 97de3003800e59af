//! The forwarder and whatever answers on the agent's socket, against the real forwarder binary: an agent
//! that hangs (start-up, requests and probes all keep their deadlines), a flood of probes (they share
//! the agent exchanges of requests), and an impostor of another uid (asked nothing, used for nothing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sidecred_tests::fakes::agent::{Behaviour, FakeAgent, FAKE_AGENT_TOKEN};
use sidecred_tests::fakes::upstream::FakeUpstream;
use sidecred_tests::forwarder_harness::{forwarder_cmd, http_client, start_forwarder, Forwarder};
use sidecred_tests::harness::Sandbox;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A forwarder in front of `upstream` whose socket is the sandbox's, where a stand-in agent listens.
async fn forwarder(sb: &Sandbox, upstream: &FakeUpstream, args: &[&str]) -> Forwarder {
    let mut cmd = forwarder_cmd(sb, &upstream.url());
    cmd.args(args).env_remove("SIDECRED_AGENT_UID");
    start_forwarder(sb, "forwarder", cmd).await
}

fn accept_any() -> sidecred_tests::fakes::upstream::TokenCheck {
    Arc::new(|_| true)
}

/// Fires `n` concurrent GETs of `path`; answers their statuses and the time the last one took.
async fn flood(fwd: &Forwarder, path: &str, n: usize) -> (Vec<u16>, Duration) {
    let client = http_client();
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), fwd.url(path));
            tokio::spawn(async move {
                client.get(url).timeout(Duration::from_secs(30)).send().await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().expect("every probe is answered"));
    }
    (statuses, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_agent_delays_neither_liveness_nor_requests_past_their_deadlines() {
    let sb = Sandbox::new();
    let upstream = FakeUpstream::start(accept_any()).await;
    let agent = FakeAgent::start(&sb.socket(), Behaviour::Hang);

    // Before, the start-up check waited 40 s for the hung agent before accepting anyone: /livez dead,
    // and start_forwarder gave up after 20 s.
    let started = Instant::now();
    let fwd = forwarder(&sb, &upstream, &["--agent-wait", "500ms"]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "/livez answered after {:?}", started.elapsed());
    fwd.proc.wait_for_log("the agent has no token for us yet", Duration::from_secs(10)).await;

    let client = http_client();
    let started = Instant::now();
    let resp = client.post(fwd.url("/v1/messages")).body("{}").send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("--agent-wait"), "{body}");
    assert!(took >= Duration::from_millis(450), "answered after {took:?}, before its window");
    // Before, one hung exchange held a request for 40 s.
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(upstream.seen_count(), 0);

    // A flood of probes is answered promptly and costs the hung agent a handful of connections, not
    // one each (before: 300 connections, each held by the agent).
    let before = agent.connections();
    let (statuses, took) = flood(&fwd, "/health", 300).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert!(took < Duration::from_secs(10), "300 probes took {took:?}");
    // Each worker's probes share one exchange at a time, and against a hung agent one lasts a probe's
    // window (a second).
    let opened = agent.connections() - before;
    let most = 2 * (2 + took.as_secs());
    assert!(opened <= most, "300 probes in {took:?} opened {opened} agent connections");
    assert_eq!(client.get(fwd.url("/livez")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_probes_asks_the_agent_far_less_than_once_each() {
    let sb = Sandbox::new();
    let upstream = FakeUpstream::start(accept_any()).await;
    let agent = FakeAgent::start(&sb.socket(), Behaviour::Answer);
    let fwd = forwarder(&sb, &upstream, &[]).await;
    let resp = http_client().get(fwd.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let health: Value = resp.json().await.unwrap();
    assert!(health["expires_in"].as_u64().unwrap() > 3500, "{health}");

    let (connections, requests) = (agent.connections(), agent.requests());
    let (statuses, _) = flood(&fwd, "/readyz", 500).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (connections, requests) = (agent.connections() - connections, agent.requests() - requests);
    eprintln!("500 probes: {requests} agent requests on {connections} new connections");
    // Before: one connection and one request per probe.
    assert!(requests < 500 && connections <= 16, "{requests} requests, {connections} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_on_the_socket_is_refused_naming_its_uid() {
    let sb = Sandbox::new();
    let upstream = FakeUpstream::start(accept_any()).await;
    let own = nix::unistd::geteuid().as_raw();
    let impostor = FakeAgent::start(&sb.socket(), Behaviour::Answer);

    // Configured for another uid than the one answering (this test's, the stand-in's).
    let expected = own.wrapping_add(4242).to_string();
    let fwd = forwarder(&sb, &upstream, &["--agent-uid", &expected]).await;
    let client = http_client();
    let resp = client.post(fwd.url("/v1/messages")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-should-retry"], "false", "it stays until someone removes the impostor");
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(&format!("uid {own}")) && message.contains("--agent-uid"), "{body}");
    assert_eq!(client.get(fwd.url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(impostor.requests(), 0, "the impostor was asked for a token");
    assert_eq!(upstream.seen_count(), 0, "a request went upstream with the impostor's token");
    let log = fwd.proc.log();
    assert!(log.lines().any(|l| l.contains("ERROR") && l.contains(&format!("uid {own}"))), "{log}");
    drop(fwd);

    // Set through the environment, and to the uid that really answers: served.
    let mut cmd = forwarder_cmd(&sb, &upstream.url());
    cmd.env("SIDECRED_AGENT_UID", own.to_string());
    let fwd = start_forwarder(&sb, "forwarder-own-uid", cmd).await;
    let resp = client.post(fwd.url("/v1/messages")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last_seen().unwrap().bearer(), Some(FAKE_AGENT_TOKEN));
}
