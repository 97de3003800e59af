//! Sharing a login through a Lease (`--lease`): only the holder refreshes, and only while its renewal
//! is fresh; followers adopt the Secret's pairs and never take an older one back.

use super::*;
use crate::lifecycle::LeaseView;
use sidecred_proto::Role;

fn leased(clock: &Clock, left: Duration) -> Machine {
    machine(clock, left, true).with_lease("apps/sidecred".into())
}

fn follower_of(holder: &str) -> LeaseView {
    LeaseView { holder: Some(holder.into()), ..LeaseView::unknown("apps/sidecred".into()) }
}

/// Holding the lease: refreshes may start before `until`, and must end a second later (the fence).
fn holding_until(clock: &Clock, until: Instant) -> LeaseView {
    LeaseView {
        holder: Some("me".into()),
        fence: Some(clock.fence(until + LEAST_WINDOW)),
        least_window: LEAST_WINDOW,
        ..LeaseView::unknown("apps/sidecred".into())
    }
}

const LEAST_WINDOW: Duration = Duration::from_secs(1);

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
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(55)), "no timer for a refresh it may not start");
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
    let effects = m.lease_changed(holding_until(&clock, clock.at(10)), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    assert_eq!(m.snapshot(Instant::now()).role, Role::Holder);
    land_refresh(&mut m, &clock);

    // The renewal's deadline passes (a pause, a partition): the next due refresh waits for the lease.
    advance(Duration::from_secs(3600)).await;
    assert!(m.tick(clock.now()).is_empty(), "a refresh after the renew deadline");
    assert_eq!(m.snapshot(Instant::now()).role, Role::Follower);
    let effects =
        m.lease_changed(holding_until(&clock, Instant::now() + Duration::from_secs(10)), clock.now());
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

#[tokio::test(start_paused = true)]
async fn a_refresh_under_the_lease_ends_by_the_fence_and_starts_only_with_time_to_spare() {
    let clock = Clock::new();
    let mut m = leased(&clock, Duration::from_secs(60));
    let fence = clock.at(3);
    let view = |fence| LeaseView {
        holder: Some("me".into()),
        fence: Some(clock.fence(fence)),
        least_window: Duration::from_secs(1),
        ..LeaseView::unknown("apps/sidecred".into())
    };
    // Half a second before the fence: too little left, the due refresh waits for the next renewal.
    advance(Duration::from_millis(2500)).await;
    assert!(m.lease_changed(view(fence), clock.now()).is_empty());
    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(effects.is_empty());
    assert!(
        matches!(answer, Answer::Now(Err(ref e)) if e.message.contains("too little time is left")),
        "{answer:?}"
    );
    // Renewed: the refresh starts, and its request must end by the new fence, not the request timeout.
    let renewed = clock.at(5);
    let effects = m.lease_changed(view(renewed), clock.now());
    let deadlines: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Refresh { deadline, .. } => Some(*deadline),
            _ => None,
        })
        .collect();
    assert_eq!(deadlines, [Some(renewed)]);
    // Alone, there is no fence.
    let mut alone = machine(&clock, Duration::from_secs(60), true);
    let effects = alone.tick(clock.now());
    assert!(matches!(effects.as_slice(), [Effect::Refresh { deadline: None, .. }]), "{effects:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_right_after_an_unreleased_takeover_waits_for_the_old_holders_pair() {
    let clock = Clock::new();
    let mut m = leased(&clock, Duration::from_secs(60));
    let taken = |raced_until| LeaseView {
        raced_until,
        ..holding_until(&clock, Instant::now() + Duration::from_secs(10))
    };
    let effects = m.lease_changed(taken(Some(clock.at(60))), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    // The old holder's refresh spent R0 first.
    m.refresh_done(Err(TokenError::Rejected { reason: "invalid_grant".into() }), clock.now());
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::Degraded, "{:?}", snap.message);
    assert_eq!(served_token(&m).as_deref(), Some("A0"), "the current token is still served");
    // Its pair reaches the Secret: adopted, and the login lives on.
    advance(Duration::from_secs(20)).await;
    m.seed_changed(from_secret("21", creds("A1", "R1", WALL0 + 7_200_000)), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("A1"));
    let snap = m.snapshot(Instant::now());
    assert!(snap.next_refresh.is_some(), "refreshes are scheduled again: {:?}", snap.message);
    assert!(!snap.message.unwrap_or_default().contains("refused"), "no longer raced");

    // Without a late pair the wait ends and a new login is needed.
    let mut m = leased(&clock, Duration::from_secs(60));
    let until = Instant::now() + Duration::from_secs(60);
    let effects = m.lease_changed(taken(Some(until)), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    m.refresh_done(Err(TokenError::Rejected { reason: "invalid_grant".into() }), clock.now());
    advance(Duration::from_secs(60)).await;
    m.tick(clock.now());
    assert_eq!(state(&m), TokenState::ReauthRequired);

    // A refusal with no unreleased takeover behind it is final at once.
    let mut m = leased(&clock, Duration::from_secs(60));
    let effects = m.lease_changed(taken(None), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    m.refresh_done(Err(TokenError::Rejected { reason: "invalid_grant".into() }), clock.now());
    assert_eq!(state(&m), TokenState::ReauthRequired);
}

#[tokio::test(start_paused = true)]
async fn after_an_unreleased_takeover_the_inherited_pair_waits_for_the_old_holders_late_write() {
    let clock = Clock::new();
    // 1000 s left: due at once by the margin (a pair of unknown lifetime), with life to spare.
    let mut m = leased(&clock, Duration::from_secs(1000));
    let taken = |late_write_by| LeaseView {
        raced_until: Some(clock.at(60)),
        late_write_by,
        ..holding_until(&clock, Instant::now() + Duration::from_secs(10))
    };
    let effects = m.lease_changed(taken(Some(clock.at(30))), clock.now());
    assert!(refreshes(&effects).is_empty(), "the inherited pair is not spent at once");
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(30)), "it waits until the late-write wait ends");
    // The old holder's late write arrives: that pair is refreshed as usual.
    advance(Duration::from_secs(5)).await;
    m.seed_changed(from_secret("31", creds("A1", "R1", WALL0 + 1_000_000)), clock.now());
    let effects = m.tick(clock.now());
    assert_eq!(refreshes(&effects), ["R1"]);

    // No late write: the inherited pair is refreshed once the wait is over.
    let mut m = leased(&clock, Duration::from_secs(1000));
    let until = Instant::now() + Duration::from_secs(30);
    assert!(refreshes(&m.lease_changed(taken(Some(until)), clock.now())).is_empty());
    advance(Duration::from_secs(30)).await;
    let effects = m.lease_changed(taken(Some(until)), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);

    // A token close to expiry is not held back.
    let mut m = leased(&clock, Duration::from_secs(60));
    let effects = m.lease_changed(taken(Some(Instant::now() + Duration::from_secs(30))), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);

    // A released lease (no late-write wait) refreshes the due pair at once.
    let mut m = leased(&clock, Duration::from_secs(1000));
    assert_eq!(refreshes(&m.lease_changed(taken(None), clock.now())), ["R0"]);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_cannot_reach_the_api_does_not_spend_a_pair_it_could_not_share() {
    let clock = Clock::new();
    let mut m = leased(&clock, Duration::from_secs(1000));
    let unreachable = LeaseView {
        problem: Some("the API server is down".into()),
        ..holding_until(&clock, Instant::now() + Duration::from_secs(10))
    };
    assert!(refreshes(&m.lease_changed(unreachable, clock.now())).is_empty());
    // A client asking still gets its refresh: the token is wanted now.
    let (_, effects) = m.refresh_requested(clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    // The API answers again: the due refresh goes ahead.
    let mut m = leased(&clock, Duration::from_secs(1000));
    let effects =
        m.lease_changed(holding_until(&clock, Instant::now() + Duration::from_secs(10)), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
}

#[tokio::test(start_paused = true)]
async fn a_holder_woken_from_a_suspend_does_not_refresh_on_a_fence_the_suspend_used_up() {
    let clock = Clock::new();
    let mut m = leased(&clock, Duration::from_secs(3600));
    m.lease_changed(holding_until(&clock, Instant::now() + Duration::from_secs(10)), clock.now());
    // Suspended for a minute: the monotonic clock stood still (11 s of fence left by it), the boot clock
    // did not (the lease may have passed on meanwhile).
    clock.suspend(Duration::from_secs(60));
    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(effects.is_empty(), "a refresh on a fence the suspend used up");
    assert!(
        matches!(answer, Answer::Now(Err(ref e)) if e.message.contains("too little time is left")),
        "{answer:?}"
    );
    assert!(m.next_wake(clock.now()).is_none_or(|w| w > Instant::now()), "no timer that fires at once");
    // Renewed after the wake-up: refreshes go ahead again, and end by the new fence.
    let renewed = Instant::now() + Duration::from_secs(11);
    m.lease_changed(holding_until(&clock, renewed - LEAST_WINDOW), clock.now());
    let (_, effects) = m.refresh_requested(clock.now());
    assert!(
        matches!(effects.as_slice(), [Effect::Refresh { deadline: Some(d), .. }] if *d == renewed),
        "{effects:?}"
    );
}
