//! The token the agent pushes (`--agent-mode subscribe`, the default): what each guarantee of asking
//! per request becomes when requests read the pushed token from memory. A rotation is seen by the next
//! request once the forwarder was told, a 401 report's answer at once, a revocation is pushed, a killed
//! agent costs no request, and a token is never used past its expiry with the agent gone.

use super::*;
use sidecred_tests::fakes::claude_oauth::Fault;

/// Waits until the forwarder logged a push carrying `fingerprint` (its debug log names the token by
/// fingerprint only).
async fn wait_for_push(fwd: &Forwarder, fingerprint: &str) {
    let log = fwd.proc.log_path().to_owned();
    let needle = fingerprint.to_owned();
    wait_until("the forwarder to be told of the new token", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("the agent pushed a token") && l.contains(&needle))
    })
    .await;
}

/// The count of exchanges with the agent on the forwarder's `/metrics`.
async fn exchanges(client: &reqwest::Client, fwd: &Forwarder) -> u64 {
    let page = client.get(fwd.url("/metrics")).send().await.unwrap().text().await.unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("sidecred_forwarder_agent_exchange_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no exchange count on /metrics:\n{page}"))
}

fn bearer_of_last(world: &World) -> String {
    world.upstream.last_seen().unwrap().bearer().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_seen_by_the_next_request_and_requests_ask_the_agent_nothing() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &[]).await;
    let client = http_client();
    wait_for_push(&fwd, &sidecred_proto::fingerprint(&world.pair.access_token)).await;
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
    assert_eq!(bearer_of_last(&world), world.pair.access_token);
    let asked = exchanges(&client, &fwd).await;

    for round in 0..3 {
        let grant = world.sandbox.client().await.refresh().await.expect("a forced refresh");
        wait_for_push(&fwd, &grant.access_token.fingerprint()).await;
        // Several connections, so both workers serve some: every one of them must have been told.
        for _ in 0..4 {
            let client = http_client();
            let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
            assert_eq!(status, 200, "round {round}: {body}");
            assert_eq!(bearer_of_last(&world), grant.access_token.expose(), "round {round}");
        }
    }
    assert_eq!(world.fake.rotations(), 3);
    assert_eq!(exchanges(&client, &fwd).await, asked, "a request asked the agent for its token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_401_takes_effect_for_the_next_request() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &[]).await;
    wait_for_push(&fwd, &sidecred_proto::fingerprint(&world.pair.access_token)).await;
    let client = http_client();
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);

    // Revoked upstream: the next request meets a 401, reports it, and is retried with the new token.
    world.fake.revoke_access_tokens();
    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(world.fake.rotations(), 1);
    let fresh = world.fake.latest_access_token().unwrap();
    let seen = world.upstream.seen();
    assert_eq!(seen.len(), 3, "one before, the rejected one, its retry");
    assert_eq!((seen[1].status, seen[1].bearer()), (401, Some(world.pair.access_token.as_str())));
    assert_eq!((seen[2].status, seen[2].bearer()), (200, Some(fresh.as_str())));

    // At once, on new connections (either worker), without waiting for the push: the report's answer.
    for _ in 0..4 {
        let (status, body) = message(&http_client(), &fwd.url("/v1/messages")).await;
        assert_eq!(status, 200, "{body}");
    }
    let seen = world.upstream.seen();
    assert!(seen[3..].iter().all(|s| s.bearer() == Some(fresh.as_str()) && s.status == 200), "{seen:#?}");
    assert_eq!(world.fake.rotations(), 1, "one refresh for the one revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_pushed_and_no_request_carries_the_revoked_token() {
    let world = World::new().await;
    let fwd = world.forwarder("forwarder", &[]).await;
    wait_for_push(&fwd, &sidecred_proto::fingerprint(&world.pair.access_token)).await;
    let client = http_client();
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
    let before = world.upstream.seen_count();

    // Another client of the agent reports the token rejected and the login turns out dead: the agent
    // goes on serving the access token (it may still work) until it is reported rejected once more.
    world.fake.set_fault(Some(Fault::InvalidGrant));
    let revoked = Secret::new(&world.pair.access_token);
    for _ in 0..2 {
        let reported = world.sandbox.client().await.report_rejected(revoked.clone()).await;
        assert!(reported.is_err(), "the agent has no other token to offer: {reported:?}");
    }
    let log = fwd.proc.log_path().to_owned();
    wait_until("the forwarder to be told there is no token", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("the agent pushed: no token to use now")
    })
    .await;

    let (status, body) = message(&client, &fwd.url("/v1/messages")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("log in again"), "{body}");
    assert_eq!(world.upstream.seen_count(), before, "a request went upstream with the revoked token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_under_load_fails_no_request_and_its_successor_is_followed() {
    let mut world = World::new().await;
    // A window far shorter than the outage: only the pushed token can carry requests through it.
    let fwd = world.forwarder("forwarder", &["--agent-wait", "100ms"]).await;
    wait_for_push(&fwd, &sidecred_proto::fingerprint(&world.pair.access_token)).await;
    let load = Load::start(fwd.url("/v1/messages"));
    load.wait_for("traffic before the kill", 20).await;
    world.kill_agent();
    // The agent stays down until the forwarder surely noticed (probes ask the agent) and requests
    // went on meanwhile.
    let client = http_client();
    assert_eq!(client.get(fwd.url("/readyz")).send().await.unwrap().status(), 503);
    load.wait_for("traffic with the agent gone", 50).await;
    world.restart_agent("agent-2").await;
    let grant = world.sandbox.client().await.refresh().await.expect("a refresh on the new agent");
    wait_for_push(&fwd, &grant.access_token.fingerprint()).await;
    load.wait_for("traffic after the restart", 20).await;
    let (failed, _) = load.stop().await;
    assert_eq!(failed, 0, "requests failed across an agent kill");
    assert_eq!(bearer_of_last(&world), grant.access_token.expose(), "the new agent's token is used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agent_gone_a_token_is_never_used_past_its_expiry() {
    // A token with half a minute left whose refresh keeps failing: the agent serves it (degraded)
    // until its expiry guard, and nobody else can give a newer one.
    let guard_ms = u64::try_from(sidecred_proto::EXPIRY_GUARD.as_millis()).unwrap();
    let expires_at = now_ms() + 30_000;
    let seeded = Seeded::start(expires_at).await;
    seeded.fake.set_fault(Some(Fault::Status(503)));
    let mut world = World::seeded(seeded, FakeOAuth::access_check).await;
    let fwd = world.forwarder("forwarder", &["--agent-wait", "200ms"]).await;
    wait_for_push(&fwd, &sidecred_proto::fingerprint(&world.pair.access_token)).await;
    let client = http_client();
    assert_eq!(message(&client, &fwd.url("/v1/messages")).await.0, 200);
    world.kill_agent();

    // Requests until a second past the expiry: (start, status) of each.
    let mut answered = Vec::new();
    while now_ms() < expires_at + 1_000 {
        let started = now_ms();
        let (status, _) = message(&client, &fwd.url("/v1/messages")).await;
        answered.push((started, status));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_usable = expires_at - guard_ms;
    let served: Vec<_> = answered.iter().filter(|(_, s)| *s == 200).collect();
    assert!(!served.is_empty(), "the token was not used with the agent gone: {answered:?}");
    assert!(
        served.iter().all(|(started, _)| *started < last_usable),
        "a request started at or after the expiry guard ({last_usable}) was served: {answered:?}"
    );
    assert!(
        answered.iter().filter(|(started, _)| *started >= last_usable).all(|(_, s)| *s == 503),
        "{answered:?}"
    );
    assert!(answered.iter().any(|(started, _)| *started >= expires_at), "the loop ran past the expiry");
    // Everything the upstream saw was sent with the token before its guard: nothing else reached it.
    assert_eq!(world.upstream.seen_count(), served.len() + 1);
}
