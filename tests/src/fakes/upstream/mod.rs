//! A fake of the Anthropic API for the forwarder tests and the real clients of the compatibility tests.
//!
//! Speaks real HTTP/1.1 and HTTP/2, in cleartext or over TLS (hyper-util's auto server), records every
//! request (method, path, query, headers, body), accepts only the Bearer tokens a validator approves
//! (401 `authentication_error` otherwise, or on demand), answers errors the API's way on demand (429 and
//! 529 with their retry headers), and serves the Messages API in the shapes the SDKs and Claude Code
//! parse (`messages.rs`): whole messages, event streams with a configurable gap between the deltas (noting
//! when a client goes away in the middle, `sse.rs`), tool calls, token counts and the model list.

pub mod account;
mod messages;
mod sse;

pub use account::{Billing, Canned};
pub use messages::{count_tokens, Reply, MODELS, USE_TOOL};

use crate::fakes::server::{accept_each, Acceptor};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sse::SseBody;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    pub body: Bytes,
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

    /// The body as JSON, when it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// One line for a request log: what was asked, with which token and betas, and what was answered.
    pub fn summary(&self) -> String {
        let target = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        let token = self.bearer().map_or_else(|| "none".to_owned(), sidecred_proto::fingerprint);
        format!(
            "{} {target} -> {} (token {token}, beta {:?}, retry {:?}, {} body bytes)",
            self.method,
            self.status,
            self.header("anthropic-beta").unwrap_or_default(),
            self.header("x-stainless-retry-count").unwrap_or_default(),
            self.body_len,
        )
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
    /// Statuses the next requests with a valid token get instead of an answer, in order.
    fail_next: VecDeque<u16>,
    sse: SseConfig,
    /// When each stream sent each delta, by stream number.
    sent_at: Vec<Vec<Instant>>,
    /// How long to think before answering (after reading the whole request).
    delay: Duration,
    /// The text of every answer that is not about a tool.
    answer: String,
    /// The usage-window headers every Messages answer carries, names without their prefix.
    usage: Vec<(String, String)>,
    /// How the account pays for Messages requests.
    billing: Billing,
    /// Answers about the account the next Messages requests get, in order.
    canned: VecDeque<Canned>,
    /// Whether those answers come gzipped to a client that accepts gzip.
    gzip_errors: bool,
}

/// What the fake's Messages answers say of the account's usage windows unless a test sets others
/// (names after `anthropic-ratelimit-unified-`), as the API sends them to an OAuth account.
pub const DEFAULT_USAGE: &[(&str, &str)] = &[
    ("status", "allowed"),
    ("5h-status", "allowed"),
    ("5h-utilization", "0.25"),
    ("5h-reset", "1764511200"),
    ("7d-status", "allowed"),
    ("7d-utilization", "0.4"),
    ("7d-reset", "1764900000"),
    ("7d_oi-utilization", "0.125"),
    ("representative-claim", "five_hour"),
];

#[derive(Default)]
struct Counters {
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    /// Streams whose client connection went away before the last event.
    streams_cancelled: AtomicU64,
    /// Requests whose client went away before the answer's headers were sent.
    requests_abandoned: AtomicU64,
    connections: AtomicU64,
    /// Messages answered, for their ids.
    messages: AtomicU64,
    /// Messages served and billed to the account's extra usage.
    billed: AtomicU64,
}

pub struct FakeUpstream {
    addr: SocketAddr,
    is_tls: bool,
    state: Arc<Mutex<State>>,
    counters: Arc<Counters>,
    _accepting: Acceptor,
}

impl FakeUpstream {
    /// Cleartext HTTP/1.1 and HTTP/2 (h2c), on `http://127.0.0.1:port`.
    pub async fn start(check: TokenCheck) -> FakeUpstream {
        FakeUpstream::bind(check, SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind fake upstream")
    }

    /// Cleartext, on `addr` (the demo stand-in's, given by its user).
    pub async fn bind(check: TokenCheck, addr: SocketAddr) -> std::io::Result<FakeUpstream> {
        let listener = TcpListener::bind(addr).await?;
        Ok(FakeUpstream::serve_on(listener, check, None))
    }

    /// TLS with `config` (its ALPN list decides between HTTP/2 and HTTP/1.1), on
    /// `https://localhost:port`.
    pub async fn start_tls(check: TokenCheck, config: Arc<rustls::ServerConfig>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake upstream");
        FakeUpstream::serve_on(listener, check, Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    fn serve_on(
        listener: TcpListener,
        check: TokenCheck,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeUpstream {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            check,
            seen: Vec::new(),
            reject_next: 0,
            fail_next: VecDeque::new(),
            sse: SseConfig { events: 5, gap: Duration::from_millis(200) },
            sent_at: Vec::new(),
            delay: Duration::ZERO,
            answer: "hello".to_owned(),
            usage: DEFAULT_USAGE.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            billing: Billing::OnPlan,
            gzip_errors: false,
            canned: VecDeque::new(),
        }));
        let counters = Arc::new(Counters::default());
        let (st, ct) = (state.clone(), counters.clone());
        let is_tls = tls.is_some();
        let accepting = accept_each(listener, move |stream| {
            let _ = stream.set_nodelay(true);
            ct.connections.fetch_add(1, Ordering::SeqCst);
            let (st, ct, tls) = (st.clone(), ct.clone(), tls.clone());
            async move {
                match tls {
                    None => serve(stream, st, ct).await,
                    // A client that does not trust us ends the handshake; nothing to serve then.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve(stream, st, ct).await;
                        }
                    }
                }
            }
        });
        FakeUpstream { addr, is_tls, state, counters, _accepting: accepting }
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

    /// The next requests that carry a valid token get these statuses, one each, as the API's errors:
    /// 429 and 529 with `retry-after` (1 s) and `retry-after-ms` (20 ms), as the API sends them.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().fail_next.extend(statuses);
    }

    /// The text every answer that is not about a tool gives.
    pub fn set_answer(&self, text: &str) {
        self.state.lock().unwrap().answer = text.to_owned();
    }

    /// The usage-window headers of the Messages answers from now on (names after the prefix).
    pub fn set_usage(&self, usage: &[(&str, &str)]) {
        self.state.lock().unwrap().usage =
            usage.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    }

    /// How the account pays for Messages requests from now on.
    pub fn set_billing(&self, billing: Billing) {
        self.state.lock().unwrap().billing = billing;
    }

    /// Whether the answers about the account (refusals, exhausted windows: `Canned`) come gzipped, with
    /// `content-encoding: gzip`, to a request whose `accept-encoding` names gzip.
    pub fn set_gzip_errors(&self, on: bool) {
        self.state.lock().unwrap().gzip_errors = on;
    }

    /// The next Messages request that carries a valid token gets this answer (after those queued).
    pub fn answer_next(&self, canned: Canned) {
        self.state.lock().unwrap().canned.push_back(canned);
    }

    /// Messages served and billed to the account's extra usage: what the account paid for.
    pub fn billed(&self) -> u64 {
        self.counters.billed.load(Ordering::SeqCst)
    }

    /// Every request so far, one line each: for assertion messages.
    pub fn log(&self) -> String {
        let seen = self.state.lock().unwrap().seen.clone();
        seen.iter().map(|s| format!("  {}\n", s.summary())).collect()
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
        body: body.clone(),
        status: 0,
    };
    let is_message = parts.method == Method::POST && parts.uri.path() == "/v1/messages";
    let accepts_gzip = parts
        .headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().unwrap_or("").split(',').any(|c| c.trim().starts_with("gzip")));
    let (authorized, failure, canned, sse, delay, answer, usage, billing, gzip) = {
        let mut s = st.lock().unwrap();
        let valid = seen.bearer().is_some_and(|t| (s.check)(t));
        let forced = s.reject_next > 0;
        if forced {
            s.reject_next -= 1;
        }
        let authorized = valid && !forced;
        let failure = if authorized { s.fail_next.pop_front() } else { None };
        let canned = if authorized && failure.is_none() && is_message { s.canned.pop_front() } else { None };
        let gzip = s.gzip_errors && accepts_gzip;
        (
            authorized,
            failure,
            canned,
            s.sse,
            s.delay,
            s.answer.clone(),
            s.usage.clone(),
            s.billing.clone(),
            gzip,
        )
    };
    if !delay.is_zero() {
        // hyper drops this future when the client's connection closes first: the guard counts that.
        let guard = Abandoned(Some(counters.clone()));
        tokio::time::sleep(delay).await;
        guard.disarm();
    }
    let mut resp = if !authorized {
        error(StatusCode::UNAUTHORIZED, "invalid x-api-key")
    } else if let Some(status) = failure {
        let status = StatusCode::from_u16(status).unwrap();
        let mut resp = error(status, "injected by the test");
        resp.headers_mut().insert("retry-after", "1".parse().unwrap());
        resp.headers_mut().insert("retry-after-ms", "20".parse().unwrap());
        resp
    } else if let Some(canned) = canned {
        canned_answer(&canned, gzip)
    } else if is_message {
        match account::judge(&billing, &parts.headers) {
            account::Verdict::Refuse(canned) => canned_answer(&canned, gzip),
            account::Verdict::Serve { unified, billed } => {
                if billed {
                    counters.billed.fetch_add(1, Ordering::SeqCst);
                }
                let mut resp = route(&parts, &body, &seen, sse, &answer, &st, &counters);
                set_unified(resp.headers_mut(), usage.iter().chain(&unified));
                resp
            }
        }
    } else {
        route(&parts, &body, &seen, sse, &answer, &st, &counters)
    };
    seen.status = resp.status().as_u16();
    resp.headers_mut().insert("request-id", "req_fake_upstream".parse().unwrap());
    st.lock().unwrap().seen.push(seen);
    Ok(resp)
}

/// The answer of an authorised request that is not failed on purpose.
fn route(
    parts: &http::request::Parts,
    body: &Bytes,
    seen: &Seen,
    sse: SseConfig,
    answer: &str,
    st: &Arc<Mutex<State>>,
    counters: &Arc<Counters>,
) -> Answer {
    let path = parts.uri.path();
    match (&parts.method, path) {
        (&Method::POST, "/v1/messages") => {
            let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let reply = messages::reply_to(&doc, answer);
            let id = format!("msg_fake_{}", counters.messages.fetch_add(1, Ordering::SeqCst));
            if doc["stream"] == true {
                let index = {
                    let mut s = st.lock().unwrap();
                    s.sent_at.push(Vec::new());
                    s.sent_at.len() - 1
                };
                counters.streams_started.fetch_add(1, Ordering::SeqCst);
                let events = messages::stream(&id, &doc["model"], &reply, sse.events);
                let body = SseBody::new(events, sse.gap, index, st.clone(), counters.clone());
                let mut resp = Response::new(Either::Right(body));
                resp.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                resp.headers_mut().insert("cache-control", "no-cache".parse().unwrap());
                resp
            } else {
                let mut message = messages::message(&id, &doc["model"], &reply);
                message["echo"] = json!({"body_sha256": seen.body_sha256, "body_len": seen.body_len});
                json_answer(StatusCode::OK, message)
            }
        }
        (&Method::POST, "/v1/messages/count_tokens") => {
            json_answer(StatusCode::OK, json!({"input_tokens": count_tokens(body.len())}))
        }
        (&Method::GET, "/v1/models") => json_answer(StatusCode::OK, messages::model_list()),
        (&Method::GET, _) if path.strip_prefix("/v1/models/").is_some_and(|id| MODELS.contains(&id)) => {
            json_answer(StatusCode::OK, messages::model(&path["/v1/models/".len()..]))
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint on the fake"),
    }
}

/// Sets `anthropic-ratelimit-unified-NAME: VALUE` for each pair, later ones over earlier ones. Values
/// are sent as bytes, so a test can send any malformed value a header can carry.
fn set_unified<'a>(headers: &mut HeaderMap, pairs: impl Iterator<Item = &'a (String, String)>) {
    for (name, value) in pairs {
        let name = format!("{}{name}", sidecred_proto::anthropic::RATELIMIT_UNIFIED_PREFIX);
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
}

/// One of the API's answers about the account or the request, as `account.rs` describes it.
fn canned_answer(canned: &Canned, gzip: bool) -> Answer {
    let mut resp = json_answer(StatusCode::from_u16(canned.status).unwrap(), canned.body.clone());
    if gzip {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(canned.body.to_string().as_bytes()).unwrap();
        let zipped = e.finish().unwrap();
        resp.headers_mut().insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, zipped.len().into());
        *resp.body_mut() = Either::Left(Full::new(Bytes::from(zipped)));
    }
    set_unified(resp.headers_mut(), canned.unified.iter());
    for (name, value) in &canned.headers {
        resp.headers_mut()
            .insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    resp
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

fn error(status: StatusCode, message: &str) -> Answer {
    json_answer(status, messages::error(messages::error_kind(status.as_u16()), message))
}
