//! The forwarder's metrics: one registry for the process, shared by every worker, encoded by
//! `prometheus-client` when `/metrics` is asked for.
//!
//! The request path touches them on every request, so each label set it uses is resolved once, the
//! first time it occurs, and kept in a slot indexed by the labels' enums ([`Slots`]): afterwards a
//! request costs an atomic add per counter and two per histogram ([`Histogram`]), no hashing, lock or
//! allocation. Labels are fixed sets (route, status class, outcome); nothing a client sends (path,
//! key) becomes a label value, except a key's *name* from the operator's keys file.

use super::instruments::{label_values, Histogram, HistogramOf, Slots};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Which API a request was for: a fixed set, so a path with user data never becomes a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Messages,
    CountTokens,
    Models,
    Other,
}

label_values!(Route {
    Messages => "messages",
    CountTokens => "count_tokens",
    Models => "models",
    Other => "other",
});

const ROUTES: [Route; 4] = [Route::Messages, Route::CountTokens, Route::Models, Route::Other];

impl Route {
    /// The route of a client path, whichever base path the client used (`/v1`, `/api/v1`, doubled).
    pub fn of(path: &str) -> Route {
        let mut rest = path.strip_prefix("/api").unwrap_or(path);
        for _ in 0..2 {
            if let Some(r) = rest.strip_prefix("/v1") {
                rest = r;
            }
        }
        match rest {
            "/messages" => Route::Messages,
            "/messages/count_tokens" => Route::CountTokens,
            "/models" => Route::Models,
            r if r.starts_with("/models/") => Route::Models,
            _ => Route::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a request ended, from the operator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// The upstream answered (any status but 429 and 5xx).
    Ok,
    /// The upstream answered 5xx, or could not be reached.
    UpstreamError,
    /// The upstream answered 429: the account's limits.
    UpstreamRateLimited,
    /// No token from the agent (down, restarting, no credentials).
    AgentUnavailable,
    /// The login is dead (or a static token was rejected): someone must act.
    ReauthRequired,
    /// The client's key was missing or wrong.
    RejectedKey,
    /// The client's key is over its limits (the forwarder's 429).
    RateLimited,
    /// Refused by the forwarder: bad path, too large, not found.
    InvalidRequest,
    /// Answered by the account guard (`account/`): a paused window or extra usage, or a client that
    /// `--clients` does not serve.
    AccountGuard,
}

label_values!(RequestOutcome {
    Ok => "ok",
    UpstreamError => "upstream_error",
    UpstreamRateLimited => "upstream_rate_limited",
    AgentUnavailable => "agent_unavailable",
    ReauthRequired => "reauth_required",
    RejectedKey => "rejected_key",
    RateLimited => "rate_limited",
    InvalidRequest => "invalid_request",
    AccountGuard => "account_guard",
});

const OUTCOMES: usize = 9;

impl RequestOutcome {
    /// The outcome of an answer the upstream gave.
    pub fn of_upstream(status: http::StatusCode) -> RequestOutcome {
        match status.as_u16() {
            429 => RequestOutcome::UpstreamRateLimited,
            500.. => RequestOutcome::UpstreamError,
            _ => RequestOutcome::Ok,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    Other,
}

label_values!(StatusClass {
    Informational => "1xx",
    Success => "2xx",
    Redirection => "3xx",
    ClientError => "4xx",
    ServerError => "5xx",
    Other => "other",
});

const CLASSES: [StatusClass; 6] = [
    StatusClass::Informational,
    StatusClass::Success,
    StatusClass::Redirection,
    StatusClass::ClientError,
    StatusClass::ServerError,
    StatusClass::Other,
];

fn class_index(status: http::StatusCode) -> usize {
    match status.as_u16() / 100 {
        c @ 1..=5 => usize::from(c - 1),
        _ => CLASSES.len() - 1,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    status_class: StatusClass,
    outcome: RequestOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
}

/// Why an exchange with the agent gave no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentFailure {
    Unreachable,
    Timeout,
    Refused,
    ReauthRequired,
    Impostor,
}

label_values!(AgentFailure {
    Unreachable => "unreachable",
    Timeout => "timeout",
    Refused => "refused",
    ReauthRequired => "reauth_required",
    Impostor => "impostor",
});

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentFailureLabels {
    reason: AgentFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KeyLabels {
    /// The key's name from the keys file, never the key.
    pub key: String,
}

type HistogramFamily<L> = Family<L, Histogram, HistogramOf>;

/// Upstream answers and first bytes: from a few milliseconds (count_tokens, models) to minutes (a long
/// message): 5 ms doubling to about 82 s.
fn upstream_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// A local Unix-socket exchange: 50 µs doubling to about 0.8 s (its wait window is seconds).
fn agent_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    requests: Slots<RequestLabels, Counter>,
    upstream_seconds: Slots<RouteLabels, Histogram, HistogramOf>,
    first_byte_seconds: Slots<RouteLabels, Histogram, HistogramOf>,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    pub open_streams: Gauge,
    pub token_retries: Counter,
    pub agent_seconds: Histogram,
    agent_failures: Family<AgentFailureLabels, Counter>,
    pub key_rate_limited: Family<KeyLabels, Counter>,
    pub usage: super::usage::UsageGauges,
    pub account: crate::account::metrics::AccountMetrics,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sidecred_forwarder");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route, status class and outcome",
            requests.clone(),
        );
        let upstream_seconds =
            HistogramFamily::<RouteLabels>::new_with_constructor(HistogramOf(upstream_histogram));
        registry.register(
            "upstream_response_seconds",
            "Time from sending a request upstream to its response headers (a 401 retry included)",
            upstream_seconds.clone(),
        );
        let first_byte_seconds =
            HistogramFamily::<RouteLabels>::new_with_constructor(HistogramOf(upstream_histogram));
        registry.register(
            "time_to_first_byte_seconds",
            "Time from a request's arrival to the first body byte sent back to the client",
            first_byte_seconds.clone(),
        );
        let request_bytes = Counter::default();
        registry.register("request_bytes", "Request body bytes sent upstream", request_bytes.clone());
        let response_bytes = Counter::default();
        registry.register(
            "response_bytes",
            "Response body bytes from the upstream delivered to clients",
            response_bytes.clone(),
        );
        let open_streams = Gauge::default();
        registry.register(
            "open_streams",
            "Upstream responses whose bodies are being streamed to clients now",
            open_streams.clone(),
        );
        let token_retries = Counter::default();
        registry.register(
            "token_retries",
            "Requests sent again with a refreshed token after the upstream answered 401",
            token_retries.clone(),
        );
        let agent_seconds = agent_histogram();
        registry.register(
            "agent_exchange_seconds",
            "Time of one exchange with the agent on its socket, answered or not",
            agent_seconds.clone(),
        );
        let agent_failures = Family::default();
        registry.register(
            "agent_failures",
            "Exchanges with the agent that gave no token, by reason",
            agent_failures.clone(),
        );
        let key_rate_limited = Family::default();
        registry.register(
            "key_rate_limited",
            "Requests refused with 429 because their key was over its limits, by key name",
            key_rate_limited.clone(),
        );
        let usage = super::usage::UsageGauges::register(&mut registry);
        let account = crate::account::metrics::AccountMetrics::register(&mut registry);
        Metrics {
            registry,
            requests: Slots::new(requests, ROUTES.len() * CLASSES.len() * OUTCOMES),
            upstream_seconds: Slots::new(upstream_seconds, ROUTES.len()),
            first_byte_seconds: Slots::new(first_byte_seconds, ROUTES.len()),
            request_bytes,
            response_bytes,
            open_streams,
            token_retries,
            agent_seconds,
            agent_failures,
            key_rate_limited,
            usage,
            account,
        }
    }

    pub fn request(&self, route: Route, status: http::StatusCode, outcome: RequestOutcome) {
        let class = class_index(status);
        let slot = (route.index() * CLASSES.len() + class) * OUTCOMES + outcome as usize;
        let labels = || RequestLabels { route, status_class: CLASSES[class], outcome };
        self.requests.with(slot, labels, |c| {
            c.inc();
        });
    }

    pub fn upstream_response(&self, route: Route, took: Duration) {
        self.upstream_seconds.with(route.index(), || RouteLabels { route }, |h| h.observe(took));
    }

    pub fn first_byte(&self, route: Route, took: Duration) {
        self.first_byte_seconds.with(route.index(), || RouteLabels { route }, |h| h.observe(took));
    }

    pub fn agent_failure(&self, reason: AgentFailure) {
        self.agent_failures.get_or_create(&AgentFailureLabels { reason }).inc();
    }

    /// The page in OpenMetrics; see `sidecred_proto::exposition` for the classic format.
    pub fn encode(&self) -> String {
        let mut page = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut page, &self.registry);
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_a_fixed_set_whatever_the_base_path() {
        assert_eq!(Route::of("/v1/messages"), Route::Messages);
        assert_eq!(Route::of("/api/v1/messages"), Route::Messages);
        assert_eq!(Route::of("/v1/v1/messages"), Route::Messages);
        assert_eq!(Route::of("/v1/messages/count_tokens"), Route::CountTokens);
        assert_eq!(Route::of("/v1/models"), Route::Models);
        assert_eq!(Route::of("/v1/models/claude-x"), Route::Models);
        assert_eq!(Route::of("/v1/messages/batches/secret-id"), Route::Other);
        assert_eq!(Route::of("/anything"), Route::Other);
    }

    #[test]
    fn outcomes_of_upstream_answers() {
        assert_eq!(RequestOutcome::of_upstream(http::StatusCode::OK), RequestOutcome::Ok);
        assert_eq!(RequestOutcome::of_upstream(http::StatusCode::BAD_REQUEST), RequestOutcome::Ok);
        assert_eq!(
            RequestOutcome::of_upstream(http::StatusCode::TOO_MANY_REQUESTS),
            RequestOutcome::UpstreamRateLimited
        );
        assert_eq!(
            RequestOutcome::of_upstream(http::StatusCode::from_u16(529).unwrap_or_default()),
            RequestOutcome::UpstreamError
        );
    }

    #[test]
    fn a_request_is_counted_under_its_labels() {
        let m = Metrics::new();
        m.request(Route::Models, http::StatusCode::OK, RequestOutcome::Ok);
        m.request(Route::Models, http::StatusCode::OK, RequestOutcome::Ok);
        m.request(Route::Other, http::StatusCode::UNAUTHORIZED, RequestOutcome::RejectedKey);
        let page = m.encode();
        assert!(
            page.contains(
                r#"sidecred_forwarder_requests_total{route="models",status_class="2xx",outcome="ok"} 2"#
            ),
            "{page}"
        );
        assert!(page.contains(r#"route="other",status_class="4xx",outcome="rejected_key"} 1"#), "{page}");
        assert!(page.ends_with("# EOF\n"));
    }

    #[test]
    fn every_outcome_has_a_slot() {
        let m = Metrics::new();
        for route in ROUTES {
            for status in [100, 200, 302, 404, 503, 999] {
                let status = http::StatusCode::from_u16(status).unwrap_or_default();
                m.request(route, status, RequestOutcome::InvalidRequest);
            }
        }
        assert!(m.encode().contains(r#"status_class="other",outcome="invalid_request"} 1"#));
    }
}
