//! How many `--metrics-listen` connections the agent holds, and for how long.
//!
//! Every accepted connection is a file descriptor, and the agent shares its descriptor limit with what
//! keeps the login alive (the credentials watcher, the socket clients, the token endpoint): 300 idle
//! connections under a 256-descriptor limit starved the watcher and made the status probe take 9 s.
//! So at most [`MAX_CONNECTIONS`] are served at a time (one past them is closed as soon as it is
//! accepted, rather than left queued in the backlog behind a flood for minutes), and a connection that
//! neither sends nor receives for [`IDLE_TIMEOUT`] is closed. Prometheus needs one connection and
//! reconnects when one is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections served at once; a scraper needs one, a few people with curl a few more.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection quiet for this long is closed: longer than a scrape takes, shorter than the wait a
/// flood of idle connections could impose on the next scrape.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The slots for connections.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots(Arc::new(Semaphore::new(max)))
    }

    /// A free slot, if there is one; the connection holds it until it is dropped.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// A stream that fails with `TimedOut` once nothing has moved on it for `limit`.
pub struct IdleTimeout<S> {
    inner: S,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> IdleTimeout<S> {
        IdleTimeout { inner, limit, timer: Box::pin(tokio::time::sleep(limit)) }
    }

    fn moved(&mut self) {
        if let Some(at) = Instant::now().checked_add(self.limit) {
            self.timer.as_mut().reset(at);
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn idle() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the metrics connection was idle too long")
}

use std::future::Future;

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.moved();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.moved();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_closed_and_a_busy_one_is_not() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut conn = IdleTimeout::new(near, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        // Bytes every 6 s keep it open past the limit.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            far.write_all(b"x").await.expect("write");
            assert_eq!(conn.read(&mut buf).await.expect("read"), 1);
        }
        let started = Instant::now();
        let err = conn.read(&mut buf).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn a_slot_frees_when_its_connection_ends() {
        let slots = Slots::new(2);
        let (a, _b) = (slots.try_take(), slots.try_take());
        assert!(a.is_some());
        assert!(slots.try_take().is_none(), "a third is refused");
        drop(a);
        assert!(slots.try_take().is_some(), "and taken once one ends");
    }
}
