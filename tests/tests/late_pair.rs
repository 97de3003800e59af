//! A holder's pair that reaches the Secret late, after an outage of the API server: the holder refreshed
//! while the API was down (its write to the Secret failed), and the outage lasted longer than the lease.
//! What must hold: the login is not lost and nobody spends a pair that was already spent.
//! 1. The holder comes back with the API: it keeps its lease (a follower does not count the time it
//!    could not see the Lease as time the holder failed to renew), and its late pair lands.
//! 2. The holder stays cut off after the outage, so the follower takes the lease over: the new holder
//!    does not refresh the pair it inherited while the access token has life to spare, and adopts the
//!    old holder's late pair when it lands. Zero `invalid_grant`.
//! 3. The same with tokens too short-lived to wait: the new holder's first refresh is refused
//!    ("raced"), and it adopts the late pair instead of declaring the login lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidecred_proto::{Role, TokenState};
use sidecred_tests::harness::wait_until;
use sidecred_tests::pods::*;
use std::time::{Duration, Instant};

/// pod-a (the holder) refreshes while the API server is down: its new pair lives only in pod-a.
/// Returns the new pair's refresh token.
async fn refresh_during_an_outage(cluster: &Cluster, a: &Pod) -> String {
    // A short delay at the endpoint, so the API can go down while the request is there.
    cluster.fake.set_delay(Duration::from_millis(300));
    let (requests, rotations) = (cluster.fake.refresh_requests(), cluster.fake.rotations());
    let socket = a.sb.socket();
    // The answer waits for the Secret (up to 10 s): not awaited.
    tokio::spawn(async move {
        let mut client = sidecred_proto::client::Client::connect(&socket).await.expect("connect");
        let _ = client.refresh().await;
    });
    wait_until("pod-a's refresh to reach the endpoint", Duration::from_secs(10), || {
        cluster.fake.refresh_requests() > requests
    })
    .await;
    cluster.kube.set_down(true);
    cluster.fake.set_delay(Duration::ZERO);
    wait_until("pod-a's refresh to rotate the pair", Duration::from_secs(10), || {
        cluster.fake.rotations() > rotations
    })
    .await;
    let live = cluster.fake.live_refresh_tokens();
    assert_eq!(live.len(), 1, "one live pair, pod-a's");
    assert!(!cluster.settled(), "the Secret cannot hold pod-a's pair during the outage");
    live[0].clone()
}

/// The outage lasts twice the lease; it ends for everyone but pod-a, whose connection stays cut off.
async fn outage_ends_without_pod_a(cluster: &Cluster, a: &Pod) -> Instant {
    tokio::time::sleep(LEASE_DURATION * 2).await;
    cluster.kube.cut_off(&a.api_name(), true);
    cluster.kube.set_down(false);
    Instant::now()
}

/// What must hold at the end: the Secret holds the live pair, both pods serve it, and requests through
/// both pods' forwarders work.
async fn nothing_lost(cluster: &Cluster, a: &Pod, b: &Pod, what: &str) {
    wait_until(&format!("{what}: the Secret to hold the live pair"), Duration::from_secs(20), || {
        cluster.settled()
    })
    .await;
    converged(cluster, &[a, b], what, Duration::from_secs(20)).await;
    for pod in [a, b] {
        assert_eq!(request_through(pod).await, 200, "{what}: a request through {}", pod.name);
        let status = pod.status().await.unwrap();
        assert_eq!(status.state, Some(TokenState::Valid), "{what}: {}: {status:?}", pod.name);
    }
    assert_eq!(cluster.fake.overlapping_refreshes(), 0, "{what}: two refreshes with one refresh token");
}

fn log_of(pod: &Pod) -> String {
    pod.agent.as_ref().map(|a| a.log()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_back_with_the_api_keeps_its_lease_and_its_late_pair_lands() {
    let cluster = Cluster::start(3600).await;
    let (a, b) = holder_and_follower(&cluster).await;
    let late = refresh_during_an_outage(&cluster, &a).await;
    let back = outage_ends_without_pod_a(&cluster, &a).await;
    // pod-b reads the Lease again: the record is the one it saw before the outage, unchanged for longer
    // than the lease. pod-a's connection comes back at that moment.
    let b_name = b.api_name();
    wait_until("pod-b to read the Lease after the outage", Duration::from_secs(10), || {
        cluster.kube.seen().iter().any(|s| {
            s.at > back
                && s.verb == "get"
                && s.status == 200
                && s.path.contains("/leases/")
                && s.pod.as_deref() == Some(&b_name)
        })
    })
    .await;
    cluster.kube.cut_off(&a.api_name(), false);
    // For two lease durations, pod-a holds the lease throughout, and its late pair lands.
    let until = Instant::now() + LEASE_DURATION * 2;
    let mut landed = None;
    while Instant::now() < until {
        assert_eq!(cluster.holder().as_deref(), Some("pod-a"), "the lease changed hands after the outage");
        if landed.is_none() && cluster.settled() {
            landed = Some(back.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nothing_lost(&cluster, &a, &b, "a holder back with the API").await;
    assert_eq!(cluster.secret_doc().as_ref().and_then(sidecred_tests::harness::refresh_token_of), Some(late));
    assert_eq!(cluster.invalid_grants(), 0, "invalid_grant: {:?}", cluster.fake.rejections());
    assert_eq!(role_of(&b).await, Some(Role::Follower));
    eprintln!(
        "holder back with the API: lease kept by pod-a, its late pair in the Secret {landed:?} after the API came \
         back; {} refreshes, {} rotations, {} invalid_grant",
        cluster.fake.refresh_requests(),
        cluster.fake.rotations(),
        cluster.invalid_grants()
    );
}

/// pod-b takes the lease over while pod-a is still cut off; then pod-a's connection comes back.
async fn takeover_then_pod_a_back(cluster: &Cluster, a: &Pod, b: &Pod, back: Instant) -> Duration {
    wait_until("pod-b to take the lease over", LEASE_DURATION * 4, || {
        cluster.holder().as_deref() == Some("pod-b")
    })
    .await;
    let took = back.elapsed();
    wait_role(b, Role::Holder, Duration::from_secs(10)).await;
    cluster.kube.cut_off(&a.api_name(), false);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_after_an_outage_waits_for_the_old_holders_late_pair() {
    let cluster = Cluster::start(3600).await;
    let (a, b) = holder_and_follower(&cluster).await;
    let late = refresh_during_an_outage(&cluster, &a).await;
    let back = outage_ends_without_pod_a(&cluster, &a).await;
    let took = takeover_then_pod_a_back(&cluster, &a, &b, back).await;
    // pod-a's late write lands; pod-b adopts that pair and refreshes it (it is due at once: a pair read
    // from the Secret has an unknown lifetime).
    wait_until("pod-b to refresh pod-a's late pair", Duration::from_secs(30), || {
        cluster.fake.was_rotated(&late)
    })
    .await;
    let adopted = back.elapsed();
    nothing_lost(&cluster, &a, &b, "a takeover after an outage").await;
    assert_eq!(cluster.invalid_grants(), 0, "invalid_grant: {:?}", cluster.fake.rejections());
    assert_eq!(cluster.fake.refresh_requests(), cluster.fake.rotations(), "every refresh rotated");
    assert_eq!(cluster.holder().as_deref(), Some("pod-b"));
    eprintln!(
        "takeover after an outage: pod-b took the lease {took:?} after the API came back, refreshed pod-a's late \
         pair {adopted:?} after; {} refreshes, {} rotations, {} invalid_grant, refreshes by pod {:?}",
        cluster.fake.refresh_requests(),
        cluster.fake.rotations(),
        cluster.invalid_grants(),
        cluster.refreshes_by_pod()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_holder_refused_after_a_takeover_adopts_the_old_holders_late_pair() {
    // Tokens live 120 s: less than the refresh margin's floor (5 min) is left, so the new holder does
    // not wait and spends the inherited pair at once.
    let cluster = Cluster::start(120).await;
    let (a, b) = holder_and_follower(&cluster).await;
    let late = refresh_during_an_outage(&cluster, &a).await;
    let back = outage_ends_without_pod_a(&cluster, &a).await;
    wait_until("pod-b to take the lease over", LEASE_DURATION * 4, || {
        cluster.holder().as_deref() == Some("pod-b")
    })
    .await;
    let took = back.elapsed();
    wait_until("pod-b's refresh of the spent pair to be refused", Duration::from_secs(10), || {
        cluster.invalid_grants() >= 1
    })
    .await;
    // Raced: pod-b serves the current token, degraded, and waits for a late pair.
    let status = b.status().await.unwrap();
    assert_eq!(status.state, Some(TokenState::Degraded), "{status:?}");
    assert!(status.message.unwrap_or_default().contains("waiting for its pair"));
    cluster.kube.cut_off(&a.api_name(), false);
    let reconnected = Instant::now();
    wait_until("pod-b to refresh pod-a's late pair", Duration::from_secs(30), || {
        cluster.fake.was_rotated(&late)
    })
    .await;
    let healed = reconnected.elapsed();
    nothing_lost(&cluster, &a, &b, "a refused refresh after a takeover").await;
    assert_eq!(cluster.invalid_grants(), 1, "one refusal, the race: {:?}", cluster.fake.rejections());
    assert!(!log_of(&b).contains("a new login is needed"), "pod-b declared the login lost");
    eprintln!(
        "raced: pod-b took the lease {took:?} after the API came back, was refused once, refreshed pod-a's late pair \
         {healed:?} after pod-a reconnected; {} refreshes, {} rotations, {} invalid_grant",
        cluster.fake.refresh_requests(),
        cluster.fake.rotations(),
        cluster.invalid_grants()
    );
}
