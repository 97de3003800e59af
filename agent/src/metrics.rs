//! `run --metrics-listen`: the agent's metrics for Prometheus, off by default.
//!
//! Most of them describe the token lifecycle as it is now, so they are read from the lifecycle's latest
//! published [`Snapshot`] at scrape time (the same one the socket answers from): nothing in the
//! lifecycle has to remember to update a gauge. Only what a snapshot cannot tell (how many refreshes
//! failed, how many saves) is counted where it happens, in [`refresh_finished`] and [`persist_failed`].
//! A new fact in the snapshot (the lease role, say) becomes a metric by one more block in
//! [`SnapshotCollector::encode`].

mod connections;

use crate::credentials::now_ms;
use crate::lifecycle::Snapshot;
use crate::oauth::{TokenError, TokenResponse};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sidecred_proto::{Role, TokenState};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefreshLabels {
    outcome: &'static str,
}

/// What happens between snapshots, counted where it happens.
struct Counters {
    refreshes: Family<RefreshLabels, Counter>,
    persist_failures: Counter,
}

static COUNTERS: LazyLock<Counters> =
    LazyLock::new(|| Counters { refreshes: Family::default(), persist_failures: Counter::default() });

/// A refresh came back: `ok`, `transient_error` (retried with backoff) or `rejected` (log in again).
pub fn refresh_finished(result: &Result<TokenResponse, TokenError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(TokenError::Transient { .. }) => "transient_error",
        Err(TokenError::Rejected { .. }) => "rejected",
    };
    COUNTERS.refreshes.get_or_create(&RefreshLabels { outcome }).inc();
}

/// Saving the live credentials failed (they live only in memory until a retry succeeds).
pub fn persist_failed() {
    COUNTERS.persist_failures.inc();
}

const STATES: [TokenState; 6] = [
    TokenState::Valid,
    TokenState::Refreshing,
    TokenState::Degraded,
    TokenState::Expired,
    TokenState::ReauthRequired,
    TokenState::NoCredentials,
];

/// Every cause of [`crate::lifecycle::Refusal`], so each series exists (at 0) before the first refusal.
const REFUSALS: [&str; 3] = ["foreign", "ours_spent", "raced"];

/// The lifecycle's latest snapshot, as gauges.
#[derive(Debug)]
struct SnapshotCollector {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug + Send + Sync>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshots.borrow().clone();
        let now = tokio::time::Instant::now();
        {
            let mut family = encoder.encode_descriptor(
                "state",
                "1 for the token lifecycle's current state (valid, refreshing, degraded, expired, \
                 reauth_required, no_credentials)",
                None,
                MetricType::Gauge,
            )?;
            for state in STATES {
                let labels = [("state", state.as_str())];
                ConstGauge::new(i64::from(snap.state == state)).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "lease_role",
                "1 for who refreshes this login: single (no lease), holder (this agent holds the lease), \
                 follower (another agent does, or none can be reached); `lease` is the Lease's \
                 NAMESPACE/NAME (empty without one), so the holders of one login can be counted",
                None,
                MetricType::Gauge,
            )?;
            let lease = snap.lease.as_deref().unwrap_or("");
            for role in [Role::Single, Role::Holder, Role::Follower] {
                let labels = [("role", role.as_str()), ("lease", lease)];
                ConstGauge::new(i64::from(snap.role == role)).encode(family.encode_family(&labels)?)?;
            }
        }
        // A static token's expiry is unknown: no series rather than a made-up date.
        if let Some(token) = snap.token.as_ref().filter(|_| !snap.static_token) {
            let left = token.deadline.saturating_duration_since(now).as_secs_f64();
            gauge(
                &mut encoder,
                "token_expires_in_seconds",
                "Seconds until the served access token expires (0 once expired)",
                left,
            )?;
            gauge(
                &mut encoder,
                "token_expiry_timestamp_seconds",
                "When the served access token expires (epoch seconds)",
                i64::try_from(token.expires_at_ms / 1000).unwrap_or(i64::MAX),
            )?;
        }
        gauge(
            &mut encoder,
            "token_refreshable",
            "1 when the agent will refresh the token before it expires; 0 for a long-lived login without \
             a refresh token, a static token, or a login that must be renewed",
            i64::from(snap.next_refresh.is_some()),
        )?;
        gauge(
            &mut encoder,
            "static_token",
            "1 when the agent serves a static token from the environment (never refreshed)",
            i64::from(snap.static_token),
        )?;
        if let Some(clock) = snap.login_clock {
            gauge(
                &mut encoder,
                "login_age_seconds",
                "How old the login is: since it was made, or, for a login without that record, since an \
                 agent first saw it (see login_started_timestamp_seconds' clock label)",
                i64::try_from(clock.age(now_ms()).as_secs()).unwrap_or(i64::MAX),
            )?;
            let mut family = encoder.encode_descriptor(
                "login_started_timestamp_seconds",
                "When the login was made (clock=\"login\"), or first seen by an agent when it carries no \
                 record of that (clock=\"first_seen\": the login is at least that old); epoch seconds",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("clock", clock.start.as_str())];
            let secs = i64::try_from(clock.started_at_ms / 1000).unwrap_or(i64::MAX);
            ConstGauge::new(secs).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "login_max_age_seconds",
            "--login-max-age: a login older than this should be renewed by a person (logins not renewed \
             have been seen to die after about 55 days)",
            i64::try_from(snap.login_max_age.as_secs()).unwrap_or(i64::MAX),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "refresh_refused",
                "1 while the live refresh token stands refused, by who spent it: foreign (something else \
                 is using this login), ours_spent (an agent of ours), raced (the previous lease holder)",
                None,
                MetricType::Gauge,
            )?;
            for cause in REFUSALS {
                let labels = [("cause", cause)];
                let on = snap.refusal.is_some_and(|r| r.as_str() == cause);
                ConstGauge::new(i64::from(on)).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(at) = snap.last_refresh_at_ms {
            gauge(
                &mut encoder,
                "last_refresh_timestamp_seconds",
                "When the last successful refresh happened (epoch seconds)",
                i64::try_from(at / 1000).unwrap_or(i64::MAX),
            )?;
        }
        Ok(())
    }
}

fn registry(snapshots: watch::Receiver<Arc<Snapshot>>) -> Registry {
    let mut registry = Registry::with_prefix("sidecred_agent");
    // Every outcome is there from the start, at 0: Prometheus's increase() sees no rise in a series
    // that first appears at 1, so an alert on the first refused refresh would never fire.
    for outcome in ["ok", "transient_error", "rejected"] {
        let _ = COUNTERS.refreshes.get_or_create(&RefreshLabels { outcome });
    }
    registry.register(
        "refreshes",
        "Refreshes of the token by outcome (ok, transient_error, rejected)",
        COUNTERS.refreshes.clone(),
    );
    registry.register(
        "persist_failures",
        "Failed saves of the live credentials (they are retried; until then they live only in memory)",
        COUNTERS.persist_failures.clone(),
    );
    registry.register_collector(Box::new(SnapshotCollector { snapshots }));
    registry
}

/// Binds `--metrics-listen` at start, so a taken port stops the start with its name.
pub fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
    listener.set_nonblocking(true).context("cannot make the metrics listener non-blocking")?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics (--metrics-listen)");
    tokio::net::TcpListener::from_std(listener).context("cannot register the metrics listener")
}

/// Serves `/metrics` on `listener` for as long as the task lives, holding at most
/// [`connections::MAX_CONNECTIONS`] connections and none idle past [`connections::IDLE_TIMEOUT`].
pub async fn serve(listener: tokio::net::TcpListener, snapshots: watch::Receiver<Arc<Snapshot>>) {
    let registry = Arc::new(registry(snapshots));
    let slots = connections::Slots::new(connections::MAX_CONNECTIONS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        // Past the cap a connection is closed at once: its descriptor is back within the moment, and
        // the scraper that hit the cap tries again at its next scrape.
        let Some(slot) = slots.try_take() else {
            debug!(peer = %peer, max = connections::MAX_CONNECTIONS, "too many metrics connections; closing this one");
            continue;
        };
        let stream = connections::IdleTimeout::new(stream, connections::IDLE_TIMEOUT);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(peer = %peer, error = %e, "metrics connection ended");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"only /metrics here\n")));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    }
    let mut page = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut page, registry);
    let accept = req.headers().get(ACCEPT).map(HeaderValue::as_bytes);
    let (page, content_type) = sidecred_proto::exposition::negotiate(page, accept);
    let mut resp = Response::new(Full::new(Bytes::from(page)));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lifecycle::{Lifecycle, Policy};
    use crate::oauth::{OAuthClient, OAuthConfig};

    fn page_of(snapshots: watch::Receiver<Arc<Snapshot>>) -> String {
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry(snapshots)).unwrap();
        page
    }

    fn static_snapshots() -> watch::Receiver<Arc<Snapshot>> {
        let oauth = OAuthClient::new(OAuthConfig {
            token_url: "http://127.0.0.1:9/token".into(),
            client_id: "c".into(),
            user_agent: "t".into(),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        let token = sidecred_proto::Secret::new("sk-ant-oat01-sctest-x");
        Lifecycle::new_static(oauth, Policy::default(), "T", token).1
    }

    #[tokio::test]
    async fn a_static_token_shows_its_state_and_no_expiry() {
        let page = page_of(static_snapshots());
        assert!(page.contains("sidecred_agent_state{state=\"valid\"} 1"), "{page}");
        assert!(page.contains("sidecred_agent_state{state=\"reauth_required\"} 0"), "{page}");
        assert!(!page.contains("token_expires_in_seconds"), "a made-up expiry: {page}");
        assert!(page.contains("sidecred_agent_static_token 1"), "{page}");
        assert!(page.contains("sidecred_agent_token_refreshable 0"), "{page}");
        assert!(!page.contains("sctest"), "the token leaked: {page}");
    }

    #[tokio::test]
    async fn every_refresh_outcome_and_refusal_cause_is_there_before_the_first() {
        let page = page_of(static_snapshots());
        for outcome in ["ok", "transient_error", "rejected"] {
            let series = format!("sidecred_agent_refreshes_total{{outcome=\"{outcome}\"}}");
            assert!(page.contains(&series), "{series} missing: {page}");
        }
        for cause in REFUSALS {
            let series = format!("sidecred_agent_refresh_refused{{cause=\"{cause}\"}} 0");
            assert!(page.contains(&series), "{series} missing: {page}");
        }
        assert!(page.contains("sidecred_agent_login_max_age_seconds 4320000"), "{page}");
        assert!(!page.contains("login_age_seconds"), "a static token has no login: {page}");
    }

    #[tokio::test]
    async fn refreshes_are_counted_by_outcome() {
        refresh_finished(&Err(TokenError::Rejected { reason: "invalid_grant".into() }));
        let page = page_of(static_snapshots());
        assert!(page.contains("sidecred_agent_refreshes_total{outcome=\"rejected\"}"), "{page}");
    }
}
