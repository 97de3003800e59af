//! The token lifecycle's states and transitions, with no I/O: each method takes what happened and when,
//! changes the state, and returns the [`Effect`]s for the task in `task.rs` to perform. Nothing here
//! sleeps, reads a clock or touches the network, so every transition is unit-tested with chosen times.
//! Taking a pair from outside is `machine/adopt.rs`; what a refresh or a save brought back is
//! `machine/outcome.rs`; the pair an adopted one replaced, kept until it proves itself, `machine/kept.rs`.

mod adopt;
mod kept;
mod outcome;

use super::authority::{Authority, LeaseView};
use super::policy::Policy;
use super::refusal::Witness;
use super::snapshot::{Served, Snapshot};
use super::state::{Live, Phase, Refresh, Save, Unrefreshable, RACED};
use crate::credentials::{now_ms, Credentials};
use crate::store::Loaded;
use sidecred_proto::{ErrorCode, ProtoError, Secret, TokenState};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// A moment by three clocks: the monotonic one times refreshes, the wall clock stamps what is written
/// and shown, the boot clock (which counts a suspend) measures what is left of the lease's fence.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: u64,
    pub boot: Duration,
}

impl Now {
    pub fn read() -> Now {
        Now { at: Instant::now(), wall_ms: now_ms(), boot: super::fence::since_boot() }
    }
}

/// What the task must do after a transition, in order.
#[derive(Debug)]
pub enum Effect {
    /// Ask the token endpoint for a new pair with this refresh token, giving up at `deadline` (the
    /// lease's fence) if there is one; report back with [`Machine::refresh_done`].
    Refresh { token: Secret, deadline: Option<Instant> },
    /// Write the live pair to the store; report back with [`Machine::saved`].
    Save(SaveJob),
    /// Hand the live pair to the Secret write-back, if there is one.
    WriteBack { credentials: Credentials, retired: Vec<String> },
    /// Answer everyone who waits for the refresh that just ended: with the new token, or an error.
    AnswerWaiters(Result<Served, ProtoError>),
}

/// What one save writes; [`Machine::saved`] checks it against what is live by then.
#[derive(Debug, Clone)]
pub struct SaveJob {
    pub credentials: Credentials,
    pub seed_sha256: Option<String>,
    pub retired: Vec<String>,
    /// Boxed: a second document, rarely there.
    pub kept: Option<Box<crate::store::KeptPair>>,
}

/// The answer to a request from a client of the socket.
#[derive(Debug)]
pub enum Answer {
    Now(Result<sidecred_proto::TokenGrant, ProtoError>),
    /// Wait: the answer comes with [`Effect::AnswerWaiters`] when the refresh in flight ends.
    AfterRefresh,
}

pub struct Machine {
    policy: Policy,
    phase: Phase,
    seed_sha256: Option<String>,
    retired: Vec<String>,
    /// Whether saves go to a state file (which records the seed it grew from) rather than the seed.
    saves_to_state: bool,
    account: Option<String>,
    refresh_count: u64,
    last_refresh_at_ms: Option<u64>,
    last_success: Option<Instant>,
    last_error: Option<(String, u64)>,
    /// Saves that failed in a row, for the retry's backoff.
    save_failures: u32,
    seed_path: String,
    persist_path: String,
    /// A number in [0, 1] for the backoff's jitter; fixed in tests.
    jitter: fn() -> f64,
    /// Whether this agent may refresh: always alone, only as the lease holder when sharing a login.
    authority: Authority,
    /// The shared Secret's `resourceVersion` last read (with `--lease`).
    secret_rv: Option<String>,
    /// What decides who spent a refused refresh token ([`super::refusal`]).
    refusals: Witness,
    /// The fingerprint of the refresh token held when this agent took over a lease its holder had not
    /// released: that holder may have spent it ([`super::hold`]).
    inherited: Option<String>,
    /// A valid pair an adopted one replaced, until the adopted one proves itself ([`kept`]).
    kept: Option<crate::store::KeptPair>,
}

/// Where the store reads and writes, for logs and the status report.
pub struct Paths {
    pub seed: String,
    pub persist: String,
    pub saves_to_state: bool,
}

impl Machine {
    /// `start` is what the store loaded, or why nothing could be.
    pub fn new(policy: Policy, paths: Paths, start: Result<Loaded, String>, now: Now) -> Self {
        let mut machine = Machine {
            policy,
            phase: Phase::NoLogin { reason: String::new() },
            seed_sha256: None,
            retired: Vec::new(),
            saves_to_state: paths.saves_to_state,
            account: None,
            refresh_count: 0,
            last_refresh_at_ms: None,
            last_success: None,
            last_error: None,
            save_failures: 0,
            seed_path: paths.seed,
            persist_path: paths.persist,
            jitter: rand::random::<f64>,
            authority: Authority::Single,
            secret_rv: None,
            refusals: Witness::default(),
            inherited: None,
            kept: None,
        };
        match start {
            Ok(loaded) => {
                machine.seed_sha256 = loaded.seed_sha256;
                machine.retired = loaded.retired;
                machine.kept = loaded.kept;
                machine.adopt(loaded.credentials, now);
            }
            Err(reason) => machine.phase = Phase::NoLogin { reason },
        }
        machine
    }

    /// A machine serving one token it was handed (`run --static-token-env VAR`): no file, no refresh
    /// token, no refresh, no save, ever.
    pub fn static_token(policy: Policy, paths: Paths, var: &str, token: Secret) -> Self {
        let mut machine = Machine::new(policy, paths, Err(String::new()), Now::read());
        machine.phase = Phase::Serving {
            live: Live { credentials: Credentials::static_token(token), deadline: far_future() },
            refresh: Refresh::Never {
                why: Unrefreshable::Static { var: var.to_owned() },
                token_rejected: false,
            },
            save: Save::Done,
        };
        machine
    }

    /// Refreshes only while holding the lease `lease` (`NAMESPACE/NAME`), which it does not yet.
    pub fn with_lease(mut self, lease: String) -> Self {
        self.authority = Authority::Lease(LeaseView::unknown(lease));
        self
    }

    #[cfg(test)]
    pub fn with_jitter(mut self, jitter: fn() -> f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The live pair and the refresh tokens it replaced, for a write-back started after the fact.
    pub fn live_pair(&self) -> Option<(&Credentials, &[String])> {
        match &self.phase {
            Phase::Serving { live, .. } => Some((&live.credentials, &self.retired)),
            Phase::NoLogin { .. } => None,
        }
    }

    /// When [`Machine::tick`] has something to do next: a refresh or save falls due, or the token crosses
    /// into "expired" (so readers and status see it).
    pub fn next_wake(&self, now: Now) -> Option<Instant> {
        let Phase::Serving { live, refresh, save } = &self.phase else { return None };
        let (clocks, now) = (now, now.at);
        let expiry = live.deadline.checked_sub(super::EXPIRY_GUARD).unwrap_or(live.deadline);
        [
            match refresh {
                // Without the lease a due refresh waits for it: the lease's news wakes the task, not a
                // timer that would fire again and again.
                Refresh::Scheduled { at, .. } if self.authority.may_refresh(clocks).is_ok() => {
                    Some(self.due_refresh_waits(now).map_or(*at, |until| until.max(*at)))
                }
                Refresh::Raced { until, .. } => Some(*until),
                _ => None,
            },
            match save {
                Save::Due(at) => Some(*at),
                Save::Done => None,
            },
            Some(expiry).filter(|e| now < *e),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn tick(&mut self, now: Now) -> Vec<Effect> {
        self.follow_the_wall_clock(now);
        let mut effects = Vec::new();
        if let Phase::Serving { save: Save::Due(at), .. } = &self.phase {
            if *at <= now.at {
                effects.extend(self.save_job().map(Effect::Save));
            }
        }
        if let Phase::Serving { refresh: Refresh::Scheduled { at, .. }, .. } = &self.phase {
            if *at <= now.at && self.due_refresh_waits(now.at).is_none() {
                effects.extend(self.start_refresh("the token is due for refresh", now));
            }
        }
        if let Phase::Serving { refresh, .. } = &mut self.phase {
            if let Refresh::Raced { reason, until } = refresh {
                if *until <= now.at {
                    error!(
                        "no pair reached the shared Secret after the refused refresh; a new login is needed"
                    );
                    let reason = reason.clone();
                    *refresh = Refresh::ReauthRequired { reason, token_rejected: false };
                }
            }
        }
        effects
    }

    /// The monotonic clock stands still while a machine is suspended, so after a laptop wakes up the
    /// token's deadline by it lies in the future although the token has expired. When the wall clock
    /// says less time is left than the monotonic deadline does, the deadline and the next refresh move
    /// earlier by the difference.
    fn follow_the_wall_clock(&mut self, now: Now) {
        let Phase::Serving { live, refresh, .. } = &mut self.phase else { return };
        let by_wall = Duration::from_millis(live.credentials.remaining_ms(now.wall_ms));
        let by_monotonic = live.deadline.saturating_duration_since(now.at);
        let slept = by_monotonic.saturating_sub(by_wall);
        if slept < WALL_CLOCK_TOLERANCE {
            return;
        }
        warn!(behind = ?slept, "the clock jumped (a suspend?); the token expires sooner than timed");
        live.deadline = now.at.checked_add(by_wall).unwrap_or(live.deadline);
        if let Refresh::Scheduled { at, .. } = refresh {
            *at = at.checked_sub(slept).unwrap_or(now.at);
        }
    }

    /// A client asked for a refresh now.
    pub fn refresh_requested(&mut self, now: Now) -> (Answer, Vec<Effect>) {
        match &self.phase {
            Phase::Serving { refresh: Refresh::Raced { .. }, .. } => {
                (Answer::Now(Err(unavailable(RACED))), Vec::new())
            }
            Phase::NoLogin { .. } | Phase::Serving { refresh: Refresh::ReauthRequired { .. }, .. } => {
                let err = self
                    .snapshot(now.at)
                    .terminal_error()
                    .unwrap_or_else(|| unavailable("nothing to refresh"));
                (Answer::Now(Err(err)), Vec::new())
            }
            Phase::Serving { refresh: Refresh::Never { why, .. }, .. } => {
                let err = self
                    .snapshot(now.at)
                    .terminal_error()
                    .unwrap_or_else(|| unavailable(&why.cannot_refresh()));
                (Answer::Now(Err(err)), Vec::new())
            }
            Phase::Serving { .. } => {
                if let Err(why) = self.authority.may_refresh(now) {
                    return (Answer::Now(Err(unavailable(&why))), Vec::new());
                }
                (Answer::AfterRefresh, self.start_refresh("a refresh was requested", now))
            }
        }
    }

    /// The lease task learned who holds the lease. Becoming the holder starts a refresh that fell due
    /// meanwhile, unless it waits ([`super::hold`]).
    pub fn lease_changed(&mut self, view: LeaseView, now: Now) -> Vec<Effect> {
        let before = self.authority.role(now.at);
        if let Authority::Lease(current) = &mut self.authority {
            let taken_over = view.late_write_by.is_some() && view.late_write_by != current.late_write_by;
            *current = view;
            if taken_over {
                // The election read the Secret before reporting the takeover: the live pair is the one
                // the old holder left there.
                self.inherited =
                    self.live_pair().and_then(|(c, _)| c.refresh_token.as_ref()).map(|r| r.fingerprint());
                info!(wait = ?self.authority.late_write_by(now.at).map(|t| t.saturating_duration_since(now.at)), "took over a lease its holder did not release: a due refresh of the pair it left waits for its late write first");
            }
        }
        let after = self.authority.role(now.at);
        if before != after {
            info!(role = after.as_str(), holder = ?self.authority.lease().and_then(|l| l.holder.clone()), "lease role changed");
        }
        self.tick(now)
    }

    /// The upstream rejected `token`. Refreshes only if it is still the live one, so many reports of one
    /// token make one refresh.
    pub fn rejected(&mut self, token: &Secret, now: Now) -> (Answer, Vec<Effect>) {
        let Phase::Serving { live, refresh, .. } = &mut self.phase else {
            return (Answer::Now(Err(unavailable("no credentials"))), Vec::new());
        };
        if live.credentials.access_token != *token {
            // Already replaced: hand out the current one without refreshing again.
            if matches!(refresh, Refresh::InFlight { .. }) {
                return (Answer::AfterRefresh, Vec::new());
            }
            let snap = self.snapshot(now.at);
            let answer = snap.immediate_answer(now.at).unwrap_or_else(|| Err(unavailable("no valid token")));
            return (Answer::Now(answer), Vec::new());
        }
        match refresh {
            Refresh::Raced { .. } => return (Answer::Now(Err(unavailable(RACED))), Vec::new()),
            Refresh::ReauthRequired { reason, token_rejected } => {
                *token_rejected = true;
                let err = ProtoError::new(ErrorCode::ReauthRequired, reason.clone());
                return (Answer::Now(Err(err)), Vec::new());
            }
            Refresh::Never { why, token_rejected } => {
                *token_rejected = true;
                let err = why.rejected();
                error!(token = %token, "the upstream rejected a token that cannot be refreshed: {}", err.message);
                return (Answer::Now(Err(err)), Vec::new());
            }
            Refresh::Scheduled { .. }
                if self.last_success.is_some_and(|t| {
                    now.at.saturating_duration_since(t) < self.policy.rejection_cooldown
                }) =>
            {
                warn!(token = %token, "the upstream rejected a token obtained moments ago; not refreshing again so soon");
                let err = unavailable(
                    "the upstream rejected a freshly refreshed token; check the account's status",
                );
                return (Answer::Now(Err(err)), Vec::new());
            }
            _ => {}
        }
        if let Err(why) = self.authority.may_refresh(now) {
            // The holder refreshes; its new pair reaches this agent through the Secret.
            warn!(token = %token, "the upstream rejected the current token; {why}");
            return (
                Answer::Now(Err(unavailable(&format!("the upstream rejected the token; {why}")))),
                Vec::new(),
            );
        }
        (Answer::AfterRefresh, self.start_refresh("the upstream rejected the current token", now))
    }

    /// Until when a refresh that fell due waits although this agent may refresh ([`super::hold`]).
    fn due_refresh_waits(&self, now: Instant) -> Option<Instant> {
        let Phase::Serving { live, .. } = &self.phase else { return None };
        let live_fp = live.credentials.refresh_token.as_ref().map(|r| r.fingerprint());
        super::hold::hold(super::hold::Facts {
            now,
            deadline: live.deadline,
            floor: self.policy.margin_min,
            api_unreachable: self.authority.api_unreachable(),
            late_write_by: self.authority.late_write_by(now),
            inherited: live_fp.is_some() && live_fp == self.inherited,
        })
    }

    fn start_refresh(&mut self, why: &str, now: Now) -> Vec<Effect> {
        let Ok(permit) = self.authority.may_refresh(now) else { return Vec::new() };
        let Phase::Serving { live, refresh, .. } = &mut self.phase else { return Vec::new() };
        let Refresh::Scheduled { at, failures } = *refresh else { return Vec::new() };
        // A login without a refresh token is never scheduled (see `adopt`).
        let Some(token) = live.credentials.refresh_token.clone() else { return Vec::new() };
        info!(refresh_token = %token, reason = why, "refreshing the access token");
        *refresh = Refresh::InFlight { scheduled: at, failures, pending_seed: None };
        vec![Effect::Refresh { token, deadline: permit.deadline }]
    }

    /// The state as readers and `status` see it at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut snap = Snapshot {
            token: None,
            token_rejected: false,
            state: TokenState::NoCredentials,
            message: None,
            warning: None,
            static_token: false,
            next_refresh: None,
            refresh_count: self.refresh_count,
            last_refresh_at_ms: self.last_refresh_at_ms,
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at_ms: self.last_error.as_ref().map(|(_, t)| *t),
            subscription_type: None,
            scopes: Vec::new(),
            account: self.account.clone(),
            seed_path: self.seed_path.clone(),
            persist_path: self.persist_path.clone(),
            role: self.authority.role(now),
            lease: self.authority.lease().map(|l| l.lease.clone()),
            lease_holder: self.authority.lease().and_then(|l| l.holder.clone()),
            secret_resource_version: self.secret_rv.clone(),
            login_clock: None,
            login_max_age: self.policy.login_max_age,
            refusal: self.refusals.last(),
            generation: 0,
        };
        self.phase.describe(now, &mut snap);
        if let Some(problem) = self.authority.lease().and_then(|l| l.problem.as_ref()) {
            // Serving goes on while the token is valid; nobody refreshes until the API is back.
            if matches!(snap.state, TokenState::Valid | TokenState::Refreshing) {
                snap.state = TokenState::Degraded;
                snap.message = Some(format!(
                    "{problem}; serving the current token while it is valid, no refresh until the lease is held again"
                ));
            }
        }
        snap
    }
}

/// Differences between the clocks below this are drift, not a suspend.
const WALL_CLOCK_TOLERANCE: Duration = Duration::from_secs(2);

fn unavailable(why: &str) -> ProtoError {
    ProtoError::new(ErrorCode::Unavailable, why)
}

/// When to refresh a token that expires at `deadline`: `margin` before it, or now if that has passed.
fn refresh_due(deadline: Instant, margin: Duration, now: Instant) -> Instant {
    deadline.checked_sub(margin).unwrap_or(now)
}

/// Stands in for a deadline too far away to represent: a token that lives that long never needs one.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}
