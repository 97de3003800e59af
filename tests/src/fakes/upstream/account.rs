//! How the fake's account pays for a Messages request, and the answers the real API gives about an
//! account, with the headers and bodies `account-signals.md` lists (malformed and missing values
//! included, on demand): billed to extra usage, refused as third-party traffic, a window used up, a
//! burst throttle, the long-context answers, overloaded.
//!
//! The fake tells Claude Code from other clients by the same headers the real API would see (Claude
//! Code's `user-agent` and `x-app`); it never looks at what the forwarder thinks.

use serde_json::{json, Value};
use sidecred_proto::anthropic::{
    unified, CLAUDE_CODE_USER_AGENT_PREFIX, CLAUDE_CODE_X_APP, LONG_CONTEXT_EXTRA_USAGE,
    LONG_CONTEXT_UNAVAILABLE, THIRD_PARTY_REFUSAL, X_APP_HEADER,
};
use std::time::{SystemTime, UNIX_EPOCH};

/// The rest of the third-party refusal's message after its start, as reported.
const THIRD_PARTY_REST: &str =
    ", not your plan limits. Claim extra usage credits and keep going at claude.ai/settings/usage";

/// How the account treats Messages requests, until a test changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Billing {
    /// Everything on the plan.
    OnPlan,
    /// Requests that are not Claude Code's are served and billed (`overage-in-use: true`).
    BillsOthers,
    /// Requests that are not Claude Code's are refused with the third-party `400`.
    RefusesOthers,
    /// The plan is spent and extra usage allowed: every request is served and billed, the 5 h window
    /// rejected with this reset value (as sent: any text).
    BillsAll { reset: String },
    /// The 5 h window is used up: `429` with this reset value (as sent: any text) until `until` (epoch
    /// seconds) has passed, then the plan again.
    WindowExhausted { reset: String, until: u64 },
}

/// One answer the API gives about the account or the request, sent once on demand.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    /// Unified headers, names after the prefix; values as sent, malformed ones included.
    pub unified: Vec<(String, String)>,
    /// Other headers (`retry-after`).
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

impl Canned {
    /// A used-up 5 h window: `429 rate_limit_error`, the account and the window rejected, `reset` as
    /// given (seconds, milliseconds, RFC 3339 or garbage), no `retry-after` (the API's own lacks one at
    /// times).
    pub fn window_exhausted(reset: &str) -> Canned {
        Canned {
            status: 429,
            unified: window_rejected(reset),
            headers: Vec::new(),
            body: error(
                "rate_limit_error",
                "This request would exceed your account's rate limit. Please try again later.",
            ),
        }
    }

    /// A burst throttle: `429` with `retry-after` and no rejected window.
    pub fn throttled() -> Canned {
        Canned {
            status: 429,
            unified: pairs(&[("status", "allowed"), ("5h-status", "allowed"), ("5h-utilization", "0.5")]),
            headers: pairs(&[("retry-after", "2")]),
            body: error(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
        }
    }

    /// The long-context `429`: about the request; the windows are fine.
    pub fn long_context_429() -> Canned {
        Canned {
            status: 429,
            unified: pairs(&[("status", "allowed"), ("5h-status", "allowed")]),
            headers: Vec::new(),
            body: error("rate_limit_error", &format!("{LONG_CONTEXT_EXTRA_USAGE}.")),
        }
    }

    /// The long-context `400` on a subscription without the beta.
    pub fn long_context_400() -> Canned {
        Canned {
            status: 400,
            unified: Vec::new(),
            headers: Vec::new(),
            body: error("invalid_request_error", &format!("The {LONG_CONTEXT_UNAVAILABLE}.")),
        }
    }

    /// The third-party refusal `400`.
    pub fn third_party() -> Canned {
        Canned {
            status: 400,
            unified: Vec::new(),
            headers: Vec::new(),
            body: error("invalid_request_error", &format!("{THIRD_PARTY_REFUSAL}{THIRD_PARTY_REST}")),
        }
    }

    /// `529 overloaded_error`.
    pub fn overloaded() -> Canned {
        Canned {
            status: 529,
            unified: Vec::new(),
            headers: Vec::new(),
            body: error("overloaded_error", "Overloaded"),
        }
    }

    /// `403 permission_error`.
    pub fn forbidden() -> Canned {
        Canned {
            status: 403,
            unified: Vec::new(),
            headers: Vec::new(),
            body: error("permission_error", "OAuth token does not meet scope requirement user:inference"),
        }
    }

    /// With these unified headers instead (malformed values, missing ones).
    pub fn with_unified(mut self, list: &[(&str, &str)]) -> Canned {
        self.unified = pairs(list);
        self
    }
}

fn window_rejected(reset: &str) -> Vec<(String, String)> {
    pairs(&[
        ("status", "rejected"),
        ("5h-status", "rejected"),
        ("5h-utilization", "1.0"),
        ("5h-reset", reset),
        ("7d-status", "allowed"),
        ("representative-claim", "five_hour"),
        ("overage-status", "rejected"),
        ("overage-disabled-reason", "org_level_disabled"),
    ])
}

/// Whether a request's headers are Claude Code's, as the API would judge them by its headers alone.
pub fn is_claude_code(headers: &http::HeaderMap) -> bool {
    let ua = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("");
    let app = headers.get(X_APP_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    ua.starts_with(CLAUDE_CODE_USER_AGENT_PREFIX) && app == CLAUDE_CODE_X_APP
}

/// What the account makes of a Messages request.
pub enum Verdict {
    /// Answer this instead of the message.
    Refuse(Canned),
    /// Serve it, with these unified headers on top of the usual ones; `billed` when it costs money.
    Serve { unified: Vec<(String, String)>, billed: bool },
}

pub fn judge(billing: &Billing, headers: &http::HeaderMap) -> Verdict {
    let served = || Verdict::Serve { unified: Vec::new(), billed: false };
    let billed = |extra: &[(&str, &str)]| {
        let mut unified = pairs(&[(unified::OVERAGE_IN_USE, "true"), (unified::OVERAGE_STATUS, "allowed")]);
        unified.extend(pairs(extra));
        Verdict::Serve { unified, billed: true }
    };
    let claude_code = is_claude_code(headers);
    match billing {
        Billing::OnPlan => served(),
        Billing::BillsOthers if claude_code => served(),
        Billing::BillsOthers => billed(&[]),
        Billing::RefusesOthers if claude_code => served(),
        Billing::RefusesOthers => Verdict::Refuse(Canned::third_party()),
        Billing::BillsAll { reset } => {
            billed(&[("status", "rejected"), ("5h-status", "rejected"), ("5h-reset", reset)])
        }
        Billing::WindowExhausted { reset, until } if now_epoch() < *until => {
            Verdict::Refuse(Canned::window_exhausted(reset))
        }
        Billing::WindowExhausted { .. } => served(),
    }
}

pub fn now_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
