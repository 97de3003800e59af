//! The pair an adopted pair replaced is kept until the adopted one proves itself, and taken back when
//! the adopted one's refresh token turns out to be dead.

use super::*;

fn rejected() -> TokenError {
    TokenError::Rejected { reason: "invalid_grant".into() }
}

#[tokio::test(start_paused = true)]
async fn a_dead_pair_adopted_from_the_seed_falls_back_to_the_live_pair_it_replaced() {
    let clock = Clock::new();
    // A0/R0 is live with an hour left; a file with a pair spent elsewhere (ten minutes left) replaces it.
    let mut m = machine(&clock, Duration::from_secs(3600), true);
    m.seed_changed(seed("s1", creds("A9", "R9", WALL0 + 600_000)), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("A9"));
    let effects = m.tick(clock.now());
    assert_eq!(refreshes(&effects), ["R9"], "the adopted pair is due at once (its lifetime is unknown)");
    // Refused: back to A0/R0, refreshed at once, instead of "log in again".
    let effects = m.refresh_done(Err(rejected()), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    assert_eq!(served_token(&m).as_deref(), Some("A0"));
    assert_ne!(state(&m), TokenState::ReauthRequired);
    let effects = m.refresh_done(Ok(response("A1", Some("R1"), 3600)), clock.now());
    let jobs = saves(&effects);
    assert!(!jobs.is_empty(), "the pair the kept one grew into is saved");
    for job in jobs {
        m.saved(&job, Ok(()), clock.now());
    }
    assert_eq!(served_token(&m).as_deref(), Some("A1"));
    assert_eq!(state(&m), TokenState::Valid);
}

#[tokio::test(start_paused = true)]
async fn an_adopted_pair_that_proves_itself_lets_the_kept_one_go() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(3600), true);
    m.seed_changed(seed("s1", creds("A9", "R9", WALL0 + 600_000)), clock.now());
    assert_eq!(refreshes(&m.tick(clock.now())), ["R9"]);
    m.refresh_done(Ok(response("A10", Some("R10"), 3600)), clock.now());
    // A later refusal of the new pair is final: nothing is kept for it.
    let (_, effects) = m.refresh_requested(clock.now());
    assert_eq!(refreshes(&effects), ["R10"]);
    m.refresh_done(Err(rejected()), clock.now());
    assert_eq!(state(&m), TokenState::ReauthRequired);
}

#[tokio::test(start_paused = true)]
async fn a_pair_that_grew_from_the_live_one_replaces_it_for_good() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(3600), true);
    // Another agent refreshed R0 (a normal rotation): R0 is spent, nothing worth keeping.
    let grown = creds("A1", "R1", WALL0 + 600_000).with_refreshed_from(&Secret::new("R0").fingerprint());
    m.seed_changed(seed("s1", grown), clock.now());
    assert_eq!(refreshes(&m.tick(clock.now())), ["R1"]);
    let effects = m.refresh_done(Err(rejected()), clock.now());
    assert!(refreshes(&effects).is_empty(), "no fall back to a spent pair");
    assert_eq!(state(&m), TokenState::ReauthRequired);
}

#[tokio::test(start_paused = true)]
async fn an_expired_live_pair_is_not_kept() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(3600), true);
    advance(Duration::from_secs(3601)).await;
    m.seed_changed(seed("s1", creds("A9", "R9", WALL0 + 4_201_000)), clock.now());
    assert_eq!(refreshes(&m.tick(clock.now())), ["R9"]);
    m.refresh_done(Err(rejected()), clock.now());
    assert_eq!(state(&m), TokenState::ReauthRequired);
}

#[tokio::test(start_paused = true)]
async fn the_kept_pair_is_saved_beside_the_adopted_one_and_outlives_a_restart() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(3600), true);
    m.seed_changed(seed("s1", creds("A9", "R9", WALL0 + 600_000)), clock.now());
    let effects = m.tick(clock.now());
    let job = saves(&effects).pop().expect("the adopted pair is saved");
    let kept = job.kept.clone().expect("with the pair it replaced beside it");
    assert_eq!(kept.credentials.refresh_token, Some(Secret::new("R0")));

    // The agent restarts from that state: the adopted pair's refusal still falls back.
    let loaded = Loaded {
        credentials: job.credentials,
        origin: Origin::State,
        seed_sha256: job.seed_sha256,
        retired: job.retired,
        seed_problem: None,
        kept: job.kept.map(|k| *k),
    };
    let paths = Paths { seed: "seed.json".into(), persist: "state.json".into(), saves_to_state: true };
    let mut m = Machine::new(Policy::default(), paths, Ok(loaded), clock.now()).with_jitter(|| 0.0);
    assert_eq!(refreshes(&m.tick(clock.now())), ["R9"]);
    let effects = m.refresh_done(Err(rejected()), clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    assert_eq!(served_token(&m).as_deref(), Some("A0"));
}
