//! The access log: one line per proxied request, written when its response body ends, so a stream's
//! line carries the bytes it really delivered and whether the client stayed to the end.

use http::{HeaderValue, Method, Uri};
use std::time::{Duration, Instant};

/// The log target, so `SIDECRED_LOG=warn,sidecred_forwarder::access=info` keeps just these lines.
pub const TARGET: &str = "sidecred_forwarder::access";

/// How a response body ended: the access log's `outcome` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    Complete,
    /// The client disconnected before the end of the body.
    ClientClosed,
    /// The upstream failed in the middle of the body.
    UpstreamFailed,
}

impl BodyEnd {
    fn as_str(self) -> &'static str {
        match self {
            BodyEnd::Complete => "complete",
            BodyEnd::ClientClosed => "client_closed",
            BodyEnd::UpstreamFailed => "upstream_failed",
        }
    }
}

/// Everything the line needs, gathered along the way. Holds no secret: no header but the request id.
pub struct AccessLog {
    pub method: Method,
    pub uri: Uri,
    pub request_id: HeaderValue,
    pub started: Instant,
    pub status: u16,
    /// Time until the upstream's response headers (including a retry), if it was asked at all.
    pub upstream: Option<Duration>,
    pub retried: bool,
    /// Response body bytes delivered to the client.
    pub bytes: u64,
    /// What the upstream's answer said of the account (`account/outcome.rs`), and the client's shape.
    pub account: &'static str,
    pub client: &'static str,
}

impl AccessLog {
    /// The line for a request that started now, or `None` when the access log is filtered out: then
    /// nothing is gathered for it on the way (no clock reads, no copies of the method and path).
    ///
    /// Boxed: the line travels with the request's future and then its response body, which hyper
    /// moves several times per request; a pointer is all those moves copy.
    pub fn start(method: &Method, uri: &Uri, request_id: &HeaderValue) -> Option<Box<Self>> {
        tracing::enabled!(target: TARGET, tracing::Level::INFO).then(|| {
            Box::new(AccessLog::new(method.clone(), uri.clone(), request_id.clone(), Instant::now()))
        })
    }

    fn new(method: Method, uri: Uri, request_id: HeaderValue, started: Instant) -> Self {
        AccessLog {
            method,
            uri,
            request_id,
            started,
            status: 0,
            upstream: None,
            retried: false,
            bytes: 0,
            account: "-",
            client: "-",
        }
    }

    pub fn emit(self, outcome: BodyEnd) {
        // Field expressions are evaluated only when the line is enabled, so a filtered-out access log
        // costs no clock read or formatting.
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path = %self.uri.path(),
            status = self.status,
            upstream_ms = self.upstream.map_or(-1.0, millis),
            duration_ms = millis(self.started.elapsed()),
            bytes = self.bytes,
            retried = self.retried,
            outcome = %outcome.as_str(),
            account = %self.account,
            client = %self.client,
            request_id = %self.request_id.to_str().unwrap_or("-"),
            "request"
        );
    }
}

fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}
