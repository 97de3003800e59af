//! The election's three windows, each closed and proved against the fake API server and token endpoint
//! with real agents:
//! 1. identity: two pods with one name (a StatefulSet's `db-0` reused) are two agents, not one;
//! 2. shutdown: a holder stopped while the Secret refuses its pair keeps the lease until the pair lands;
//! 3. fencing: a holder cut off from the API server gives up its refresh before anyone may take over.
//!
//! What must hold in each: no two refreshes with one refresh token, and no `invalid_grant`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidecred_proto::Role;
use sidecred_tests::harness::{refresh_token_of, wait_until};
use sidecred_tests::pods::*;
use std::time::Duration;

/// No refresh token was presented twice and none was refused.
fn one_refresh_per_token(cluster: &Cluster, what: &str) {
    let fake = &cluster.fake;
    assert_eq!(fake.overlapping_refreshes(), 0, "{what}: two refreshes raced with one refresh token");
    assert_eq!(cluster.invalid_grants(), 0, "{what}: invalid_grant: {:?}", fake.rejections());
    assert_eq!(fake.refresh_requests(), fake.rotations(), "{what}: a refresh that did not rotate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pods_with_one_name_and_different_uids_are_two_agents() {
    // Tokens live 6 s, so the holder refreshes every 3 s.
    let cluster = Cluster::start(6).await;
    let old = Pod::start_with_uid(&cluster, "db-0", "uid-old").await;
    wait_until("the old db-0 to hold the lease", Duration::from_secs(10), || {
        cluster.holder().as_deref() == Some("db-0")
    })
    .await;
    wait_until("the first rotation", Duration::from_secs(10), || cluster.fake.rotations() >= 1).await;
    // The replacement starts while the old pod still runs (a force delete, a dead kubelet).
    let new = Pod::start_with_uid(&cluster, "db-0", "uid-new").await;
    let rotations = cluster.fake.rotations();
    tokio::time::sleep(Duration::from_secs(15)).await;

    assert!(cluster.fake.rotations() >= rotations + 3, "the holder kept refreshing");
    let lease_writes_by_new = cluster
        .kube
        .seen()
        .iter()
        .filter(|s| s.verb == "update" && s.status == 200 && s.pod.as_deref() == Some(&new.api_name()))
        .count();
    assert_eq!(lease_writes_by_new, 0, "the new db-0 renewed the old one's lease");
    one_refresh_per_token(&cluster, "two pods named db-0");
    assert_eq!(cluster.holder_identity().as_deref(), Some("db-0_uid-old"), "the old db-0 still holds it");
    assert_eq!(role_of(&new).await, Some(Role::Follower));
    assert_eq!(role_of(&old).await, Some(Role::Holder));
    eprintln!(
        "same name, two UIDs: {} refreshes, {} rotations, {} invalid_grant, holder {:?}",
        cluster.fake.refresh_requests(),
        cluster.fake.rotations(),
        cluster.invalid_grants(),
        cluster.holder_identity()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_stopped_while_the_secret_refuses_its_pair_keeps_the_lease_until_the_pair_lands() {
    let cluster = Cluster::start(3600).await;
    let (mut a, b) = holder_and_follower(&cluster).await;

    // The API server takes no Secret writes: pod-a's next pair lives only in pod-a.
    cluster.kube.refuse_secret_writes(true);
    let rotations = cluster.fake.rotations();
    let socket = a.sb.socket();
    // The answer waits for the Secret (up to 10 s): not awaited here.
    let refresh = tokio::spawn(async move {
        let mut client = sidecred_proto::client::Client::connect(&socket).await.expect("connect");
        client.refresh().await.map(|_| ())
    });
    wait_until("pod-a's refresh", Duration::from_secs(10), || cluster.fake.rotations() > rotations).await;
    let spent = cluster.secret_doc().as_ref().and_then(refresh_token_of).unwrap();
    assert!(cluster.fake.was_rotated(&spent), "the Secret holds the spent pair");

    let agent = a.agent.as_mut().unwrap();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    // The refresh's own wait for the Secret (10 s) ends first; then the holder either keeps the lease or
    // lets it go.
    wait_until("pod-a to keep the lease or let it go", Duration::from_secs(20), || {
        agent.log().contains("keeping the lease and retrying the write")
            || !agent.is_running()
            || cluster.holder().as_deref() != Some("pod-a")
    })
    .await;
    // Twice the lease duration later, pod-a still runs and still holds the lease: pod-b never got the
    // spent pair to refresh.
    tokio::time::sleep(LEASE_DURATION * 2).await;
    assert!(agent.is_running(), "pod-a exited with its pair not in the Secret");
    assert_eq!(cluster.holder().as_deref(), Some("pod-a"), "the lease passed on with a spent pair");
    assert_eq!(role_of(&b).await, Some(Role::Follower));

    // The API server takes writes again: the pair lands, pod-a releases the lease and exits.
    let live = cluster.fake.live_refresh_tokens();
    assert_eq!(live.len(), 1, "one live pair, pod-a's");
    cluster.kube.refuse_secret_writes(false);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    let _ = refresh.await;
    // pod-a's pair is in the Secret; pod-b, which may take the released lease at once and refresh the
    // adopted pair straight away, can only have started from it.
    let in_secret = cluster.secret_doc().as_ref().and_then(refresh_token_of);
    assert!(
        in_secret.as_deref() == Some(live[0].as_str()) || cluster.fake.was_rotated(&live[0]),
        "the Secret holds neither pod-a's pair nor one refreshed from it: {} requests, {} rotations, {} invalid_grant",
        cluster.fake.refresh_requests(),
        cluster.fake.rotations(),
        cluster.invalid_grants(),
    );
    wait_until("pod-b to take the released lease", Duration::from_secs(5), || {
        cluster.holder().as_deref() == Some("pod-b")
    })
    .await;
    wait_role(&b, Role::Holder, Duration::from_secs(5)).await;
    b.sb.client().await.refresh().await.expect("pod-b refreshes the live pair");
    assert!(cluster.settled(), "the Secret holds pod-b's pair");
    one_refresh_per_token(&cluster, "a shutdown while the Secret refused writes");
    eprintln!(
        "shutdown with writes refused: {} refreshes, {} rotations, {} invalid_grant; pod-a kept the lease {:?}+ after SIGTERM",
        cluster.fake.refresh_requests(),
        cluster.fake.rotations(),
        cluster.invalid_grants(),
        LEASE_DURATION * 2
    );
}

/// The wait of a stopped holder for its pair to reach the Secret has a deadline of its own
/// (`--shutdown-write-wait`): past it the agent exits without releasing the lease, before the grace
/// period's SIGKILL, and says what it leaves behind; the lease then expires on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_holder_waits_for_the_secret_only_until_its_shutdown_write_wait() {
    const WAIT: Duration = Duration::from_secs(2);
    let cluster = Cluster::start(3600).await;
    let mut a = Pod::start_with_env(&cluster, "pod-a", &[("SIDECRED_SHUTDOWN_WRITE_WAIT", "2s")]).await;
    wait_until("pod-a to hold the lease", Duration::from_secs(10), || {
        cluster.holder().as_deref() == Some("pod-a")
    })
    .await;
    wait_role(&a, Role::Holder, Duration::from_secs(10)).await;
    let b = Pod::start(&cluster, "pod-b").await;
    wait_role(&b, Role::Follower, Duration::from_secs(10)).await;
    wait_until("the first rotation", Duration::from_secs(10), || cluster.fake.rotations() >= 1).await;
    wait_until("the Secret to hold the live pair", Duration::from_secs(10), || cluster.settled()).await;

    // The Secret takes no writes; pod-a refreshes, and its answer comes once the refresh's own wait for
    // the Secret (10 s) is over.
    cluster.kube.refuse_secret_writes(true);
    let rotations = cluster.fake.rotations();
    a.sb.client()
        .await
        .refresh()
        .await
        .expect("pod-a's refresh, served once its wait for the Secret ran out");
    assert!(cluster.fake.rotations() > rotations && !cluster.settled(), "pod-a's pair is not in the Secret");
    let identity = cluster.holder_identity();
    let agent = a.agent.as_mut().unwrap();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let stopped = std::time::Instant::now();
    let status = agent.wait_exit(Duration::from_secs(30));
    let took = stopped.elapsed();
    assert!(!status.success(), "pod-a left its pair out of the Secret: it exits with a failure");
    assert!(took >= WAIT, "pod-a exited after {took:?}, before its wait");
    assert!(took < WAIT + LEASE_DURATION * 2, "pod-a exited {took:?} after SIGTERM");
    assert_eq!(cluster.holder_identity(), identity, "pod-a released a lease whose pair is not in the Secret");
    assert!(agent.log().contains("after --shutdown-write-wait"), "pod-a says why it exited");
    // Nobody released it: the lease passes to pod-b when it expires.
    wait_until("pod-b to take the expired lease", LEASE_DURATION * 3, || {
        cluster.holder().as_deref() == Some("pod-b")
    })
    .await;
    eprintln!("shutdown write wait {WAIT:?}: pod-a exited {took:?} after SIGTERM without releasing; pod-b took the expired lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_cut_off_from_the_api_server_abandons_its_slow_refresh_before_anyone_takes_over() {
    let cluster = Cluster::start(3600).await;
    let (a, b) = holder_and_follower(&cluster).await;
    let by_a = |c: &Cluster| c.refreshes_by_pod().get("pod-a").copied().unwrap_or(0);
    let (a_before, rotations) = (by_a(&cluster), cluster.fake.rotations());

    // pod-a loses the API server, and its next refresh is slow to reach the token endpoint (longer
    // than the lease, shorter than --request-timeout).
    cluster.fake.hold_next_refresh(LEASE_DURATION * 4);
    cluster.kube.cut_off(&a.api_name(), true);
    let socket = a.sb.socket();
    let cut_off_refresh = tokio::spawn(async move {
        let mut client = sidecred_proto::client::Client::connect(&socket).await.expect("connect");
        client.refresh().await.map(|_| ())
    });
    wait_until("pod-b to take the lease over", LEASE_DURATION * 3, || {
        cluster.holder().as_deref() == Some("pod-b")
    })
    .await;
    wait_role(&b, Role::Holder, Duration::from_secs(5)).await;
    b.sb.client().await.refresh().await.expect("pod-b refreshes the pair pod-a never spent");
    // Until pod-a's held request is over, one way or the other.
    wait_until("pod-a's slow refresh to end", LEASE_DURATION * 5, || {
        cluster.fake.abandoned_refreshes() > 0 || by_a(&cluster) > a_before
    })
    .await;
    assert!(cut_off_refresh.await.unwrap().is_err(), "pod-a's refresh cannot have succeeded");
    assert_eq!(cluster.fake.abandoned_refreshes(), 1, "pod-a gave its request up at the fence");
    assert_eq!(by_a(&cluster), a_before, "the token endpoint never took a refresh of pod-a's on");
    // pod-b refreshed when asked (the due refresh of the pair it inherited waits for a late write
    // from pod-a, which never comes: pod-a's refresh was abandoned).
    assert!(cluster.fake.rotations() > rotations, "pod-b's refreshes rotated the pair");
    assert!(cluster.settled(), "the Secret holds pod-b's live pair");
    one_refresh_per_token(&cluster, "a cut-off holder with a slow refresh");

    // pod-a comes back as a follower and serves pod-b's pair.
    cluster.kube.cut_off(&a.api_name(), false);
    wait_role(&a, Role::Follower, Duration::from_secs(10)).await;
    let log = a.agent.as_ref().unwrap().log();
    assert!(log.contains("before the lease could pass to another agent"), "pod-a says why it gave up");
    eprintln!(
        "cut-off holder, slow refresh: {} refreshes taken on, {} abandoned at the fence, {} overlapping, {} invalid_grant",
        cluster.fake.refresh_requests(),
        cluster.fake.abandoned_refreshes(),
        cluster.fake.overlapping_refreshes(),
        cluster.invalid_grants()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_leaves_no_refresh_time_is_refused_at_start_naming_the_flags() {
    let sb = sidecred_tests::harness::Sandbox::new();
    let mut cmd = sb.agent_cmd("http://127.0.0.1:9/v1/oauth/token");
    cmd.args(["--write-back-secret", &format!("{NS}/{SECRET}"), "--lease", &format!("{NS}/{LEASE}")])
        .args(["--lease-duration", "2s"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBECONFIG");
    let mut agent = sidecred_tests::harness::Proc::spawn("agent", cmd, &sb.log("agent"));
    let status = agent.wait_exit(Duration::from_secs(10));
    let stderr = agent.log();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--lease-duration") && stderr.contains("--request-timeout"), "{stderr}");
    assert!(stderr.contains("no refresh could ever run"), "{stderr}");
}
