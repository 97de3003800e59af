//! Sharing a login through a Lease (`--lease`): only the holder refreshes, and only while its renewal
//! is fresh; followers adopt the Secret's pairs and never take an older one back.

use super::*;
use crate::lifecycle::LeaseView;
use sidecred_proto::Role;

fn leased(clock: &Clock, left: Duration) -> Machine {
    machine(clock, left, true).with_lease("apps/sidecred".into())
}

fn follower_of(holder: &str) -> LeaseView {
    LeaseView { lease: "apps/sidecred".into(), holder: Some(holder.into()), held_until: None, problem: None }
}

fn holding_until(until: Instant) -> LeaseView {
    LeaseView {
        lease: "apps/sidecred".into(),
        holder: Some("me".into()),
        held_until: Some(until),
        problem: None,
    }
}

fn from_secret(rv: &str, c: Credentials) -> SeedRead {
    SeedRead {
        sha256: format!("sha-{rv}"),
        credentials: Ok(c),
        secret_rv: Some(rv.into()),
        origin: format!("secret ns/creds key k (resourceVersion {rv})"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_follower_never_refreshes_and_the_holder_does_only_while_its_renewal_is_fresh() {
    let clock = Clock::new();
    // Due for a refresh at once (a minute left).
    let mut m = leased(&clock, Duration::from_secs(60));
    assert!(m.tick(clock.now()).is_empty(), "no refresh before the lease is known");
    assert_eq!(m.next_wake(Instant::now()), Some(clock.at(55)), "no timer for a refresh it may not start");
    assert!(m.lease_changed(follower_of("pod-b"), clock.now()).is_empty());
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.role, Role::Follower);
    assert_eq!(snap.lease_holder.as_deref(), Some("pod-b"));
    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(effects.is_empty());
    assert!(
        matches!(answer, Answer::Now(Err(ref e)) if e.message.contains("pod-b holds the lease")),
        "{answer:?}"
    );
    let (answer, effects) = m.rejected(&Secret::new("A0"), clock.now());
    assert!(effects.is_empty(), "a follower does not refresh on a rejection either");
    assert!(matches!(answer, Answer::Now(Err(_))), "{answer:?}");

    // Elected: the refresh that fell due starts at once.
    let effects = m.lease_changed(holding_until(clock.at(10)), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    assert_eq!(m.snapshot(Instant::now()).role, Role::Holder);
    land_refresh(&mut m, &clock);

    // The renewal's deadline passes (a pause, a partition): the next due refresh waits for the lease.
    advance(Duration::from_secs(3600)).await;
    assert!(m.tick(clock.now()).is_empty(), "a refresh after the renew deadline");
    assert_eq!(m.snapshot(Instant::now()).role, Role::Follower);
    let effects = m.lease_changed(holding_until(Instant::now() + Duration::from_secs(10)), clock.now());
    assert_eq!(refreshes(&effects), ["R1"]);
}

#[tokio::test(start_paused = true)]
async fn followers_adopt_the_secret_and_never_take_an_older_pair_back() {
    let clock = Clock::new();
    let mut m = leased(&clock, Duration::from_secs(3600));
    m.lease_changed(follower_of("pod-b"), clock.now());
    let expiry = WALL0 + 7_200_000;
    m.seed_changed(from_secret("11", creds("A1", "R1", expiry)), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("A1"));
    m.seed_changed(from_secret("12", creds("A2", "R2", expiry)), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("A2"));
    assert_eq!(m.snapshot(Instant::now()).secret_resource_version.as_deref(), Some("12"));
    // An older pair comes back (a lagging copy): it was spent by the holder, and stays out.
    m.seed_changed(from_secret("13", creds("A1", "R1", expiry)), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("A2"));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_api_server_degrades_but_keeps_serving() {
    let clock = Clock::new();
    let mut m = leased(&clock, Duration::from_secs(3600));
    let view = LeaseView { problem: Some("the API server is down".into()), ..follower_of("pod-b") };
    m.lease_changed(view, clock.now());
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::Degraded);
    assert!(snap
        .message
        .as_deref()
        .is_some_and(|msg| msg.contains("no refresh until the lease is held again")));
    assert_eq!(served_token(&m).as_deref(), Some("A0"));
}
