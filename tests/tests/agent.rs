//! End-to-end tests of `sidecred-agent` against the fake token endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::{json, Value};
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{ErrorCode, Secret, TokenState};
use sidecred_tests::fakes::claude_oauth::{FakeOAuth, Fault, Pair};
use sidecred_tests::fakes::kubelet::{can_mount_readonly, with_readonly_mount, SecretDir};
use sidecred_tests::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn agent_code(err: &ClientError) -> Option<ErrorCode> {
    match err {
        ClientError::Agent(e) => Some(e.code),
        _ => None,
    }
}

async fn token(sb: &Sandbox) -> String {
    sb.client().await.get_token().await.expect("get_token").access_token.expose().to_owned()
}

/// Runs `sidecred-agent <args>` to completion; returns (exit code, stdout, stderr).
fn agent_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin()).args(args).output().expect("run sidecred-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_no_secrets("sidecred-agent cli stderr", &stderr);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

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

fn make_read_only_layout(sb: &Sandbox) {
    std::fs::set_permissions(sb.seed(), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(sb.creds_dir(), std::fs::Permissions::from_mode(0o555)).unwrap();
}

fn require_readonly_mounts() {
    assert!(
        can_mount_readonly(),
        "this test needs private read-only mounts (root or CAP_SYS_ADMIN, and `unshare`): root ignores chmod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_seed_with_a_state_dir_works_and_survives_a_restart() {
    require_readonly_mounts();
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    make_read_only_layout(&sb);
    let seed_before = std::fs::read(sb.seed()).unwrap();

    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.arg("--state-dir").arg(sb.state_dir());
    let mut agent = sb.start_agent("agent-1", with_readonly_mount(&sb.creds_dir(), &cmd)).await;
    let mut client = sb.client().await;
    for _ in 0..3 {
        client.refresh().await.expect("refresh with a read-only seed");
    }
    assert_eq!(std::fs::read(sb.seed()).unwrap(), seed_before, "the seed is never written");
    let state = read_json(&sb.state_file());
    let live = refresh_token_of(&state).unwrap();
    assert!(fake.is_live_refresh_token(&live));
    assert_eq!(state["version"], 1);
    assert!(state["seedSha256"].is_string());
    assert_eq!(state["retiredRefreshTokens"].as_array().map(Vec::len), Some(3));
    assert_eq!(state["credentials"]["mcpOAuth"]["some-server"]["nested"][2]["deep"], true);

    assert!(agent.terminate(Duration::from_secs(10)).success());
    let served_before = fake.latest_access_token().unwrap();
    let received_before = fake.refresh_requests();

    // Restart: the state wins over the unchanged seed, whose refresh token is dead.
    let _agent = sb.start_agent("agent-2", with_readonly_mount(&sb.creds_dir(), &cmd)).await;
    assert_eq!(token(&sb).await, served_before);
    assert_eq!(fake.refresh_requests(), received_before, "a restart needs no refresh");
    sb.client().await.refresh().await.expect("the state's refresh token is the live one");
    assert!(!fake.was_rotated(&pair.refresh_token) || !fake.is_live_refresh_token(&pair.refresh_token));
    assert!(fake.is_live_refresh_token(&refresh_token_of(&read_json(&sb.state_file())).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_seed_without_a_state_dir_is_refused_with_a_clear_error() {
    require_readonly_mounts();
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    make_read_only_layout(&sb);
    let cmd = with_readonly_mount(&sb.creds_dir(), &sb.agent_cmd(&fake.token_url()));
    let mut agent = Proc::spawn("agent", cmd, &sb.log("agent"));
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = agent.log();
    assert!(log.contains("read-only"), "the error says the file is read-only: {log}");
    assert!(log.contains("--state-dir"), "the error says what to do: {log}");
    assert!(log.contains(&sb.creds_dir().display().to_string()), "the error names the file: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_update_is_adopted_and_invalid_content_is_ignored() {
    require_readonly_mounts();
    let fake = FakeOAuth::start().await;
    let first = fake.issue_pair();
    let sb = Sandbox::new();
    std::fs::remove_dir(sb.creds_dir()).unwrap();
    let creds = |p: &Pair| p.credentials_file(now_ms() + 8 * HOUR_MS);
    let mut secret = SecretDir::create(&sb.creds_dir(), &[(".credentials.json", &creds(&first))]);
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.arg("--state-dir").arg(sb.state_dir());
    let cmd = with_readonly_mount(&sb.creds_dir(), &cmd);
    let mut agent = sb.start_agent("agent-1", cmd).await;
    sb.client().await.refresh().await.unwrap();

    // Someone logs in again and updates the Secret: the kubelet swaps `..data`.
    let second = fake.issue_pair();
    secret.update(&[(".credentials.json", &creds(&second))]);
    let swapped = Instant::now();
    wait_for_token(
        &sb.socket(),
        "the new login to be served",
        Duration::from_secs(2),
        Some(&second.access_token),
    )
    .await;
    eprintln!("secret update adopted after {:?}", swapped.elapsed());

    // Broken content: logged with the file and field at fault; the last good token keeps being served.
    secret.update(&[(".credentials.json", br#"{"claudeAiOauth": {"accessToken": 12}}"#)]);
    agent.wait_for_log("ignoring the changed seed", Duration::from_secs(5)).await;
    let log = agent.log();
    assert!(log.contains(".credentials.json") && log.contains("accessToken"), "names file and field: {log}");
    assert_eq!(token(&sb).await, second.access_token);

    // The new login's refresh token is the one in use now.
    sb.client().await.refresh().await.unwrap();
    assert!(fake.was_rotated(&second.refresh_token));
    assert!(agent.terminate(Duration::from_secs(10)).success());
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
async fn sigterm_during_a_refresh_waits_for_it_and_persists_the_new_pair() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    fake.set_delay(Duration::from_millis(1500));
    let mut agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let socket = sb.socket();
    let refresh = tokio::spawn(async move { Client::connect(&socket).await?.refresh().await });
    wait_until("the refresh to reach the endpoint", Duration::from_secs(10), || fake.refresh_requests() == 1)
        .await;
    assert_eq!(fake.rotations(), 0, "the refresh is still in flight");
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    assert_eq!(fake.rotations(), 1);
    let on_disk = refresh_token_of(&read_json(&sb.seed())).unwrap();
    assert!(fake.is_live_refresh_token(&on_disk), "the pair obtained during shutdown was saved");
    assert!(!sb.socket().exists(), "the socket is removed");
    let _ = refresh.await;
    assert!(agent.log().contains("waiting for the refresh in flight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_around_refreshes_never_tears_the_file_or_loses_the_login_outside_the_window() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let mut windows = 0;
    let mut rng = rand::rng();
    for round in 0..20 {
        let name = format!("agent-{round}");
        let mut agent = sb.start_agent(&name, sb.agent_cmd(&fake.token_url())).await;
        // The restarted agent works from what the last one left: prove it with a refresh.
        sb.client()
            .await
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("round {round}: restart needs a login: {e}"));
        let socket = sb.socket();
        let hammer = tokio::spawn(async move {
            let Ok(mut c) = Client::connect(&socket).await else { return };
            while c.refresh().await.is_ok() {}
        });
        let delay = Duration::from_micros(rng.random_range(0..60_000));
        tokio::time::sleep(delay).await;
        agent.kill9();
        let _ = hammer.await;

        let bytes = std::fs::read(sb.seed()).expect("the file exists after kill -9");
        assert!(!bytes.is_empty(), "round {round}: empty file");
        let doc: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("round {round}: torn file"));
        assert_eq!(doc["mcpOAuth"]["some-server"]["nested"][2]["deep"], true);
        let on_disk = refresh_token_of(&doc).unwrap();
        if !fake.is_live_refresh_token(&on_disk) {
            // The endpoint rotated for a client that died before it could save the answer.
            assert!(
                fake.was_rotated(&on_disk),
                "round {round}: the file holds a token the server never issued"
            );
            windows += 1;
            let relogin = fake.issue_pair();
            sb.write_seed(&relogin, now_ms() + 8 * HOUR_MS);
        }
    }
    eprintln!("kill -9 landed in the endpoint-answering window {windows} time(s) out of 20");
    assert!(windows < 20, "the window is not the whole refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_uid_is_not_allowed_gets_no_token() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    // The test runs as some uid; allow only another one.
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.args(["--allow-uid", "4242"]);
    let agent = Proc::spawn("agent", cmd, &sb.log("agent"));
    agent.wait_for_log("listening", Duration::from_secs(20)).await;
    let err = sb.client().await.get_token().await.unwrap_err();
    assert_eq!(agent_code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(agent.log().contains("not allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_on_the_machine_is_refused_unless_allowed() {
    let me = nix::unistd::getuid().as_raw();
    if me != 0 {
        eprintln!("skipping the setpriv half: needs root to run a peer as uid 65534");
    }
    let fake = FakeOAuth::start().await;
    let pair = fake.issue_pair();
    for (allow, expect_ok) in [(me.to_string(), false), (format!("{me},65534"), true)] {
        let sb = Sandbox::new();
        sb.write_seed(&pair, now_ms() + 8 * HOUR_MS);
        for dir in [sb.path(), &sb.path().join("run")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = sb.agent_cmd(&fake.token_url());
        cmd.args(["--socket-mode", "0666", "--allow-uid", &allow]);
        let _agent = sb.start_agent("agent", cmd).await;
        if me != 0 {
            continue;
        }
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(agent_bin())
            .args(["refresh", "--socket"])
            .arg(sb.socket())
            .output()
            .expect("setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_no_secrets("refresh as 65534", &stderr);
        assert_eq!(out.status.success(), expect_ok, "allow={allow}: {stderr}");
        if !expect_ok {
            assert!(stderr.contains("uid 65534 is not allowed"), "{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flat_shape_of_the_deployment_guide_is_read_and_kept() {
    let fake = FakeOAuth::start().await;
    let pair = fake.issue_pair();
    let sb = Sandbox::new();
    write_json(
        &sb.seed(),
        &json!({
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
            "expires_at": "2099-01-01T00:00:00Z",
            "user_id": "user-1",
            "email": "someone@example.com"
        }),
    );
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    assert_eq!(token(&sb).await, pair.access_token);
    sb.client().await.refresh().await.unwrap();
    let doc = read_json(&sb.seed());
    assert_eq!(doc["user_id"], "user-1");
    assert_eq!(doc["email"], "someone@example.com");
    // This shape records no scopes, so the refresh asks for none rather than guess.
    assert_eq!(fake.refresh_scopes(), [None]);
    assert!(fake.is_live_refresh_token(doc["refresh_token"].as_str().unwrap()));
    assert_eq!(doc["access_token"].as_str(), fake.latest_access_token().as_deref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_credentials_name_the_field_and_a_later_login_is_adopted() {
    let fake = FakeOAuth::start().await;
    let sb = Sandbox::new();
    // (A login without a refresh token is a login, a long-lived one: a refresh token of the wrong type
    // is garbage.)
    write_json(
        &sb.seed(),
        &json!({"claudeAiOauth": {"accessToken": "x", "refreshToken": 7, "expiresAt": 1}}),
    );
    let _agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let status = sb.client().await.status().await.unwrap();
    assert_eq!(status.state, Some(TokenState::NoCredentials));
    let message = status.message.unwrap_or_default();
    assert!(message.contains("refreshToken") && message.contains(".credentials.json"), "{message}");
    let err = sb.client().await.get_token().await.unwrap_err();
    assert!(matches!(agent_code(&err), Some(ErrorCode::ReauthRequired | ErrorCode::Unavailable)), "{err}");

    let pair = fake.issue_pair();
    sb.write_seed(&pair, now_ms() + 8 * HOUR_MS);
    wait_for_token(&sb.socket(), "the login to be adopted", Duration::from_secs(2), None).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let mut agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let mut keeper = sb.client().await;
    assert!(keeper.get_token().await.is_ok());

    for garbage in [&b"\x00\x00\x00\x05hello"[..], b"\xff\xff\xff\xff", b"\x00\x00\x00\x02{}"] {
        let mut raw = tokio::net::UnixStream::connect(sb.socket()).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await.unwrap().unwrap();
        let body: Value = serde_json::from_slice(&answer[4..]).unwrap();
        assert_eq!(body["kind"], "error", "{body}");
        assert!(body["code"] == "bad_request" || body["code"] == "unsupported_version", "{body}");
    }
    // The earlier connection is still usable and the agent is alive.
    assert_eq!(keeper.get_token().await.unwrap().access_token.expose(), pair.access_token);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_show_fingerprints_never_tokens() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.args(["--log-format", "json"]).env("SIDECRED_LOG", "trace");
    let mut agent = sb.start_agent("agent", cmd).await;
    sb.client().await.refresh().await.unwrap();
    let _ = sb.client().await.report_rejected(Secret::new("sctest-bogus")).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let log = agent.log();
    let fp = sidecred_proto::fingerprint(&pair.refresh_token);
    assert!(log.contains(&fp), "the log identifies tokens by fingerprint");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|_| panic!("not a JSON log line ({} chars)", line.len()));
    }
    // Proc's drop checks the log for every token value.
}

/// The agent's thread count, from /proc.
fn thread_count(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_their_turn_and_connection_threads_end_with_their_clients() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let idle = thread_count(agent.pid());

    // The agent serves 256 connections at once, a thread each.
    let mut held = Vec::new();
    for _ in 0..256 {
        let mut c = Client::connect(&sb.socket()).await.unwrap();
        assert_eq!(c.get_token().await.unwrap().access_token.expose(), pair.access_token);
        held.push(c);
    }
    // (Give or take the thread of the readiness probe's connection, which may still be counted in `idle`.)
    let busy = thread_count(agent.pid());
    assert!(busy >= idle + 250, "a thread per open connection: {idle} idle, {busy} with 256 open");

    // One more is left in the kernel's backlog, unanswered, until a served one closes.
    let socket = sb.socket();
    let mut waiting = tokio::spawn(async move {
        let mut c = Client::connect(&socket).await?;
        c.get_token().await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(),
        "the 257th connection must wait for a free slot"
    );
    drop(held.pop());
    let grant = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(grant.access_token.expose(), pair.access_token);

    // Every connection thread ends with its client; the agent goes back to its idle threads (give or take
    // the runtime's blocking pool, which the seed watcher's polls may start meanwhile).
    drop(held);
    wait_until("connection threads to end", Duration::from_secs(10), || {
        thread_count(agent.pid()) <= idle + 2
    })
    .await;
    let mut c = sb.client().await;
    assert_eq!(c.get_token().await.unwrap().access_token.expose(), pair.access_token);
}

// ---------------------------------------------------------------------------------------------
// tokens that are never refreshed

/// A long-lived login's file, as `login --long-lived` writes it: one scope, no refresh token.
fn long_lived_credentials(access: &str, expires_at_ms: u64) -> Value {
    json!({"claudeAiOauth": {"accessToken": access, "expiresAt": expires_at_ms, "scopes": ["user:inference"]}})
}

/// The Kubernetes recipe: one long-lived login in a Secret, a sidecar agent in every pod, no lease and
/// no write-back. Three agents share it; none ever asks the token endpoint for anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_login_shared_by_many_agents_is_never_refreshed() {
    let fake = FakeOAuth::start().await;
    let login = fake.issue_pair_with_scopes(&["user:inference"]);
    let pods: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let mut agents = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        write_json(&pod.seed(), &long_lived_credentials(&login.access_token, now_ms() + 300 * 24 * HOUR_MS));
        let mut cmd = pod.agent_cmd(&fake.token_url());
        cmd.arg("--state-dir").arg(pod.state_dir());
        agents.push(pod.start_agent(&format!("agent-{i}"), cmd).await);
    }
    for pod in &pods {
        assert_eq!(token(pod).await, login.access_token);
        let status = pod.client().await.status().await.unwrap();
        assert_eq!(status.state, Some(TokenState::Valid));
        assert_eq!(status.next_refresh_in_s, None, "nothing is scheduled");
        assert_eq!(status.warning, None);
        assert!(status.message.as_deref().is_some_and(|m| m.contains("never refreshed")), "{status:?}");
        // A refresh on demand is refused: there is nothing to refresh with.
        let err = pod.client().await.refresh().await.unwrap_err();
        assert!(err.to_string().contains("no refresh token"), "{err}");
    }
    assert_eq!(fake.refresh_requests(), 0, "no agent ever asked the token endpoint");

    // Revoked upstream: each agent that hears of it asks for a login at once, and never refreshes.
    fake.revoke_access_tokens();
    let err =
        pods[0].client().await.report_rejected(Secret::new(login.access_token.clone())).await.unwrap_err();
    assert_eq!(agent_code(&err), Some(ErrorCode::ReauthRequired));
    assert!(err.to_string().contains("login --long-lived"), "{err}");
    let err = pods[0].client().await.get_token().await.unwrap_err();
    assert_eq!(agent_code(&err), Some(ErrorCode::ReauthRequired), "told at once, not after a wait");

    // A new long-lived login in the Secret reaches every pod.
    let next = fake.issue_pair_with_scopes(&["user:inference"]);
    for pod in &pods {
        write_json(&pod.seed(), &long_lived_credentials(&next.access_token, now_ms() + 300 * 24 * HOUR_MS));
    }
    for pod in &pods {
        wait_for_token(&pod.socket(), "the new login", Duration::from_secs(5), Some(&next.access_token))
            .await;
    }
    assert_eq!(fake.refresh_requests(), 0);
    drop(agents);
}

/// `run --static-token-env` (the guide's method 3) with Claude Code's variable: no file, no refresh,
/// a loud warning, and a rejection explained to the client by the forwarder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_is_served_never_refreshed_and_its_rejection_is_explained() {
    use sidecred_tests::fakes::upstream::FakeUpstream;
    use sidecred_tests::forwarder_harness::{forwarder_cmd, http_client, start_forwarder};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let fake = FakeOAuth::start().await;
    let sb = Sandbox::new();
    let static_token = "sctest-static-token-0001";
    let revoked = Arc::new(AtomicBool::new(false));
    let upstream = {
        let revoked = revoked.clone();
        FakeUpstream::start(Arc::new(move |t: &str| t == static_token && !revoked.load(Ordering::SeqCst)))
            .await
    };
    let mut cmd = Command::new(agent_bin());
    // No name after the flag: Claude Code's CLAUDE_CODE_OAUTH_TOKEN.
    cmd.args(["run", "--static-token-env", "--socket"])
        .arg(sb.socket())
        .arg("--token-url")
        .arg(fake.token_url())
        .env("CLAUDE_CODE_OAUTH_TOKEN", format!("{static_token}\n"))
        .env("SIDECRED_LOG", "debug")
        .env_remove("SIDECRED_CREDENTIALS")
        .env_remove("SIDECRED_STATE_DIR")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let agent = sb.start_agent("agent", cmd).await;
    assert!(agent.log().contains("STATIC TOKEN from $CLAUDE_CODE_OAUTH_TOKEN"), "{}", agent.log());
    assert_eq!(token(&sb).await, static_token);
    let (code, out, _) = agent_cli(&["status", "--socket", &sb.socket().display().to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning:       STATIC TOKEN from $CLAUDE_CODE_OAUTH_TOKEN"), "{out}");
    assert!(!out.contains("expires in:"), "its expiry is unknown: {out}");
    assert!(!sb.seed().exists() && std::fs::read_dir(sb.state_dir()).unwrap().next().is_none(), "no file");

    let fwd = start_forwarder(&sb, "forwarder", forwarder_cmd(&sb, &upstream.url())).await;
    let client = http_client();
    let send = || {
        client
            .post(fwd.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(
                r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
            )
            .send()
    };
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last_seen().unwrap().bearer(), Some(static_token));

    // Revoked: the client hears that a static token cannot be refreshed, now and on every later request
    // (which never reaches the upstream).
    revoked.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let resp = send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("a static token cannot be refreshed"), "{message}");
        assert!(message.contains("CLAUDE_CODE_OAUTH_TOKEN"), "{message}");
    }
    assert_eq!(upstream.seen_count(), 2, "the later request was answered without the upstream");
    let (code, out, _) = agent_cli(&["status", "--socket", &sb.socket().display().to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("state:         reauth_required"), "{out}");
    assert_eq!(fake.refresh_requests(), 0, "never refreshed");
    assert_eq!(fake.exchange_requests(), 0);
    drop(fwd);
    drop(agent);
}

/// Claude Code's variable set for Claude Code alone changes nothing: only the flag turns it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_codes_token_variable_is_ignored_without_the_flag() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 4 * HOUR_MS).await;
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.env("CLAUDE_CODE_OAUTH_TOKEN", "sctest-ambient-token");
    let _agent = sb.start_agent("agent", cmd).await;
    assert_eq!(token(&sb).await, pair.access_token);
    let status = sb.client().await.status().await.unwrap();
    assert_eq!(status.warning, None);
    assert!(status.next_refresh_in_s.is_some(), "a login with a refresh token is refreshed as usual");
}

/// A static token that is not there is an error at start, not an agent that serves nothing.
#[test]
fn a_missing_static_token_is_refused_at_start() {
    let sb = Sandbox::new();
    let out = Command::new(agent_bin())
        .args(["run", "--static-token-env", "SCTEST_NOT_SET", "--socket"])
        .arg(sb.socket())
        .env_remove("SCTEST_NOT_SET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--static-token-env SCTEST_NOT_SET: the variable is not set"), "{stderr}");
    assert!(!sb.socket().exists());
}
