//! The token source: asks the agent for the current token for every request and rides out an agent
//! restart.
//!
//! Nothing is cached but connections. Requests that arrive while a token request is on its way to the
//! agent wait for the *next* one, which is sent after they arrived, and share its answer: every request
//! gets a token the agent served after the request came in (so a refresh or revocation takes effect on
//! the next request), and a busy forwarder asks the agent once per round trip instead of once per
//! request.

use crate::headers::{self, HeaderError};
use http::HeaderValue;
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{ErrorCode, ProtoError, Secret, TokenGrant};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Idle connections kept for reuse. The batched token path needs one; rejection reports and probes,
/// which are not batched, may briefly need a few more.
const MAX_IDLE: usize = 8;

/// How long one answer may take once the agent has the request. A token request waits inside the
/// agent while an expired token is being refreshed, and a rejection report waits for the refresh
/// itself (the agent bounds both by its request timeout, 30 s by default); this only guards against an
/// agent that accepted the connection and then hung.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

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

/// Requests served by one agent answer at most; the rest wait for the next.
const MAX_BATCH: usize = 1024;

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
    #[error("the agent took longer than {0:?} to answer")]
    Timeout(Duration),
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

/// The socket and its idle connections.
struct Agent {
    path: PathBuf,
    idle: Mutex<Vec<Client>>,
}

impl Agent {
    /// One request on one connection. A pooled connection that turns out dead (it may predate an agent
    /// restart) says nothing about the agent now, so a fresh one is tried at once.
    async fn attempt(&self, ask: Ask<'_>) -> Result<TokenGrant, Failed> {
        loop {
            let (mut client, reused) = match self.take_idle() {
                Some(c) => (c, true),
                None => (Client::connect(&self.path).await.map_err(Failed::Unreachable)?, false),
            };
            let call = async {
                match ask {
                    Ask::Token => client.get_token().await,
                    Ask::Rejected(token) => client.report_rejected(token.clone()).await,
                }
            };
            let result = tokio::time::timeout(ANSWER_TIMEOUT, call)
                .await
                .map_err(|_| Failed::Final(AgentError::Timeout(ANSWER_TIMEOUT)))?;
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

    /// Attempts until one succeeds or gets a final answer, or until `deadline`.
    async fn ask_until(
        &self,
        ask: Ask<'_>,
        deadline: Instant,
        wait: Duration,
    ) -> Result<TokenGrant, AgentError> {
        let mut backoff = Backoff::new();
        loop {
            match self.attempt(ask).await {
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

    async fn probe(&self) -> Result<TokenGrant, AgentError> {
        self.ask_until(Ask::Token, Instant::now(), Duration::ZERO).await
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
    authorization: Result<HeaderValue, HeaderError>,
}

impl Token {
    pub fn new(grant: TokenGrant) -> Self {
        let authorization = headers::authorization(&grant.access_token);
        Token { access_token: grant.access_token, authorization }
    }

    /// The header value (a reference-counted copy), or why the token cannot be one.
    pub fn authorization(&self) -> Result<HeaderValue, HeaderError> {
        self.authorization.clone()
    }
}

/// A request waiting for a token.
struct Waiter {
    reply: oneshot::Sender<Result<Arc<Token>, AgentError>>,
    /// Arrival plus the wait window: past this, an unreachable agent is the answer.
    deadline: Instant,
}

pub struct TokenSource {
    agent: Arc<Agent>,
    wait: Duration,
    queue: mpsc::UnboundedSender<Waiter>,
}

impl TokenSource {
    /// Starts the task that fetches tokens for waiting requests; call within the runtime that will use
    /// it. The task ends when the source is dropped.
    pub fn start(path: PathBuf, wait: Duration) -> Self {
        let agent = Arc::new(Agent { path, idle: Mutex::new(Vec::with_capacity(MAX_IDLE)) });
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(fetch_for_waiters(agent.clone(), waiting, wait));
        TokenSource { agent, wait, queue }
    }

    /// The token to use now, waiting up to the configured window for an agent that does not answer.
    pub async fn token(&self) -> Result<Arc<Token>, AgentError> {
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter { reply, deadline: Instant::now() + self.wait };
        let gone = || AgentError::Refused(ProtoError::new(ErrorCode::Internal, "the token fetcher stopped"));
        self.queue.send(waiter).map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Tells the agent the upstream rejected `token`; answers with the token to use instead. Not
    /// batched: the agent already makes many reports of one token cause one refresh.
    pub async fn report_rejected(&self, token: &Secret) -> Result<Token, AgentError> {
        self.agent
            .ask_until(Ask::Rejected(token), Instant::now() + self.wait, self.wait)
            .await
            .map(Token::new)
    }

    /// One attempt, for health probes: they must say "down" promptly, not ride out a restart.
    pub async fn probe(&self) -> Result<TokenGrant, AgentError> {
        self.agent.probe().await
    }

    /// One attempt on a connection of its own, for the start-up check before any worker has a source.
    pub async fn probe_once(path: PathBuf) -> Result<TokenGrant, AgentError> {
        Agent { path, idle: Mutex::new(Vec::new()) }.probe().await
    }
}

/// Serves waiting requests in batches: takes everyone waiting, asks the agent once, answers them all.
/// While the agent does not answer, requests arriving meanwhile join the next attempt, and each gives
/// up when its own window ends.
async fn fetch_for_waiters(agent: Arc<Agent>, mut waiting: mpsc::UnboundedReceiver<Waiter>, wait: Duration) {
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut backoff = Backoff::new();
        loop {
            let failure = match agent.attempt(Ask::Token).await {
                Ok(grant) => {
                    let token = Arc::new(Token::new(grant));
                    for w in batch.drain(..) {
                        let _ = w.reply.send(Ok(token.clone()));
                    }
                    break;
                }
                Err(Failed::Final(e)) => {
                    for w in batch.drain(..) {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                    break;
                }
                Err(Failed::Unreachable(e)) => e,
            };
            let now = Instant::now();
            let unreachable = agent.unreachable(wait, &failure);
            let (expired, live): (Vec<_>, Vec<_>) =
                batch.drain(..).partition(|w| w.deadline <= now || w.reply.is_closed());
            batch = live;
            for w in expired {
                let _ = w.reply.send(Err(unreachable.clone()));
            }
            while let Ok(w) = waiting.try_recv() {
                batch.push(w);
            }
            let Some(next_deadline) = batch.iter().map(|w| w.deadline).min() else { break };
            backoff.pause(now, next_deadline).await;
            while let Ok(w) = waiting.try_recv() {
                batch.push(w);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sidecred_proto::{read_frame, write_frame, RequestFrame, Response, ResponseFrame};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::UnixListener;

    #[test]
    fn a_tokens_debug_shows_neither_the_token_nor_its_header() {
        let grant = TokenGrant {
            access_token: Secret::new("sk-ant-oat01-sctest"),
            expires_at_ms: 1,
            expires_in_ms: 1,
        };
        let token = Token::new(grant);
        let shown = format!("{token:?}");
        assert!(!shown.contains("sctest"), "{shown}");
        assert_eq!(token.authorization().unwrap(), "Bearer sk-ant-oat01-sctest");
        assert!(token.authorization().unwrap().is_sensitive());
    }

    /// A stand-in agent answering every request with `answer`, counting connections and requests,
    /// closing each connection after `per_conn` answers.
    fn serve(
        listener: UnixListener,
        answer: Response,
        counts: Arc<(AtomicUsize, AtomicUsize)>,
        per_conn: usize,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counts.0.fetch_add(1, Ordering::SeqCst);
                let (answer, counts) = (answer.clone(), counts.clone());
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = tokio::io::BufReader::new(r);
                    let mut buf = Vec::new();
                    for _ in 0..per_conn {
                        let Ok(Some(_)) = read_frame::<_, RequestFrame>(&mut r, &mut buf).await else {
                            return;
                        };
                        counts.1.fetch_add(1, Ordering::SeqCst);
                        if write_frame(&mut w, &ResponseFrame::from(answer.clone())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    }

    fn grant(t: &str) -> Response {
        Response::Token(TokenGrant { access_token: Secret::new(t), expires_at_ms: 0, expires_in_ms: 60_000 })
    }

    /// A socket path in a fresh directory that is removed when the guard drops.
    fn temp_socket() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new().prefix("sidecred-fwd-agent-").tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        (dir, path)
    }

    #[tokio::test]
    async fn connections_are_reused() {
        let (_dir, path) = temp_socket();
        let counts = Arc::default();
        let _server = serve(UnixListener::bind(&path).unwrap(), grant("t1"), Arc::clone(&counts), usize::MAX);
        let source = TokenSource::start(path, Duration::from_secs(1));
        for _ in 0..5 {
            assert_eq!(source.token().await.unwrap().access_token.expose(), "t1");
        }
        assert_eq!(counts.0.load(Ordering::SeqCst), 1, "one connection");
        assert_eq!(counts.1.load(Ordering::SeqCst), 5, "one agent request per sequential request");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_answers() {
        let (_dir, path) = temp_socket();
        let counts = Arc::default();
        let _server = serve(UnixListener::bind(&path).unwrap(), grant("t"), Arc::clone(&counts), usize::MAX);
        let source = Arc::new(TokenSource::start(path, Duration::from_secs(1)));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let source = source.clone();
                tokio::spawn(async move { source.token().await.map(|g| g.access_token.expose().to_owned()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "t");
        }
        let asked = counts.1.load(Ordering::SeqCst);
        assert!((1..200).contains(&asked), "200 requests asked the agent {asked} times");
    }

    #[tokio::test]
    async fn an_agent_that_appears_within_the_window_is_waited_for() {
        let (_dir, path) = temp_socket();
        let source = TokenSource::start(path.clone(), Duration::from_secs(5));
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ =
                serve(UnixListener::bind(&path).unwrap(), grant("late"), Arc::default(), usize::MAX).await;
        });
        let started = Instant::now();
        assert_eq!(source.token().await.unwrap().access_token.expose(), "late");
        assert!(started.elapsed() >= Duration::from_millis(100));
        late.abort();
    }

    #[tokio::test]
    async fn a_missing_agent_fails_each_request_after_its_own_window() {
        let (_dir, path) = temp_socket();
        let source = Arc::new(TokenSource::start(path, Duration::from_millis(300)));
        let started = Instant::now();
        let first = tokio::spawn({
            let source = source.clone();
            async move { (source.token().await, started.elapsed()) }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (second, second_took) = {
            let t = Instant::now();
            (source.token().await, t.elapsed())
        };
        let (first, first_took) = first.await.unwrap();
        assert!(matches!(first, Err(AgentError::Unreachable { .. })), "{first:?}");
        assert!(matches!(second, Err(AgentError::Unreachable { .. })), "{second:?}");
        for took in [first_took, second_took] {
            assert!(took >= Duration::from_millis(280), "gave up early: {took:?}");
            assert!(took < Duration::from_millis(1500), "waited past its window: {took:?}");
        }
        let started = Instant::now();
        assert!(source.probe().await.is_err());
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn reauth_and_other_refusals_are_told_apart() {
        let (_dir, path) = temp_socket();
        let answer = Response::Error(ProtoError::new(ErrorCode::ReauthRequired, "log in again"));
        let _server = serve(UnixListener::bind(&path).unwrap(), answer, Arc::default(), usize::MAX);
        let source = TokenSource::start(path, Duration::from_secs(1));
        assert!(matches!(source.token().await, Err(AgentError::ReauthRequired(m)) if m == "log in again"));
        assert!(matches!(
            source.report_rejected(&Secret::new("x")).await,
            Err(AgentError::ReauthRequired(_))
        ));

        let (_dir, path) = temp_socket();
        let answer = Response::Error(ProtoError::new(ErrorCode::Unavailable, "expired"));
        let _server = serve(UnixListener::bind(&path).unwrap(), answer, Arc::default(), usize::MAX);
        let source = TokenSource::start(path, Duration::from_secs(1));
        assert!(
            matches!(source.token().await, Err(AgentError::Refused(e)) if e.code == ErrorCode::Unavailable)
        );
    }

    #[tokio::test]
    async fn a_stale_pooled_connection_is_replaced() {
        let (_dir, path) = temp_socket();
        let counts: Arc<(AtomicUsize, AtomicUsize)> = Arc::default();
        // Each connection dies after one answer, as when the agent restarts between two requests.
        let _server = serve(UnixListener::bind(&path).unwrap(), grant("t"), Arc::clone(&counts), 1);
        let source = TokenSource::start(path, Duration::from_secs(1));
        for _ in 0..3 {
            assert_eq!(source.token().await.unwrap().access_token.expose(), "t");
        }
        assert_eq!(counts.0.load(Ordering::SeqCst), 3);
    }
}
