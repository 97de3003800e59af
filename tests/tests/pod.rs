//! The pod, laid out as `k8s/` lays it out, with the two binaries as separate processes: a read-only
//! credentials directory in the kubelet's Secret layout, a socket directory, a state directory. Under
//! steady client traffic it restarts each process, updates the Secret, and replaces the whole pod.
//!
//! What the README promises, checked here:
//! - agent restart (shorter than `--agent-wait`): zero failed requests;
//! - forwarder restart: the agent keeps its token (no refresh); requests that reach the port while no
//!   forwarder listens fail to connect (a client retry covers them), no request gets an HTTP error, and
//!   the only other failure a client may see is the one HTTP/1 keep-alive cannot rule out: a request
//!   sent on a kept-alive connection at the moment the draining forwarder closes it;
//! - Secret update: adopted within 2 s, zero failed requests;
//! - pod replacement with only the state directory kept: no dead refresh token is used, no login needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use sidecred_tests::fakes::claude_oauth::{FakeOAuth, Pair};
use sidecred_tests::fakes::kubelet::{can_mount_readonly, with_readonly_mount, SecretDir};
use sidecred_tests::fakes::upstream::FakeUpstream;
use sidecred_tests::forwarder_harness::{forwarder_cmd_on, http_client, start_forwarder, Forwarder};
use sidecred_tests::harness::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = ".credentials.json";

/// Counts what the clients saw, per phase.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    connect_errors: AtomicU64,
    http_errors: Mutex<Vec<(String, u16, String)>>,
    /// Requests lost on a kept-alive connection the server closed (see [`closed_under_request`]).
    closed_under_request: Mutex<Vec<String>>,
    phase: Mutex<String>,
}

impl Tally {
    fn phase(&self, name: &str) {
        *self.phase.lock().unwrap() = name.to_owned();
    }
    fn current(&self) -> String {
        self.phase.lock().unwrap().clone()
    }
    fn errors_in(&self, phase: &str) -> Vec<(u16, String)> {
        self.http_errors.lock().unwrap().iter().filter(|e| e.0 == phase).map(|e| (e.1, e.2.clone())).collect()
    }
}

/// Whether a request failed because the server closed the connection under it: hyper's "connection
/// closed before message completed", or a reset. On a kept-alive HTTP/1 connection that is the race
/// no server can rule out (the client sent just as the server closed an idle connection), and the
/// forwarder's drain leaves it only to connections that stayed idle through its linger.
fn closed_under_request(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message)
            || s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The error and its causes on one line (reqwest's own message names only the URL).
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

fn creds(p: &Pair) -> Vec<u8> {
    p.credentials_file(now_ms() + 8 * HOUR_MS)
}

/// The pod's directories: `creds` (the Secret mount), `run` (the socket emptyDir), `state`.
struct Pod {
    sb: Sandbox,
    port: u16,
}

impl Pod {
    fn agent_cmd(&self, fake: &FakeOAuth) -> Command {
        let mut cmd = self.sb.agent_cmd(&fake.token_url());
        cmd.arg("--state-dir").arg(self.sb.state_dir());
        with_readonly_mount(&self.sb.creds_dir(), &cmd)
    }
    async fn start_agent(&self, fake: &FakeOAuth, name: &str) -> Proc {
        self.sb.start_agent(name, self.agent_cmd(fake)).await
    }
    async fn start_forwarder(&self, upstream: &FakeUpstream, name: &str) -> Forwarder {
        // The same port across restarts, as a Service's targetPort is.
        let listen = format!("127.0.0.1:{}", self.port);
        start_forwarder(&self.sb, name, forwarder_cmd_on(&self.sb, &upstream.url(), &listen)).await
    }
}

/// Steady traffic: `clients` loops each sending a small JSON request, with a short pause between them.
fn start_traffic(
    addr: SocketAddr,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    clients: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (tally, stop) = (tally.clone(), stop.clone());
            tokio::spawn(async move {
                let client = http_client();
                let url = format!("http://{addr}/v1/messages");
                while !stop.load(Ordering::SeqCst) {
                    let body = json!({"model": "claude-fake-1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
                    let sent = client.post(&url).header("x-api-key", "client-key-ignored").json(&body).timeout(Duration::from_secs(15)).send().await;
                    match sent {
                        Ok(resp) if resp.status().is_success() => {
                            tally.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let text = resp.text().await.unwrap_or_default();
                            tally.http_errors.lock().unwrap().push((tally.current(), status, text));
                        }
                        Err(e) if e.is_connect() => {
                            tally.connect_errors.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) if closed_under_request(&e) => {
                            eprintln!("closed under a request ({}): {}", tally.current(), chain(&e));
                            tally.closed_under_request.lock().unwrap().push(tally.current());
                        }
                        Err(e) => {
                            tally.http_errors.lock().unwrap().push((tally.current(), 0, chain(&e)));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

async fn wait_for_ok(tally: &Tally, more: u64, what: &str) {
    let start = tally.ok.load(Ordering::SeqCst);
    wait_until(what, Duration::from_secs(20), || tally.ok.load(Ordering::SeqCst) >= start + more).await;
}

async fn served_token(socket: &Path) -> String {
    sidecred_proto::client::Client::connect(socket)
        .await
        .unwrap()
        .get_token()
        .await
        .unwrap()
        .access_token
        .expose()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_rides_out_restarts_secret_updates_and_replacement() {
    assert!(
        can_mount_readonly(),
        "needs private read-only mounts (root or CAP_SYS_ADMIN): root ignores chmod"
    );
    let fake = FakeOAuth::start().await;
    let upstream = FakeUpstream::start(fake.access_check()).await;
    let first = fake.issue_pair();

    let pod = Pod { sb: Sandbox::new(), port: free_port() };
    std::fs::remove_dir(pod.sb.creds_dir()).unwrap();
    let mut secret = SecretDir::create(&pod.sb.creds_dir(), &[(KEY, &creds(&first))]);
    let mut agent = pod.start_agent(&fake, "agent-1").await;
    let mut forwarder = pod.start_forwarder(&upstream, "forwarder-1").await;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let addr: SocketAddr = format!("127.0.0.1:{}", pod.port).parse().unwrap();
    let traffic = start_traffic(addr, tally.clone(), stop.clone(), 4);
    tally.phase("steady");
    wait_for_ok(&tally, 50, "steady traffic").await;

    // 1. The agent is killed and comes back within the forwarder's wait window.
    tally.phase("agent restart");
    let token_before = served_token(&pod.sb.socket()).await;
    agent.kill9();
    let gap = Instant::now();
    agent = pod.start_agent(&fake, "agent-2").await;
    eprintln!("agent restart gap: {:?}", gap.elapsed());
    wait_for_ok(&tally, 50, "traffic after the agent restart").await;
    assert_eq!(
        served_token(&pod.sb.socket()).await,
        token_before,
        "the restarted agent serves the same token"
    );
    assert_eq!(tally.errors_in("agent restart"), vec![], "an agent restart is invisible to clients");

    // 2. The forwarder is stopped and started again; the agent does not notice.
    tally.phase("forwarder restart");
    let refreshes = fake.refresh_requests();
    assert!(forwarder.proc.terminate(Duration::from_secs(30)).success());
    let connect_before = tally.connect_errors.load(Ordering::SeqCst);
    forwarder = pod.start_forwarder(&upstream, "forwarder-2").await;
    wait_for_ok(&tally, 50, "traffic after the forwarder restart").await;
    assert_eq!(fake.refresh_requests(), refreshes, "a forwarder restart causes no refresh");
    assert_eq!(served_token(&pod.sb.socket()).await, token_before);
    assert_eq!(
        tally.errors_in("forwarder restart"),
        vec![],
        "no HTTP errors, only refused connections in the gap (and kept-alive connections closed under a request)"
    );
    eprintln!(
        "connection attempts refused during the forwarder gap: {}; requests closed under on kept-alive connections: {}",
        tally.connect_errors.load(Ordering::SeqCst) - connect_before,
        tally.closed_under_request.lock().unwrap().len()
    );

    // 3. Someone logs in again and updates the Secret: the kubelet swaps `..data`.
    tally.phase("secret update");
    let second = fake.issue_pair();
    secret.update(&[(KEY, &creds(&second))]);
    let socket = pod.sb.socket();
    wait_for_token(&socket, "the new login to be served", Duration::from_secs(2), Some(&second.access_token))
        .await;
    wait_for_ok(&tally, 50, "traffic with the new login").await;
    assert!(upstream.last_seen().unwrap().bearer() == Some(second.access_token.as_str()));
    assert_eq!(tally.errors_in("secret update"), vec![]);
    // The live pair moves on: the refresh token in the Secret is now dead.
    sidecred_proto::client::Client::connect(&socket).await.unwrap().refresh().await.unwrap();
    assert!(!fake.is_live_refresh_token(&second.refresh_token), "the Secret's refresh token was spent");

    // 4. The whole pod is replaced; only the state directory survives (a PVC). The new pod mounts the same,
    //    now stale, Secret.
    tally.phase("pod replacement");
    stop.store(true, Ordering::SeqCst);
    for t in traffic {
        let _ = t.await;
    }
    assert!(forwarder.proc.terminate(Duration::from_secs(30)).success());
    assert!(agent.terminate(Duration::from_secs(30)).success());
    let state = pod.sb.state_dir();
    let new_pod = Pod { sb: Sandbox::new(), port: free_port() };
    std::fs::remove_dir(new_pod.sb.state_dir()).unwrap();
    copy_dir(&state, &new_pod.sb.state_dir());
    std::fs::remove_dir(new_pod.sb.creds_dir()).unwrap();
    let _secret = SecretDir::create(&new_pod.sb.creds_dir(), &[(KEY, &creds(&second))]);
    let received = fake.refresh_requests();
    let _agent = new_pod.start_agent(&fake, "agent-3").await;
    let _forwarder = new_pod.start_forwarder(&upstream, "forwarder-3").await;
    assert_eq!(fake.refresh_requests(), received, "the new pod starts from the state, without a refresh");
    let stop = Arc::new(AtomicBool::new(false));
    let addr: SocketAddr = format!("127.0.0.1:{}", new_pod.port).parse().unwrap();
    let traffic = start_traffic(addr, tally.clone(), stop.clone(), 4);
    wait_for_ok(&tally, 50, "traffic through the new pod").await;
    sidecred_proto::client::Client::connect(&new_pod.sb.socket())
        .await
        .unwrap()
        .refresh()
        .await
        .expect("the new pod refreshes with the live refresh token, not the Secret's dead one");
    wait_for_ok(&tally, 20, "traffic after the new pod's refresh").await;
    stop.store(true, Ordering::SeqCst);
    for t in traffic {
        let _ = t.await;
    }
    assert_eq!(tally.errors_in("pod replacement"), vec![]);
    assert_eq!(tally.errors_in("steady"), vec![]);
    let closed_under = tally.closed_under_request.lock().unwrap().clone();
    assert!(
        closed_under.iter().all(|phase| phase == "forwarder restart"),
        "connections closed under a request outside a forwarder restart: {closed_under:?}"
    );
    eprintln!(
        "pod test: {} requests ok, {} refused connections (forwarder gap), {} closed under a request, {} HTTP errors",
        tally.ok.load(Ordering::SeqCst),
        tally.connect_errors.load(Ordering::SeqCst),
        closed_under.len(),
        tally.http_errors.lock().unwrap().len()
    );
}

fn copy_dir(from: &Path, to: &PathBuf) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
