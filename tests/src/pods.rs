//! Several pods sharing one login through a Lease: each an agent and a forwarder of its own (own state
//! directory and socket), all against one fake API server, one token endpoint and one upstream. For the
//! many-pods tests: start, kill, pause and replace pods while traffic runs through every forwarder.

use crate::fakes::claude_oauth::FakeOAuth;
use crate::fakes::kube::{FakeKube, LeaseSpec};
use crate::fakes::upstream::FakeUpstream;
use crate::forwarder_harness::{forwarder_cmd, http_client, start_forwarder, Forwarder};
use crate::harness::{access_token_of, now_ms, refresh_token_of, wait_until, Proc, Sandbox};
use serde_json::json;
use sidecred_proto::Role;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const NS: &str = "apps";
pub const SECRET: &str = "sidecred-credentials";
pub const LEASE: &str = "sidecred";
pub const KEY: &str = ".credentials.json";
const SA_TOKEN: &str = "sctest-serviceaccount-token";
/// Short, so takeovers happen within the test's patience: a 2 s renew deadline, rounds every 400 ms.
pub const LEASE_DURATION: Duration = Duration::from_secs(3);
pub const RENEW_PERIOD: Duration = Duration::from_millis(400);

/// The shared outside world: the API server (Secret + Lease), the token endpoint, the upstream.
pub struct Cluster {
    pub kube: FakeKube,
    pub fake: FakeOAuth,
    pub upstream: FakeUpstream,
}

impl Cluster {
    /// A login whose tokens live `lifetime_s`, in the Secret; the Lease exists with no holder.
    pub async fn start(lifetime_s: u64) -> Cluster {
        let fake = FakeOAuth::start().await;
        fake.set_expires_in(lifetime_s);
        let pair = fake.issue_pair();
        let doc = pair.credentials_file(now_ms() + lifetime_s * 1000);
        let kube = FakeKube::start(NS, SECRET, SA_TOKEN, KEY, &doc).await;
        kube.put_lease(LEASE, LeaseSpec::default());
        let upstream = FakeUpstream::start(fake.access_check()).await;
        Cluster { kube, fake, upstream }
    }

    /// The pod that holds the Lease now, by the API server.
    pub fn holder(&self) -> Option<String> {
        self.holder_identity().map(|h| pod_of(&h).to_owned())
    }

    /// The holder's full identity: its pod name and the pod's UID.
    pub fn holder_identity(&self) -> Option<String> {
        self.kube.lease(LEASE).and_then(|l| l.holder_identity).filter(|h| !h.is_empty())
    }

    /// Refresh requests per pod name so far (each agent sends its pod name as its User-Agent).
    pub fn refreshes_by_pod(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for ua in self.fake.user_agents() {
            let pod = ua.strip_prefix("sidecred-test/").unwrap_or(&ua).to_owned();
            *by.entry(pod).or_insert(0) += 1;
        }
        by
    }

    /// `invalid_grant` answers of the token endpoint so far.
    pub fn invalid_grants(&self) -> u64 {
        self.fake.invalid_grants()
    }

    /// No refresh is in flight and the Secret holds the live refresh token: a pod killed now loses
    /// nothing.
    pub fn settled(&self) -> bool {
        let requests = self.fake.refresh_requests();
        let in_secret = self.secret_doc().as_ref().and_then(refresh_token_of);
        requests == self.fake.rotations() + self.fake.invalid_grants()
            && in_secret.is_some_and(|rt| self.fake.is_live_refresh_token(&rt))
    }

    /// The credentials document the shared Secret holds now.
    pub fn secret_doc(&self) -> Option<serde_json::Value> {
        self.kube.value(KEY).and_then(|b| serde_json::from_slice(&b).ok())
    }
}

/// The pod name in a holder identity (`NAME_UID`; pod names have no `_`).
pub fn pod_of(identity: &str) -> &str {
    identity.split_once('_').map_or(identity, |(pod, _)| pod)
}

/// One pod: an agent and a forwarder with their own directory.
pub struct Pod {
    pub name: String,
    /// The pod's UID (`POD_UID`): kept across container restarts, new for every pod.
    pub uid: String,
    pub sb: Sandbox,
    pub agent: Option<Proc>,
    pub forwarder: Forwarder,
    restarts: u32,
    /// Environment the agent gets beyond what the manifests set ([`Pod::start_with_env`]).
    env: Vec<(String, String)>,
}

impl Pod {
    pub async fn start(cluster: &Cluster, name: &str) -> Pod {
        let uid = format!("{:032x}", rand::random::<u128>());
        Pod::start_with_uid(cluster, name, &uid).await
    }

    /// A pod with this name and UID: two pods may share a name (a StatefulSet's replacement `db-0` while
    /// the old one still runs), never a UID.
    pub async fn start_with_uid(cluster: &Cluster, name: &str, uid: &str) -> Pod {
        Pod::start_full(cluster, name, uid, Vec::new()).await
    }

    /// A pod whose agent also gets `env` (a setting a test changes, such as
    /// `SIDECRED_SHUTDOWN_WRITE_WAIT`).
    pub async fn start_with_env(cluster: &Cluster, name: &str, env: &[(&str, &str)]) -> Pod {
        let uid = format!("{:032x}", rand::random::<u128>());
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Pod::start_full(cluster, name, &uid, env).await
    }

    async fn start_full(cluster: &Cluster, name: &str, uid: &str, env: Vec<(String, String)>) -> Pod {
        let sb = Sandbox::new();
        cluster.kube.write_pod_kubeconfig(&sb.path().join("kubeconfig"), &format!("{name}.{uid}"));
        // The kubelet's copy of the Secret, as it was when the pod started (it lags; the agent reads the
        // API anyway).
        std::fs::write(sb.seed(), cluster.kube.value(KEY).unwrap_or_default()).expect("seed");
        let agent = sb.start_agent(&format!("{name}-agent"), agent_cmd(&sb, cluster, name, uid, &env)).await;
        let forwarder =
            start_forwarder(&sb, &format!("{name}-forwarder"), forwarder_cmd(&sb, &cluster.upstream.url()))
                .await;
        Pod {
            name: name.to_owned(),
            uid: uid.to_owned(),
            sb,
            agent: Some(agent),
            forwarder,
            restarts: 0,
            env,
        }
    }

    pub fn agent_pid(&self) -> i32 {
        self.agent.as_ref().map(Proc::pid).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill9();
        }
    }

    /// Starts the agent again in the same pod (same name, state and socket), as a container restart.
    pub async fn restart_agent(&mut self, cluster: &Cluster) {
        self.restarts += 1;
        let log = format!("{}-agent-{}", self.name, self.restarts);
        let cmd = agent_cmd(&self.sb, cluster, &self.name, &self.uid, &self.env);
        self.agent = Some(self.sb.start_agent(&log, cmd).await);
    }

    /// The name the API server knows this pod's requests by ([`FakeKube::cut_off`]).
    pub fn api_name(&self) -> String {
        format!("{}.{}", self.name, self.uid)
    }

    pub async fn status(&self) -> Option<sidecred_proto::StatusReport> {
        let mut client = sidecred_proto::client::Client::connect(&self.sb.socket()).await.ok()?;
        client.status().await.ok()
    }

    pub fn url(&self) -> SocketAddr {
        self.forwarder.addr
    }
}

/// The agent as the manifests run it: its pod's name and UID from the downward API.
fn agent_cmd(
    sb: &Sandbox,
    cluster: &Cluster,
    name: &str,
    uid: &str,
    env: &[(String, String)],
) -> std::process::Command {
    let mut cmd = sb.agent_cmd(&cluster.fake.token_url());
    cmd.arg("--state-dir")
        .arg(sb.state_dir())
        .args(["--write-back-secret", &format!("{NS}/{SECRET}")])
        .args(["--lease", &format!("{NS}/{LEASE}")])
        .arg("--lease-duration")
        .arg(format!("{}s", LEASE_DURATION.as_secs()))
        .args(["--user-agent", &format!("sidecred-test/{name}")])
        .env("KUBECONFIG", sb.path().join("kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAME", name)
        .env("POD_UID", uid)
        // A stopped holder waits this long for its last pair to reach the Secret: longer than the
        // tests that refuse Secret writes take to let them through again.
        .env("SIDECRED_SHUTDOWN_WRITE_WAIT", "60s")
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// The pod's role in the election, by its status.
pub async fn role_of(pod: &Pod) -> Option<Role> {
    pod.status().await.and_then(|s| s.role)
}

pub async fn wait_role(pod: &Pod, role: Role, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while role_of(pod).await != Some(role) {
        assert!(std::time::Instant::now() < deadline, "{} is not {role:?} within {within:?}", pod.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// pod-a holding the lease and pod-b following, after pod-a's first refresh has reached the Secret.
pub async fn holder_and_follower(cluster: &Cluster) -> (Pod, Pod) {
    let a = Pod::start(cluster, "pod-a").await;
    wait_until("pod-a to hold the lease", Duration::from_secs(10), || {
        cluster.holder().as_deref() == Some("pod-a")
    })
    .await;
    wait_role(&a, Role::Holder, Duration::from_secs(10)).await;
    let b = Pod::start(cluster, "pod-b").await;
    wait_role(&b, Role::Follower, Duration::from_secs(10)).await;
    // The first holder refreshes at once (a pair from a file has an unknown lifetime).
    wait_until("the first rotation", Duration::from_secs(10), || cluster.fake.rotations() >= 1).await;
    wait_until("the Secret to hold the live pair", Duration::from_secs(10), || cluster.settled()).await;
    (a, b)
}

/// Waits until every pod serves the access token the Secret holds.
pub async fn converged(cluster: &Cluster, pods: &[&Pod], what: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let secret =
            cluster.secret_doc().as_ref().and_then(access_token_of).map(|t| sidecred_proto::fingerprint(&t));
        let mut all = secret.is_some();
        for pod in pods {
            all &= pod.status().await.and_then(|s| s.token_fingerprint) == secret;
        }
        if all {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: the pods do not all serve the Secret's token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request through the pod's forwarder: the status the upstream's answer came with.
pub async fn request_through(pod: &Pod) -> u16 {
    let body =
        json!({"model": "claude-fake-1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    http_client()
        .post(format!("http://{}/v1/messages", pod.url()))
        .header("x-api-key", "client-key-ignored")
        .json(&body)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Counts of client requests through the forwarders.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: Mutex<Vec<String>>,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }
    pub fn failures(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }
}

/// Client loops sending small requests to the forwarders at `targets` (shared, so pods can be replaced
/// under it) until `stop`.
pub fn traffic(
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    loops: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..loops)
        .map(|i| {
            let (targets, tally, stop) = (targets.clone(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                let client = http_client();
                let mut n = i;
                while !stop.load(Ordering::SeqCst) {
                    let addr = {
                        let t = targets.lock().unwrap();
                        n = n.wrapping_add(1);
                        t[n % t.len()]
                    };
                    let body = json!({"model": "claude-fake-1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
                    let sent = client
                        .post(format!("http://{addr}/v1/messages"))
                        .header("x-api-key", "client-key-ignored")
                        .json(&body)
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status().is_success() => {
                            tally.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let text = resp.text().await.unwrap_or_default();
                            tally.failed.lock().unwrap().push(format!("{addr}: {status} {text}"));
                        }
                        Err(e) => tally.failed.lock().unwrap().push(format!("{addr}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect()
}
