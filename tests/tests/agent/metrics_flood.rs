//! `--metrics-listen` under a flood of idle connections, with the descriptor limit a container may
//! have: the agent holds only a few of them, so the status probe and the credentials watcher keep
//! working, and a scrape gets through once the idle ones are closed.

use super::*;

/// How many descriptors `pid` has open.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_idle_metrics_connections_starve_nothing() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut agent_cmd = sb.agent_cmd(&fake.token_url());
    agent_cmd.args(["--metrics-listen", &metrics]);
    // The limit the report was made under; prlimit execs the agent, so the pid is the agent's.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:256").arg(agent_cmd.get_program()).args(agent_cmd.get_args());
    for (key, value) in agent_cmd.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let agent = sb.start_agent("agent", cmd).await;
    let before = open_fds(agent.pid());
    assert!(before > 0, "cannot count the agent's descriptors");

    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&metrics)).await
        {
            flood.push(s);
        }
    }
    assert!(flood.len() >= 250, "only {} connections were made", flood.len());
    // Let the agent accept what it will.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = open_fds(agent.pid()).saturating_sub(before);
    assert!(held <= 16 + 2, "the agent holds {held} more descriptors under the flood");

    // The status probe answers at once.
    let started = Instant::now();
    let (code, out, _) = agent_cli(&["status", "--socket", &sb.socket().display().to_string()]);
    assert_eq!(code, 0, "{out}");
    let probe = started.elapsed();
    eprintln!(
        "under the flood: {} connections, {held} more descriptors held, the probe took {probe:?}",
        flood.len()
    );
    assert!(probe < Duration::from_secs(3), "the probe took {probe:?}");
    // The credentials watcher still sees a new login.
    let fresh = fake.issue_pair();
    sb.write_seed(&fresh, now_ms() + 8 * HOUR_MS);
    wait_for_token(&sb.socket(), "the new login", Duration::from_secs(10), Some(&fresh.access_token)).await;

    // The idle ones are closed after the idle limit, and a scrape gets through while the flood's
    // sockets are still open on this side.
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let url = format!("http://{metrics}/metrics");
    let flooded = Instant::now();
    wait_until_async("a scrape through the flood", Duration::from_secs(40), || async {
        match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|p| p.contains("sidecred_agent_state")),
            _ => false,
        }
    })
    .await;
    eprintln!("a scrape got through {:?} after the flood", flooded.elapsed());
    drop(flood);
    drop(agent);
}
