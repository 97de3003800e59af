//! Tokens the upstream refuses: a 401 retried once with a refreshed token, a body too large to replay,
//! refreshes under load, a login that is dead.

use super::*;

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
    let others = |h: &http::HeaderMap| {
        let mut pairs: Vec<_> =
            h.iter().filter(|(n, _)| *n != "authorization").map(|(n, v)| format!("{n}: {v:?}")).collect();
        pairs.sort();
        pairs
    };
    assert_eq!(others(&seen[1].headers), others(&seen[0].headers), "the retry carries the same headers");
    assert!(seen[1].headers.contains_key("x-request-id") && seen[1].headers.contains_key("anthropic-beta"));
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
