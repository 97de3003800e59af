//! The agent process: SIGTERM during a refresh, kill -9 around refreshes, and what its logs never show.

use super::*;

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
