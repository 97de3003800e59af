//! A refresh token refused with `invalid_grant`: reported as "something else is using this login" when
//! no agent of ours spent it (another client refreshed the login from outside), and not when the agent
//! spent it itself (a refresh whose answer was lost on the way back).

use super::*;

/// The agent's `/metrics` page.
async fn metrics_page(addr: &str) -> String {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap()
}

fn refused(page: &str, cause: &str) -> Option<f64> {
    sample(page, &format!(r#"sidecred_agent_refresh_refused{{cause="{cause}"}}"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_from_outside_is_reported_as_something_else_using_the_login() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.args(["--metrics-listen", &metrics]);
    let agent = sb.start_agent("agent", cmd).await;

    // The agent's own rotation is nobody else's: nothing is reported.
    sb.client().await.refresh().await.expect("the agent's own refresh");
    let page = metrics_page(&metrics).await;
    assert_eq!(refused(&page, "foreign"), Some(0.0), "{page}");
    assert_eq!(sb.client().await.status().await.unwrap().refresh_refused_by, None);

    // A laptop's Claude Code refreshes the same login: the pair the agent holds dies.
    let ours = refresh_token_of(&read_json(&sb.seed())).unwrap();
    fake.refresh_from_outside(&ours).expect("the agent's refresh token was live");
    let err = sb.client().await.refresh().await.expect_err("the refresh token is dead");
    assert_eq!(agent_code(&err), Some(ErrorCode::ReauthRequired));

    let status = sb.client().await.status().await.unwrap();
    assert_eq!(status.state, Some(TokenState::ReauthRequired));
    assert_eq!(status.refresh_refused_by.as_deref(), Some("foreign"), "{status:?}");
    let message = status.message.unwrap_or_default();
    assert!(message.contains("SOMETHING ELSE IS USING THIS LOGIN"), "{message}");
    assert!(message.contains("Claude Code"), "{message}");
    let (code, out, _) = agent_cli(&["status", "--socket", &sb.socket().display().to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused by:") && out.contains("SOMETHING ELSE"), "{out}");
    agent.wait_for_log("cause=\"foreign\"", Duration::from_secs(5)).await;
    assert!(agent.log().contains("SOMETHING ELSE IS USING THIS LOGIN"));
    let page = metrics_page(&metrics).await;
    assert_eq!(refused(&page, "foreign"), Some(1.0), "{page}");
    assert_eq!(refused(&page, "ours_spent"), Some(0.0), "{page}");
    assert_eq!((fake.refresh_requests(), fake.invalid_grants()), (2, 1));

    // A new login clears the report.
    let fresh = fake.issue_pair();
    sb.write_seed(&fresh, now_ms() + 8 * HOUR_MS);
    wait_for_token(&sb.socket(), "the new login", Duration::from_secs(10), Some(&fresh.access_token)).await;
    assert_eq!(sb.client().await.status().await.unwrap().refresh_refused_by, None);
    assert_eq!(refused(&metrics_page(&metrics).await, "foreign"), Some(0.0));
}

/// The endpoint carries out a refresh whose answer never reaches the agent (it timed out): the agent's
/// retry with the same refresh token is refused, and that is the agent's own doing, not a foreign one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_agent_spent_itself_is_not_reported_as_foreign() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    // The retry comes well after the slow refresh has been carried out: the sandbox's fast backoff is
    // replaced by a slow one.
    let fast = sb.agent_cmd(&fake.token_url());
    let mut cmd = Command::new(fast.get_program());
    let mut args = fast.get_args();
    while let Some(arg) = args.next() {
        if arg == "--backoff-min" || arg == "--backoff-max" {
            args.next();
        } else {
            cmd.arg(arg);
        }
    }
    for (key, value) in fast.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.args(["--metrics-listen", &metrics, "--request-timeout", "1s"]);
    cmd.args(["--backoff-min", "6s", "--backoff-max", "6s"]);
    let agent = sb.start_agent("agent", cmd).await;

    fake.set_delay(Duration::from_secs(2));
    let err = sb.client().await.refresh().await.expect_err("the answer is lost");
    assert_ne!(agent_code(&err), Some(ErrorCode::ReauthRequired), "{err}");
    fake.set_delay(Duration::ZERO);
    wait_until("the endpoint to carry out the lost refresh", Duration::from_secs(10), || {
        fake.was_rotated(&pair.refresh_token)
    })
    .await;
    wait_for_status(&sb.socket(), "the retry refused", Duration::from_secs(20), |s| {
        s.state == Some(TokenState::ReauthRequired)
    })
    .await;

    let status = sb.client().await.status().await.unwrap();
    assert_eq!(status.refresh_refused_by.as_deref(), Some("ours_spent"), "{status:?}");
    let message = status.message.unwrap_or_default();
    assert!(message.contains("got no answer"), "{message}");
    assert!(!message.contains("SOMETHING ELSE"), "{message}");
    assert!(!agent.log().contains("SOMETHING ELSE"), "the log blames another client");
    agent.wait_for_log("cause=\"ours_spent\"", Duration::from_secs(5)).await;
    let page = metrics_page(&metrics).await;
    assert_eq!(refused(&page, "foreign"), Some(0.0), "{page}");
    assert_eq!(refused(&page, "ours_spent"), Some(1.0), "{page}");
    assert_eq!((fake.refresh_requests(), fake.invalid_grants(), fake.rotations()), (2, 1, 1));
}

/// A pair put in the seed file that has not expired but is dead (a copy of the login that another client
/// has refreshed since) is adopted, since nothing shows it is dead until it is refreshed. The live pair
/// it replaced is kept, saved beside it in the state directory, so even after a restart the agent goes
/// back to it when the adopted pair's refresh is refused, instead of losing the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pair_in_the_seed_falls_back_to_the_pair_it_replaced_even_after_a_restart() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let cmd = || {
        let mut cmd = sb.agent_cmd(&fake.token_url());
        cmd.arg("--state-dir").arg(sb.state_dir());
        cmd
    };
    let mut agent = sb.start_agent("agent", cmd()).await;
    let copy = fake.issue_pair();
    fake.refresh_from_outside(&copy.refresh_token).expect("the other client's refresh");
    sb.write_seed(&copy, now_ms() + 7 * HOUR_MS);
    wait_for_token(&sb.socket(), "the copy adopted", Duration::from_secs(10), Some(&copy.access_token)).await;
    wait_until("the kept pair saved beside the adopted one", Duration::from_secs(10), || {
        std::fs::read_to_string(sb.state_file()).is_ok_and(|s| s.contains("\"kept\""))
    })
    .await;
    agent.kill9();

    let agent = sb.start_agent("agent-2", cmd()).await;
    let grant = sb.client().await.refresh().await.expect("a refresh through the kept pair");
    assert_ne!(grant.access_token.expose(), copy.access_token);
    assert_ne!(grant.access_token.expose(), pair.access_token, "a new access token, from the kept pair");
    assert!(fake.is_valid_access_token(grant.access_token.expose()));
    assert_eq!((fake.refresh_requests(), fake.invalid_grants()), (2, 1), "{:?}", fake.rejections());
    assert_eq!(sb.client().await.status().await.unwrap().state, Some(TokenState::Valid));
    assert!(agent.log().contains("going back to the pair it replaced"));
    let saved = refresh_token_of(
        &serde_json::from_str::<Value>(&std::fs::read_to_string(sb.state_file()).unwrap()).unwrap()
            ["credentials"],
    );
    assert!(saved.is_some_and(|rt| fake.is_live_refresh_token(&rt)), "the state file holds the live pair");
}
