//! The login's clock: when the login was made rides in the credentials document, through rotations, the
//! state file and restarts; a file without that record starts the clock when the agent first sees it.

use super::*;

fn with_record(pair: &Pair, expires_at_ms: u64, started_at_ms: u64) -> Value {
    let mut doc = pair.credentials(expires_at_ms);
    doc["sidecred"] = json!({"loginStartedAt": started_at_ms, "loginClock": "login"});
    doc
}

async fn login_of(sb: &Sandbox) -> (Option<u64>, Option<String>, Option<u64>) {
    let s = sb.client().await.status().await.unwrap();
    (s.login_started_at_ms, s.login_clock, s.login_age_s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_age_survives_rotations_the_state_file_and_a_restart() {
    let fake = FakeOAuth::start().await;
    let pair = fake.issue_pair();
    let sb = Sandbox::new();
    let made = now_ms() - 51 * DAY_MS;
    write_json(&sb.seed(), &with_record(&pair, now_ms() + 8 * HOUR_MS, made));
    let metrics = format!("127.0.0.1:{}", free_port());
    let cmd = || {
        let mut cmd = sb.agent_cmd(&fake.token_url());
        cmd.arg("--state-dir").arg(sb.state_dir());
        cmd.args(["--metrics-listen", &metrics, "--login-max-age", "50days"]);
        cmd
    };
    let mut agent = sb.start_agent("agent", cmd()).await;
    let (at, clock, age) = login_of(&sb).await;
    assert_eq!((at, clock.as_deref()), (Some(made), Some("login")));
    assert!(age.is_some_and(|a| a >= 51 * 86_400), "{age:?}");

    for i in 0..3 {
        sb.client().await.refresh().await.unwrap_or_else(|e| panic!("refresh {i}: {e}"));
    }
    assert_eq!(fake.rotations(), 3);
    let state = read_json(&sb.state_file());
    assert_eq!(state["credentials"]["sidecred"]["loginStartedAt"], made, "{state}");
    assert_eq!(login_of(&sb).await.0, Some(made), "rotations keep the clock");
    let status = sb.client().await.status().await.unwrap();
    let warning = status.warning.unwrap_or_default();
    assert!(warning.contains("the login is 51 days old (--login-max-age 50 days)"), "{warning}");
    let (code, out, _) = agent_cli(&["status", "--socket", &sb.socket().display().to_string()]);
    assert_eq!(code, 0, "an old login still serves: {out}");
    assert!(out.contains("login age:     51 days"), "{out}");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let page = client.get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(sample(&page, "sidecred_agent_login_max_age_seconds"), Some(50.0 * 86_400.0), "{page}");
    assert!(
        sample(&page, "sidecred_agent_login_age_seconds").is_some_and(|a| a >= 51.0 * 86_400.0),
        "{page}"
    );
    let started = r#"sidecred_agent_login_started_timestamp_seconds{clock="login"}"#;
    assert_eq!(sample(&page, started), Some((made / 1000) as f64), "{page}");

    // The seed still holds the spent pair it started from; the state wins and keeps the clock.
    agent.kill9();
    let _agent = sb.start_agent("agent-again", cmd()).await;
    assert_eq!(login_of(&sb).await.0, Some(made), "a restart keeps the clock");
    assert_eq!(fake.rotations(), 3, "nothing refreshed at start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_the_record_starts_the_clock_when_first_seen_and_keeps_it() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let (code, out, _) =
        agent_cli(&["status", "--source", "file", "--credentials", &sb.seed().display().to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("login age:     unknown: the file carries no record"), "{out}");

    let before = now_ms();
    let mut agent = sb.start_agent("agent", sb.agent_cmd(&fake.token_url())).await;
    let (at, clock, _) = login_of(&sb).await;
    assert_eq!(clock.as_deref(), Some("first_seen"));
    let seen = at.expect("a clock");
    assert!(seen >= before && seen <= now_ms(), "{seen} not in [{before}, now]");
    agent.wait_for_log("its age counts from now", Duration::from_secs(5)).await;

    // A refresh writes the file back in place, with the clock beside Claude Code's block.
    sb.client().await.refresh().await.unwrap();
    let doc = read_json(&sb.seed());
    assert_eq!(doc["sidecred"]["loginStartedAt"], seen, "{doc}");
    assert_eq!(doc["sidecred"]["loginClock"], "firstSeen", "{doc}");
    assert_eq!(doc["claudeAiOauth"]["organizationUuid"], "org-unknown-field");
    let keys: Vec<&String> = doc["claudeAiOauth"].as_object().unwrap().keys().collect();
    assert!(!keys.iter().any(|k| k.contains("login")), "nothing of ours in Claude Code's block: {keys:?}");

    let (code, out, _) =
        agent_cli(&["status", "--source", "file", "--credentials", &sb.seed().display().to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("login age:") && out.contains("at least") && out.contains("first saw it"), "{out}");

    agent.kill9();
    let _agent = sb.start_agent("agent-again", sb.agent_cmd(&fake.token_url())).await;
    assert_eq!(login_of(&sb).await.0, Some(seen), "the restarted agent reads the clock from the file");
}
