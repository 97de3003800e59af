//! The lifecycle's transitions, driven with tokio's paused clock: each test feeds the machine what
//! happens and checks the effects it asks for and the state readers would see.

use super::machine::{Answer, Effect, Machine, Now, Paths, SaveJob};
use super::Policy;
use crate::credentials::Credentials;
use crate::oauth::{TokenError, TokenResponse};
use crate::store::{Loaded, Origin, SeedRead};
use sidecred_proto::{ErrorCode, Secret, TokenState};
use std::path::Path;
use std::time::Duration;
use tokio::time::{advance, Instant};

mod kept;
mod lease;
mod never;

const WALL0: u64 = 1_800_000_000_000;
/// The boot clock when a test's [`Clock`] starts.
const BOOT0: Duration = Duration::from_secs(86_400);

/// Both clocks, moving together: the wall clock is [`WALL0`] plus the paused clock's elapsed time.
struct Clock {
    start: Instant,
    /// Wall-clock time that passed while the monotonic clock stood still (a suspend).
    slept_ms: std::cell::Cell<u64>,
}

impl Clock {
    fn new() -> Self {
        Clock { start: Instant::now(), slept_ms: std::cell::Cell::new(0) }
    }

    fn now(&self) -> Now {
        let elapsed = Instant::now().duration_since(self.start);
        let slept = Duration::from_millis(self.slept_ms.get());
        Now {
            at: Instant::now(),
            wall_ms: WALL0 + elapsed.as_millis() as u64 + self.slept_ms.get(),
            boot: BOOT0 + elapsed + slept,
        }
    }

    /// The lease's fence at `at`, by both clocks as they read now.
    fn fence(&self, at: Instant) -> super::Fence {
        let now = self.now();
        super::Fence { at, boot: now.boot + at.saturating_duration_since(now.at) }
    }

    fn suspend(&self, d: Duration) {
        self.slept_ms.set(self.slept_ms.get() + d.as_millis() as u64);
    }

    fn at(&self, secs: u64) -> Instant {
        self.start + Duration::from_secs(secs)
    }
}

fn creds(access: &str, refresh: &str, expires_at_ms: u64) -> Credentials {
    let json = format!(
        r#"{{"claudeAiOauth":{{"accessToken":"{access}","refreshToken":"{refresh}","expiresAt":{expires_at_ms},"keep":1}}}}"#
    );
    Credentials::parse(json.as_bytes(), Path::new("seed.json")).expect("test credentials parse")
}

fn seed(sha: &str, c: Credentials) -> SeedRead {
    SeedRead {
        sha256: sha.to_owned(),
        credentials: Ok(c),
        secret_rv: None,
        origin: format!("seed file {sha}"),
    }
}

fn machine(clock: &Clock, left: Duration, saves_to_state: bool) -> Machine {
    let loaded = Loaded {
        credentials: creds("A0", "R0", WALL0 + left.as_millis() as u64),
        origin: Origin::Seed,
        seed_sha256: Some("seed0".to_owned()),
        retired: Vec::new(),
        seed_problem: None,
        kept: None,
    };
    let paths = Paths { seed: "seed.json".into(), persist: "state.json".into(), saves_to_state };
    Machine::new(Policy::default(), paths, Ok(loaded), clock.now()).with_jitter(|| 0.0)
}

fn response(access: &str, refresh: Option<&str>, secs: u64) -> TokenResponse {
    TokenResponse {
        access_token: Secret::new(access),
        refresh_token: refresh.map(Secret::new),
        expires_in: Duration::from_secs(secs),
        scopes: None,
        account_email: None,
    }
}

fn transient(retry_after: Option<Duration>) -> TokenError {
    TokenError::Transient { reason: "token endpoint answered 503".into(), retry_after }
}

fn refreshes(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Refresh { token, .. } => Some(token.expose().to_owned()),
            _ => None,
        })
        .collect()
}

fn saves(effects: &[Effect]) -> Vec<SaveJob> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Save(job) => Some(job.clone()),
            _ => None,
        })
        .collect()
}

fn served_token(m: &Machine) -> Option<String> {
    let now = Instant::now();
    m.snapshot(now).servable(now).map(|t| t.access_token.expose().to_owned())
}

fn state(m: &Machine) -> TokenState {
    m.snapshot(Instant::now()).state
}

/// Starts the scheduled refresh at once (the token is due) and checks it asked for `R0`.
fn start_due_refresh(m: &mut Machine, clock: &Clock) {
    let effects = m.tick(clock.now());
    assert_eq!(refreshes(&effects), ["R0"]);
    assert_eq!(state(m), TokenState::Refreshing);
}

/// Lands a successful refresh to A1/R1 (one hour) and its save.
fn land_refresh(m: &mut Machine, clock: &Clock) {
    let effects = m.refresh_done(Ok(response("A1", Some("R1"), 3600)), clock.now());
    let jobs = saves(&effects);
    assert_eq!(jobs.len(), 1);
    m.saved(&jobs[0], Ok(()), clock.now());
}

#[tokio::test(start_paused = true)]
async fn a_token_is_refreshed_at_the_margin_before_it_expires_and_only_once() {
    let clock = Clock::new();
    // One hour left; a file token is assumed to live 8 h, so the margin is 10 % of that: 2880 s.
    let mut m = machine(&clock, Duration::from_secs(3600), false);
    assert_eq!(state(&m), TokenState::Valid);
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(720)));

    advance(Duration::from_secs(719)).await;
    assert!(m.tick(clock.now()).is_empty(), "nothing is due before the margin");
    advance(Duration::from_secs(1)).await;
    start_due_refresh(&mut m, &clock);
    assert!(refreshes(&m.tick(clock.now())).is_empty(), "a second refresh while one is in flight");
    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(matches!(answer, Answer::AfterRefresh));
    assert!(refreshes(&effects).is_empty(), "a requested refresh joins the one in flight");
    assert_eq!(served_token(&m).as_deref(), Some("A0"), "the old token is served meanwhile");

    let effects = m.refresh_done(Ok(response("A1", Some("R1"), 3600)), clock.now());
    // Saved first, then handed to the write-back, then to the waiters.
    assert!(matches!(
        effects.as_slice(),
        [Effect::Save(_), Effect::WriteBack { .. }, Effect::AnswerWaiters(Ok(_))]
    ));
    let job = &saves(&effects)[0];
    assert_eq!(job.credentials.access_token.expose(), "A1");
    assert_eq!(job.credentials.refresh_token.as_ref().map(Secret::expose), Some("R1"));
    assert_eq!(job.credentials.expires_at_ms, WALL0 + 720_000 + 3_600_000);
    assert_eq!(job.retired, [Secret::new("R0").fingerprint()]);
    assert_eq!(job.credentials.to_json()["claudeAiOauth"]["keep"], 1);
    m.saved(job, Ok(()), clock.now());

    assert_eq!(state(&m), TokenState::Valid);
    assert_eq!(served_token(&m).as_deref(), Some("A1"));
    // A one-hour token is refreshed 360 s (10 %) before it expires.
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(720 + 3600 - 360)));
    assert_eq!(m.snapshot(Instant::now()).refresh_count, 1);
}

#[tokio::test(start_paused = true)]
async fn failed_refreshes_back_off_doubling_and_honour_retry_after() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(600), false);
    start_due_refresh(&mut m, &clock);

    let effects = m.refresh_done(Err(transient(None)), clock.now());
    match effects.as_slice() {
        [Effect::AnswerWaiters(Err(e))] => {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.message.contains("503"), "{}", e.message);
        }
        other => panic!("unexpected effects {other:?}"),
    }
    assert_eq!(state(&m), TokenState::Degraded);
    assert_eq!(served_token(&m).as_deref(), Some("A0"), "the valid token is still served");
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(1)));

    advance(Duration::from_secs(1)).await;
    start_due_refresh_again(&mut m, &clock);
    m.refresh_done(Err(transient(None)), clock.now());
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(1 + 2)), "the second wait doubles");

    advance(Duration::from_secs(2)).await;
    start_due_refresh_again(&mut m, &clock);
    m.refresh_done(Err(transient(Some(Duration::from_secs(30)))), clock.now());
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(3 + 30)), "Retry-After is a floor");
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::Degraded);
    assert!(snap.message.as_deref().is_some_and(|msg| msg.starts_with("3 refresh attempt(s) failed")));

    advance(Duration::from_secs(29)).await;
    assert!(m.tick(clock.now()).is_empty());
    advance(Duration::from_secs(1)).await;
    start_due_refresh_again(&mut m, &clock);
    assert_eq!(state(&m), TokenState::Degraded, "a retry in flight still shows the failures");
    land_refresh(&mut m, &clock);
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::Valid);
    assert_eq!(snap.last_error, None);
}

fn start_due_refresh_again(m: &mut Machine, clock: &Clock) {
    assert_eq!(refreshes(&m.tick(clock.now())), ["R0"]);
}

#[tokio::test(start_paused = true)]
async fn a_freshly_refreshed_token_rejected_upstream_is_not_refreshed_again_within_the_cooldown() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(60), false);
    start_due_refresh(&mut m, &clock);
    land_refresh(&mut m, &clock);

    // A report about the replaced token is answered with the current one, without a refresh.
    let (answer, effects) = m.rejected(&Secret::new("A0"), clock.now());
    assert!(effects.is_empty());
    match answer {
        Answer::Now(Ok(grant)) => assert_eq!(grant.access_token.expose(), "A1"),
        other => panic!("unexpected answer {other:?}"),
    }

    advance(Duration::from_secs(9)).await;
    let (answer, effects) = m.rejected(&Secret::new("A1"), clock.now());
    assert!(effects.is_empty(), "refreshed again within the cooldown");
    assert!(matches!(answer, Answer::Now(Err(ref e)) if e.code == ErrorCode::Unavailable));

    advance(Duration::from_secs(1)).await;
    let (answer, effects) = m.rejected(&Secret::new("A1"), clock.now());
    assert!(matches!(answer, Answer::AfterRefresh));
    assert_eq!(refreshes(&effects), ["R1"]);
    // Further reports of the same token join the refresh in flight.
    let (answer, effects) = m.rejected(&Secret::new("A1"), clock.now());
    assert!(matches!(answer, Answer::AfterRefresh));
    assert!(effects.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_seed_change_during_a_refresh_waits_until_the_refreshed_pair_is_saved() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(60), true);
    start_due_refresh(&mut m, &clock);

    let new_login = creds("N0", "NR0", WALL0 + 8 * 3_600_000);
    assert!(m.seed_changed(seed("seed1", new_login), clock.now()).is_empty());
    assert_eq!(served_token(&m).as_deref(), Some("A0"), "the seed is not adopted mid-refresh");
    assert_eq!(state(&m), TokenState::Refreshing);

    let effects = m.refresh_done(Ok(response("A1", Some("R1"), 3600)), clock.now());
    let jobs = saves(&effects);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].credentials.refresh_token.as_ref().map(Secret::expose),
        Some("R1"),
        "the refreshed pair is saved first"
    );
    assert_eq!(jobs[0].seed_sha256.as_deref(), Some("seed0"));
    // Then the new login is live, and its save (recording the new seed) is still due even after the
    // refreshed pair's save succeeded.
    assert_eq!(served_token(&m).as_deref(), Some("N0"));
    m.saved(&jobs[0], Ok(()), clock.now());
    let jobs = saves(&m.tick(clock.now()));
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].credentials.refresh_token.as_ref().map(Secret::expose), Some("NR0"));
    assert_eq!(jobs[0].seed_sha256.as_deref(), Some("seed1"));
    m.saved(&jobs[0], Ok(()), clock.now());
    assert_eq!(state(&m), TokenState::Valid);

    // A seed that holds a refresh token this agent already spent is stale, not new.
    let stale = creds("A0", "R0", WALL0 + 60_000);
    m.seed_changed(seed("seed2", stale), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("N0"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_save_is_shown_and_retried() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(60), false);
    start_due_refresh(&mut m, &clock);
    let effects = m.refresh_done(Ok(response("A1", Some("R1"), 3600)), clock.now());
    let job = saves(&effects).remove(0);
    m.saved(&job, Err("no space left on device".into()), clock.now());
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(1)));
    advance(Duration::from_secs(1)).await;
    let job = saves(&m.tick(clock.now())).remove(0);
    m.saved(&job, Err("no space left on device".into()), clock.now());
    // A full disk does not mend in a second: the retries back off like refreshes.
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(1 + 2)));
    advance(Duration::from_secs(1)).await;
    assert!(saves(&m.tick(clock.now())).is_empty());
    advance(Duration::from_secs(1)).await;
    let job = saves(&m.tick(clock.now())).remove(0);
    m.saved(&job, Err("no space left on device".into()), clock.now());

    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::Degraded);
    assert_eq!(snap.last_error.as_deref(), Some("saving credentials failed: no space left on device"));
    assert_eq!(served_token(&m).as_deref(), Some("A1"), "the live pair is still served");
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(3 + 4)));

    advance(Duration::from_secs(4)).await;
    let effects = m.tick(clock.now());
    assert!(refreshes(&effects).is_empty());
    let jobs = saves(&effects);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].credentials.refresh_token.as_ref().map(Secret::expose), Some("R1"));
    m.saved(&jobs[0], Ok(()), clock.now());
    assert_eq!(state(&m), TokenState::Valid);
    assert!(saves(&m.tick(clock.now())).is_empty());
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_stops_refreshing_until_a_new_login_appears() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(600), false);
    start_due_refresh(&mut m, &clock);
    let rejected = TokenError::Rejected { reason: "token endpoint answered 400 invalid_grant".into() };
    let effects = m.refresh_done(Err(rejected), clock.now());
    assert!(matches!(
        effects.as_slice(),
        [Effect::AnswerWaiters(Err(e))] if e.code == ErrorCode::ReauthRequired && e.message.contains("log in again")
    ));
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::ReauthRequired);
    assert_eq!(snap.next_refresh, None);
    assert_eq!(served_token(&m).as_deref(), Some("A0"), "the access token lives on until rejected");

    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(effects.is_empty());
    assert!(matches!(answer, Answer::Now(Err(ref e)) if e.code == ErrorCode::ReauthRequired));
    let (answer, _) = m.rejected(&Secret::new("A0"), clock.now());
    assert!(matches!(answer, Answer::Now(Err(ref e)) if e.code == ErrorCode::ReauthRequired));
    assert_eq!(served_token(&m), None, "a rejected token is no longer handed out");

    advance(Duration::from_secs(86_400)).await;
    assert!(refreshes(&m.tick(clock.now())).is_empty(), "no refresh with a dead grant");

    m.seed_changed(seed("seed1", creds("N0", "NR0", WALL0 + 90_000_000)), clock.now());
    assert_eq!(state(&m), TokenState::Valid);
    assert_eq!(served_token(&m).as_deref(), Some("N0"));
}

#[tokio::test(start_paused = true)]
async fn a_token_that_expires_while_the_endpoint_is_down_is_no_longer_served() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(60), false);
    start_due_refresh(&mut m, &clock);
    m.refresh_done(Err(transient(Some(Duration::from_secs(120)))), clock.now());
    // The machine wakes when the token crosses into "expired" (60 s less the 5 s guard).
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(55)));

    advance(Duration::from_secs(54)).await;
    assert_eq!(served_token(&m).as_deref(), Some("A0"));
    advance(Duration::from_secs(1)).await;
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::Expired);
    assert!(snap.servable(Instant::now()).is_none());
    assert!(snap.terminal_error().is_none(), "clients wait for a refresh rather than fail at once");
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(120)));

    advance(Duration::from_secs(65)).await;
    start_due_refresh_again(&mut m, &clock);
    land_refresh(&mut m, &clock);
    assert_eq!(state(&m), TokenState::Valid);
    assert_eq!(served_token(&m).as_deref(), Some("A1"));
}

#[tokio::test(start_paused = true)]
async fn without_a_login_nothing_is_refreshed_and_a_seed_brings_one() {
    let clock = Clock::new();
    let paths = Paths { seed: "seed.json".into(), persist: "state.json".into(), saves_to_state: true };
    let mut m = Machine::new(Policy::default(), paths, Err("no such file".into()), clock.now());
    let snap = m.snapshot(Instant::now());
    assert_eq!(snap.state, TokenState::NoCredentials);
    assert_eq!(snap.message.as_deref(), Some("no such file"));
    assert!(snap.terminal_error().is_some_and(|e| e.code == ErrorCode::Unavailable));
    assert_eq!(m.next_wake(clock.now()), None);
    let (answer, effects) = m.refresh_requested(clock.now());
    assert!(effects.is_empty());
    assert!(matches!(answer, Answer::Now(Err(_))));

    m.seed_changed(seed("seed1", creds("N0", "NR0", WALL0 + 90_000_000)), clock.now());
    assert_eq!(served_token(&m).as_deref(), Some("N0"));
    // In a state directory the new login is saved with the seed it came from.
    let jobs = saves(&m.tick(clock.now()));
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].seed_sha256.as_deref(), Some("seed1"));
}

#[tokio::test(start_paused = true)]
async fn after_a_suspend_the_token_is_refreshed_by_the_wall_clock() {
    let clock = Clock::new();
    // Two hours left: the refresh is due in 2 h - 2880 s = 4320 s by the monotonic clock.
    let mut m = machine(&clock, Duration::from_secs(2 * 3600), false);
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(4320)));
    advance(Duration::from_secs(60)).await;
    assert!(m.tick(clock.now()).is_empty());

    // The laptop sleeps for 3 hours: the monotonic clock does not move, the wall clock does.
    clock.suspend(Duration::from_secs(3 * 3600));
    let effects = m.tick(clock.now());
    assert_eq!(refreshes(&effects), ["R0"], "the token expired during the suspend: refresh at once");
    let snap = m.snapshot(Instant::now());
    assert!(
        snap.token.as_ref().is_some_and(|t| t.deadline <= Instant::now()),
        "the deadline moved to the wall clock's"
    );
    assert_eq!(snap.state, TokenState::Expired);
}

#[tokio::test(start_paused = true)]
async fn clocks_that_agree_leave_the_schedule_alone() {
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(2 * 3600), false);
    clock.suspend(Duration::from_secs(1));
    assert!(m.tick(clock.now()).is_empty());
    assert_eq!(m.next_wake(clock.now()), Some(clock.at(4320)), "a second of drift is not a suspend");
}

fn secret(rv: &str, c: Credentials) -> SeedRead {
    SeedRead { secret_rv: Some(rv.to_owned()), ..seed(&format!("secret{rv}"), c) }
}

fn refused(effects: &[Effect]) -> String {
    match effects {
        [Effect::AnswerWaiters(Err(e))] if e.code == ErrorCode::ReauthRequired => e.message.clone(),
        other => panic!("not a refusal: {other:?}"),
    }
}

/// With the shared Secret agreeing that the refused token was the live one, something else spent it;
/// with the Secret holding another pair by the time the refusal comes (even one that arrived while the
/// refresh was in flight), an agent of ours did, and the pair it holds is adopted.
#[tokio::test(start_paused = true)]
async fn a_refusal_is_judged_by_our_records_and_the_shared_secret() {
    let clock = Clock::new();
    let invalid_grant = || Err(TokenError::Rejected { reason: "invalid_grant".into() });
    let mut m = machine(&clock, Duration::from_secs(600), false);
    m.seed_changed(secret("1", creds("A0", "R0", WALL0 + 600_000)), clock.now());
    start_due_refresh(&mut m, &clock);
    let message = refused(&m.refresh_done(invalid_grant(), clock.now()));
    assert!(message.starts_with("invalid_grant. SOMETHING ELSE IS USING THIS LOGIN"), "{message}");
    assert_eq!(m.snapshot(Instant::now()).refusal.map(|r| r.as_str()), Some("foreign"));

    let mut m = machine(&clock, Duration::from_secs(600), false);
    m.seed_changed(secret("1", creds("A0", "R0", WALL0 + 600_000)), clock.now());
    start_due_refresh(&mut m, &clock);
    m.seed_changed(secret("2", creds("A1", "R1", WALL0 + 90_000_000)), clock.now());
    let message = refused(&m.refresh_done(invalid_grant(), clock.now()));
    assert!(message.contains("the shared Secret holds another pair"), "{message}");
    assert!(!message.contains("SOMETHING ELSE"), "{message}");
    assert_eq!(served_token(&m).as_deref(), Some("A1"), "the Secret's pair is adopted");
    assert_eq!(m.snapshot(Instant::now()).refusal, None, "and the refusal is behind it");
}

/// A login without a record starts its clock when first seen; the same pair arriving with a record of
/// the login itself (another pod's write-back) takes that one, so every pod shows the same age.
#[tokio::test(start_paused = true)]
async fn the_login_clock_starts_when_first_seen_and_follows_a_better_record() {
    use crate::credentials::{ClockStart, LoginClock};
    let clock = Clock::new();
    let mut m = machine(&clock, Duration::from_secs(3600), false);
    let first = m.snapshot(Instant::now()).login_clock.expect("a clock");
    assert_eq!(first, LoginClock::first_seen(WALL0));
    advance(Duration::from_secs(60)).await;
    let with_record =
        creds("A0", "R0", WALL0 + 3_600_000).with_login_clock(LoginClock::login(WALL0 - 86_400_000));
    m.seed_changed(secret("1", with_record), clock.now());
    let clock_now = m.snapshot(Instant::now()).login_clock.expect("a clock");
    assert_eq!((clock_now.start, clock_now.started_at_ms), (ClockStart::Login, WALL0 - 86_400_000));
    m.refresh_requested(clock.now());
    let effects = m.refresh_done(Ok(response("A1", Some("R1"), 28_800)), clock.now());
    let saved = effects.iter().find_map(|e| match e {
        Effect::Save(job) => Some(job.credentials.login_clock()),
        _ => None,
    });
    assert_eq!(saved, Some(Some(LoginClock::login(WALL0 - 86_400_000))), "the save carries the clock");
}
