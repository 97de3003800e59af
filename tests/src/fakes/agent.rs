//! A stand-in for `sidecred-agent` on its socket, for what the real one never does: hang after accepting
//! a connection, or answer as whoever planted a socket where the agent's should be. Speaks the real
//! frames and counts connections and requests, so a test can assert "asked nothing".

use sidecred_proto::{read_frame, write_frame, RequestFrame, Response, ResponseFrame, Secret, TokenGrant};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::UnixListener;

/// The token the stand-in serves; it carries the leak marker, so it must appear in no log.
pub const FAKE_AGENT_TOKEN: &str = "sk-ant-oat01-sctest-impostor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads requests and never answers, holding every connection open.
    Hang,
    /// Answers every request with [`FAKE_AGENT_TOKEN`], valid for an hour.
    Answer,
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
}

pub struct FakeAgent {
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    /// Binds `path` (which must not exist) and serves it on the current runtime.
    pub fn start(path: &Path, behaviour: Behaviour) -> FakeAgent {
        let listener = UnixListener::bind(path).expect("bind the fake agent's socket");
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(accept(listener, behaviour, counts.clone()));
        FakeAgent { counts, task }
    }

    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: UnixListener, behaviour: Behaviour, counts: Arc<Counts>) {
    while let Ok((stream, _)) = listener.accept().await {
        counts.connections.fetch_add(1, Ordering::SeqCst);
        let counts = counts.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut buf = Vec::new();
            while let Ok(Some(_)) = read_frame::<_, RequestFrame>(&mut r, &mut buf).await {
                counts.requests.fetch_add(1, Ordering::SeqCst);
                if behaviour == Behaviour::Hang {
                    continue;
                }
                let grant = TokenGrant {
                    access_token: Secret::new(FAKE_AGENT_TOKEN),
                    expires_at_ms: crate::harness::now_ms() + 3_600_000,
                    expires_in_ms: 3_600_000,
                    degraded: None,
                    generation: 0,
                };
                if write_frame(&mut w, &ResponseFrame::from(Response::Token(grant))).await.is_err() {
                    return;
                }
            }
        });
    }
}
