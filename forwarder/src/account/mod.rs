//! What every request costs the account, and the guard that keeps it on its plan.
//!
//! - `shape.rs`: which kind of client sent a request (Claude Code or another), from its headers.
//! - `outcome.rs`: what an upstream answer says of the account, one of a fixed set; pure.
//! - `reset.rs`: when a window clears, from a `-reset` value of any form seen; pure.
//! - `guard.rs`: the account's state as enums and the pure transitions on admit and on answer.
//! - `replies.rs`: the guard's own answers in the API's error shape.
//! - `decode.rs`: an error body's content coding (gzip, deflate, br), undone for the classifier only.
//! - `metrics.rs`: the counters and the state gauge, registered in one place.
//!
//! This file is the shell the request path calls twice: [`Account::admit`] before a request is sent,
//! [`Account::answered`] when its answer's headers are in. The state lives here, in the forwarder
//! process, shared by its workers: the forwarder is the one that sees every answer's headers and must
//! decide on every request without a round trip; the guarantee is per forwarder process.

mod decode;
pub mod guard;
pub mod metrics;
pub mod outcome;
mod replies;
pub mod reset;
pub mod shape;

use crate::body::AnswerBody;
use crate::errors::ErrorReply;
use crate::observe::metrics::{Route, METRICS};
use bytes::Bytes;
use guard::{Billing, Config, Decision, Guard, Refusal, State, Windows};
use http::header::{CONTENT_LENGTH, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use metrics::RefusalReason;
use outcome::{classify, needs_body, ErrorBody, Outcome, Verdict};
use serde_json::json;
use shape::Shape;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::warn;

/// Error answers larger than this are passed on unread (classified by status and headers alone). The
/// API's are a few hundred bytes.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// An error answer whose body takes longer than this to arrive is answered 502.
const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// What admission decided for a request, carried to its answer.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub shape: Shape,
    metered: bool,
}

pub struct Account {
    guard: Mutex<Guard>,
    /// Nothing paused or refused and every client served: the common case costs one load, no lock.
    calm: AtomicBool,
}

impl Account {
    pub fn new(config: Config) -> Account {
        let guard = Guard::new(config);
        let calm = guard.is_calm() && config.clients == guard::Clients::Any;
        Account { guard: Mutex::new(guard), calm: AtomicBool::new(calm) }
    }

    /// Before a request is sent: its client shape, or the guard's own answer.
    pub fn admit(&self, headers: &HeaderMap, route: Route) -> Result<Admitted, ErrorReply> {
        let shape = Shape::of(headers);
        let admitted = Admitted { shape, metered: route == Route::Messages };
        if self.calm.load(Ordering::Acquire) {
            return Ok(admitted);
        }
        let decision = self.with_guard(|g| g.admit(shape, admitted.metered, Instant::now()));
        match decision {
            Decision::Forward | Decision::Probe => Ok(admitted),
            Decision::Refuse(refusal) => {
                let reason = match refusal {
                    Refusal::ClientNotAllowed => RefusalReason::ClientNotAllowed,
                    Refusal::WindowExhausted { .. } => RefusalReason::WindowExhausted,
                    Refusal::ExtraUsage { .. } => RefusalReason::ExtraUsage,
                };
                METRICS.account.refusal(reason, shape);
                Err(replies::reply(&refusal, SystemTime::now()))
            }
        }
    }

    /// When an answer's headers are in: classifies it (reading the body of a short error whose meaning
    /// is in its message), counts it, tells the guard, and adds a `retry-after` the API left out.
    pub async fn answered(
        &self,
        admitted: Admitted,
        response: Response<Incoming>,
    ) -> Result<(http::response::Parts, AnswerBody, Outcome), ErrorReply> {
        let (mut parts, body) = response.into_parts();
        let (body, error) = if readable_error(&parts.headers, parts.status) {
            // Boxed: errors are rare, and this future should not carry the room for reading one on
            // every answer.
            let bytes = Box::pin(read_error(body)).await?;
            let decoded = decode::coding(&parts.headers).and_then(|c| decode::decode(c, &bytes));
            let error = decoded.map_or_else(ErrorBody::default, |b| ErrorBody::parse(&b));
            (AnswerBody::Read(bytes), error)
        } else {
            (AnswerBody::Streaming(body), ErrorBody::default())
        };
        let verdict = classify(parts.status, &parts.headers, &error, SystemTime::now());
        METRICS.account.outcome(verdict.outcome, admitted.shape);
        self.observe(admitted, &verdict);
        if let (Outcome::WindowExhausted, Some(reset)) = (verdict.outcome, verdict.reset) {
            honest_retry_after(&mut parts.headers, reset);
        }
        Ok((parts, body, verdict.outcome))
    }

    fn observe(&self, admitted: Admitted, verdict: &Verdict) {
        if verdict.outcome == Outcome::Plan && self.calm.load(Ordering::Acquire) {
            return;
        }
        let (before, after) = self.with_guard(|g| {
            let now = Instant::now();
            let before = g.state(now);
            g.observe(admitted.shape, verdict, now);
            (before, g.state(now))
        });
        if before != after {
            warn!(
                account = after.as_str(),
                was = before.as_str(),
                outcome = verdict.outcome.as_str(),
                client = admitted.shape.as_str(),
                window = verdict.window.as_ref().map_or("-", |w| w.name()),
                "the account's state changed"
            );
        }
    }

    /// Runs `f` on the guard, then keeps the fast path's flag and the state gauge in step with it.
    fn with_guard<T>(&self, f: impl FnOnce(&mut Guard) -> T) -> T {
        let mut guard = self.lock();
        let out = f(&mut guard);
        let calm = guard.is_calm() && guard.config.clients == guard::Clients::Any;
        self.calm.store(calm, Ordering::Release);
        METRICS.account.set_state(guard.state(Instant::now()));
        out
    }

    /// Sets the state gauge to the state as it is now, for a scrape: a pause that ended at its reset
    /// shows as ended without a request having come through since.
    pub fn publish_state(&self) {
        METRICS.account.set_state(self.lock().state(Instant::now()));
    }

    fn lock(&self) -> MutexGuard<'_, Guard> {
        // Every transition assigns whole values: a panic cannot leave the state half-written.
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `account` object of `/health`.
    pub fn summary(&self) -> serde_json::Value {
        let guard = self.lock().clone();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let at = |until: Instant| {
            let wait = until.saturating_duration_since(now);
            humantime::format_rfc3339_seconds(wall.checked_add(wait).unwrap_or(wall)).to_string()
        };
        let state = guard.state(now);
        let mut body = json!({
            "state": state.as_str(),
            "extra_usage": if guard.config.allow_extra_usage { "allowed" } else { "stopped" },
            "clients": match guard.config.clients {
                guard::Clients::Any => "any",
                guard::Clients::ClaudeCode => "claude-code",
            },
        });
        if let Windows::Exhausted { window, until } = &guard.windows {
            if now < *until {
                body["window_exhausted"] = json!({"window": window.name(), "until": at(*until)});
            }
        }
        let billed: serde_json::Map<String, serde_json::Value> = shape::SHAPES
            .iter()
            .filter_map(|s| {
                let v = match &guard.billing[s.index()] {
                    Billing::OnPlan => return None,
                    Billing::Paused { since, until, .. } => json!({
                        "billed_s_ago": now.saturating_duration_since(*since).as_secs(),
                        "paused_until": at(*until),
                    }),
                    Billing::Probing { since, .. } => json!({
                        "billed_s_ago": now.saturating_duration_since(*since).as_secs(),
                        "probing": true,
                    }),
                };
                Some((s.as_str().to_owned(), v))
            })
            .collect();
        if !billed.is_empty() {
            body["extra_usage_in_use"] = billed.into();
        }
        let refused: serde_json::Map<String, serde_json::Value> = shape::SHAPES
            .iter()
            .filter_map(|s| {
                let ago = now.saturating_duration_since(guard.refused[s.index()]?).as_secs();
                Some((s.as_str().to_owned(), json!({"refused_s_ago": ago})))
            })
            .collect();
        if !refused.is_empty() {
            body["third_party_refused"] = refused.into();
        }
        body["reason"] = reason(state, guard.config.allow_extra_usage).into();
        body
    }
}

fn reason(state: State, allowed: bool) -> &'static str {
    match (state, allowed) {
        (State::OnPlan, _) => "requests are served on the plan",
        (State::ExtraUsageInUse, false) => {
            "the API billed requests to the account's extra usage; such requests are answered 429 here until the \
             pause ends (--allow-extra-usage lets them through)"
        }
        (State::ExtraUsageInUse, true) => {
            "the API bills requests to the account's extra usage, and --allow-extra-usage lets them through"
        }
        (State::WindowExhausted, _) => "a usage window is used up; requests are answered 429 here until it resets",
        (State::ThirdPartyRefused, _) => {
            "the API refuses requests it does not judge to be Claude Code's (third-party traffic draws from extra \
             usage, which the account does not allow)"
        }
    }
}

/// Whether an answer's body is read before it is passed on: an error whose meaning is in its message,
/// small enough by its declared length, and in a coding `decode.rs` can undo (the client still gets
/// the bytes as sent).
fn readable_error(headers: &HeaderMap, status: http::StatusCode) -> bool {
    // Asked of every answer; the status alone settles it for nearly all of them.
    if !needs_body(status) {
        return false;
    }
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    declared.is_some_and(|n| n <= MAX_ERROR_BODY) && decode::coding(headers).is_some()
}

async fn read_error(body: Incoming) -> Result<Bytes, ErrorReply> {
    let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY as usize);
    match tokio::time::timeout(ERROR_BODY_DEADLINE, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            Err(ErrorReply::bad_gateway(format_args!("reading the upstream's error answer failed: {e}")))
        }
        Err(_) => Err(ErrorReply::bad_gateway(format_args!(
            "the upstream's error answer did not arrive in full within {} s",
            ERROR_BODY_DEADLINE.as_secs()
        ))),
    }
}

/// A window's 429 without `retry-after` gets one that says when the window resets.
fn honest_retry_after(headers: &mut HeaderMap, reset: Duration) {
    if headers.contains_key(RETRY_AFTER) {
        return;
    }
    headers.insert(RETRY_AFTER, HeaderValue::from(reset::retry_after_secs(reset)));
    if reset > replies::SDK_RETRY_LIMIT && !headers.contains_key(&crate::headers::X_SHOULD_RETRY) {
        crate::headers::advise_retry(headers, false);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_retry_after_is_added_and_an_present_one_kept() {
        let mut h = HeaderMap::new();
        honest_retry_after(&mut h, Duration::from_millis(4500));
        assert_eq!(h[RETRY_AFTER], "5");
        assert!(!h.contains_key("x-should-retry"), "a client's retry after 5 s can help");
        let mut h = HeaderMap::new();
        honest_retry_after(&mut h, Duration::from_secs(3600));
        assert_eq!(
            (h[RETRY_AFTER].to_str().unwrap(), h["x-should-retry"].to_str().unwrap()),
            ("3600", "false")
        );
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        honest_retry_after(&mut h, Duration::from_secs(3600));
        assert_eq!(h[RETRY_AFTER], "7", "the API's own is the API's");
    }

    #[test]
    fn only_short_errors_in_a_coding_we_undo_are_read() {
        let h = |pairs: &[(&str, &str)]| -> HeaderMap {
            pairs
                .iter()
                .map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap()))
                .collect()
        };
        let bad = http::StatusCode::BAD_REQUEST;
        assert!(readable_error(&h(&[("content-length", "300")]), bad));
        assert!(readable_error(&h(&[("content-length", "300"), ("content-encoding", "identity")]), bad));
        assert!(!readable_error(&h(&[("content-length", "300")]), http::StatusCode::OK));
        assert!(!readable_error(&h(&[]), bad), "no declared length: streamed on");
        assert!(!readable_error(&h(&[("content-length", "999999")]), bad));
        assert!(!readable_error(&h(&[("content-length", "x")]), bad));
        assert!(readable_error(&h(&[("content-length", "300"), ("content-encoding", "gzip")]), bad));
        assert!(!readable_error(&h(&[("content-length", "300"), ("content-encoding", "zstd")]), bad));
    }
}
