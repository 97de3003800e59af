//! What each request on the socket gets, independent of how it arrived: a token from the published
//! snapshot, the status report, or a question for the lifecycle task. Connection threads call
//! [`Answers::answer`]; anything that has to wait runs on the runtime while the thread blocks.

use crate::lifecycle::{Input, Snapshot};
use sidecred_proto::{ErrorCode, ProtoError, Request, Response, StatusReport, TokenGrant};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub struct Answers {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    inputs: mpsc::Sender<Input>,
    started: Instant,
    /// The runtime that waits (for a refresh, for the lifecycle task) on behalf of connection threads.
    runtime: Handle,
    /// How long a token request may wait for a refresh when the token has expired.
    expired_wait: Duration,
    /// Upper bound on waiting for a refresh the client asked for.
    refresh_wait: Duration,
}

impl Answers {
    /// Must be called on the runtime that is to do the waiting.
    pub fn new(
        snapshot: watch::Receiver<Arc<Snapshot>>,
        inputs: mpsc::Sender<Input>,
        expired_wait: Duration,
        refresh_wait: Duration,
    ) -> Self {
        Answers {
            snapshot,
            inputs,
            started: Instant::now(),
            runtime: Handle::current(),
            expired_wait,
            refresh_wait,
        }
    }

    /// What a subscription needs: the runtime that runs it and the snapshots it follows.
    pub fn follow(&self) -> (Handle, watch::Receiver<Arc<Snapshot>>) {
        (self.runtime.clone(), self.snapshot.clone())
    }

    pub fn answer(&self, request: Request) -> Response {
        let result = match request {
            Request::GetToken => self.token(),
            // The connection takes subscriptions over before asking for an answer.
            Request::Subscribe => Err(ProtoError::new(ErrorCode::BadRequest, "subscribe is not a question")),
            Request::Status => return Response::Status(Box::new(self.status())),
            Request::ReportRejected { token } => self.ask_lifecycle(|reply| Input::Rejected { token, reply }),
            Request::Refresh => self.ask_lifecycle(|reply| Input::Refresh { reply }),
        };
        match result {
            Ok(grant) => Response::Token(grant),
            Err(e) => Response::Error(e),
        }
    }

    /// Answers from memory. Only an expired token makes it wait, and only briefly, for a refresh.
    fn token(&self) -> Result<TokenGrant, ProtoError> {
        if let Some(answer) = self.snapshot.borrow().immediate_answer(Instant::now()) {
            return answer;
        }
        // Full means the task has plenty to look at already.
        let _ = self.inputs.try_send(Input::Waiting);
        self.on_runtime(wait_for_token(self.snapshot.clone(), self.expired_wait))
    }

    fn status(&self) -> StatusReport {
        let snap = self.snapshot.borrow().clone();
        let mut report = snap.report(Instant::now());
        report.uptime_s = self.started.elapsed().as_secs();
        report
    }

    fn ask_lifecycle(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<TokenGrant, ProtoError>>) -> Input,
    ) -> Result<TokenGrant, ProtoError> {
        let (tx, rx) = oneshot::channel();
        let input = make(tx);
        let inputs = self.inputs.clone();
        let wait = self.refresh_wait;
        self.on_runtime(async move {
            if inputs.send(input).await.is_err() {
                return Err(shutting_down());
            }
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(shutting_down()),
                Err(_) => {
                    Err(ProtoError::new(ErrorCode::Unavailable, "the refresh is taking too long; try again"))
                }
            }
        })
    }

    /// Runs `work` on the runtime and blocks this connection's thread until it is done. A runtime that
    /// shuts down meanwhile drops `work`, and the client hears that the agent is going away.
    fn on_runtime<F>(&self, work: F) -> Result<TokenGrant, ProtoError>
    where
        F: Future<Output = Result<TokenGrant, ProtoError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.blocking_recv().unwrap_or_else(|_| Err(shutting_down()))
    }
}

fn shutting_down() -> ProtoError {
    ProtoError::new(ErrorCode::Unavailable, "the agent is shutting down")
}

async fn wait_for_token(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    wait: Duration,
) -> Result<TokenGrant, ProtoError> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(answer) = rx.borrow_and_update().immediate_answer(Instant::now()) {
            return answer;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                let snap = rx.borrow();
                let detail = snap.last_error.clone().unwrap_or_else(|| "refresh in progress".to_owned());
                return Err(ProtoError::new(
                    ErrorCode::Unavailable,
                    format!("the access token has expired and no new one is available yet ({detail})"),
                ));
            }
        }
    }
}
