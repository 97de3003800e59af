//! Refreshing: one refresh for many waiters, forced refreshes, rejected tokens, a failing or unreachable
//! token endpoint, a dead refresh token, an answer without a refresh token.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_an_expired_token_make_exactly_one_refresh() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() - 60_000).await;
    // A slow endpoint, so all 200 requests arrive while the one refresh is in flight.
    fake.set_delay(Duration::from_millis(1500));
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let socket = sb.socket();
        tasks.spawn(async move {
            let mut c = Client::connect(&socket).await?;
            c.get_token().await
        });
    }
    let mut tokens = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        tokens.push(joined.unwrap().expect("every waiting request gets the new token"));
    }
    assert_eq!(tokens.len(), 200);
    let fresh = fake.latest_access_token().unwrap();
    assert!(tokens.iter().all(|g| g.access_token.expose() == fresh), "all 200 got the refreshed token");
    assert_eq!(fake.refresh_requests(), 1, "200 concurrent needs made exactly one refresh request");
    assert_eq!(fake.rotations(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_forced_refreshes_leave_the_live_refresh_token_on_disk_and_keep_unknown_fields() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;

    let mut client = sb.client().await;
    for i in 0..50 {
        let grant = client.refresh().await.unwrap_or_else(|e| panic!("refresh {i}: {e}"));
        assert_eq!(Some(grant.access_token.expose().to_owned()), fake.latest_access_token());
        // Persisted before it was served: the file already holds the live refresh token.
        let on_disk = refresh_token_of(&read_json(&sb.seed())).unwrap();
        assert!(
            fake.is_live_refresh_token(&on_disk),
            "after refresh {i} the file holds a dead refresh token"
        );
    }
    assert_eq!(fake.rotations(), 50);
    // Each refresh asks for the login's scopes, as Claude Code does, and the file keeps them.
    assert_eq!(fake.refresh_scopes(), vec![Some("user:inference user:profile".to_owned()); 50]);
    assert_eq!(read_json(&sb.seed())["claudeAiOauth"]["scopes"], json!(["user:inference", "user:profile"]));
    let live = fake.live_refresh_tokens();
    assert_eq!(live.len(), 1);
    let doc = read_json(&sb.seed());
    assert_eq!(refresh_token_of(&doc).as_deref(), Some(live[0].as_str()));
    assert_eq!(access_token_of(&doc), fake.latest_access_token());
    // Unknown fields at every level survived fifty rewrites.
    assert_eq!(doc["claudeAiOauth"]["rateLimitTier"], "default_claude_max_20x");
    assert_eq!(doc["claudeAiOauth"]["organizationUuid"], "org-unknown-field");
    assert_eq!(doc["claudeAiOauth"]["subscriptionType"], "max");
    assert_eq!(doc["mcpOAuth"], json!({ "some-server": { "nested": [1, 2, {"deep": true}] } }));
    assert_eq!(mode_of(&sb.seed()), 0o600);
    // No temp file left behind.
    let leftovers: Vec<_> =
        std::fs::read_dir(sb.creds_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the credentials file: {leftovers:?}");
    // Wire format: JSON bodies with the right client id, and the agent's own User-Agent.
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    assert!(fake.user_agents().iter().all(|ua| ua.starts_with("sidecred/")), "{:?}", fake.user_agents());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reports_of_the_same_rejected_token_make_one_refresh() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    fake.set_delay(Duration::from_millis(300));
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let rejected = token(&sb).await;
    assert_eq!(rejected, pair.access_token);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let socket = sb.socket();
        let rejected = Secret::new(rejected.clone());
        tasks.spawn(async move { Client::connect(&socket).await?.report_rejected(rejected).await });
    }
    while let Some(joined) = tasks.join_next().await {
        let grant = joined.unwrap().expect("a report gets the new token");
        assert_ne!(grant.access_token.expose(), rejected);
    }
    assert_eq!(fake.refresh_requests(), 1, "fifty reports of one token: one refresh");
    // A late report of the old token is answered with the current one, without another refresh.
    let grant = sb.client().await.report_rejected(Secret::new(rejected.clone())).await.unwrap();
    assert_eq!(Some(grant.access_token.expose().to_owned()), fake.latest_access_token());
    assert_eq!(fake.refresh_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failures_keep_the_valid_token_flowing_and_status_reports_them() {
    // Two minutes left: inside the refresh margin, so the agent tries right away.
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 120_000).await;
    fake.set_fault(Some(Fault::Status(500)));
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.args(["--request-timeout", "500ms"]);
    let _agent = sb.start_agent("agent", cmd).await;

    let socket = sb.socket().display().to_string();
    for fault in [Fault::Status(500), Fault::Hang, Fault::Malformed, Fault::Reset, Fault::Status(503)] {
        fake.set_fault(Some(fault.clone()));
        let seen = fake.refresh_requests();
        wait_until(&format!("retries under {fault:?}"), Duration::from_secs(20), || {
            fake.refresh_requests() >= seen + 2
        })
        .await;
        assert_eq!(token(&sb).await, pair.access_token, "the valid token keeps flowing under {fault:?}");
        let status = sb.client().await.status().await.unwrap();
        assert_eq!(status.state, Some(TokenState::Degraded), "{fault:?}: {status:?}");
        assert!(status.last_error.is_some(), "{fault:?}: status names the error");
    }
    let (code, out, _) = agent_cli(&["status", "--socket", &socket]);
    assert_eq!(code, 0, "still serving a valid token: the probe passes\n{out}");
    assert!(out.contains("degraded") && out.contains("last error"), "{out}");
    let (_, json_out, _) = agent_cli(&["status", "--json", "--socket", &socket]);
    let report: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(report["state"], "degraded");
    assert!(report["last_error"].as_str().unwrap().contains("503"), "{report}");

    // 429 with Retry-After: the next attempt waits at least that long (the backoff cap here is 500 ms).
    fake.set_fault(Some(Fault::TooMany { retry_after_s: 2 }));
    let seen = fake.refresh_requests();
    wait_until("a 429", Duration::from_secs(10), || fake.refresh_requests() > seen).await;
    let first_429 = Instant::now();
    let after_first = fake.refresh_requests();
    wait_until("the retry after a 429", Duration::from_secs(10), || fake.refresh_requests() > after_first)
        .await;
    assert!(
        first_429.elapsed() >= Duration::from_millis(1900),
        "Retry-After honoured: {:?}",
        first_429.elapsed()
    );

    // The endpoint recovers: the agent refreshes and is healthy again.
    fake.set_fault(None);
    wait_for_status(&sb.socket(), "recovery", Duration::from_secs(10), |s| {
        s.state == Some(TokenState::Valid)
    })
    .await;
    assert_eq!(fake.rotations(), 1);
    assert_eq!(Some(token(&sb).await), fake.latest_access_token());
    assert!(fake.is_live_refresh_token(&refresh_token_of(&read_json(&sb.seed())).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_reported_and_the_token_still_served() {
    let Seeded { pair, sb, .. } = Seeded::start(now_ms() + 120_000).await;
    // Nothing listens on port 9 of loopback.
    let _agent = sb.start_agent("agent", sb.agent_cmd("http://127.0.0.1:9/v1/oauth/token")).await;
    wait_for_status(&sb.socket(), "a reported error", Duration::from_secs(10), |s| s.last_error.is_some())
        .await;
    let status = sb.client().await.status().await.unwrap();
    let err = status.last_error.unwrap();
    assert!(err.contains("127.0.0.1:9"), "the error names the endpoint: {err}");
    assert_eq!(token(&sb).await, pair.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_refresh_token_requires_a_new_login_which_is_picked_up() {
    let fake = FakeOAuth::start().await;
    let dead = fake.unknown_pair();
    let sb = Sandbox::new();
    sb.write_seed(&dead, now_ms() - 1000);
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let socket = sb.socket();
    wait_for_status(&socket, "reauth_required", Duration::from_secs(10), |s| {
        s.state == Some(TokenState::ReauthRequired)
    })
    .await;
    let err = sb.client().await.get_token().await.unwrap_err();
    assert_eq!(agent_code(&err), Some(ErrorCode::ReauthRequired));
    assert!(err.to_string().contains("log in again"), "{err}");
    let (code, out, _) = agent_cli(&["status", "--socket", &socket.display().to_string()]);
    assert_eq!(code, 1, "the probe fails while a login is needed");
    assert!(out.contains("reauth_required"), "{out}");
    // The dead token is not retried in a loop.
    let tries = fake.refresh_requests();
    assert_eq!(tries, 1);

    let fresh = fake.issue_pair();
    sb.write_seed(&fresh, now_ms() + 8 * HOUR_MS);
    wait_for_token(&socket, "the new login", Duration::from_secs(2), Some(&fresh.access_token)).await;
    assert_eq!(fake.refresh_requests(), tries);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_response_without_a_refresh_token_keeps_the_old_one() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    fake.set_omit_refresh_token(true);
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    sb.client().await.refresh().await.unwrap();
    let doc = read_json(&sb.seed());
    assert_eq!(refresh_token_of(&doc).as_deref(), Some(pair.refresh_token.as_str()));
    assert_eq!(access_token_of(&doc), fake.latest_access_token());
}
