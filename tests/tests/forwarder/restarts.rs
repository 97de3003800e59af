//! Either process stopping or restarting: the agent dying or restarting under traffic, the forwarder
//! restarting, SIGTERM letting a stream finish.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_gives_503_after_the_window_and_a_restarted_one_serves_again() {
    // Asking per request: with the pushed token (the default) a dead agent's last token is used until
    // its expiry instead (pushed.rs).
    let mut world = World::new().await;
    let fwd = world.forwarder("forwarder", &["--agent-wait", "500ms", "--agent-mode", "per-request"]).await;
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
    let load = Load::start(fwd.url("/v1/messages"));
    load.wait_for("traffic before the restart", 20).await;
    world.kill_agent();
    // The agent stays down until the forwarder has found it gone (a probe fails as soon as the agent
    // does not answer), so requests surely meet the outage however the machine schedules the workers:
    // a restart right after the kill could complete between two requests of every worker.
    let client = http_client();
    assert_eq!(client.get(fwd.url("/readyz")).send().await.unwrap().status(), 503);
    let outage_seen = Instant::now();
    world.restart_agent("agent-2").await;
    load.wait_for("traffic after the restart", 20).await;
    let ok = load.ok();
    let (failed, spans) = load.stop().await;
    let held = spans.iter().filter(|(start, end)| *start < outage_seen && *end > outage_seen).count();
    let slowest = spans.iter().map(|(start, end)| end.duration_since(*start)).max().unwrap_or_default();
    eprintln!("requests in flight while the forwarder had no agent: {held}, slowest request: {slowest:?}");
    assert_eq!(failed, 0, "requests failed across an agent restart");
    assert!(held >= 1, "no request met the restart");
    assert!(ok >= 40);
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
