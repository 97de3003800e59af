//! A real Prometheus (Debian's `prometheus` package) scrapes the forwarder and the agent while traffic
//! flows, and the series are read back through its HTTP query API; `promtool check metrics` passes on
//! both pages. Without Prometheus installed this fails, saying how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sidecred_tests::fakes::upstream::FakeUpstream;
use sidecred_tests::forwarder_harness::{forwarder_cmd, http_client, start_forwarder};
use sidecred_tests::harness::{free_port, now_ms, Proc, Seeded, HOUR_MS};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "install Debian's prometheus package (apt-get install prometheus; scripts/test.sh and \
                       .ci/run do): this test runs a real Prometheus and promtool";

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} is not installed: {INSTALL}"))
}

/// `promtool check metrics` on a page, which it reads on stdin.
fn promtool_check(name: &str, page: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics fails on the {name}'s page:\n{}{}\npage:\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The single value `query` gives now, if it gives one.
async fn query(client: &reqwest::Client, prometheus: &str, query: &str) -> Option<f64> {
    let resp =
        client.get(format!("{prometheus}/api/v1/query")).query(&[("query", query)]).send().await.ok()?;
    let body: Value = resp.json().await.ok()?;
    let result = body["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// Polls `q` until `ok` holds for its value; panics with the last value after `timeout`.
async fn wait_for_query(
    client: &reqwest::Client,
    prometheus: &str,
    q: &str,
    ok: impl Fn(f64) -> bool,
    prom: &Proc,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        last = query(client, prometheus, q).await.or(last);
        if let Some(v) = last.filter(|v| ok(*v)) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("`{q}` gave {last:?} after 60 s; Prometheus log:\n{}", prom.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_forwarder_and_the_agent() {
    let prometheus_bin = tool("prometheus");
    let Seeded { fake, pair: _, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let upstream = FakeUpstream::start(fake.access_check()).await;
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let mut agent_cmd = sb.agent_cmd(&fake.token_url());
    agent_cmd.args(["--metrics-listen", &agent_metrics]);
    let _agent = sb.start_agent("agent", agent_cmd).await;
    let fwd = start_forwarder(&sb, "forwarder", forwarder_cmd(&sb, &upstream.url())).await;

    let prom_dir = sb.path().join("prometheus");
    std::fs::create_dir_all(prom_dir.join("data")).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n\
             - job_name: forwarder\n  static_configs:\n  - targets: ['{}']\n\
             - job_name: agent\n  static_configs:\n  - targets: ['{agent_metrics}']\n",
            fwd.addr
        ),
    )
    .unwrap();
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(prometheus_bin);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", prom_dir.join("data").display()))
        .arg(format!("--web.listen-address={prom_addr}"))
        .arg(format!("--web.console.templates={}", prom_dir.display()))
        .arg(format!("--web.console.libraries={}", prom_dir.display()));
    let prom = Proc::spawn("prometheus", cmd, &sb.log("prometheus"));
    let prometheus = format!("http://{prom_addr}");
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{prometheus}/-/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not get ready; log:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for _ in 0..5 {
        let resp = client
            .post(fwd.url("/v1/messages"))
            .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(client.get(fwd.url("/v1/models")).send().await.unwrap().status(), 200);
    }

    let sent = r#"sidecred_forwarder_requests_total{job="forwarder",route="messages",status_class="2xx",outcome="ok"}"#;
    wait_for_query(&client, &prometheus, sent, |v| v == 5.0, &prom).await;
    let models = r#"sidecred_forwarder_requests_total{job="forwarder",route="models",outcome="ok"}"#;
    wait_for_query(&client, &prometheus, models, |v| v == 2.0, &prom).await;
    let five_h = r#"sidecred_forwarder_usage_utilization_ratio{window="5h"}"#;
    wait_for_query(&client, &prometheus, five_h, |v| v == 0.25, &prom).await;
    let seven_d = r#"sidecred_forwarder_usage_utilization_ratio{window="7d"}"#;
    wait_for_query(&client, &prometheus, seven_d, |v| v == 0.4, &prom).await;
    let expiry = r#"sidecred_agent_token_expires_in_seconds{job="agent"}"#;
    let left = wait_for_query(&client, &prometheus, expiry, |v| v > 0.0, &prom).await;
    assert!(left <= 8.0 * 3600.0, "{left}");
    wait_for_query(&client, &prometheus, r#"sidecred_agent_state{state="valid"}"#, |v| v == 1.0, &prom).await;
    wait_for_query(&client, &prometheus, r#"up{job="agent"}"#, |v| v == 1.0, &prom).await;

    let forwarder_page = client.get(fwd.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let agent_page =
        client.get(format!("http://{agent_metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    promtool_check("forwarder", &forwarder_page);
    promtool_check("agent", &agent_page);
    drop(prom);
}
