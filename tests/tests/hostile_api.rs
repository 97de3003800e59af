//! Agents sharing a login (`--lease`) against an API server that misbehaves: a call accepted and never
//! answered, watches that stall, drip, send only BOOKMARKs, garbage, one endless line or 410 every
//! time, an event for another Secret, a Secret of 100 MiB, a Lease holder of 70 KB, an outage, an old
//! pair restored into the Secret, a follower whose token the upstream rejects. What must hold: no
//! login is lost (no `invalid_grant`), every pod serves a valid token, the agent's memory stays small,
//! and the agent says what was wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidecred_proto::TokenState;
use sidecred_tests::fakes::kube::WatchMode;
use sidecred_tests::forwarder_harness::http_client;
use sidecred_tests::harness::{access_token_of, now_ms, refresh_token_of, wait_until};
use sidecred_tests::pods::*;
use std::time::{Duration, Instant};

/// Every pod serves the access token the Secret holds.
async fn converged(cluster: &Cluster, pods: &[&Pod], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let secret =
            cluster.secret_doc().as_ref().and_then(access_token_of).map(|t| sidecred_proto::fingerprint(&t));
        let mut all = true;
        for pod in pods {
            all &= pod.status().await.and_then(|s| s.token_fingerprint) == secret;
        }
        if all && secret.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the pods do not all serve the Secret's token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two pods, a holder after its first rotation, both serving the Secret's pair.
async fn two_pods(cluster: &Cluster) -> (Pod, Pod) {
    let a = Pod::start(cluster, "pod-a").await;
    let b = Pod::start(cluster, "pod-b").await;
    wait_until("a lease holder", Duration::from_secs(15), || cluster.holder().is_some()).await;
    wait_until("the first rotation", Duration::from_secs(15), || cluster.fake.rotations() >= 1).await;
    converged(cluster, &[&a, &b], "after the first rotation").await;
    (a, b)
}

/// (holder, follower) by the Lease now.
fn roles(cluster: &Cluster, a: Pod, b: Pod) -> (Pod, Pod) {
    if cluster.holder().as_deref() == Some(a.name.as_str()) {
        (a, b)
    } else {
        (b, a)
    }
}

fn log_of(pod: &Pod) -> String {
    pod.agent.as_ref().map(|a| a.log()).unwrap_or_default()
}

/// The most memory the agent's process has held (its peak resident set), in MiB.
fn peak_rss_mib(pod: &Pod) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", pod.agent_pid())).expect("the agent's status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib / 1024
}

/// The write-back's GET of the Secret is accepted and never answered (twice, as the attack saw) while
/// the holder rotates: the write is abandoned and made again, so a kill -9 of the holder leaves the
/// next holder the live pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_secret_get_then_a_holder_kill_loses_nothing() {
    let cluster = Cluster::start(6).await;
    let (a, b) = two_pods(&cluster).await;
    let (mut holder, follower) = roles(&cluster, a, b);
    let rotations = cluster.fake.rotations();
    cluster.kube.hang_secret_gets_for(Duration::from_secs(8));
    wait_until("two rotations while the Secret's GETs hang", Duration::from_secs(20), || {
        cluster.fake.rotations() >= rotations + 2
    })
    .await;
    let hung = cluster.kube.seen().iter().filter(|s| s.verb == "get" && s.status == 0).count();
    assert!(hung >= 1, "no GET was hung");
    // The abandoned write is made again once the API answers: the Secret catches up with the holder.
    wait_until("the Secret to hold the live pair after the hang", Duration::from_secs(30), || {
        cluster.settled()
    })
    .await;
    let killed = holder.name.clone();
    holder.kill9();
    wait_until("a new holder", Duration::from_secs(15), || cluster.holder().is_some_and(|h| h != killed))
        .await;
    // The new holder reads the Secret before it knows itself the holder: ask it only then.
    wait_role(&follower, sidecred_proto::Role::Holder, Duration::from_secs(10)).await;
    let before = cluster.fake.rotations();
    follower.sb.client().await.refresh().await.expect("a refresh by the new holder");
    assert!(cluster.fake.rotations() > before, "the new holder did not rotate");
    assert_eq!(cluster.invalid_grants(), 0, "the new holder refreshed a spent pair");
    wait_until("the Secret to hold the new holder's pair", Duration::from_secs(15), || cluster.settled())
        .await;
    eprintln!(
        "hung GET: {hung} GETs never answered, {} rotations, {} invalid_grant, refreshes by pod {:?}",
        cluster.fake.rotations(),
        cluster.invalid_grants(),
        cluster.refreshes_by_pod()
    );
}

/// A watch broken in `mode`, from the start: the follower still adopts each rotation before its token
/// expires, and says at WARN that the watch failed.
async fn a_broken_watch(mode: WatchMode, warning: &str) {
    let cluster = Cluster::start(20).await;
    cluster.kube.set_watch_mode(mode);
    let (a, b) = two_pods(&cluster).await;
    let (_holder, follower) = roles(&cluster, a, b);
    let start = cluster.fake.rotations();
    let mut adopted = 0;
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.fake.rotations() < start + 2 || adopted < 2 {
        let status = follower.status().await.expect("the follower's status");
        assert_ne!(status.state, Some(TokenState::Expired), "{mode:?}: the follower's token expired");
        if status.token_fingerprint != seen {
            adopted += 1;
            seen = status.token_fingerprint;
        }
        assert!(Instant::now() < deadline, "{mode:?}: the follower adopted {adopted} pairs in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converged(&cluster, &[&follower], "the follower").await;
    let log = log_of(&follower);
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains(warning)).count();
    assert!(warned >= 1, "{mode:?}: no warning containing `{warning}`");
    assert_eq!(cluster.invalid_grants(), 0);
    eprintln!(
        "{mode:?}: {} rotations, the follower adopted {adopted} pairs, never expired, {warned} warnings, {} watch requests",
        cluster.fake.rotations() - start,
        cluster.kube.watch_requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_watch_is_noticed() {
    a_broken_watch(WatchMode::Silent, "missed a change").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dripping_watch_is_noticed() {
    a_broken_watch(WatchMode::Drip, "missed a change").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_of_bookmarks_only_is_noticed() {
    a_broken_watch(WatchMode::BookmarksOnly, "missed a change").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_of_garbage_is_noticed() {
    a_broken_watch(WatchMode::Garbage, "not a watch event").await;
}

/// The upstream rejects the access token; requests go through the follower's pod only. The follower
/// tells the holder through the Secret, the holder refreshes, and the follower's client gets the new
/// token: healed without any request through the holder's pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followers_rejected_token_is_healed_through_the_holder() {
    let cluster = Cluster::start(600).await;
    let (a, b) = two_pods(&cluster).await;
    let (holder, follower) = roles(&cluster, a, b);
    let rotations = cluster.fake.rotations();
    let upstream_before = cluster.upstream.seen_count();
    cluster.fake.revoke_access_tokens();
    // Every request goes through the follower's forwarder; the holder's pod sees none.
    let client = http_client();
    let body = serde_json::json!({"model": "claude-fake-1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed = 0;
    loop {
        let resp = client
            .post(format!("http://{}/v1/messages", follower.url()))
            .header("x-api-key", "ignored")
            .json(&body)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            break;
        }
        failed += 1;
        if Instant::now() >= deadline {
            let tail = |p: &Pod| log_of(p).lines().rev().take(30).collect::<Vec<_>>().join("\n");
            panic!(
                "the follower's requests still fail: {}\nfollower:\n{}\nholder:\n{}",
                resp.status(),
                tail(&follower),
                tail(&holder)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cluster.fake.rotations(), rotations + 1, "one refresh, by the holder");
    assert_eq!(cluster.invalid_grants(), 0);
    let by_holder = cluster.refreshes_by_pod().get(&holder.name).copied().unwrap_or(0);
    assert_eq!(by_holder, cluster.fake.refresh_requests(), "only the holder refreshed");
    eprintln!(
        "follower rejection: {failed} client requests failed before the heal, {} upstream requests, 1 refresh by {}, 0 invalid_grant",
        cluster.upstream.seen_count() - upstream_before,
        holder.name
    );
}

/// Someone restores an old pair, already expired, into the Secret: neither agent drops its valid live
/// pair for it, and the holder puts the live pair back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_pair_restored_into_the_secret_is_not_adopted() {
    let cluster = Cluster::start(600).await;
    let (a, b) = two_pods(&cluster).await;
    let live =
        cluster.secret_doc().as_ref().and_then(access_token_of).map(|t| sidecred_proto::fingerprint(&t));
    let old = cluster.fake.unknown_pair();
    cluster.kube.set_value(KEY, &old.credentials_file(now_ms() - 3_600_000));
    wait_until("the holder to put the live pair back", Duration::from_secs(20), || cluster.settled()).await;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        for pod in [&a, &b] {
            let status = pod.status().await.unwrap();
            assert_eq!(status.token_fingerprint, live, "{} dropped the live pair", pod.name);
            assert_eq!(status.state, Some(TokenState::Valid), "{}", pod.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.invalid_grants(), 0);
    let warned = [&a, &b].iter().filter(|p| log_of(p).contains("already expired")).count();
    assert_eq!(warned, 2, "both agents say why they kept the live pair");
    eprintln!(
        "expired restore: both pods kept {live:?}, 0 invalid_grant, {} rotations",
        cluster.fake.rotations()
    );
}

/// Someone restores into the Secret a pair that has not expired but whose refresh token is spent (a
/// backup of the login, which another client has refreshed since): both agents adopt it, since nothing
/// shows it is dead until it is refreshed. The holder's refresh of it is refused; the holder goes back to
/// the live pair it replaced (kept until the adopted one proved itself) instead of losing the login, and
/// writes that pair's successor into the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_pair_restored_into_the_secret_falls_back_to_the_live_pair() {
    let cluster = Cluster::start(3600).await;
    let (a, b) = two_pods(&cluster).await;
    let (holder, follower) = roles(&cluster, a, b);
    let restored = cluster.fake.issue_pair();
    cluster.fake.refresh_from_outside(&restored.refresh_token).expect("the other client's refresh");
    cluster.kube.set_value(KEY, &restored.credentials_file(now_ms() + 1_800_000));
    wait_until("the holder's refresh of the restored pair to be refused", Duration::from_secs(20), || {
        cluster.invalid_grants() >= 1
    })
    .await;
    let secret_is_live = || {
        cluster
            .secret_doc()
            .as_ref()
            .and_then(refresh_token_of)
            .is_some_and(|rt| rt != restored.refresh_token && cluster.fake.is_live_refresh_token(&rt))
    };
    wait_until("the Secret to hold a live pair of ours again", Duration::from_secs(20), secret_is_live).await;
    converged(&cluster, &[&holder, &follower], "after the fall back").await;
    for pod in [&holder, &follower] {
        assert_eq!(request_through(pod).await, 200, "a request through {}", pod.name);
        assert_eq!(pod.status().await.unwrap().state, Some(TokenState::Valid), "{}", pod.name);
    }
    assert_eq!(
        cluster.invalid_grants(),
        1,
        "one refusal, of the restored pair: {:?}",
        cluster.fake.rejections()
    );
    assert!(!log_of(&holder).contains("a new login is needed"), "the holder declared the login lost");
    assert!(log_of(&holder).contains("going back to the pair it replaced"), "the holder says what it did");
    eprintln!(
        "spent pair restored: {} refreshes by the agents, 1 invalid_grant, the holder fell back to the pair it \
         replaced; refreshes by pod {:?}",
        cluster.fake.refresh_requests(),
        cluster.refreshes_by_pod()
    );
}

/// A refresh lands while the API server is down; the writer's pause grows meanwhile. When the API
/// answers again the Secret catches up within moments, not when the grown pause runs out. One pod:
/// what is measured is the writer alone (with a follower, which of the two holds the lease after an
/// outage longer than the lease is a race of the election's, not of the write-back's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_secret_catches_up_at_once_after_an_outage() {
    let cluster = Cluster::start(600).await;
    let holder = Pod::start(&cluster, "pod-a").await;
    wait_until("the first rotation", Duration::from_secs(15), || cluster.fake.rotations() >= 1).await;
    converged(&cluster, &[&holder], "after the first rotation").await;
    // The API goes down while a (slow) refresh is at the token endpoint: its pair cannot be written.
    cluster.fake.set_delay(Duration::from_secs(2));
    let requests = cluster.fake.refresh_requests();
    let socket = holder.sb.socket();
    let refresh = tokio::spawn(async move {
        sidecred_proto::client::Client::connect(&socket).await.expect("connect").refresh().await
    });
    wait_until("the refresh to reach the endpoint", Duration::from_secs(10), || {
        cluster.fake.refresh_requests() > requests
    })
    .await;
    cluster.kube.set_down(true);
    let down = Instant::now();
    cluster.fake.set_delay(Duration::ZERO);
    refresh.await.unwrap().expect("the refresh during the outage");
    let live = cluster.fake.live_refresh_tokens();
    assert!(!cluster.settled(), "the Secret cannot hold the new pair during the outage");
    tokio::time::sleep(Duration::from_secs(35).saturating_sub(down.elapsed())).await;
    cluster.kube.set_down(false);
    let back = Instant::now();
    wait_until("the Secret to catch up after the outage", Duration::from_secs(60), || cluster.settled())
        .await;
    let late = back.elapsed();
    assert!(late <= Duration::from_secs(5), "the Secret caught up {late:?} after the API came back");
    assert_eq!(cluster.invalid_grants(), 0);
    eprintln!("outage: 35 s down, the Secret caught up {late:?} after, live {} pairs", live.len());
}

/// A Secret of 100 MiB: refused at 1 MiB, said why, the agent's memory stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_secret_is_not_read_whole() {
    let cluster = Cluster::start(600).await;
    cluster.kube.serve_huge_secret(100 * 1024 * 1024);
    let pod = Pod::start(&cluster, "pod-a").await;
    let agent = pod.agent.as_ref().unwrap();
    agent.wait_for_log("larger than 1048576 bytes", Duration::from_secs(30)).await;
    let peak = peak_rss_mib(&pod);
    assert!(peak < 64, "the agent's peak RSS is {peak} MiB");
    assert!(pod.status().await.is_some(), "the agent still answers");
    eprintln!("huge Secret: refused at 1 MiB, the agent's peak RSS {peak} MiB");
}

/// A watch line without end: dropped at 1 MiB, said why, the agent's memory stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endless_watch_line_is_not_read_whole() {
    let cluster = Cluster::start(600).await;
    cluster.kube.set_watch_mode(WatchMode::EndlessLine);
    let pod = Pod::start(&cluster, "pod-a").await;
    let agent = pod.agent.as_ref().unwrap();
    agent.wait_for_log("longer than 1048576 bytes", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = peak_rss_mib(&pod);
    assert!(peak < 64, "the agent's peak RSS is {peak} MiB");
    eprintln!("endless watch line: dropped at 1 MiB, the agent's peak RSS {peak} MiB");
}

/// A server that ignores the field selector sends an event for another Secret: never adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_event_for_another_secret_is_ignored() {
    let cluster = Cluster::start(600).await;
    let other = cluster.fake.issue_pair();
    cluster.kube.send_other_object_on_watch("another-login", &other.credentials_file(now_ms() + 600_000));
    let (a, b) = two_pods(&cluster).await;
    // Every watch starts with the other object's event; watches restart now and then.
    cluster.kube.compact();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other_fp = sidecred_proto::fingerprint(&other.access_token);
    for pod in [&a, &b] {
        assert!(!log_of(pod).contains(&other_fp), "{} adopted another Secret's login", pod.name);
        assert_ne!(pod.status().await.unwrap().token_fingerprint.as_deref(), Some(other_fp.as_str()));
    }
    let warned = [&a, &b].iter().filter(|p| log_of(p).contains("for another object")).count();
    assert!(warned >= 1, "no agent said it saw an event for another object");
    eprintln!("another object: ignored by both pods, {warned} warned");
}

/// A Lease holder of 70 KB (written by anyone with `update` on the Lease): `status` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_holder_identity_does_not_break_status() {
    let cluster = Cluster::start(600).await;
    let huge = "h".repeat(70_000);
    cluster.kube.put_lease(
        LEASE,
        sidecred_tests::fakes::kube::LeaseSpec {
            holder_identity: Some(huge),
            lease_duration_seconds: Some(3600),
            ..Default::default()
        },
    );
    let pod = Pod::start(&cluster, "pod-a").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let holder = loop {
        let status = pod.status().await;
        assert!(status.is_some() || Instant::now() < deadline, "status fails with a 70 KB holder");
        if let Some(holder) = status.and_then(|s| s.lease_holder) {
            break holder;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(holder.len() < 400, "the holder shown is {} bytes", holder.len());
    // And it keeps answering.
    for _ in 0..5 {
        assert!(pod.status().await.is_some_and(|s| s.lease_holder.is_some()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("huge holder: shown as {} bytes", holder.len());
}

/// Watches answered 410 every time: started again after a pause that grows, not 4 times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_answered_410_every_time_back_off() {
    let cluster = Cluster::start(600).await;
    cluster.kube.set_watch_mode(WatchMode::Gone);
    let pod = Pod::start(&cluster, "pod-a").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = cluster.kube.watch_requests();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let in_window = cluster.kube.watch_requests() - before;
    assert!(in_window <= 5, "{in_window} watch requests in 10 s");
    assert!(pod.status().await.is_some());
    let secret = cluster.secret_doc().as_ref().and_then(refresh_token_of);
    assert!(secret.is_some_and(|rt| cluster.fake.is_live_refresh_token(&rt)));
    eprintln!("410 always: {in_window} watch requests in 10 s (after 3 s)");
}
