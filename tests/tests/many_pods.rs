//! Many pods on one login (`--lease`): three pods (agent + forwarder each) behind one fake API server
//! and one rotating token endpoint, under steady traffic to every forwarder, while holders are killed,
//! the API server goes away and a holder is frozen; and a rolling update. What must hold throughout:
//! every rotation is one refresh, by the lease holder; no `invalid_grant`; no failed client request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::Rng;
use sidecred_proto::{Role, TokenState};
use sidecred_tests::forwarder_harness::http_client;
use sidecred_tests::harness::{access_token_of, now_ms, refresh_token_of, wait_until};
use sidecred_tests::pods::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records every pod the API server shows as the holder, until dropped.
struct HolderLog {
    seen: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HolderLog {
    fn start(cluster: &Cluster) -> HolderLog {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let lease = cluster.kube.lease_reader(LEASE);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(h) = lease().and_then(|l| l.holder_identity).filter(|h| !h.is_empty()) {
                    log.lock().unwrap().insert(pod_of(&h).to_owned());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        HolderLog { seen, task }
    }
    fn seen(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HolderLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every pod's agent answers with the token the Secret holds.
async fn converged(cluster: &Cluster, pods: &[Pod], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut fingerprints = BTreeSet::new();
        for pod in pods {
            fingerprints.insert(pod.status().await.and_then(|s| s.token_fingerprint));
        }
        let secret_token =
            cluster.secret_doc().as_ref().and_then(access_token_of).map(|t| sidecred_proto::fingerprint(&t));
        if fingerprints.len() == 1 && fingerprints.contains(&secret_token) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: pods serve {fingerprints:?}, the Secret holds {secret_token:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_named<'a>(pods: &'a mut [Pod], name: &str) -> &'a mut Pod {
    pods.iter_mut().find(|p| p.name == name).expect("a pod of that name")
}

fn set_targets(targets: &Mutex<Vec<SocketAddr>>, pods: &[Pod], except: Option<&str>) {
    *targets.lock().unwrap() =
        pods.iter().filter(|p| Some(p.name.as_str()) != except).map(Pod::url).collect();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_pods_share_one_login_through_kills_an_outage_and_a_pause() {
    let cluster = Cluster::start(14).await;
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        pods.push(Pod::start(&cluster, name).await);
    }
    wait_until("a lease holder", Duration::from_secs(10), || cluster.holder().is_some()).await;
    // The first holder refreshes at once (a pair read from a file has an unknown lifetime).
    wait_until("the first rotation", Duration::from_secs(10), || cluster.fake.rotations() >= 1).await;
    converged(&cluster, &pods, "after the first rotation").await;

    let targets = Arc::new(Mutex::new(Vec::new()));
    set_targets(&targets, &pods, None);
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let clients = traffic(targets.clone(), tally.clone(), stop.clone(), 6);

    // 1. Steady traffic for 60 s: tokens live 14 s and the holder refreshes at half that.
    let holders = HolderLog::start(&cluster);
    let (requests, rotations, invalid) =
        (cluster.fake.refresh_requests(), cluster.fake.rotations(), cluster.invalid_grants());
    let by_pod = cluster.refreshes_by_pod();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let steady_rotations = cluster.fake.rotations() - rotations;
    assert!(steady_rotations >= 6, "only {steady_rotations} rotations in 60 s");
    assert_eq!(cluster.fake.refresh_requests() - requests, steady_rotations, "every refresh is one rotation");
    assert_eq!(cluster.invalid_grants(), invalid, "no invalid_grant");
    let holder = cluster.holder().unwrap();
    assert_eq!(holders.seen(), BTreeSet::from([holder.clone()]), "one holder throughout");
    for (pod, n) in cluster.refreshes_by_pod() {
        let before = by_pod.get(&pod).copied().unwrap_or(0);
        assert!(pod == holder || n == before, "{pod} is not the holder but refreshed {} times", n - before);
    }
    assert_eq!(tally.failures(), Vec::<String>::new(), "no client request failed");
    let steady_ok = tally.ok();
    let steady_holder = holder.clone();
    drop(holders);

    // 2. kill -9 the holder five times, at random moments; the third while its refresh is in flight.
    //    A kill in flight is the one window left: the endpoint rotates the pair for a process that is
    //    gone, so the next holder's refresh is refused. Fencing bounds it (every holder's request ends
    //    by its lease's fence, so it is one request and one Secret write, never an overlap), and the new
    //    holder, which took over a lease nobody released, treats the refusal as a race it lost: it serves
    //    the current token, degraded, and waits for a late pair in the Secret before it asks for a new
    //    login. Here no late pair can come (the old holder is dead): a person logs in again meanwhile.
    cluster.fake.set_expires_in(30);
    let mut takeovers = Vec::new();
    let mut window_failures = Vec::new();
    for round in 0..5 {
        let in_flight = round == 2;
        if in_flight {
            cluster.fake.set_delay(Duration::from_millis(300));
            let n = cluster.fake.refresh_requests();
            wait_until("a refresh to start", Duration::from_secs(30), || cluster.fake.refresh_requests() > n)
                .await;
        } else {
            let ms = rand::rng().random_range(300..4000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            // A random moment, but outside the window: nothing in flight, the Secret current.
            wait_until("no refresh in flight", Duration::from_secs(10), || cluster.settled()).await;
        }
        let victim = cluster.holder().unwrap();
        let victim_addr = pod_named(&mut pods, &victim).url();
        set_targets(&targets, &pods, Some(&victim));
        let failed_before = tally.failures().len();
        let grants_before = cluster.invalid_grants();
        let killed = Instant::now();
        pod_named(&mut pods, &victim).kill9();
        cluster.fake.set_delay(Duration::ZERO);
        let patience = LEASE_DURATION + RENEW_PERIOD + Duration::from_secs(3);
        wait_until(&format!("a new holder after killing {victim}"), patience, || {
            cluster.holder().is_some_and(|h| h != victim)
        })
        .await;
        takeovers.push(killed.elapsed());
        if in_flight {
            wait_until("the new holder's refresh refused", Duration::from_secs(10), || {
                cluster.invalid_grants() > grants_before
            })
            .await;
            assert_eq!(cluster.invalid_grants(), grants_before + 1, "one refusal: nobody else refreshed");
            let taker = cluster.holder().unwrap();
            let status = pod_named(&mut pods, &taker).status().await.unwrap();
            assert_eq!(status.state, Some(TokenState::Degraded), "{taker} waits for a late pair: {status:?}");
            // Someone logs in again and updates the Secret; every pod takes the new login.
            let pair = cluster.fake.issue_pair();
            cluster.kube.set_value(KEY, &pair.credentials_file(now_ms() + 30_000));
        }
        pod_named(&mut pods, &victim).restart_agent(&cluster).await;
        set_targets(&targets, &pods, None);
        converged(&cluster, &pods, &format!("after kill {round}")).await;
        if in_flight {
            // The logs say the new login came from the Secret, at which version, not from a file.
            let from_secret = |p: &Pod| {
                p.agent.as_ref().is_some_and(|a| {
                    a.log().lines().any(|l| {
                        l.contains("adopting new credentials from the shared Secret")
                            && l.contains("resourceVersion")
                    })
                })
            };
            assert!(pods.iter().any(from_secret), "no agent logged adopting the login from the Secret");
        }
        // Requests that were already with the victim's forwarder when its agent died get a 503 that
        // names the agent; every other failure counts.
        let mut failures = tally.failures().split_off(failed_before);
        failures.retain(|f| !(f.starts_with(&victim_addr.to_string()) && f.contains("503")));
        if in_flight {
            window_failures = failures;
        } else {
            assert_eq!(failures, Vec::<String>::new(), "client requests failed in kill {round}");
        }
    }
    assert_eq!(cluster.invalid_grants(), invalid + 1, "no invalid_grant but the one in the window");
    let max_takeover = takeovers.iter().max().copied().unwrap();
    assert!(
        max_takeover <= LEASE_DURATION + RENEW_PERIOD + Duration::from_secs(2),
        "takeovers {takeovers:?}"
    );
    let failed_before_outage = tally.failures().len();

    // 3. The API server is down for 30 s: tokens keep flowing while valid, nobody refreshes.
    cluster.fake.set_expires_in(90);
    let holder = cluster.holder().unwrap();
    pod_named(&mut pods, &holder).sb.client().await.refresh().await.expect("a refresh by the holder");
    converged(&cluster, &pods, "before the outage").await;
    let requests = cluster.fake.refresh_requests();
    cluster.kube.set_down(true);
    let down = Instant::now();
    for pod in &pods {
        let deadline = Instant::now() + LEASE_DURATION + Duration::from_secs(5);
        loop {
            let status = pod.status().await.unwrap();
            if status.state == Some(TokenState::Degraded) {
                let message = status.message.unwrap_or_default();
                assert!(
                    message.contains("no refresh until the lease is held again"),
                    "{}: {message}",
                    pod.name
                );
                break;
            }
            assert!(Instant::now() < deadline, "{} is not degraded during the outage: {status:?}", pod.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The forwarders' /health says so too, and still 200: the token is valid and requests are served.
    for pod in &pods {
        let resp = http_client().get(format!("http://{}/health", pod.url())).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", pod.name);
        let health: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(health["status"], "degraded", "{}: {health}", pod.name);
        assert!(health["reason"].as_str().is_some_and(|r| r.contains("lease")), "{}: {health}", pod.name);
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    assert_eq!(cluster.fake.refresh_requests(), requests, "a refresh without the lease");
    cluster.kube.set_down(false);
    wait_until("a holder after the outage", Duration::from_secs(15), || cluster.holder().is_some()).await;
    for pod in &pods {
        let deadline = Instant::now() + Duration::from_secs(15);
        while pod.status().await.and_then(|s| s.state) != Some(TokenState::Valid) {
            assert!(Instant::now() < deadline, "{} did not recover after the outage", pod.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        tally.failures().split_off(failed_before_outage),
        Vec::<String>::new(),
        "failed during the outage"
    );

    // 4. The holder is frozen for twice the lease while its refresh falls due: when it wakes it does
    //    not refresh before it holds the lease again.
    cluster.fake.set_expires_in(12);
    let frozen = cluster.holder().unwrap();
    pod_named(&mut pods, &frozen).sb.client().await.refresh().await.expect("a refresh by the holder");
    converged(&cluster, &pods, "before the pause").await;
    let by_pod = cluster.refreshes_by_pod();
    let pid = pod_named(&mut pods, &frozen).agent_pid();
    let holders = HolderLog::start(&cluster);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).unwrap();
    tokio::time::sleep(LEASE_DURATION * 2).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT).unwrap();
    // It finds another holder in its next round and stays a follower.
    let pod = pods.iter().find(|p| p.name == frozen).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pod.status().await.and_then(|s| s.role) != Some(Role::Follower) {
        assert!(Instant::now() < deadline, "{frozen} did not become a follower after the pause");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refreshed = cluster.refreshes_by_pod().get(&frozen).copied().unwrap_or(0);
    assert_eq!(
        refreshed,
        by_pod.get(&frozen).copied().unwrap_or(0),
        "the frozen holder refreshed after waking"
    );
    assert!(holders.seen().len() >= 2, "another pod took over during the pause: {:?}", holders.seen());
    converged(&cluster, &pods, "after the pause").await;

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(cluster.invalid_grants(), invalid + 1, "no invalid_grant but the one in the window");
    assert!(
        cluster
            .fake
            .is_live_refresh_token(&cluster.secret_doc().as_ref().and_then(refresh_token_of).unwrap()),
        "the Secret holds a live login"
    );
    eprintln!(
        "many pods: steady 60 s: {steady_rotations} rotations = {steady_rotations} refreshes, all by {}, {steady_ok} requests ok, 0 failed; \
         kills: takeovers {takeovers:?}, {} requests failed in the window; total: {} requests ok, {} failed, {} invalid_grant, refreshes by pod {:?}",
        steady_holder,
        window_failures.len(),
        tally.ok(),
        tally.failures().len(),
        cluster.invalid_grants(),
        cluster.refreshes_by_pod(),
    );
}

/// New pods start before old ones stop, one by one, while traffic runs: the lease moves with them and
/// the login survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_keeps_the_login() {
    let cluster = Cluster::start(10).await;
    let holders = HolderLog::start(&cluster);
    let mut pods = Vec::new();
    for name in ["old-a", "old-b", "old-c"] {
        pods.push(Pod::start(&cluster, name).await);
    }
    wait_until("the first rotation", Duration::from_secs(10), || cluster.fake.rotations() >= 1).await;
    let targets = Arc::new(Mutex::new(Vec::new()));
    set_targets(&targets, &pods, None);
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let clients = traffic(targets.clone(), tally.clone(), stop.clone(), 4);

    for (old, new) in [("old-a", "new-a"), ("old-b", "new-b"), ("old-c", "new-c")] {
        pods.push(Pod::start(&cluster, new).await);
        set_targets(&targets, &pods, Some(old));
        let mut gone = pods.remove(pods.iter().position(|p| p.name == old).unwrap());
        // The kubelet stops the forwarder, then the agent (which hands its lease on).
        assert!(gone.forwarder.proc.terminate(Duration::from_secs(20)).success());
        assert!(gone.agent.as_mut().unwrap().terminate(Duration::from_secs(20)).success());
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    converged(&cluster, &pods, "after the update").await;
    assert!(cluster.holder().is_some_and(|h| h.starts_with("new-")), "a new pod holds the lease");
    assert_eq!(cluster.invalid_grants(), 0);
    assert_eq!(cluster.fake.refresh_requests(), cluster.fake.rotations(), "every refresh is one rotation");
    assert!(cluster.fake.rotations() >= 4, "rotations: {}", cluster.fake.rotations());
    assert_eq!(tally.failures(), Vec::<String>::new(), "no client request failed");
    for pod in cluster.refreshes_by_pod().keys() {
        assert!(holders.seen().contains(pod), "{pod} refreshed without ever holding the lease");
    }
    eprintln!(
        "rolling update: {} rotations, {} requests ok, holders {:?}",
        cluster.fake.rotations(),
        tally.ok(),
        holders.seen()
    );
}
