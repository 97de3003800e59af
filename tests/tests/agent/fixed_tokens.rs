//! Tokens that are never refreshed: a long-lived login shared by many agents, a static token, Claude Code's
//! token variable.

use super::*;

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
