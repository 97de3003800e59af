//! What an upstream answer says about the account: one of a fixed set of outcomes, decided from the
//! status, the error's type and message, and the `anthropic-ratelimit-unified-*` headers. Pure; the
//! values come from the network and may be missing, renamed or malformed, so each rule says which way
//! it errs: toward "billed" where money is at stake, toward "no pause" where a pause would stop traffic.

use super::reset;
use http::{HeaderMap, HeaderValue, StatusCode};
use sidecred_proto::anthropic::{
    unified, LONG_CONTEXT_EXTRA_USAGE, LONG_CONTEXT_UNAVAILABLE, RATELIMIT_UNIFIED_PREFIX,
    THIRD_PARTY_REFUSAL,
};
use std::time::{Duration, SystemTime};

/// The outcomes, a fixed set (they are metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Served, and paid for by the plan.
    Plan,
    /// Served, and billed to the account's extra usage (`overage-in-use: true`).
    ExtraUsage,
    /// A plan window is used up: `429` with a rejected window.
    WindowExhausted,
    /// `429` without a rejected window: a short burst limit.
    Throttled,
    /// About the request, not the account: the long-context `429` and `400`.
    RequestLimit,
    /// The `400` that refuses traffic not judged to be Claude Code's.
    ThirdPartyRefused,
    /// `529`: the service, not the account.
    Overloaded,
    /// `401` or `403`.
    Auth,
    Other,
}

crate::observe::instruments::label_values!(Outcome {
    Plan => "plan",
    ExtraUsage => "extra_usage",
    WindowExhausted => "window_exhausted",
    Throttled => "throttled",
    RequestLimit => "request_limit",
    ThirdPartyRefused => "third_party_refused",
    Overloaded => "overloaded",
    Auth => "auth",
    Other => "other",
});

pub const OUTCOMES: [Outcome; 9] = [
    Outcome::Plan,
    Outcome::ExtraUsage,
    Outcome::WindowExhausted,
    Outcome::Throttled,
    Outcome::RequestLimit,
    Outcome::ThirdPartyRefused,
    Outcome::Overloaded,
    Outcome::Auth,
    Outcome::Other,
];

/// Which window refused, or which window's reset a pause waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// `anthropic-ratelimit-unified-status`: the account as a whole.
    Account,
    FiveHour,
    SevenDay,
    /// A per-model window (`7d_oi`, ...), by its header name: it refuses some models, not the account.
    Model(String),
}

impl Window {
    pub fn name(&self) -> &str {
        match self {
            Window::Account => "account",
            Window::FiveHour => unified::FIVE_HOUR,
            Window::SevenDay => unified::SEVEN_DAY,
            Window::Model(name) => name,
        }
    }

    /// Whether a refusal by this window stops every request, whatever its model.
    pub fn is_account_wide(&self) -> bool {
        !matches!(self, Window::Model(_))
    }
}

/// An answer classified, with what the guard needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The window that refused (window exhausted), or the plan window that is used up when the answer
    /// was billed (extra usage served because the plan is spent).
    pub window: Option<Window>,
    /// How long until that window resets, when the headers say so believably.
    pub reset: Option<Duration>,
}

/// The error an answer's body names: `{"type":"error","error":{"type":...,"message":...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub kind: Option<String>,
    pub message: Option<String>,
}

impl ErrorBody {
    /// What a (short) error body says, or nothing when it is not the API's error shape.
    pub fn parse(body: &[u8]) -> ErrorBody {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return ErrorBody::default() };
        let err = &v["error"];
        ErrorBody {
            kind: err["type"].as_str().map(str::to_owned),
            message: err["message"].as_str().map(str::to_owned),
        }
    }

    fn says(&self, text: &str) -> bool {
        self.message.as_deref().is_some_and(|m| m.contains(text))
    }
}

/// The unified headers this needs, read once.
struct Unified<'a> {
    headers: &'a HeaderMap,
}

impl Unified<'_> {
    /// The first value of `anthropic-ratelimit-unified-<suffix>`, as `HeaderMap::get` would give it.
    /// Asked of every answer ([`Self::billed`]): a look along the names, without putting one together.
    fn value(&self, suffix: &str) -> Option<&HeaderValue> {
        self.headers.iter().find_map(|(name, value)| {
            (name.as_str().strip_prefix(RATELIMIT_UNIFIED_PREFIX)? == suffix).then_some(value)
        })
    }

    fn get(&self, suffix: &str) -> Option<&str> {
        self.value(suffix)?.to_str().ok().map(str::trim)
    }

    fn rejected(&self, suffix: &str) -> bool {
        self.get(suffix).is_some_and(|v| v.eq_ignore_ascii_case("rejected"))
    }

    /// The refusing window, account-wide ones first: the account's own status, then the plan's two
    /// windows, then any per-model window whose `-status` says `rejected`.
    fn rejected_window(&self) -> Option<Window> {
        let five = format!("{}-{}", unified::FIVE_HOUR, unified::STATUS);
        let seven = format!("{}-{}", unified::SEVEN_DAY, unified::STATUS);
        if self.rejected(&five) {
            return Some(Window::FiveHour);
        }
        if self.rejected(&seven) {
            return Some(Window::SevenDay);
        }
        let per_model = self.headers.iter().find_map(|(name, value)| {
            let rest = name.as_str().strip_prefix(RATELIMIT_UNIFIED_PREFIX)?;
            let window = rest.strip_suffix(&format!("-{}", unified::STATUS))?;
            let plausible = !window.is_empty()
                && window.len() <= 24
                && window.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            let rejected = value.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("rejected"));
            (plausible && rejected).then(|| Window::Model(window.to_owned()))
        });
        // The account's status names no window of its own; a per-model window that also refuses says
        // more, but the account's refusal is what stops every request.
        if self.rejected(unified::STATUS) {
            return Some(Window::Account);
        }
        per_model
    }

    fn reset_of(&self, window: &Window, now: SystemTime) -> Option<Duration> {
        let own = match window {
            Window::Account => None,
            w => self.get(&format!("{}-{}", w.name(), unified::RESET)),
        };
        own.or_else(|| self.get(unified::RESET)).and_then(|v| reset::wait(v, now))
    }

    /// Whether the answer was billed to extra usage. Absent, `false` or `0`: the plan. Any other value,
    /// unreadable ones included, counts as billed: the operator's money is the side to err on.
    fn billed(&self) -> bool {
        match self.value(unified::OVERAGE_IN_USE) {
            None => false,
            Some(v) => match v.to_str().map(str::trim) {
                Ok(v) => !(v.eq_ignore_ascii_case("false") || v == "0" || v.is_empty()),
                Err(_) => true,
            },
        }
    }
}

/// Classifies one answer. `error` is what its body said, when it was read (error answers only).
pub fn classify(status: StatusCode, headers: &HeaderMap, error: &ErrorBody, now: SystemTime) -> Verdict {
    let unified = Unified { headers };
    let plain = |outcome| Verdict { outcome, window: None, reset: None };
    let windowed = |outcome, window: Option<Window>| {
        let reset = window.as_ref().and_then(|w| unified.reset_of(w, now));
        Verdict { outcome, window, reset }
    };
    match status.as_u16() {
        200..=299 if unified.billed() => {
            // Billed because the plan is spent, or billed whatever the plan (traffic judged third-party):
            // the window tells which, and when the plan may pay again.
            windowed(Outcome::ExtraUsage, unified.rejected_window().filter(Window::is_account_wide))
        }
        200..=299 => plain(Outcome::Plan),
        429 if error.says(LONG_CONTEXT_EXTRA_USAGE) => plain(Outcome::RequestLimit),
        429 => match unified.rejected_window() {
            Some(window) => windowed(Outcome::WindowExhausted, Some(window)),
            None => plain(Outcome::Throttled),
        },
        400 if error.says(THIRD_PARTY_REFUSAL) => plain(Outcome::ThirdPartyRefused),
        400 if error.says(LONG_CONTEXT_UNAVAILABLE) => plain(Outcome::RequestLimit),
        401 | 403 => plain(Outcome::Auth),
        529 => plain(Outcome::Overloaded),
        _ if error.kind.as_deref() == Some("overloaded_error") => plain(Outcome::Overloaded),
        _ => plain(Outcome::Other),
    }
}

/// Whether an answer's body must be read to classify it: the errors whose meaning is in the message.
pub fn needs_body(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 429)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const NOW: u64 = 1_796_612_400;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                let name = format!("{RATELIMIT_UNIFIED_PREFIX}{k}");
                (http::HeaderName::from_bytes(name.as_bytes()).unwrap(), v.parse().unwrap())
            })
            .collect()
    }

    fn error(kind: &str, message: &str) -> ErrorBody {
        ErrorBody::parse(
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
                .to_string()
                .as_bytes(),
        )
    }

    fn classify_(status: u16, pairs: &[(&str, &str)], body: &ErrorBody) -> Verdict {
        classify(StatusCode::from_u16(status).unwrap(), &headers(pairs), body, now())
    }

    fn outcome(status: u16, pairs: &[(&str, &str)], body: &ErrorBody) -> Outcome {
        classify_(status, pairs, body).outcome
    }

    const ALLOWED: &[(&str, &str)] =
        &[("status", "allowed"), ("5h-status", "allowed"), ("5h-utilization", "0.3")];

    #[test]
    fn served_answers_are_plan_or_extra_usage() {
        let none = ErrorBody::default();
        assert_eq!(outcome(200, ALLOWED, &none), Outcome::Plan);
        assert_eq!(outcome(200, &[], &none), Outcome::Plan, "no headers at all");
        assert_eq!(outcome(204, &[("overage-in-use", "false")], &none), Outcome::Plan);
        assert_eq!(outcome(200, &[("overage-in-use", "0")], &none), Outcome::Plan);
        for billed in ["true", "TRUE", " true ", "yes", "1", "garbage"] {
            assert_eq!(outcome(200, &[("overage-in-use", billed)], &none), Outcome::ExtraUsage, "{billed:?}");
        }
        let mut h = headers(&[]);
        h.insert(
            http::HeaderName::from_bytes(format!("{RATELIMIT_UNIFIED_PREFIX}overage-in-use").as_bytes())
                .unwrap(),
            http::HeaderValue::from_bytes(b"\xfftrue").unwrap(),
        );
        assert_eq!(classify(StatusCode::OK, &h, &none, now()).outcome, Outcome::ExtraUsage, "unreadable");
    }

    #[test]
    fn a_billed_answer_names_the_spent_plan_window_and_its_reset() {
        let none = ErrorBody::default();
        let third_party = classify_(200, &[("overage-in-use", "true"), ("status", "allowed")], &none);
        assert_eq!((third_party.window, third_party.reset), (None, None), "the plan is not spent");
        let reset = (NOW + 7200).to_string();
        let spent = classify_(
            200,
            &[
                ("overage-in-use", "true"),
                ("status", "rejected"),
                ("5h-status", "rejected"),
                ("5h-reset", &reset),
            ],
            &none,
        );
        assert_eq!(spent.outcome, Outcome::ExtraUsage);
        assert_eq!(spent.window, Some(Window::FiveHour));
        assert_eq!(spent.reset, Some(Duration::from_secs(7200)));
        let per_model = classify_(200, &[("overage-in-use", "true"), ("7d_oi-status", "rejected")], &none);
        assert_eq!(per_model.window, None, "a per-model window does not spend the plan");
    }

    #[test]
    fn a_rejected_window_is_exhausted_with_its_reset() {
        let body = error("rate_limit_error", "This request would exceed your account's rate limit.");
        let reset = (NOW + 3600).to_string();
        let v = classify_(
            429,
            &[
                ("status", "rejected"),
                ("5h-status", "rejected"),
                ("5h-reset", &reset),
                ("representative-claim", "five_hour"),
            ],
            &body,
        );
        assert_eq!(
            v,
            Verdict {
                outcome: Outcome::WindowExhausted,
                window: Some(Window::FiveHour),
                reset: Some(Duration::from_secs(3600))
            }
        );
        let v = classify_(429, &[("status", "rejected"), ("reset", &(NOW + 60).to_string())], &body);
        assert_eq!((v.window, v.reset), (Some(Window::Account), Some(Duration::from_secs(60))));
        let v = classify_(429, &[("7d-status", "rejected"), ("7d-reset", "2026-12-08T03:00:00Z")], &body);
        assert_eq!((v.window, v.reset), (Some(Window::SevenDay), Some(Duration::from_secs(86_400))));
        let v = classify_(429, &[("7d_oi-status", "rejected"), ("7d_oi-reset", &reset)], &body);
        assert_eq!(v.window, Some(Window::Model("7d_oi".into())));
        assert!(!v.window.unwrap().is_account_wide());
        assert_eq!(outcome(429, &[("status", "REJECTED")], &body), Outcome::WindowExhausted, "any case");
        assert_eq!(outcome(429, &[("status", "rejected_soon")], &body), Outcome::Throttled, "not a status");
    }

    #[test]
    fn malformed_and_missing_resets_leave_the_window_without_one() {
        let body = ErrorBody::default();
        for reset in ["", "soon", "-5", "99999999999999999999999", "32503680000", "2026-02-30Tnope"] {
            let v = classify_(
                429,
                &[("status", "rejected"), ("5h-status", "rejected"), ("5h-reset", reset)],
                &body,
            );
            assert_eq!((v.outcome, v.reset), (Outcome::WindowExhausted, None), "{reset:?}");
        }
        let v = classify_(429, &[("status", "rejected")], &body);
        assert_eq!((v.outcome, v.reset), (Outcome::WindowExhausted, None));
        let v = classify_(429, &[("5h-status", "rejected"), ("reset", &(NOW + 30).to_string())], &body);
        assert_eq!(v.reset, Some(Duration::from_secs(30)), "the account's reset when the window has none");
    }

    #[test]
    fn a_429_without_a_rejected_window_is_a_throttle() {
        let body = error("rate_limit_error", "Number of requests has exceeded your rate limit");
        assert_eq!(outcome(429, &[], &body), Outcome::Throttled);
        assert_eq!(outcome(429, ALLOWED, &body), Outcome::Throttled);
        assert_eq!(
            outcome(429, &[("status", "allowed_warning"), ("5h-status", "maybe")], &body),
            Outcome::Throttled
        );
        assert_eq!(outcome(429, &[], &ErrorBody::parse(b"not json")), Outcome::Throttled);
    }

    #[test]
    fn answers_about_the_request_are_not_about_the_account() {
        let lc = error("rate_limit_error", "Extra usage is required for long context requests.");
        // Even with the windows' headers saying rejected, the message decides: nothing to pause.
        assert_eq!(outcome(429, &[("status", "rejected")], &lc), Outcome::RequestLimit);
        let beta = error(
            "invalid_request_error",
            "The long context beta is not yet available for this subscription.",
        );
        assert_eq!(outcome(400, &[], &beta), Outcome::RequestLimit);
    }

    #[test]
    fn the_third_party_refusal() {
        let body = error(
            "invalid_request_error",
            "Third-party apps now draw from your extra usage, not your plan limits. Learn more...",
        );
        assert_eq!(outcome(400, &[], &body), Outcome::ThirdPartyRefused);
        assert_eq!(
            outcome(400, &[], &error("invalid_request_error", "max_tokens: required")),
            Outcome::Other
        );
        assert_eq!(outcome(400, &[], &ErrorBody::default()), Outcome::Other, "a bare 400");
        assert_eq!(outcome(403, &[], &body), Outcome::Auth, "the status comes first");
    }

    #[test]
    fn the_rest() {
        let none = ErrorBody::default();
        assert_eq!(outcome(529, &[], &none), Outcome::Overloaded);
        assert_eq!(outcome(503, &[], &error("overloaded_error", "Overloaded")), Outcome::Overloaded);
        assert_eq!(outcome(401, &[], &none), Outcome::Auth);
        assert_eq!(outcome(403, &[], &none), Outcome::Auth);
        for s in [100, 301, 404, 413, 500, 502] {
            assert_eq!(outcome(s, &[], &none), Outcome::Other, "{s}");
        }
    }

    #[test]
    fn error_bodies_of_every_shape() {
        assert_eq!(ErrorBody::parse(b""), ErrorBody::default());
        assert_eq!(ErrorBody::parse(b"[1,2]"), ErrorBody::default());
        assert_eq!(ErrorBody::parse(br#"{"error":"flat"}"#), ErrorBody::default());
        assert_eq!(ErrorBody::parse(br#"{"error":{"type":7,"message":null}}"#), ErrorBody::default());
        let e = ErrorBody::parse(br#"{"type":"error","error":{"type":"x","message":"m"}}"#);
        assert_eq!((e.kind.as_deref(), e.message.as_deref()), (Some("x"), Some("m")));
    }

    #[test]
    fn only_the_errors_whose_meaning_is_in_the_message_are_read() {
        assert!(needs_body(StatusCode::BAD_REQUEST) && needs_body(StatusCode::TOO_MANY_REQUESTS));
        for s in [200, 401, 403, 404, 500, 529] {
            assert!(!needs_body(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
