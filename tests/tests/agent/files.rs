//! The credentials file: mounted read-only with and without a state directory, updated as a Kubernetes Secret
//! is, in the deployment guide's flat shape, and broken.

use super::*;

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
