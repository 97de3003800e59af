//! The token source: the token the agent serves, for every request, riding out an agent restart.
//!
//! Two ways, chosen at start (`--agent-mode`):
//! - `subscribe` (the default): the process holds a subscription on which the agent pushes every new
//!   token, revocation and degraded state the moment it happens ([`subscription`]); a request takes
//!   the token pushed last from memory, and asks the agent as below only when nothing usable is held.
//! - `per-request`: nothing is held but connections. Requests that arrive while a token request is on
//!   its way to the agent wait for the *next* one, which is sent after they arrived, and share its
//!   answer: every request gets a token the agent served after the request came in, and a busy
//!   forwarder asks the agent once per round trip instead of once per request.
//!
//! Either way a refresh or revocation takes effect on the next request, and a 401 report's answer at
//! once. Health probes always ask (batched with requests, so a flood of them costs the agent no more
//! than steady traffic does): the agent stays the only authority on its state.
//!
//! Every wait is the waiter's own: a request gets its answer, or a 503, by its arrival plus
//! `--agent-wait`, whether the agent is missing, restarting or hung; a probe by its arrival plus
//! [`PROBE_TIMEOUT`]. Whoever answers on the socket must run as the agent's uid (SO_PEERCRED), or it
//! is refused before it is asked anything.

mod fetcher;
mod subscription;

pub use subscription::Pushed;
#[cfg(test)]
mod tests;

use crate::headers::{self, HeaderError};
use crate::observe::metrics::{AgentFailure, METRICS};
use http::HeaderValue;
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{ErrorCode, ProtoError, Secret, TokenGrant};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Idle connections kept for reuse. The batched token path needs one; rejection reports, which are not
/// batched, may briefly need a few more.
pub const MAX_IDLE: usize = 8;

/// How long a health probe waits for the agent's answer: under the kubelet's probe timeouts, and a
/// probe never waits out a restart (it must report what is, promptly).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between attempts to reach an agent that does not answer: short enough that a restart costs a
/// request little, long enough not to spin.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// The pauses between attempts: from [`RETRY_MIN`], doubling up to [`RETRY_MAX`].
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(RETRY_MIN)
    }

    /// Sleeps for the next pause, or until `deadline` if that comes first.
    async fn pause(&mut self, now: Instant, deadline: Instant) {
        tokio::time::sleep(self.0.min(deadline.saturating_duration_since(now))).await;
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// Nothing answered on the socket within the wait window.
    #[error("nothing answers on {path}{}: {last}", waited_note(.waited))]
    Unreachable { path: String, waited: Duration, last: String },
    /// The refresh token is dead; the message says how to log in again.
    #[error("{0}")]
    ReauthRequired(String),
    /// The agent answered, but without a token (expired and not yet refreshed, no credentials, ...).
    #[error("{0}")]
    Refused(ProtoError),
    /// The agent took the request but gave no answer within the waiter's window.
    #[error("the agent gave no answer within {0:?} (--agent-wait for requests)")]
    Timeout(Duration),
    /// Another uid answers on the socket: it is asked nothing and its answers are never used.
    #[error(
        "refusing {path}: the process answering there runs as uid {found}, not as the agent's uid \
         {expected} (--agent-uid)"
    )]
    Impostor { path: String, found: u32, expected: u32 },
}

fn waited_note(waited: &Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(" (kept trying for {waited:?})")
    }
}

#[derive(Clone, Copy)]
enum Ask<'a> {
    Token,
    Rejected(&'a Secret),
}

/// One attempt's failure: either nobody answered (worth another try while the window lasts) or the
/// agent's answer, which is final.
enum Failed {
    Unreachable(ClientError),
    Final(AgentError),
}

/// The socket, who must answer on it, and its idle connections.
struct Agent {
    path: PathBuf,
    uid: u32,
    idle: Mutex<Vec<Client>>,
}

impl Agent {
    fn new(path: PathBuf, uid: u32) -> Self {
        Agent { path, uid, idle: Mutex::new(Vec::with_capacity(MAX_IDLE)) }
    }

    /// One request on one connection, answered by `deadline`. A pooled connection that turns out dead
    /// (it may predate an agent restart) says nothing about the agent now, so a fresh one is tried at
    /// once.
    async fn attempt(&self, ask: Ask<'_>, deadline: Instant, window: Duration) -> Result<TokenGrant, Failed> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout_at(deadline, self.attempt_unbounded(ask))
            .await
            .unwrap_or(Err(Failed::Final(AgentError::Timeout(window))));
        METRICS.agent_seconds.observe(started.elapsed());
        if let Err(failed) = &result {
            METRICS.agent_failure(match failed {
                Failed::Unreachable(_) | Failed::Final(AgentError::Unreachable { .. }) => {
                    AgentFailure::Unreachable
                }
                Failed::Final(AgentError::Timeout(_)) => AgentFailure::Timeout,
                Failed::Final(AgentError::Refused(_)) => AgentFailure::Refused,
                Failed::Final(AgentError::ReauthRequired(_)) => AgentFailure::ReauthRequired,
                Failed::Final(AgentError::Impostor { .. }) => AgentFailure::Impostor,
            });
        }
        result
    }

    async fn attempt_unbounded(&self, ask: Ask<'_>) -> Result<TokenGrant, Failed> {
        loop {
            let (mut client, reused) = match self.take_idle() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            let result = match ask {
                Ask::Token => client.get_token().await,
                Ask::Rejected(token) => client.report_rejected(token.clone()).await,
            };
            return match result {
                Ok(grant) => {
                    self.put_idle(client);
                    Ok(grant)
                }
                Err(e) if e.is_connection_failure() && reused => continue,
                Err(e) if e.is_connection_failure() => Err(Failed::Unreachable(e)),
                Err(ClientError::Agent(e)) => {
                    // The agent closes the connection after these; the others leave it usable.
                    if !matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnsupportedVersion) {
                        self.put_idle(client);
                    }
                    Err(Failed::Final(match e.code {
                        ErrorCode::ReauthRequired => AgentError::ReauthRequired(e.message),
                        _ => AgentError::Refused(e),
                    }))
                }
                Err(e) => Err(Failed::Final(AgentError::Refused(ProtoError::new(
                    ErrorCode::Internal,
                    e.to_string(),
                )))),
            };
        }
    }

    /// A new connection, kept only when the agent's uid answers on it: an impostor (a socket planted
    /// in a directory others can write) is never sent a request, nor its tokens used.
    async fn connect(&self) -> Result<Client, Failed> {
        let client = Client::connect(&self.path).await.map_err(Failed::Unreachable)?;
        let found = client.peer_uid().map_err(|cause| {
            Failed::Unreachable(ClientError::Connect { path: self.path.display().to_string(), cause })
        })?;
        if found != self.uid {
            return Err(Failed::Final(AgentError::Impostor {
                path: self.path.display().to_string(),
                found,
                expected: self.uid,
            }));
        }
        Ok(client)
    }

    /// Attempts until one succeeds or gets a final answer, or until `deadline`.
    async fn ask_until(
        &self,
        ask: Ask<'_>,
        deadline: Instant,
        wait: Duration,
    ) -> Result<TokenGrant, AgentError> {
        let mut backoff = Backoff::new();
        loop {
            match self.attempt(ask, deadline, wait).await {
                Ok(grant) => return Ok(grant),
                Err(Failed::Final(e)) => return Err(e),
                Err(Failed::Unreachable(e)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(self.unreachable(wait, &e));
                    }
                    backoff.pause(now, deadline).await;
                }
            }
        }
    }

    fn unreachable(&self, waited: Duration, last: &ClientError) -> AgentError {
        AgentError::Unreachable { path: self.path.display().to_string(), waited, last: last.to_string() }
    }

    fn take_idle(&self) -> Option<Client> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn put_idle(&self, client: Client) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }
}

/// A token the agent served, with its `Authorization` value built once for all the requests that share
/// the answer. Its `Debug` shows neither: `Secret` prints a fingerprint, a sensitive header value
/// prints `Sensitive`.
#[derive(Debug)]
pub struct Token {
    pub access_token: Secret,
    /// Its remaining lifetime when the agent served it, for `/health`.
    pub expires_in_ms: u64,
    /// Why the agent says it is degraded while the token is valid, for `/health`.
    pub degraded: Option<String>,
    /// Its place in the order of the agent's tokens (0: unknown).
    pub generation: u64,
    expires_at_ms: u64,
    /// [`sidecred_proto::EXPIRY_GUARD`] before its expiry, by this process's monotonic clock.
    usable_until: Instant,
    authorization: Result<HeaderValue, HeaderError>,
}

impl Token {
    pub fn new(grant: TokenGrant) -> Self {
        let authorization = headers::authorization(&grant.access_token);
        Token {
            access_token: grant.access_token,
            expires_in_ms: grant.expires_in_ms,
            degraded: grant.degraded,
            generation: grant.generation,
            expires_at_ms: grant.expires_at_ms,
            usable_until: subscription::usable_until(Instant::now(), grant.expires_in_ms),
            authorization,
        }
    }

    /// Whether it may still be sent: short of its expiry (less the guard) by both clocks.
    fn is_usable(&self, now: Instant) -> bool {
        now < self.usable_until && subscription::wall_clock_allows(self.expires_at_ms)
    }

    /// The header value (a reference-counted copy), or why the token cannot be one.
    pub fn authorization(&self) -> Result<HeaderValue, HeaderError> {
        self.authorization.clone()
    }
}

/// How a request learns the token (`--agent-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentMode {
    /// The agent pushes each new token on a subscription; requests read it from memory.
    Subscribe,
    /// Every request (batched with those that arrive meanwhile) asks the agent.
    PerRequest,
}

/// Who may answer on the socket and how long a request waits for it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub path: PathBuf,
    /// The agent's uid: a connection answered by another is refused.
    pub uid: u32,
    /// A request's window (`--agent-wait`).
    pub wait: Duration,
}

pub struct TokenSource {
    agent: Arc<Agent>,
    wait: Duration,
    queue: mpsc::UnboundedSender<fetcher::Waiter>,
    /// With `--agent-mode subscribe`: what the agent pushed, and this worker's copy of it.
    pushed: Option<(Arc<Pushed>, Arc<subscription::Current>)>,
}

impl TokenSource {
    /// Starts the task that fetches tokens for waiting requests; call within the runtime that will use
    /// it. The task ends when the source is dropped. With `pushed`, requests use what the agent pushed
    /// (see [`TokenSource::follow`]) while it is usable.
    pub fn start(config: &AgentConfig, pushed: Option<&Arc<Pushed>>) -> Self {
        let agent = Arc::new(Agent::new(config.path.clone(), config.uid));
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(fetcher::fetch_for_waiters(agent.clone(), waiting));
        let pushed = pushed.map(|p| (p.clone(), p.for_worker()));
        TokenSource { agent, wait: config.wait, queue, pushed }
    }

    /// The token to use now: the one the agent pushed last while it is usable, or else the agent's
    /// answer, waiting up to the configured window for an agent that does not answer.
    pub async fn token(&self) -> Result<Arc<Token>, AgentError> {
        if let Some(token) = self.pushed.as_ref().and_then(|(_, current)| current.usable()) {
            return Ok(token);
        }
        self.ask_fetcher(self.wait, true).await
    }

    /// For health probes: one batch's answer within [`PROBE_TIMEOUT`], and an agent that does not
    /// answer is reported at once rather than waited for.
    pub async fn probe(&self) -> Result<Arc<Token>, AgentError> {
        self.ask_fetcher(PROBE_TIMEOUT, false).await
    }

    async fn ask_fetcher(&self, window: Duration, patient: bool) -> Result<Arc<Token>, AgentError> {
        let (reply, answer) = oneshot::channel();
        let waiter = fetcher::Waiter { reply, deadline: Instant::now() + window, window, patient };
        let gone = || AgentError::Refused(ProtoError::new(ErrorCode::Internal, "the token fetcher stopped"));
        self.queue.send(waiter).map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Tells the agent the upstream rejected `token`; answers with the token to use instead. Not
    /// batched: the agent already makes many reports of one token cause one refresh.
    pub async fn report_rejected(&self, token: &Secret) -> Result<Arc<Token>, AgentError> {
        let answer = self
            .agent
            .ask_until(Ask::Rejected(token), Instant::now() + self.wait, self.wait)
            .await
            .map(|grant| Arc::new(Token::new(grant)));
        if let Some((pushed, _)) = &self.pushed {
            pushed.reported(token, answer.as_ref().ok());
        }
        answer
    }

    /// Follows the agent's pushes into `pushed` for as long as the process runs (`--agent-mode
    /// subscribe`), on a connection of its own.
    pub async fn follow(config: AgentConfig, pushed: Arc<Pushed>) {
        subscription::follow(Agent::new(config.path, config.uid), pushed).await;
    }

    /// The start-up check, on a connection of its own before any worker has a source: keeps trying for
    /// one request's window, so an agent that starts a moment after the forwarder is not reported.
    pub async fn check_at_start(config: &AgentConfig) -> Result<TokenGrant, AgentError> {
        Agent::new(config.path.clone(), config.uid)
            .ask_until(Ask::Token, Instant::now() + config.wait, config.wait)
            .await
    }
}
