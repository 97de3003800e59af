//! Subscriptions (`Request::Subscribe`): a connection on which the agent pushes what a token request
//! would get, each time that changes (a new token, a revocation, a degraded state), so a forwarder
//! reads the current token from memory for each request without waking the agent.
//!
//! A subscription waits on the published snapshot, not on a connection thread: it is handed to the
//! runtime as a task that sleeps until the lifecycle publishes, and ends when the client closes. It
//! keeps its connection's slot (under the uid's cap) while it lasts.

use super::connection::FRAME_DEADLINE;
use crate::lifecycle::Snapshot;
use sidecred_proto::{encode_frame, ErrorCode, ProtoError, Response, ResponseFrame, TokenGrant};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

/// What a subscriber was last told, to push only what changed: the passing of time alone (the
/// remaining lifetime) is not news.
#[derive(Debug, PartialEq)]
enum Told {
    Token { generation: u64, expires_at_ms: u64, degraded: Option<String> },
    Error(ErrorCode, String),
}

/// What a token request would get now. A token request that would wait (the token expired, a refresh
/// is due) is pushed as `unavailable`: the subscriber then asks, and its request does the waiting.
fn answer(snapshot: &Snapshot, now: Instant) -> Result<TokenGrant, ProtoError> {
    snapshot.immediate_answer(now).unwrap_or_else(|| {
        Err(ProtoError::new(
            ErrorCode::Unavailable,
            "no token to serve at this moment; ask for one to wait for it",
        ))
    })
}

fn told(answer: &Result<TokenGrant, ProtoError>) -> Told {
    match answer {
        Ok(g) => Told::Token {
            generation: g.generation,
            expires_at_ms: g.expires_at_ms,
            degraded: g.degraded.clone(),
        },
        Err(e) => Told::Error(e.code, e.message.clone()),
    }
}

/// Hands `stream` to the runtime as a subscription; `held` (the connection's slots) is released when
/// it ends.
pub fn start(
    runtime: &Handle,
    stream: std::os::unix::net::UnixStream,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    held: impl Send + 'static,
) {
    runtime.spawn(async move {
        let _held = held;
        let stream =
            match stream.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(stream)) {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "cannot take over a subscription's connection");
                    return;
                }
            };
        push(stream, snapshot).await;
    });
}

async fn push(stream: tokio::net::UnixStream, mut snapshot: watch::Receiver<Arc<Snapshot>>) {
    let (mut reader, mut writer) = stream.into_split();
    let mut last: Option<Told> = None;
    let mut probe = [0u8; 1];
    loop {
        let now = answer(&snapshot.borrow_and_update(), Instant::now());
        let news = told(&now);
        if last.as_ref() != Some(&news) {
            let response = match now {
                Ok(grant) => Response::Token(grant),
                Err(e) => Response::Error(e),
            };
            let frame = encode_frame(&ResponseFrame::from(response));
            // A subscriber that does not read its pushes within the deadline is dropped: it would see
            // stale tokens otherwise, and it reconnects.
            match tokio::time::timeout(FRAME_DEADLINE, writer.write_all(&frame)).await {
                Ok(Ok(())) => last = Some(news),
                Ok(Err(_)) | Err(_) => return,
            }
        }
        tokio::select! {
            changed = snapshot.changed() => if changed.is_err() { return },
            // The subscriber sends nothing after subscribing: its end of stream (or a byte it should
            // not have sent) ends the subscription.
            _ = reader.read(&mut probe) => return,
        }
    }
}
