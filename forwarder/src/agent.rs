//! The token source: asks the agent for the current token on every request, over a small pool of
//! reusable socket connections, and rides out an agent restart.
//!
//! Nothing is cached but connections: every request gets the token the agent serves at that moment,
//! so a refresh or a revocation takes effect on the next request.

use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{ErrorCode, ProtoError, Secret, TokenGrant};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Idle connections kept for reuse. Beyond this, connections are closed after use: a burst larger
/// than this opens a few extra, which costs only a connect.
const MAX_IDLE: usize = 64;

/// How long one answer may take once the agent has the request. A token request waits inside the
/// agent while an expired token is being refreshed, and a rejection report waits for the refresh
/// itself (the agent bounds both by its request timeout, 30 s by default); this only guards against an
/// agent that accepted the connection and then hung.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

/// Pause between attempts to reach an agent that does not answer: short enough that a restart costs a
/// request little, long enough not to spin.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing answered on the socket within the wait window.
    #[error("no answer on {path} within {waited:?} ({last})")]
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

#[derive(Clone, Copy)]
enum Ask<'a> {
    Token,
    Rejected(&'a Secret),
}

pub struct TokenSource {
    path: PathBuf,
    wait: Duration,
    idle: Mutex<Vec<Client>>,
}

impl TokenSource {
    pub fn new(path: PathBuf, wait: Duration) -> Self {
        TokenSource { path, wait, idle: Mutex::new(Vec::with_capacity(MAX_IDLE)) }
    }

    /// The token to use now, waiting up to the configured window for an agent that does not answer.
    pub async fn token(&self) -> Result<TokenGrant, AgentError> {
        self.ask(Ask::Token, self.wait).await
    }

    /// Tells the agent the upstream rejected `token`; answers with the token to use instead.
    pub async fn report_rejected(&self, token: &Secret) -> Result<TokenGrant, AgentError> {
        self.ask(Ask::Rejected(token), self.wait).await
    }

    /// One attempt, for health probes: they must say "down" promptly, not ride out a restart.
    pub async fn probe(&self) -> Result<TokenGrant, AgentError> {
        self.ask(Ask::Token, Duration::ZERO).await
    }

    async fn ask(&self, ask: Ask<'_>, wait: Duration) -> Result<TokenGrant, AgentError> {
        let deadline = Instant::now() + wait;
        let mut pause = RETRY_MIN;
        loop {
            let (mut client, reused) = match self.take_idle() {
                Some(c) => (c, true),
                None => match Client::connect(&self.path).await {
                    Ok(c) => (c, false),
                    Err(e) => {
                        if Instant::now() >= deadline {
                            return Err(self.unreachable(wait, e));
                        }
                        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                            .await;
                        pause = (pause * 2).min(RETRY_MAX);
                        continue;
                    }
                },
            };
            let call = async {
                match ask {
                    Ask::Token => client.get_token().await,
                    Ask::Rejected(token) => client.report_rejected(token.clone()).await,
                }
            };
            let result = match tokio::time::timeout(ANSWER_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => return Err(AgentError::Timeout(ANSWER_TIMEOUT)),
            };
            match result {
                Ok(grant) => {
                    self.put_idle(client);
                    return Ok(grant);
                }
                // A pooled connection may predate an agent restart: that says nothing about the agent
                // now, so try a fresh one at once.
                Err(e) if e.is_connection_failure() && reused => continue,
                Err(e) if e.is_connection_failure() => {
                    if Instant::now() >= deadline {
                        return Err(self.unreachable(wait, e));
                    }
                    tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Err(ClientError::Agent(e)) => {
                    // The agent closes the connection after these; the others leave it usable.
                    if !matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnsupportedVersion) {
                        self.put_idle(client);
                    }
                    return Err(match e.code {
                        ErrorCode::ReauthRequired => AgentError::ReauthRequired(e.message),
                        _ => AgentError::Refused(e),
                    });
                }
                Err(e) => {
                    return Err(AgentError::Refused(ProtoError::new(ErrorCode::Internal, e.to_string())));
                }
            }
        }
    }

    fn unreachable(&self, waited: Duration, last: ClientError) -> AgentError {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sidecred_proto::{read_frame, write_frame, RequestFrame, Response, ResponseFrame};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::net::UnixListener;

    /// A stand-in agent answering every request with `answer`, counting connections.
    fn serve(
        listener: UnixListener,
        answer: Response,
        conns: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        serve_n(listener, answer, conns, usize::MAX)
    }

    /// Like [`serve`], closing each connection after `per_conn` answers.
    fn serve_n(
        listener: UnixListener,
        answer: Response,
        conns: Arc<AtomicUsize>,
        per_conn: usize,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = tokio::io::BufReader::new(r);
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    while answered < per_conn {
                        let Ok(Some(_)) = read_frame::<_, RequestFrame>(&mut r, &mut buf).await else {
                            return;
                        };
                        answered += 1;
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

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sidecred-fwd-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("agent.sock")
    }

    #[tokio::test]
    async fn connections_are_reused() {
        let path = temp_socket("reuse");
        let conns = Arc::new(AtomicUsize::new(0));
        let _server = serve(UnixListener::bind(&path).unwrap(), grant("t1"), conns.clone());
        let source = TokenSource::new(path, Duration::from_secs(1));
        for _ in 0..5 {
            assert_eq!(source.token().await.unwrap().access_token.expose(), "t1");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_agent_that_appears_within_the_window_is_waited_for() {
        let path = temp_socket("late");
        let source = TokenSource::new(path.clone(), Duration::from_secs(5));
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = serve(UnixListener::bind(&path).unwrap(), grant("late"), Arc::default()).await;
        });
        let started = Instant::now();
        assert_eq!(source.token().await.unwrap().access_token.expose(), "late");
        assert!(started.elapsed() >= Duration::from_millis(100));
        late.abort();
    }

    #[tokio::test]
    async fn a_missing_agent_fails_after_the_window() {
        let path = temp_socket("missing");
        let source = TokenSource::new(path, Duration::from_millis(200));
        let started = Instant::now();
        let err = source.token().await.unwrap_err();
        assert!(matches!(err, AgentError::Unreachable { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
        let started = Instant::now();
        assert!(source.probe().await.is_err());
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn reauth_and_other_refusals_are_told_apart() {
        let path = temp_socket("reauth");
        let answer = Response::Error(ProtoError::new(ErrorCode::ReauthRequired, "log in again"));
        let _server = serve(UnixListener::bind(&path).unwrap(), answer, Arc::default());
        let source = TokenSource::new(path, Duration::from_secs(1));
        assert!(matches!(source.token().await, Err(AgentError::ReauthRequired(m)) if m == "log in again"));

        let path = temp_socket("unavailable");
        let answer = Response::Error(ProtoError::new(ErrorCode::Unavailable, "expired"));
        let _server = serve(UnixListener::bind(&path).unwrap(), answer, Arc::default());
        let source = TokenSource::new(path, Duration::from_secs(1));
        assert!(
            matches!(source.token().await, Err(AgentError::Refused(e)) if e.code == ErrorCode::Unavailable)
        );
    }

    #[tokio::test]
    async fn a_stale_pooled_connection_is_replaced_without_waiting() {
        let path = temp_socket("stale");
        let conns = Arc::new(AtomicUsize::new(0));
        // Each connection dies after one answer, as when the agent restarts between two requests.
        let _server = serve_n(UnixListener::bind(&path).unwrap(), grant("t"), conns.clone(), 1);
        let source = TokenSource::new(path.clone(), Duration::from_secs(1));
        for _ in 0..3 {
            assert_eq!(source.token().await.unwrap().access_token.expose(), "t");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }
}
