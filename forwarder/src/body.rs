//! The bodies on both sides of the proxy. Both stream frame by frame; neither buffers what it forwards.
//!
//! - [`UpstreamBody`] carries the client's request body upstream. While it streams it enforces the size
//!   cap and keeps the frames it has passed (cheap `Bytes` clones) up to the retry limit, so a request
//!   the upstream rejects with 401 can be sent again without having been buffered up front.
//! - [`ResponseBody`] carries the upstream's answer (or one of our own) to the client and writes the
//!   access-log line when it ends, fails or is dropped by a client that went away.

use crate::keys::quota::Slot;
use crate::observe::access_log::{AccessLog, BodyEnd};
use crate::observe::metrics::{Route, METRICS};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds the {0}-byte limit")]
    TooLarge(u64),
    #[error("reading the request body from the client: {0}")]
    Client(#[from] hyper::Error),
}

/// What the request body told us by the time the upstream answered.
#[derive(Default)]
struct Kept {
    /// The chunks passed so far, the first apart: most bodies come in one, which then costs no `Vec`.
    first: Option<Bytes>,
    more: Vec<Bytes>,
    len: u64,
    /// More than the retry limit passed: the chunks were dropped and the body cannot be replayed.
    overflowed: bool,
    /// The whole body passed (end of stream seen).
    complete: bool,
    too_large: bool,
}

impl Kept {
    fn keep(&mut self, chunk: &Bytes) {
        match self.first {
            None => self.first = Some(chunk.clone()),
            Some(_) => self.more.push(chunk.clone()),
        }
    }

    fn forget(&mut self) {
        (self.first, self.more) = (None, Vec::new());
    }
}

/// The handler's view of a streaming request body after it was handed to the upstream client.
#[derive(Clone)]
pub struct Tee(Arc<Mutex<Kept>>);

impl Tee {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding this lock cannot leave it inconsistent in a way that matters: at worst a
        // retry is skipped.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The whole body, when it passed completely and within the retry limit.
    pub fn replay(&self) -> Option<UpstreamBody> {
        let kept = self.lock();
        if kept.complete && !kept.overflowed {
            let chunks = kept.first.iter().chain(&kept.more).cloned().collect();
            Some(UpstreamBody::Replay { chunks, next: 0, left: kept.len })
        } else {
            None
        }
    }

    pub fn was_too_large(&self) -> bool {
        self.lock().too_large
    }

    pub fn bytes_seen(&self) -> u64 {
        self.lock().len
    }
}

pub enum UpstreamBody {
    Empty,
    Streaming { inner: Incoming, tee: Tee, seen: u64, max: u64, keep_limit: u64 },
    Replay { chunks: Vec<Bytes>, next: usize, left: u64 },
}

impl UpstreamBody {
    /// Wraps the client's body. Returns the handle to ask afterwards whether it can be replayed.
    pub fn streaming(inner: Incoming, max: u64, keep_limit: u64) -> (Self, Tee) {
        let tee = Tee(Arc::new(Mutex::new(Kept::default())));
        let body = UpstreamBody::Streaming { inner, tee: tee.clone(), seen: 0, max, keep_limit };
        (body, tee)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut *this {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Streaming { inner, tee, seen, max, keep_limit } => {
                let frame = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        tee.lock().complete = true;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Some(Ok(frame))) => frame,
                };
                let mut kept = tee.lock();
                match frame.data_ref() {
                    Some(data) => {
                        *seen += data.len() as u64;
                        METRICS.request_bytes.inc_by(data.len() as u64);
                        kept.len = *seen;
                        if *seen > *max {
                            kept.too_large = true;
                            kept.forget();
                            let max = *max;
                            drop(kept);
                            // The rest of the body is read away elsewhere while the 413 goes out.
                            if let UpstreamBody::Streaming { inner, .. } =
                                std::mem::replace(this, UpstreamBody::Empty)
                            {
                                discard(inner, max);
                            }
                            return Poll::Ready(Some(Err(BodyError::TooLarge(max))));
                        }
                        if !kept.overflowed {
                            if *seen <= *keep_limit {
                                kept.keep(data);
                            } else {
                                kept.overflowed = true;
                                kept.forget();
                            }
                        }
                    }
                    // Trailers are forwarded but not kept: a replay could not reproduce them.
                    None => kept.overflowed = true,
                }
                // A body with a Content-Length ends with its last data frame; hyper may not be asked
                // for another poll before the upstream answers.
                if inner.is_end_stream() {
                    kept.complete = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            UpstreamBody::Replay { chunks, next, left } => match chunks.get(*next) {
                Some(chunk) => {
                    *next += 1;
                    *left -= chunk.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(chunk.clone()))))
                }
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Streaming { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Replay { chunks, next, .. } => *next >= chunks.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Streaming { inner, .. } => inner.size_hint(),
            UpstreamBody::Replay { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

/// How long, and how much more than the size cap, a refused request body is read and thrown away.
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads `body` to its end and drops the data, in the background, bounded in time and size.
///
/// A server that answers before reading the request body and then closes the connection makes the
/// kernel reset it (unread data was pending), and the reset can destroy the answer before the client
/// reads it. Reading the body away first (as nginx's lingering close does) lets the answer arrive.
pub fn discard(body: Incoming, max: u64) {
    if body.is_end_stream() {
        return;
    }
    let limit = max.saturating_mul(2).max(1 << 20);
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > limit {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}

enum Source {
    Upstream(Incoming, Stream),
    Full(Option<Bytes>),
}

/// What `/metrics` needs of an upstream body: which route it answers, and when its request arrived
/// until the first byte went out.
struct Stream {
    route: Route,
    first_byte_pending: Option<Instant>,
    /// The request's place under its key's concurrency cap, given back when the body is dropped.
    _slot: Option<Slot>,
}

/// The upstream's answer body: streaming on, or read (a short error the classifier needed).
pub enum AnswerBody {
    Streaming(Incoming),
    Read(Bytes),
}

/// The body sent to the client. Counts what it passes and finishes the request's access-log line.
pub struct ResponseBody {
    source: Source,
    log: Option<Box<AccessLog>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody { source: Source::Full(Some(bytes)), log: None }
    }

    /// The upstream's body for a request of `route` that arrived at `arrived`: counted as an open
    /// stream until it is dropped.
    pub fn upstream(body: Incoming, route: Route, arrived: Instant, slot: Option<Slot>) -> Self {
        METRICS.open_streams.inc();
        let stream = Stream { route, first_byte_pending: Some(arrived), _slot: slot };
        ResponseBody { source: Source::Upstream(body, stream), log: None }
    }

    /// An upstream answer as the account's shell passed it on: still streaming, or a short error it read.
    pub fn answer(body: AnswerBody, route: Route, arrived: Instant, slot: Option<Slot>) -> Self {
        match body {
            AnswerBody::Streaming(body) => ResponseBody::upstream(body, route, arrived, slot),
            AnswerBody::Read(bytes) => ResponseBody::full(bytes),
        }
    }

    /// Attaches the access-log line, written when the body ends or is dropped.
    pub fn with_log(mut self, log: Box<AccessLog>) -> Self {
        self.log = Some(log);
        if self.is_end_stream() {
            self.finish(BodyEnd::Complete);
        }
        self
    }

    fn finish(&mut self, outcome: BodyEnd) {
        if let Some(log) = self.log.take() {
            log.emit(outcome);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(body, stream) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        METRICS.response_bytes.inc_by(data.len() as u64);
                        if let Some(arrived) = stream.first_byte_pending.take() {
                            METRICS.first_byte(stream.route, arrived.elapsed());
                        }
                    }
                }
                polled
            }
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(log), Some(data)) = (this.log.as_mut(), frame.data_ref()) {
                    log.bytes += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(BodyEnd::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(BodyEnd::UpstreamFailed),
            Poll::Ready(None) => this.finish(BodyEnd::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(bytes) => bytes.is_none(),
            Source::Upstream(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            Source::Upstream(body, _) => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Still holding the log line here means the body never finished: the client went away (or the
        // server is shutting down), and dropping the upstream body cancels the upstream request.
        self.finish(BodyEnd::ClientClosed);
        if matches!(self.source, Source::Upstream(..)) {
            METRICS.open_streams.dec();
        }
    }
}
