//! Tokens that are never refreshed: a login without a refresh token (a long-lived, inference-only
//! login) and a static token from the environment. Neither ever asks the token endpoint for anything;
//! once the token expires or the upstream rejects it, clients are told at once that a person must act.

use super::*;
use crate::lifecycle::snapshot::Snapshot;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// A long-lived login as `login --long-lived` writes it: one scope, no refresh token.
fn long_lived(access: &str, expires_at_ms: u64) -> Credentials {
    let json = format!(
        r#"{{"claudeAiOauth":{{"accessToken":"{access}","expiresAt":{expires_at_ms},"scopes":["user:inference"],"keep":1}}}}"#
    );
    Credentials::parse(json.as_bytes(), Path::new("seed.json")).expect("test credentials parse")
}

fn long_lived_machine(clock: &Clock, left: Duration) -> Machine {
    let loaded = Loaded {
        credentials: long_lived("L0", WALL0 + left.as_millis() as u64),
        origin: Origin::Seed,
        seed_sha256: Some("seed0".to_owned()),
        retired: Vec::new(),
        seed_problem: None,
        kept: None,
    };
    let paths = Paths { seed: "seed.json".into(), persist: "seed.json".into(), saves_to_state: false };
    Machine::new(Policy::default(), paths, Ok(loaded), clock.now()).with_jitter(|| 0.0)
}

fn snap(m: &Machine) -> Snapshot {
    m.snapshot(Instant::now())
}

#[tokio::test(start_paused = true)]
async fn a_long_lived_login_is_served_for_its_whole_life_without_a_refresh_attempt() {
    let clock = Clock::new();
    let mut m = long_lived_machine(&clock, YEAR);
    let s = snap(&m);
    assert_eq!(s.state, TokenState::Valid);
    assert_eq!(s.next_refresh, None, "nothing is ever scheduled");
    assert_eq!(s.warning, None, "a long-lived login is no misconfiguration");
    assert!(s.message.as_deref().is_some_and(|msg| msg.contains("never refreshed")), "{:?}", s.message);
    // The only wake-up is the moment it expires (less the guard), to tell readers.
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(YEAR.as_secs() - 5)));

    // A day at a time through the whole year: never a refresh, never a save.
    for day in 1..365 {
        advance(Duration::from_secs(86_400)).await;
        let effects = m.tick(clock.now());
        assert!(effects.is_empty(), "day {day}: {effects:?}");
        assert_eq!(served_token(&m).as_deref(), Some("L0"), "day {day}");
    }
    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(effects.is_empty());
    assert!(
        matches!(answer, Answer::Now(Err(ref e)) if e.code == ErrorCode::Unavailable && e.message.contains("no refresh token")),
        "{answer:?}"
    );

    // It expires: no refresh is tried, and clients are told at once to log in again rather than
    // waiting for a refresh that cannot come.
    advance(Duration::from_secs(86_400 - 5)).await;
    assert!(m.tick(clock.now()).is_empty());
    let s = snap(&m);
    assert_eq!(s.state, TokenState::ReauthRequired);
    assert!(s.servable(Instant::now()).is_none());
    let err = s.terminal_error().expect("a final answer");
    assert_eq!(err.code, ErrorCode::ReauthRequired);
    assert!(err.message.contains("login --long-lived"), "{}", err.message);
    advance(YEAR).await;
    assert!(m.tick(clock.now()).is_empty(), "not even long after");
    assert_eq!(m.snapshot(Instant::now()).refresh_count, 0);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_long_lived_token_asks_for_a_login_and_a_new_one_is_adopted() {
    let clock = Clock::new();
    let mut m = long_lived_machine(&clock, YEAR);
    let (answer, effects) = m.rejected(&Secret::new("L0"), clock.now());
    assert!(effects.is_empty(), "nothing to refresh with");
    assert!(matches!(answer, Answer::Now(Err(ref e)) if e.code == ErrorCode::ReauthRequired), "{answer:?}");
    assert_eq!(state(&m), TokenState::ReauthRequired);
    assert_eq!(served_token(&m), None, "a rejected token is no longer handed out");

    // Another long-lived login in the seed is taken as it is.
    m.seed_changed(seed("seed1", long_lived("L1", WALL0 + YEAR.as_millis() as u64)), clock.now());
    assert_eq!(state(&m), TokenState::Valid);
    assert_eq!(served_token(&m).as_deref(), Some("L1"));

    // A full login in its place is refreshed again as usual.
    m.seed_changed(seed("seed2", creds("A5", "R5", WALL0 + 60_000)), clock.now());
    assert_eq!(refreshes(&m.tick(clock.now())), ["R5"]);
}

#[tokio::test(start_paused = true)]
async fn a_static_token_is_never_refreshed_or_saved_and_its_rejection_says_so() {
    let clock = Clock::new();
    let paths = Paths { seed: "$T".into(), persist: String::new(), saves_to_state: false };
    let mut m = Machine::static_token(Policy::default(), paths, "T", Secret::new("S0")).with_jitter(|| 0.0);
    let s = snap(&m);
    assert_eq!(s.state, TokenState::Valid);
    assert!(s.static_token);
    assert!(s.warning.as_deref().is_some_and(|w| w.starts_with("STATIC TOKEN from $T")), "{:?}", s.warning);
    let report = s.report(Instant::now());
    assert_eq!(report.expires_at_ms, None, "its expiry is unknown, not decades away");
    assert_eq!(report.expires_in_s, None);
    assert_eq!(report.next_refresh_in_s, None);
    assert_eq!(report.persist_path, None);
    assert!(report.warning.is_some());

    for _ in 0..20 {
        advance(YEAR / 2).await;
        assert!(m.tick(clock.now()).is_empty());
    }
    assert_eq!(served_token(&m).as_deref(), Some("S0"), "still served ten years on");
    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(effects.is_empty());
    assert!(
        matches!(answer, Answer::Now(Err(ref e)) if e.message.contains("cannot be refreshed")),
        "{answer:?}"
    );
    // A file that appears is not what this agent was told to serve.
    m.seed_changed(seed("seed1", creds("N0", "NR0", WALL0 + 90_000_000)), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("S0"));

    // A report about another token changes nothing; one about the static token is final.
    let (answer, _) = m.rejected(&Secret::new("other"), clock.now());
    assert!(matches!(answer, Answer::Now(Ok(ref g)) if g.access_token.expose() == "S0"), "{answer:?}");
    let (answer, effects) = m.rejected(&Secret::new("S0"), clock.now());
    assert!(effects.is_empty());
    match answer {
        Answer::Now(Err(e)) => {
            assert_eq!(e.code, ErrorCode::StaticTokenRejected);
            assert!(e.message.contains("a static token cannot be refreshed"), "{}", e.message);
            assert!(e.message.contains("$T"), "{}", e.message);
        }
        other => panic!("unexpected answer {other:?}"),
    }
    let s = snap(&m);
    assert_eq!(s.state, TokenState::ReauthRequired);
    assert!(s.servable(Instant::now()).is_none());
    let err = s.terminal_error().expect("a final answer");
    assert_eq!(err.code, ErrorCode::StaticTokenRejected, "every later request hears the same");
    assert_eq!(m.snapshot(Instant::now()).refresh_count, 0);
}
