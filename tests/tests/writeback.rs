//! `--write-back-secret`: after each refresh the agent patches the Kubernetes Secret with the live pair,
//! against a fake of the two API calls it may make.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidecred_tests::fakes::claude_oauth::{FakeOAuth, Pair};
use sidecred_tests::fakes::kube::FakeKube;
use sidecred_tests::fakes::kubelet::SecretDir;
use sidecred_tests::harness::*;
use std::process::Command;
use std::time::Duration;

const NS: &str = "sidecred";
const NAME: &str = "sidecred-credentials";
const KEY: &str = ".credentials.json";
const SA_TOKEN: &str = "sctest-serviceaccount-token";

fn creds(p: &Pair) -> Vec<u8> {
    p.credentials_file(now_ms() + 8 * HOUR_MS)
}

fn secret_refresh_token(kube: &FakeKube) -> Option<String> {
    let bytes = kube.value(KEY)?;
    refresh_token_of(&serde_json::from_slice(&bytes).ok()?)
}

/// The API server, holding the Secret `name` with `value` under the key, and the sandbox's kubeconfig
/// pointing at it.
async fn start_kube(sb: &Sandbox, name: &str, value: &[u8]) -> FakeKube {
    let kube = FakeKube::start(NS, name, SA_TOKEN, KEY, value).await;
    kube.write_kubeconfig(&sb.path().join("kubeconfig"));
    kube
}

fn agent_cmd(sb: &Sandbox, fake: &FakeOAuth, secret: &str) -> Command {
    let mut cmd = sb.agent_cmd(&fake.token_url());
    cmd.arg("--state-dir")
        .arg(sb.state_dir())
        .args(["--write-back-secret", secret])
        .env("KUBECONFIG", sb.path().join("kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refresh_is_written_back_and_a_new_pod_starts_from_the_live_pair() {
    let fake = FakeOAuth::start().await;
    let first = fake.issue_pair();
    let sb = Sandbox::new();
    let kube = start_kube(&sb, NAME, &creds(&first)).await;
    std::fs::remove_dir(sb.creds_dir()).unwrap();
    let mut mount = SecretDir::create(&sb.creds_dir(), &[(KEY, &creds(&first))]);
    let secret = format!("{NS}/{NAME}");

    let mut agent = sb.start_agent("agent-1", agent_cmd(&sb, &fake, &secret)).await;
    let mut client = sb.client().await;
    for round in 0..3 {
        client.refresh().await.unwrap();
        let live = fake.live_refresh_tokens().pop().unwrap();
        wait_until(&format!("write-back {round}"), Duration::from_secs(10), || {
            secret_refresh_token(&kube).as_deref() == Some(live.as_str())
        })
        .await;
    }
    // Unknown fields of the credentials survive the trip through the Secret.
    let doc: serde_json::Value = serde_json::from_slice(&kube.value(KEY).unwrap()).unwrap();
    assert_eq!(doc["mcpOAuth"]["some-server"]["nested"][2]["deep"], true);

    // A concurrent writer bumps the resourceVersion: the patch conflicts, is retried, and lands.
    kube.conflict_next_patch();
    client.refresh().await.unwrap();
    let live = fake.live_refresh_tokens().pop().unwrap();
    wait_until("write-back after a conflict", Duration::from_secs(10), || {
        secret_refresh_token(&kube).as_deref() == Some(live.as_str())
    })
    .await;
    assert!(kube.seen().iter().any(|s| s.status == 409), "the conflict happened");

    // Only what the RBAC role grants: get and patch of this one Secret, as JSON merge patches.
    let path = format!("/api/v1/namespaces/{NS}/secrets/{NAME}");
    for seen in kube.seen() {
        assert_eq!(seen.path, path, "{seen:?}");
        assert!(seen.verb == "get" || seen.verb == "patch", "{seen:?}");
        if seen.verb == "patch" {
            assert_eq!(seen.content_type.as_deref(), Some("application/merge-patch+json"));
        }
        assert!(seen.status == 200 || seen.status == 409, "{seen:?}");
    }

    // The whole pod is replaced and nothing is kept but the Secret, which the kubelet has synced.
    assert!(agent.terminate(Duration::from_secs(10)).success());
    std::fs::remove_dir_all(sb.state_dir()).unwrap();
    mount.update(&[(KEY, &kube.value(KEY).unwrap())]);
    let received = fake.refresh_requests();
    let _agent = sb.start_agent("agent-2", agent_cmd(&sb, &fake, &secret)).await;
    sb.client().await.refresh().await.expect("the new pod's refresh token is live");
    assert_eq!(fake.refresh_requests(), received + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_managed_by_another_controller_is_warned_about() {
    let Seeded { fake, pair, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let kube = start_kube(&sb, NAME, &creds(&pair)).await;
    kube.set_label("reconcile.external-secrets.io/created-by", "abc");
    let agent = sb.start_agent("agent", agent_cmd(&sb, &fake, &format!("{NS}/{NAME}"))).await;
    agent.wait_for_log("managed by External Secrets", Duration::from_secs(10)).await;
    assert!(
        agent.log().contains("Secrets managed by another controller"),
        "the warning points at the recipe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_login_in_the_secret_is_never_overwritten() {
    let Seeded { fake, pair: first, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let kube = start_kube(&sb, NAME, &creds(&first)).await;
    let agent = sb.start_agent("agent", agent_cmd(&sb, &fake, &format!("{NS}/{NAME}"))).await;

    // Someone logs in again and applies the Secret; the mount has not caught up yet.
    let newer = fake.issue_pair();
    kube.set_value(KEY, &creds(&newer));
    sb.client().await.refresh().await.unwrap();
    agent.wait_for_log("not overwriting it", Duration::from_secs(10)).await;
    assert_eq!(secret_refresh_token(&kube).as_deref(), Some(newer.refresh_token.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_write_back_is_reported_and_tokens_keep_flowing() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    // The role only grants the Secret `other`.
    let _kube = start_kube(&sb, "other", b"{}").await;
    let agent = sb.start_agent("agent", agent_cmd(&sb, &fake, &format!("{NS}/{NAME}"))).await;
    sb.client().await.refresh().await.unwrap();
    agent.wait_for_log("needs `get` and `patch`", Duration::from_secs(10)).await;
    assert!(agent.log().contains(&format!("{NS}/{NAME}")));
    assert_eq!(
        sb.client().await.get_token().await.unwrap().access_token.expose(),
        fake.latest_access_token().unwrap()
    );
}

/// In a pod the in-cluster config is there at start or never: an agent that could not write back says so
/// and stops before it refreshes anything, instead of spending refresh tokens no other pod will see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_kubernetes_config_stops_at_start_naming_the_flag() {
    let Seeded { fake, sb, .. } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    // No kubeconfig is written and KUBERNETES_SERVICE_HOST is removed.
    let cmd = agent_cmd(&sb, &fake, &format!("{NS}/{NAME}"));
    let mut agent = Proc::spawn("agent", cmd, &sb.log("agent"));
    let status = agent.wait_exit(Duration::from_secs(10));
    let stderr = agent.log();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--write-back-secret needs a Kubernetes client"), "{stderr}");
    assert!(stderr.contains("KUBECONFIG"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writers_are_retried_after_a_growing_pause_until_the_patch_lands() {
    let Seeded { fake, pair: first, sb } = Seeded::start(now_ms() + 8 * HOUR_MS).await;
    let kube = start_kube(&sb, NAME, &creds(&first)).await;
    let _agent = sb.start_agent("agent", agent_cmd(&sb, &fake, &format!("{NS}/{NAME}"))).await;

    // Another writer gets in first four times in a row, then stops.
    const CONFLICTS: u32 = 4;
    kube.conflict_next_patches(CONFLICTS);
    sb.client().await.refresh().await.unwrap();
    let live = fake.live_refresh_tokens().pop().unwrap();
    wait_until("the write-back lands once the conflicts stop", Duration::from_secs(20), || {
        secret_refresh_token(&kube).as_deref() == Some(live.as_str())
    })
    .await;

    let patches: Vec<_> = kube.seen().into_iter().filter(|s| s.verb == "patch").collect();
    let statuses: Vec<u16> = patches.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [409, 409, 409, 409, 200], "one patch per conflict, then the one that lands");
    // writeback.rs pauses CONFLICT_PAUSE_MIN (100 ms) after the first conflict, doubling each time. A
    // sleep is never early, so these are lower bounds however slow the machine; without the pause the
    // retries come milliseconds apart.
    let mut pause = Duration::from_millis(100);
    for (i, pair) in patches.windows(2).enumerate() {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= pause, "patch {} came {gap:?} after the conflict, before the {pause:?} pause", i + 1);
        pause *= 2;
    }
}
