//! Client connections: how soon one must ask, how long it may sit idle, and how it ends when the
//! forwarder drains. hyper serves the protocols; a watcher per connection keeps the deadlines, hyper's
//! own HTTP/1 header timer included (it cost a timer and an allocation per request).
//!
//! - **First request.** A connection that has not delivered a request within `--first-request-timeout`
//!   is closed, and dropped a second later if it has not finished: a silent connection, one that sent
//!   half the HTTP/2 preface, or one whose first request head never ends.
//! - **Idle.** No request in flight for `--idle-timeout`: graceful shutdown (GOAWAY on HTTP/2). On
//!   HTTP/1 that closes the connection at once, also when a next request head has begun to arrive and
//!   not ended (hyper counts a connection as busy only once a head is whole), so a slow head cannot
//!   hold a connection longer than an idle one.
//! - **Crowded.** While the connection cap keeps others waiting, both of those shrink to a second
//!   ([`deadline`]): connections that ask nothing make room instead of locking clients out.
//! - **Drain.** HTTP/2 connections get GOAWAY at once: a client sends nothing more on them and nothing
//!   it sent is lost. HTTP/1 cannot tell an idle connection it is about to close, and a request the
//!   client sends just as the close happens is lost (or even reset, when its bytes arrived but were not
//!   read yet). So an HTTP/1 connection stays open for `--drain-linger`: every response sent from the
//!   start of the drain says `Connection: close`, and a client that keeps asking learns of the close
//!   from the answer itself. What is still idle after the linger is closed; a request racing that close
//!   is the one loss HTTP/1 keep-alive cannot avoid (clients retry it; the README says so).

mod deadline;

use crate::body::ResponseBody;
use crate::proxy::Proxy;
use bytes::Bytes;
use deadline::{judge, Verdict};
use futures_util::task::AtomicWaker;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

/// After a connection that never asked anything is told to shut down, how long it has to go before it
/// is simply dropped (an HTTP/2 peer that answers no ping would otherwise hold it).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub first_request: Duration,
    pub idle: Duration,
    /// How long an HTTP/1 connection stays open once the drain starts, answering with
    /// `Connection: close`.
    pub drain_linger: Duration,
}

/// A worker's drain: a flag the responses read, and a channel that wakes every watcher and tells the
/// worker when the last one has ended.
pub struct Drain {
    draining: Arc<AtomicBool>,
    tx: watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> Self {
        Drain { draining: Arc::default(), tx: watch::channel(false).0 }
    }

    pub fn open_connections(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Starts the drain and waits until every connection has ended, or `timeout`: answers whether all
    /// ended.
    pub async fn run(self, timeout: Duration) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        self.tx.send_replace(true);
        tokio::time::timeout(timeout, self.tx.closed()).await.is_ok()
    }
}

/// What a connection's requests tell its watcher.
struct Activity {
    opened: Instant,
    asked: AtomicBool,
    /// Wakes the watcher at the first request: its timer was set for `--first-request-timeout`, and
    /// the idle timeout (which may be shorter) counts from then on. Later requests need no wake: a
    /// timer set while one is in flight falls due no later than the idle deadline would.
    first_request: Notify,
    http2: AtomicBool,
    in_flight: AtomicUsize,
    /// When `in_flight` last fell to zero, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        if !self.asked.swap(true, Ordering::Relaxed) {
            self.first_request.notify_one();
        }
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn seen(&self) -> deadline::Seen {
        deadline::Seen {
            opened: self.opened,
            asked: self.asked.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed) > 0,
            idle_since: self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed)),
        }
    }
}

/// A request in flight, until its response body has ended or been dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.0.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }
}

/// The response body with its request's [`InFlight`] attached.
pub struct Tracked {
    inner: ResponseBody,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The two ways a worker serves a connection.
pub struct Servers {
    /// HTTP/1.1 and cleartext HTTP/2, told apart by hyper-util, which reads the first bytes itself.
    pub any: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 alone, for a connection whose first bytes already showed it (see [`speaks_http1`]):
    /// hyper's own server, without hyper-util's layer that replays the bytes it sniffed on every read.
    pub http1: hyper::server::conn::http1::Builder,
}

/// How long a new connection's first bytes are waited for before hyper-util is left to tell the
/// protocol (see [`speaks_http1`]).
const SNIFF_WAIT: Duration = Duration::from_millis(100);

/// What a cleartext HTTP/2 client sends first.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the connection's first bytes, looked at without taking them, already show HTTP/1.
///
/// hyper-util tells the protocols apart by reading up to 24 bytes and handing them back to hyper's
/// HTTP/1 reader, whose buffer then grows from 8 to 16 KiB to make room for its first read beside
/// them, and stays so for the connection's life. A connection known to speak HTTP/1 is served
/// without that step. Nearly every client sends its request as it connects; one that has sent nothing
/// yet, or only bytes that may begin the HTTP/2 preface, is left to hyper-util as before.
async fn speaks_http1(stream: &TcpStream) -> bool {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    match tokio::time::timeout(SNIFF_WAIT, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => first.get(..n) != HTTP2_PREFACE.get(..n),
        _ => false,
    }
}

/// What a worker serves its connections with.
pub struct Worker {
    pub servers: Arc<Servers>,
    pub proxy: Arc<Proxy>,
    pub drain: Drain,
    /// Set by the acceptor while connections wait for a slot under `--max-connections`.
    pub crowded: watch::Receiver<bool>,
    pub timeouts: Timeouts,
}

impl Worker {
    /// Serves one accepted connection on the current runtime; `slot` (its place under
    /// `--max-connections`) is given back when it ends.
    pub fn serve(&self, stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        let activity = Arc::new(Activity {
            opened: Instant::now(),
            asked: AtomicBool::new(false),
            first_request: Notify::new(),
            http2: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        });
        let (proxy, draining, requests) = (self.proxy.clone(), self.drain.draining.clone(), activity.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = requests.begin(req.version());
            let http1 = req.version() < Version::HTTP_2;
            // Made here, so the request is held once, in it (hyper keeps a future of this block's size
            // per connection).
            let serving = proxy.clone().serve(req);
            let draining = draining.clone();
            async move {
                let mut resp = match serving.await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                if http1 && draining.load(Ordering::Relaxed) {
                    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, _in_flight: in_flight }))
            }
        });
        let watcher = Watcher {
            activity,
            drain: self.drain.tx.subscribe(),
            crowded: self.crowded.clone(),
            timeouts: self.timeouts,
            peer,
        };
        let servers = self.servers.clone();
        let open = crate::memory::Open::count();
        let orders = Arc::new(Orders::default());
        let told = orders.clone();
        let conn = tokio::spawn(async move {
            let io = TokioIo::new(stream);
            if speaks_http1(io.inner()).await {
                Ok(obey(servers.http1.serve_connection(io, service), &told).await?)
            } else {
                obey(servers.any.serve_connection(io, service).into_owned(), &told).await
            }
        });
        tokio::spawn(async move {
            watcher.watch(conn, &orders).await;
            // Counted, and holding its place under the cap, until the connection and everything it
            // held are gone.
            drop((slot, open));
        });
    }
}

/// What a watcher tells its connection, read each time the connection's task runs.
///
/// The connection and its watcher are two tasks so that the connection's many wake-ups (every read,
/// write and response frame) poll the connection alone: polled in one `select!`, the watcher's
/// channels and timer were polled on each of them too, a lock taken per channel and wake-up.
#[derive(Default)]
struct Orders {
    shut_down: AtomicBool,
    waker: AtomicWaker,
}

impl Orders {
    fn shut_down(&self) {
        self.shut_down.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Serves the connection to its end, starting a graceful shutdown when the watcher says so; answers
/// how it ended.
async fn obey<C>(conn: C, orders: &Orders) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    let mut shutting = false;
    std::future::poll_fn(|cx| {
        if !shutting {
            orders.waker.register(cx.waker());
            if orders.shut_down.load(Ordering::Acquire) {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
        }
        conn.as_mut().poll(cx)
    })
    .await
}

enum Phase {
    Serving,
    /// HTTP/1 during the drain: answering with `Connection: close` until the linger ends.
    Lingering,
    /// Told to shut down; `Some` when it is dropped at that moment if it has not finished.
    Closing(Option<Instant>),
}

/// Keeps one connection's deadlines.
struct Watcher {
    activity: Arc<Activity>,
    drain: watch::Receiver<bool>,
    crowded: watch::Receiver<bool>,
    timeouts: Timeouts,
    peer: SocketAddr,
}

impl Watcher {
    /// Keeps the deadlines of the connection served by `conn` until it ends, telling it through
    /// `orders` when to shut down, and dropping it when it does not finish in time.
    async fn watch<E>(mut self, mut conn: JoinHandle<Result<(), E>>, orders: &Orders)
    where
        E: std::fmt::Display,
    {
        let peer = self.peer;
        let mut phase = Phase::Serving;
        // The first check computes the real deadline.
        let mut check = self.activity.opened;
        // Whether the acceptor still says when it is crowded (it stops when the drain starts).
        let mut crowding = true;
        let mut asked = false;
        loop {
            let timer = match phase {
                Phase::Closing(at) => at,
                Phase::Serving | Phase::Lingering => Some(check),
            };
            tokio::select! {
                ended = &mut conn => {
                    match ended {
                        Ok(Err(e)) => debug!(peer = %peer, error = %e, "client connection ended with an error"),
                        Err(e) if e.is_panic() => warn!(peer = %peer, "a client connection's task panicked"),
                        Ok(Ok(())) | Err(_) => {}
                    }
                    return;
                }
                _ = self.drain.changed(), if matches!(phase, Phase::Serving) => {
                    if self.activity.http2.load(Ordering::Relaxed) {
                        orders.shut_down();
                        phase = Phase::Closing(None);
                    } else {
                        check = Instant::now() + self.timeouts.drain_linger;
                        phase = Phase::Lingering;
                    }
                }
                () = self.activity.first_request.notified(), if !asked && matches!(phase, Phase::Serving) => {
                    asked = true;
                    check = Instant::now();
                }
                changed = self.crowded.changed(), if crowding && matches!(phase, Phase::Serving) => {
                    crowding = changed.is_ok();
                    check = Instant::now();
                }
                () = sleep_until(timer) => {
                    let now = Instant::now();
                    match phase {
                        Phase::Closing(_) => {
                            debug!(peer = %peer, "closed: it did not finish shutting down");
                            conn.abort();
                            // Returns once the connection is dropped.
                            let _ = conn.await;
                            return;
                        }
                        Phase::Lingering => {
                            orders.shut_down();
                            phase = Phase::Closing(None);
                        }
                        Phase::Serving => {
                            let crowded = crowding && *self.crowded.borrow();
                            match judge(&self.activity.seen(), &self.timeouts, crowded, now) {
                                Verdict::Wait(at) => check = at,
                                Verdict::Close(reason) => {
                                    debug!(peer = %peer, reason = reason.describe(), "closing a client connection");
                                    orders.shut_down();
                                    phase = Phase::Closing(reason.never_asked().then_some(now + CLOSE_GRACE));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// What `speaks_http1` makes of a connection whose client has sent `first`.
    async fn sniffed(first: &[u8]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        client.write_all(first).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let http1 = speaks_http1(&server).await;
        // Looked at, not taken: the server still reads everything the client sent.
        let mut all = vec![0; first.len()];
        if !first.is_empty() {
            tokio::io::AsyncReadExt::read_exact(&mut server, &mut all).await.unwrap();
        }
        assert_eq!(all, first);
        http1
    }

    #[tokio::test]
    async fn only_bytes_that_cannot_begin_the_http2_preface_count_as_http1() {
        assert!(sniffed(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n").await);
        assert!(sniffed(b"GET").await);
        // Left to hyper-util: the preface, a part of it (even one that HTTP/1's PUT would share), nothing.
        assert!(!sniffed(HTTP2_PREFACE).await);
        assert!(!sniffed(&HTTP2_PREFACE[..3]).await);
        assert!(!sniffed(b"P").await);
        assert!(!sniffed(b"").await);
    }
}
