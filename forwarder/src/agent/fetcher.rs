//! The batched fetcher: one task per worker takes everyone waiting, asks the agent once, answers them
//! all. A waiter is answered by its own deadline whatever the agent does: an exchange that outlives a
//! waiter's deadline answers that waiter "timed out" and goes on for the others.

use super::{Agent, AgentError, Ask, Backoff, Failed, Token};
use sidecred_proto::TokenGrant;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Requests served by one agent answer at most; the rest wait for the next.
const MAX_BATCH: usize = 1024;

/// A request (or probe) waiting for a token.
pub struct Waiter {
    pub reply: oneshot::Sender<Result<Arc<Token>, AgentError>>,
    /// Arrival plus `window`: by then the waiter has its answer, whatever the agent does.
    pub deadline: Instant,
    pub window: Duration,
    /// Whether an agent that cannot be reached is tried again until the deadline (requests), or
    /// reported at once (probes).
    pub patient: bool,
}

impl Waiter {
    fn answer(self, result: Result<Arc<Token>, AgentError>) {
        let _ = self.reply.send(result);
    }
}

/// While the agent does not answer, requests arriving meanwhile join the next attempt, and each gives
/// up when its own window ends.
pub async fn fetch_for_waiters(agent: Arc<Agent>, mut waiting: mpsc::UnboundedReceiver<Waiter>) {
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut backoff = Backoff::new();
        loop {
            let failure = match exchange(&agent, &mut batch).await {
                // Every waiter's deadline passed while the agent kept it.
                None => break,
                Some(Ok(grant)) => {
                    let token = Arc::new(Token::new(grant));
                    for w in batch.drain(..) {
                        w.answer(Ok(token.clone()));
                    }
                    break;
                }
                Some(Err(Failed::Final(e))) => {
                    for w in batch.drain(..) {
                        w.answer(Err(e.clone()));
                    }
                    break;
                }
                Some(Err(Failed::Unreachable(e))) => e,
            };
            let now = Instant::now();
            let (done, live): (Vec<_>, Vec<_>) =
                batch.drain(..).partition(|w| !w.patient || w.deadline <= now || w.reply.is_closed());
            batch = live;
            for w in done {
                let waited = if w.patient { w.window } else { Duration::ZERO };
                let unreachable = agent.unreachable(waited, &failure);
                w.answer(Err(unreachable));
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

/// One exchange with the agent on behalf of `batch`, bounded by the latest deadline in it. A waiter
/// whose deadline passes meanwhile is answered that the agent timed out, and leaves the batch; when
/// none is left the exchange is abandoned (its connection dropped, as its state is unknown) and this
/// answers `None`.
async fn exchange(agent: &Agent, batch: &mut Vec<Waiter>) -> Option<Result<TokenGrant, Failed>> {
    let until = batch.iter().map(|w| w.deadline).max()?;
    let window = batch.iter().map(|w| w.window).max().unwrap_or_default();
    let attempt = agent.attempt(Ask::Token, until, window);
    tokio::pin!(attempt);
    loop {
        let next = batch.iter().map(|w| w.deadline).min()?;
        // The attempt first: an answer that is ready (a refused connect, say) is the better report than
        // "timed out" for a waiter whose deadline has just passed.
        tokio::select! {
            biased;
            result = &mut attempt => return Some(result),
            () = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                let (expired, live): (Vec<_>, Vec<_>) = batch.drain(..).partition(|w| w.deadline <= now);
                *batch = live;
                for w in expired {
                    let window = w.window;
                    w.answer(Err(AgentError::Timeout(window)));
                }
            }
        }
    }
}
