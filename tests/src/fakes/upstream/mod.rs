//! A fake of the Anthropic API for the forwarder tests.
//!
//! Speaks real HTTP/1.1 and HTTP/2, in cleartext or over TLS (hyper-util's auto server), records every request
//! (method, path, query, headers, body SHA-256 and length), accepts only the Bearer tokens a validator
//! approves (401 `authentication_error` otherwise, or on demand), and streams SSE with a configurable
//! gap between events, noting when a client goes away in the middle of a stream.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Decides whether a Bearer token is one the real API would accept.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_sha256: String,
    pub body_len: usize,
    /// What the fake answered.
    pub status: u16,
}

impl Seen {
    /// The token after `Bearer `, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
    }

    /// All `name` header values, joined with commas (how a receiver reads a repeated header).
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SseConfig {
    /// Data events per stream (content_block_delta), plus message_start/stop framing not counted.
    pub events: usize,
    pub gap: Duration,
}

struct State {
    check: TokenCheck,
    seen: Vec<Seen>,
    reject_next: u32,
    sse: SseConfig,
    /// When each stream sent each event, by stream number.
    sent_at: Vec<Vec<Instant>>,
    /// How long to think before answering (after reading the whole request).
    delay: Duration,
}

#[derive(Default)]
struct Counters {
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    /// Streams whose client connection went away before the last event.
    streams_cancelled: AtomicU64,
    /// Requests whose client went away before the answer's headers were sent.
    requests_abandoned: AtomicU64,
    connections: AtomicU64,
}

pub struct FakeUpstream {
    addr: SocketAddr,
    is_tls: bool,
    state: Arc<Mutex<State>>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Cleartext HTTP/1.1 and HTTP/2 (h2c), on `http://127.0.0.1:port`.
    pub async fn start(check: TokenCheck) -> FakeUpstream {
        FakeUpstream::start_with(check, None).await
    }

    /// TLS with `config` (its ALPN list decides between HTTP/2 and HTTP/1.1), on
    /// `https://localhost:port`.
    pub async fn start_tls(check: TokenCheck, config: Arc<rustls::ServerConfig>) -> FakeUpstream {
        FakeUpstream::start_with(check, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_with(check: TokenCheck, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake upstream");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            check,
            seen: Vec::new(),
            reject_next: 0,
            sse: SseConfig { events: 5, gap: Duration::from_millis(200) },
            sent_at: Vec::new(),
            delay: Duration::ZERO,
        }));
        let counters = Arc::new(Counters::default());
        let (st, ct) = (state.clone(), counters.clone());
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                ct.connections.fetch_add(1, Ordering::SeqCst);
                let (st, ct, tls) = (st.clone(), ct.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, st, ct).await,
                        // A client that does not trust us ends the handshake; nothing to serve then.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, st, ct).await;
                            }
                        }
                    }
                });
            }
        });
        FakeUpstream { addr, is_tls, state, counters, task }
    }

    pub fn url(&self) -> String {
        if self.is_tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn set_sse(&self, events: usize, gap: Duration) {
        self.state.lock().unwrap().sse = SseConfig { events, gap };
    }

    /// Every answer waits this long before its headers are sent.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// The next `n` requests get 401 whatever their token (a revocation the agent does not know of yet).
    pub fn reject_next(&self, n: u32) {
        self.state.lock().unwrap().reject_next = n;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn seen_count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    pub fn last_seen(&self) -> Option<Seen> {
        self.state.lock().unwrap().seen.last().cloned()
    }

    /// When stream number `i` (in start order) sent each of its events.
    pub fn sent_at(&self, i: usize) -> Vec<Instant> {
        self.state.lock().unwrap().sent_at.get(i).cloned().unwrap_or_default()
    }

    pub fn streams_started(&self) -> u64 {
        self.counters.streams_started.load(Ordering::SeqCst)
    }
    pub fn streams_completed(&self) -> u64 {
        self.counters.streams_completed.load(Ordering::SeqCst)
    }
    pub fn streams_cancelled(&self) -> u64 {
        self.counters.streams_cancelled.load(Ordering::SeqCst)
    }
    pub fn requests_abandoned(&self) -> u64 {
        self.counters.requests_abandoned.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }
}

/// Serves one connection, in whichever HTTP version the client speaks.
async fn serve<IO>(io: IO, st: Arc<Mutex<State>>, ct: Arc<Counters>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(req, st.clone(), ct.clone()));
    let server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = server.serve_connection(hyper_util::rt::TokioIo::new(io), service).await;
}

/// A whole JSON answer, or an event stream.
type Answer = Response<Either<Full<Bytes>, SseBody>>;

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<State>>,
    counters: Arc<Counters>,
) -> Result<Answer, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    // The whole body is read before anything is decided, as the real API does.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers.clone(),
        body_sha256: sha256_hex(&body),
        body_len: body.len(),
        status: 0,
    };
    let (authorized, sse, delay) = {
        let mut s = st.lock().unwrap();
        let valid = seen.bearer().is_some_and(|t| (s.check)(t));
        let forced = s.reject_next > 0;
        if forced {
            s.reject_next -= 1;
        }
        (valid && !forced, s.sse, s.delay)
    };
    if !delay.is_zero() {
        // hyper drops this future when the client's connection closes first: the guard counts that.
        let guard = Abandoned(Some(counters.clone()));
        tokio::time::sleep(delay).await;
        guard.disarm();
    }
    let resp = if !authorized {
        error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key")
    } else {
        match (&parts.method, parts.uri.path()) {
            (&Method::POST, "/v1/messages") => {
                let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if doc["stream"] == true {
                    let index = {
                        let mut s = st.lock().unwrap();
                        s.sent_at.push(Vec::new());
                        s.sent_at.len() - 1
                    };
                    counters.streams_started.fetch_add(1, Ordering::SeqCst);
                    let body = SseBody::new(sse, index, st.clone(), counters.clone());
                    let mut resp = Response::new(Either::Right(body));
                    resp.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                    resp.headers_mut().insert("cache-control", "no-cache".parse().unwrap());
                    resp
                } else {
                    json_answer(
                        StatusCode::OK,
                        json!({
                            "id": "msg_fake",
                            "type": "message",
                            "role": "assistant",
                            "model": doc["model"],
                            "content": [{"type": "text", "text": "hello"}],
                            "stop_reason": "end_turn",
                            "usage": {"input_tokens": 3, "output_tokens": 1},
                            "echo": {"body_sha256": seen.body_sha256, "body_len": seen.body_len},
                        }),
                    )
                }
            }
            (&Method::POST, "/v1/messages/count_tokens") => {
                json_answer(StatusCode::OK, json!({"input_tokens": 3}))
            }
            (&Method::GET, "/v1/models") => json_answer(
                StatusCode::OK,
                json!({"data": [{"type": "model", "id": "claude-fake-1"}], "has_more": false}),
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint on the fake"),
        }
    };
    seen.status = resp.status().as_u16();
    let mut resp = resp;
    resp.headers_mut().insert("request-id", "req_fake_upstream".parse().unwrap());
    st.lock().unwrap().seen.push(seen);
    Ok(resp)
}

/// Counts a request as abandoned unless disarmed before it is dropped.
struct Abandoned(Option<Arc<Counters>>);

impl Abandoned {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.requests_abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes` as lowercase hex, as [`Seen::body_sha256`] reports it.
pub fn sha256_of(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

fn json_answer(status: StatusCode, body: Value) -> Answer {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

fn error(status: StatusCode, kind: &str, message: &str) -> Answer {
    json_answer(status, json!({"type": "error", "error": {"type": kind, "message": message}}))
}

/// `message_start`, then `events` deltas `gap` apart, then `message_stop` right after the last delta.
pub struct SseBody {
    config: SseConfig,
    /// Next event: 0 is message_start, 1..=events the deltas, events+1 message_stop.
    next: usize,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    index: usize,
    st: Arc<Mutex<State>>,
    counters: Arc<Counters>,
}

impl SseBody {
    fn new(config: SseConfig, index: usize, st: Arc<Mutex<State>>, counters: Arc<Counters>) -> Self {
        SseBody { config, next: 0, sleep: None, index, st, counters }
    }

    fn event(&self, n: usize) -> String {
        if n == 0 {
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_fake\"}}\n\n"
                .to_owned()
        } else if n <= self.config.events {
            format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"chunk {n}\"}}}}\n\n"
            )
        } else {
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned()
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let last = this.config.events + 1;
        if this.next > last {
            return Poll::Ready(None);
        }
        // Deltas after the first wait `gap`; message_start, the first delta and message_stop do not.
        if this.next >= 2 && this.next <= this.config.events {
            let gap = this.config.gap;
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let n = this.next;
        this.next += 1;
        if (1..=this.config.events).contains(&n) {
            if let Some(times) = this.st.lock().unwrap().sent_at.get_mut(this.index) {
                times.push(Instant::now());
            }
        }
        if n == last {
            this.counters.streams_completed.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(this.event(n))))))
    }

    fn is_end_stream(&self) -> bool {
        self.next > self.config.events + 1
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if self.next <= self.config.events + 1 {
            self.counters.streams_cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
