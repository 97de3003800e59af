//! The token lifecycle. One task owns the credentials and is the only one that ever talks to the token
//! endpoint, so "single flight" holds by construction: everyone else sends it a [`Command`] or reads the
//! latest [`Snapshot`] from a watch channel, which is how a token request is answered from memory.

use crate::credentials::{now_ms, Credentials, TokenUpdate};
use crate::oauth::{OAuthClient, TokenError, TokenResponse};
use crate::store::{is_retired, retire, Loaded, SeedRead, Store};
use crate::writeback::WriteBack;
use sidecred_proto::{ErrorCode, ProtoError, Secret, TokenGrant, TokenState};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

/// A token this close to expiry is treated as expired: by the time a request reaches the upstream it
/// would be, and serving a token past its expiry only earns a 401.
pub const EXPIRY_GUARD: Duration = Duration::from_secs(5);

/// How to time refreshes and retries.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Refresh when less than max(margin_min, margin_fraction × lifetime) is left.
    pub margin_min: Duration,
    pub margin_fraction: f64,
    /// Lifetime assumed for a token read from a file, whose issue time is unknown.
    pub assumed_lifetime: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// After a successful refresh, a report that the new token was rejected does not cause another
    /// refresh within this time: an upstream that rejects every token must not drain the endpoint.
    pub rejection_cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            margin_min: Duration::from_secs(300),
            margin_fraction: 0.10,
            assumed_lifetime: Duration::from_secs(8 * 3600),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            rejection_cooldown: Duration::from_secs(10),
        }
    }
}

impl Policy {
    /// How long before expiry to refresh a token that lives `lifetime`. Never more than half the
    /// lifetime, so a short-lived token is not refreshed in a loop.
    pub fn margin(&self, lifetime: Duration) -> Duration {
        let proportional = lifetime.mul_f64(self.margin_fraction.clamp(0.0, 1.0));
        self.margin_min.max(proportional).min(lifetime / 2)
    }

    /// The wait before retry number `attempt` (1-based): doubling from `backoff_min`, capped at
    /// `backoff_max`, with `jitter` in [0, 1] taking up to half of it off so many agents do not retry in
    /// step. A `Retry-After` from the server is a floor.
    pub fn backoff(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exp = self.backoff_min.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
        let capped = exp.min(self.backoff_max);
        let jittered = capped.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0));
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// The token being served.
#[derive(Debug, Clone)]
pub struct Served {
    pub access_token: Secret,
    pub expires_at_ms: u64,
    pub deadline: Instant,
}

impl Served {
    pub fn is_valid(&self, now: Instant) -> bool {
        now + EXPIRY_GUARD < self.deadline
    }

    pub fn grant(&self, now: Instant) -> TokenGrant {
        TokenGrant {
            access_token: self.access_token.clone(),
            expires_at_ms: self.expires_at_ms,
            expires_in_ms: self.deadline.saturating_duration_since(now).as_millis() as u64,
        }
    }
}

/// Everything a reader needs, published after every change.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub token: Option<Served>,
    /// Set when the served token must not be handed out even if unexpired (it was rejected upstream
    /// and the refresh token is dead).
    pub token_rejected: bool,
    pub state: TokenState,
    pub message: Option<String>,
    pub next_refresh: Option<Instant>,
    pub refresh_count: u64,
    pub last_refresh_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub subscription_type: Option<String>,
    pub scopes: Vec<String>,
    pub account: Option<String>,
}

impl Snapshot {
    /// The token to hand out now, if any.
    pub fn servable(&self, now: Instant) -> Option<&Served> {
        self.token.as_ref().filter(|t| !self.token_rejected && t.is_valid(now))
    }

    /// The error to answer with when there is no servable token and waiting cannot help.
    pub fn terminal_error(&self) -> Option<ProtoError> {
        match self.state {
            TokenState::ReauthRequired => Some(ProtoError::new(
                ErrorCode::ReauthRequired,
                self.message.clone().unwrap_or_else(|| REAUTH_HINT.to_owned()),
            )),
            TokenState::NoCredentials => Some(ProtoError::new(
                ErrorCode::Unavailable,
                self.message.clone().unwrap_or_else(|| "no credentials".to_owned()),
            )),
            _ => None,
        }
    }
}

const REAUTH_HINT: &str = "the refresh token was rejected; log in again (`sidecred-agent login`, then \
                           update the credentials file or Secret) and the agent picks it up";

type Reply = oneshot::Sender<Result<TokenGrant, ProtoError>>;

pub enum Command {
    /// The upstream rejected `token`.
    Rejected { token: Secret, reply: Reply },
    /// Refresh now.
    Refresh { reply: Reply },
    /// The seed file changed on disk.
    Seed(SeedRead),
}

type RefreshFuture = Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send>>;

/// Where the lifecycle stands; together with the token's validity it gives the published state.
#[derive(Debug, Clone)]
enum Lifecycle {
    Healthy,
    Failing { attempts: u32 },
    ReauthRequired { reason: String },
    NoCredentials { reason: String },
}

struct Live {
    credentials: Credentials,
    deadline: Instant,
}

pub struct Manager {
    store: Store,
    oauth: OAuthClient,
    policy: Policy,
    published: watch::Sender<Arc<Snapshot>>,
    live: Option<Live>,
    lifecycle: Lifecycle,
    seed_sha256: Option<String>,
    retired: Vec<String>,
    inflight: Option<RefreshFuture>,
    waiters: Vec<Reply>,
    pending_seed: Option<SeedRead>,
    next_attempt: Option<Instant>,
    /// The live pair could not be written; retry at this time. It exists only in memory until then.
    persist_retry: Option<Instant>,
    last_success: Option<Instant>,
    refresh_count: u64,
    last_refresh_at_ms: Option<u64>,
    last_error: Option<(String, u64)>,
    token_rejected: bool,
    account: Option<String>,
    write_back: Option<WriteBack>,
}

impl Manager {
    /// `start` is what the store loaded, or why nothing could be.
    pub fn new(
        store: Store,
        oauth: OAuthClient,
        policy: Policy,
        start: Result<Loaded, String>,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let (published, rx) = watch::channel(Arc::new(Snapshot {
            token: None,
            token_rejected: false,
            state: TokenState::NoCredentials,
            message: None,
            next_refresh: None,
            refresh_count: 0,
            last_refresh_at_ms: None,
            last_error: None,
            last_error_at_ms: None,
            subscription_type: None,
            scopes: Vec::new(),
            account: None,
        }));
        let mut manager = Manager {
            store,
            oauth,
            policy,
            published,
            live: None,
            lifecycle: Lifecycle::NoCredentials { reason: String::new() },
            seed_sha256: None,
            retired: Vec::new(),
            inflight: None,
            waiters: Vec::new(),
            pending_seed: None,
            next_attempt: None,
            persist_retry: None,
            last_success: None,
            refresh_count: 0,
            last_refresh_at_ms: None,
            last_error: None,
            token_rejected: false,
            account: None,
            write_back: None,
        };
        match start {
            Ok(loaded) => {
                manager.seed_sha256 = loaded.seed_sha256;
                manager.retired = loaded.retired;
                manager.adopt(loaded.credentials);
            }
            Err(reason) => manager.lifecycle = Lifecycle::NoCredentials { reason },
        }
        manager.publish();
        (manager, rx)
    }

    /// Also writes every new pair to a Kubernetes Secret. The pair running now is offered at once, so a
    /// Secret left behind by an earlier pod (state from a volume) catches up.
    pub fn with_write_back(mut self, write_back: WriteBack) -> Self {
        if let Some(live) = &self.live {
            write_back.offer(&live.credentials, &self.retired);
        }
        self.write_back = Some(write_back);
        self
    }

    /// Runs until `shutdown` fires and any refresh in flight has finished and been persisted.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut shutdown: watch::Receiver<bool>) {
        let mut stopping = false;
        loop {
            if stopping && self.inflight.is_none() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                biased;
                result = poll_inflight(&mut self.inflight), if self.inflight.is_some() => {
                    self.inflight = None;
                    self.on_refresh_done(result).await;
                }
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() || *shutdown.borrow() {
                        stopping = true;
                        if self.inflight.is_some() {
                            info!("shutting down: waiting for the refresh in flight to finish and be saved");
                        }
                    }
                }
                command = commands.recv(), if !stopping => match command {
                    Some(command) => self.on_command(command),
                    None => stopping = true,
                },
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() && !stopping => {
                    self.on_timer().await;
                }
            }
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(ProtoError::new(ErrorCode::Unavailable, "the agent is shutting down")));
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        if self.inflight.is_none() {
            consider(self.next_attempt);
        }
        consider(self.persist_retry);
        // Republish when the token crosses into "expired", so readers and status see it.
        if let Some(live) = &self.live {
            let expiry = live.deadline.checked_sub(EXPIRY_GUARD).unwrap_or(live.deadline);
            if Instant::now() < expiry {
                consider(Some(expiry));
            }
        }
        wake
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.persist_retry.is_some_and(|t| t <= now) {
            self.persist_live().await;
        }
        if self.inflight.is_none() && self.next_attempt.is_some_and(|t| t <= now) {
            self.start_refresh("the token is due for refresh");
        }
        self.publish();
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Refresh { reply } => match &self.lifecycle {
                Lifecycle::ReauthRequired { .. } | Lifecycle::NoCredentials { .. } => {
                    let snap = self.published.borrow().clone();
                    let err = snap
                        .terminal_error()
                        .unwrap_or_else(|| ProtoError::new(ErrorCode::Unavailable, "nothing to refresh"));
                    let _ = reply.send(Err(err));
                }
                _ => {
                    self.waiters.push(reply);
                    self.start_refresh("a refresh was requested");
                }
            },
            Command::Rejected { token, reply } => self.on_rejected(token, reply),
            Command::Seed(seed) => {
                if self.inflight.is_some() {
                    // Let the refresh land first: its pair must be persisted whatever the seed says.
                    self.pending_seed = Some(seed);
                } else {
                    self.on_seed(seed);
                }
            }
        }
        self.publish();
    }

    fn on_rejected(&mut self, token: Secret, reply: Reply) {
        let now = Instant::now();
        let Some(live) = &self.live else {
            let _ = reply.send(Err(self.unavailable("no credentials")));
            return;
        };
        if live.credentials.access_token != token {
            // Already replaced: hand out the current one without refreshing again.
            if self.inflight.is_some() {
                self.waiters.push(reply);
            } else {
                let snap = self.published.borrow().clone();
                let answer = match snap.servable(now) {
                    Some(t) => Ok(t.grant(now)),
                    None => Err(snap.terminal_error().unwrap_or_else(|| self.unavailable("no valid token"))),
                };
                let _ = reply.send(answer);
            }
            return;
        }
        if let Lifecycle::ReauthRequired { reason } = &self.lifecycle {
            self.token_rejected = true;
            let _ = reply.send(Err(ProtoError::new(ErrorCode::ReauthRequired, reason.clone())));
            return;
        }
        if self.inflight.is_none()
            && self.last_success.is_some_and(|t| now.duration_since(t) < self.policy.rejection_cooldown)
        {
            warn!(
                token = %token,
                "the upstream rejected a token obtained moments ago; not refreshing again so soon"
            );
            let _ = reply.send(Err(ProtoError::new(
                ErrorCode::Unavailable,
                "the upstream rejected a freshly refreshed token; check the account's status",
            )));
            return;
        }
        self.waiters.push(reply);
        self.start_refresh("the upstream rejected the current token");
    }

    fn on_seed(&mut self, seed: SeedRead) {
        let path = self.store.seed_path().display().to_string();
        if self.seed_sha256.as_deref() == Some(seed.sha256.as_str()) {
            return;
        }
        let credentials = match seed.credentials {
            Ok(c) => c,
            Err(e) => {
                error!(file = %path, error = %e, "ignoring the changed seed; still serving the last good credentials");
                self.last_error = Some((format!("seed change ignored: {e}"), now_ms()));
                return;
            }
        };
        self.seed_sha256 = Some(seed.sha256);
        if let Some(live) = &self.live {
            if live.credentials.same_tokens(&credentials) {
                return;
            }
        }
        if is_retired(&self.retired, &credentials.refresh_token.fingerprint()) {
            warn!(
                file = %path,
                refresh_token = %credentials.refresh_token,
                "the seed holds a refresh token this agent already spent; keeping the live pair"
            );
            return;
        }
        info!(
            file = %path,
            access_token = %credentials.access_token,
            refresh_token = %credentials.refresh_token,
            "adopting new credentials from the seed"
        );
        self.adopt(credentials);
        // In a state directory, record that the live pair now grows from this seed.
        if matches!(self.store.target(), crate::store::Target::StateFile(_)) {
            self.persist_retry = Some(Instant::now());
        }
    }

    /// Makes `credentials` the live pair, timing the next refresh from its expiry.
    fn adopt(&mut self, credentials: Credentials) {
        let now = Instant::now();
        let remaining = Duration::from_millis(credentials.remaining_ms(now_ms()));
        let lifetime = self.policy.assumed_lifetime.max(remaining);
        let deadline = now + remaining;
        self.account = credentials.account.clone().or(self.account.take());
        self.next_attempt = Some(refresh_due(deadline, self.policy.margin(lifetime)));
        self.live = Some(Live { credentials, deadline });
        self.lifecycle = Lifecycle::Healthy;
        self.token_rejected = false;
    }

    fn start_refresh(&mut self, why: &str) {
        if self.inflight.is_some() {
            return;
        }
        let Some(live) = &self.live else { return };
        let refresh_token = live.credentials.refresh_token.clone();
        info!(refresh_token = %refresh_token, reason = why, "refreshing the access token");
        let oauth = self.oauth.clone();
        self.inflight = Some(Box::pin(async move { oauth.refresh(&refresh_token).await }));
        self.publish();
    }

    async fn on_refresh_done(&mut self, result: Result<TokenResponse, TokenError>) {
        match result {
            Ok(response) => self.on_refresh_success(response).await,
            Err(TokenError::Transient { reason, retry_after }) => {
                let attempts = match self.lifecycle {
                    Lifecycle::Failing { attempts } => attempts + 1,
                    _ => 1,
                };
                let delay = self.policy.backoff(attempts, rand::random::<f64>(), retry_after);
                warn!(error = %reason, attempt = attempts, retry_in = ?delay, "token refresh failed; will retry");
                self.lifecycle = Lifecycle::Failing { attempts };
                self.last_error = Some((reason.clone(), now_ms()));
                self.next_attempt = Some(Instant::now() + delay);
                self.answer_waiters(Err(ProtoError::new(
                    ErrorCode::Unavailable,
                    format!("refresh failed: {reason}"),
                )));
            }
            Err(TokenError::Rejected { reason }) => {
                let message = format!("{reason}. {REAUTH_HINT}");
                error!(error = %reason, "the refresh token is dead; a new login is needed (watching the seed for one)");
                self.lifecycle = Lifecycle::ReauthRequired { reason: message.clone() };
                self.last_error = Some((reason, now_ms()));
                self.next_attempt = None;
                self.answer_waiters(Err(ProtoError::new(ErrorCode::ReauthRequired, message)));
            }
        }
        if let Some(seed) = self.pending_seed.take() {
            self.on_seed(seed);
        }
        self.publish();
    }

    async fn on_refresh_success(&mut self, response: TokenResponse) {
        let arrived = Instant::now();
        let arrived_ms = now_ms();
        let Some(live) = self.live.take() else { return };
        let old_refresh = live.credentials.refresh_token.clone();
        let rotated = response.refresh_token.as_ref().is_some_and(|r| *r != old_refresh);
        let credentials = live.credentials.with_update(TokenUpdate {
            access_token: response.access_token,
            refresh_token: response.refresh_token,
            expires_at_ms: arrived_ms + response.expires_in.as_millis() as u64,
            scopes: response.scopes,
        });
        if rotated {
            retire(&mut self.retired, old_refresh.fingerprint());
        }
        let deadline = arrived + response.expires_in;
        info!(
            access_token = %credentials.access_token,
            refresh_token = %credentials.refresh_token,
            rotated,
            expires_in = ?response.expires_in,
            "refreshed the access token"
        );
        if let Some(email) = response.account_email {
            self.account = Some(email);
        }
        self.live = Some(Live { credentials, deadline });
        // Persist before anyone is handed the new access token: once it is served, a crash must not
        // leave the old (now dead) refresh token as the only one on disk.
        self.persist_live().await;
        if let (Some(wb), Some(live)) = (&self.write_back, &self.live) {
            wb.offer(&live.credentials, &self.retired);
        }
        self.lifecycle = Lifecycle::Healthy;
        self.token_rejected = false;
        self.refresh_count += 1;
        self.last_refresh_at_ms = Some(arrived_ms);
        self.last_success = Some(arrived);
        self.next_attempt = Some(refresh_due(deadline, self.policy.margin(response.expires_in)));
        if self.persist_retry.is_none() {
            self.last_error = None;
        }
        self.publish();
        let grant = self.published.borrow().servable(Instant::now()).map(|t| t.grant(Instant::now()));
        self.answer_waiters(grant.ok_or_else(|| self.unavailable("the new token is already expired")));
    }

    /// Writes the live pair. On failure the pair stays in memory (it is the only live copy) and the
    /// write is retried with backoff; status shows the error meanwhile.
    async fn persist_live(&mut self) {
        let Some(live) = &self.live else { return };
        let store = self.store.clone();
        let credentials = live.credentials.clone();
        let seed_sha = self.seed_sha256.clone();
        let retired = self.retired.clone();
        let started = Instant::now();
        let result =
            tokio::task::spawn_blocking(move || store.persist(&credentials, seed_sha.as_deref(), &retired))
                .await;
        match result {
            Ok(Ok(())) => {
                debug!(took = ?started.elapsed(), "saved the credentials");
                self.persist_retry = None;
            }
            Ok(Err(e)) => {
                error!(error = %e, "could not save the refreshed credentials; they live only in memory until a retry succeeds");
                self.last_error = Some((format!("saving credentials failed: {e}"), now_ms()));
                self.persist_retry =
                    Some(Instant::now() + self.policy.backoff_min.max(Duration::from_secs(1)));
            }
            Err(join) => {
                error!(error = %join, "the credentials writer panicked");
                self.persist_retry = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    fn answer_waiters(&mut self, answer: Result<TokenGrant, ProtoError>) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(answer.clone());
        }
    }

    fn unavailable(&self, why: &str) -> ProtoError {
        ProtoError::new(ErrorCode::Unavailable, why)
    }

    fn publish(&self) {
        let now = Instant::now();
        let token = self.live.as_ref().map(|l| Served {
            access_token: l.credentials.access_token.clone(),
            expires_at_ms: l.credentials.expires_at_ms,
            deadline: l.deadline,
        });
        let valid = token.as_ref().is_some_and(|t| t.is_valid(now)) && !self.token_rejected;
        let (state, message) = match &self.lifecycle {
            Lifecycle::NoCredentials { reason } => (TokenState::NoCredentials, Some(reason.clone())),
            Lifecycle::ReauthRequired { reason } => (TokenState::ReauthRequired, Some(reason.clone())),
            _ if !valid && self.live.is_some() => (
                TokenState::Expired,
                Some("the access token has expired and has not been refreshed yet".to_owned()),
            ),
            // A retry in flight is still degraded: the failures are what an operator needs to see.
            Lifecycle::Failing { attempts } => (
                TokenState::Degraded,
                Some(format!(
                    "{attempts} refresh attempt(s) failed; serving the current token while it is valid"
                )),
            ),
            _ if self.inflight.is_some() => (TokenState::Refreshing, None),
            Lifecycle::Healthy if self.persist_retry.is_some() => {
                (TokenState::Degraded, Some("the current credentials are not saved yet; retrying".to_owned()))
            }
            Lifecycle::Healthy => (TokenState::Valid, None),
        };
        let credentials = self.live.as_ref().map(|l| &l.credentials);
        let snapshot = Snapshot {
            token,
            token_rejected: self.token_rejected,
            state,
            message,
            next_refresh: if matches!(self.lifecycle, Lifecycle::Healthy | Lifecycle::Failing { .. }) {
                self.next_attempt
            } else {
                None
            },
            refresh_count: self.refresh_count,
            last_refresh_at_ms: self.last_refresh_at_ms,
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at_ms: self.last_error.as_ref().map(|(_, t)| *t),
            subscription_type: credentials.and_then(|c| c.subscription_type.clone()),
            scopes: credentials.map(|c| c.scopes.clone()).unwrap_or_default(),
            account: self.account.clone(),
        };
        self.published.send_replace(Arc::new(snapshot));
    }
}

fn refresh_due(deadline: Instant, margin: Duration) -> Instant {
    deadline.checked_sub(margin).unwrap_or_else(Instant::now)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

async fn poll_inflight(inflight: &mut Option<RefreshFuture>) -> Result<TokenResponse, TokenError> {
    match inflight {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_the_larger_of_the_floor_and_the_fraction_but_at_most_half() {
        let p = Policy::default();
        assert_eq!(p.margin(Duration::from_secs(8 * 3600)), Duration::from_secs(2880));
        assert_eq!(p.margin(Duration::from_secs(3600)), Duration::from_secs(360));
        assert_eq!(p.margin(Duration::from_secs(1800)), Duration::from_secs(300));
        assert_eq!(p.margin(Duration::from_secs(60)), Duration::from_secs(30));
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_bounds() {
        let p = Policy::default();
        assert_eq!(p.backoff(1, 0.0, None), Duration::from_secs(1));
        assert_eq!(p.backoff(2, 0.0, None), Duration::from_secs(2));
        assert_eq!(p.backoff(5, 0.0, None), Duration::from_secs(16));
        assert_eq!(p.backoff(20, 0.0, None), Duration::from_secs(300));
        assert_eq!(p.backoff(u32::MAX, 0.0, None), Duration::from_secs(300));
        assert_eq!(p.backoff(20, 1.0, None), Duration::from_secs(150));
        for attempt in 1..40 {
            for jitter in [0.0, 0.3, 0.99, 1.0] {
                let d = p.backoff(attempt, jitter, None);
                assert!(d >= p.backoff_min / 2 && d <= p.backoff_max, "{attempt} {jitter} {d:?}");
            }
        }
        assert_eq!(p.backoff(1, 0.0, Some(Duration::from_secs(30))), Duration::from_secs(30));
    }

    #[test]
    fn expiry_guard_applies() {
        let now = Instant::now();
        let t = Served {
            access_token: Secret::new("a"),
            expires_at_ms: 0,
            deadline: now + Duration::from_secs(4),
        };
        assert!(!t.is_valid(now));
        let t = Served { deadline: now + Duration::from_secs(60), ..t };
        assert!(t.is_valid(now));
        assert!(t.grant(now).expires_in_ms >= 59_000);
    }
}
