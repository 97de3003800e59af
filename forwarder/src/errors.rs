//! Errors the forwarder answers itself, shaped like the Anthropic API's own
//! (`{"type":"error","error":{"type":...,"message":...}}`) so SDKs parse and report them as usual.

use crate::agent::AgentError;
use crate::body::ResponseBody;
use crate::keys::quota::OverQuota;
use crate::observe::metrics::RequestOutcome;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use sidecred_proto::ErrorCode;
use std::borrow::Cow;
use tracing::{error, warn};

/// An error the forwarder answers a client with itself, never one passed on from the upstream (those
/// reach the client as the upstream sent them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: StatusCode,
    /// The Anthropic error type, e.g. `authentication_error`.
    pub kind: &'static str,
    pub message: Cow<'static, str>,
    /// Sent as `x-should-retry` when set: whether the client sending the same request again can help.
    /// Unset, the client's own rules decide (a 503 during an agent restart is worth retrying).
    pub retry: Option<bool>,
    /// How `/metrics` counts it.
    pub outcome: RequestOutcome,
    /// Sent as `retry-after` (seconds) when set.
    pub retry_after: Option<u64>,
    /// Whether `allow` names the methods that are forwarded (a 405).
    pub allow: bool,
}

impl ErrorReply {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        let outcome = match status {
            StatusCode::BAD_GATEWAY => RequestOutcome::UpstreamError,
            StatusCode::SERVICE_UNAVAILABLE => RequestOutcome::AgentUnavailable,
            StatusCode::TOO_MANY_REQUESTS => RequestOutcome::RateLimited,
            StatusCode::UNAUTHORIZED => RequestOutcome::RejectedKey,
            _ => RequestOutcome::InvalidRequest,
        };
        ErrorReply {
            status,
            kind,
            message: message.into(),
            retry: None,
            outcome,
            retry_after: None,
            allow: false,
        }
    }

    /// Counted as `outcome` rather than what its status suggests.
    pub fn counted_as(mut self, outcome: RequestOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Marks an error that the same request will meet again until someone changes something.
    pub fn final_answer(mut self) -> Self {
        self.retry = Some(false);
        self
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "not found: this forwarder serves /v1/... (and /api/v1/..., the same), /health, /livez and /readyz",
        )
        .final_answer()
    }

    /// A wrong or missing key, or a login that needs renewing: retrying cannot help, and without saying
    /// so Claude Code retries a 401 silently for minutes.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message).final_answer()
    }

    /// A key over its limits: the API's own 429 shape, and when to come back.
    pub fn rate_limited(refusal: OverQuota, key_name: &str) -> Self {
        let (message, after) = match refusal {
            OverQuota::Rate { retry_after } => (
                format!("the API key `{key_name}` is over its request rate on this forwarder; retry later"),
                // Whole seconds, rounded up: a client that waits what it is told gets through.
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            ),
            OverQuota::Concurrency { limit } => (
                format!("the API key `{key_name}` already has {limit} requests in flight on this forwarder, its limit"),
                1,
            ),
        };
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        e.retry_after = Some(after.max(1));
        e
    }

    /// A method the API does not serve: never forwarded, so no token is ever put on it.
    pub fn method_not_allowed(method: &http::Method) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!(
                "method {method} is not forwarded: this forwarder passes on the API's methods ({})",
                crate::headers::API_METHODS
            ),
        )
        .final_answer();
        e.allow = true;
        e
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("request body exceeds the forwarder's limit of {limit} bytes (--max-request-body)"),
        )
        .final_answer()
    }

    pub fn agent_unavailable(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            format!("the credentials agent (sidecred-agent) is unavailable: {detail}"),
        )
    }

    pub fn bad_gateway(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!("the upstream API could not be reached: {detail}"),
        )
    }

    pub fn body(&self) -> String {
        serde_json::json!({
            "type": "error",
            "error": { "type": self.kind, "message": self.message },
        })
        .to_string()
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let mut resp = json_response(self.status, self.body());
        if let Some(retry) = self.retry {
            crate::headers::advise_retry(resp.headers_mut(), retry);
        }
        if let Some(after) = self.retry_after {
            resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(after));
        }
        if self.allow {
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(crate::headers::API_METHODS));
        }
        resp
    }
}

pub fn json_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The answer to a request the agent gave no token for.
pub fn agent_failure(e: &AgentError) -> ErrorReply {
    match e {
        AgentError::ReauthRequired(m) => reauth(m),
        AgentError::Refused(p) if p.code == ErrorCode::StaticTokenRejected => {
            static_token_rejected(&p.message)
        }
        AgentError::Refused(p) => {
            warn!(code = %p.code, error = %p.message, "the agent has no token to serve");
            let e = ErrorReply::agent_unavailable(format_args!(
                "it has no valid token ({}): {}",
                p.code, p.message
            ));
            // These last until an operator changes the agent's configuration or the forwarder's.
            match p.code {
                ErrorCode::PermissionDenied | ErrorCode::UnsupportedVersion | ErrorCode::BadRequest => {
                    e.final_answer()
                }
                _ => e,
            }
        }
        AgentError::Unreachable { .. } | AgentError::Timeout(_) => {
            warn!(error = %e, "the agent is not answering");
            ErrorReply::agent_unavailable(e)
        }
        AgentError::Impostor { .. } => {
            error!(error = %e, "not the agent: nothing was sent to it and nothing forwarded");
            // Until someone removes that socket or corrects --agent-uid.
            ErrorReply::agent_unavailable(e).final_answer()
        }
    }
}

pub fn reauth(agent_message: &str) -> ErrorReply {
    warn!("the agent's refresh token was rejected: someone must log in again");
    ErrorReply::unauthorized(format!(
        "the Claude login behind this forwarder has expired or was revoked; an operator must log in again \
         (sidecred-agent login) and update the agent's credentials. Agent says: {agent_message}"
    ))
    .counted_as(RequestOutcome::ReauthRequired)
}

pub fn static_token_rejected(agent_message: &str) -> ErrorReply {
    warn!("the upstream rejected the agent's static token, which cannot be refreshed");
    ErrorReply::unauthorized(format!(
        "the static token behind this forwarder was rejected, and a static token cannot be refreshed; an \
         operator must replace it (sidecred-agent run --static-token-env) or run the agent on a login. Agent \
         says: {agent_message}"
    ))
    .counted_as(RequestOutcome::ReauthRequired)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_shape() {
        let e = ErrorReply::not_found();
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("/v1/"));
        let resp = ErrorReply::too_large(10).into_response();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn errors_a_retry_cannot_mend_say_so() {
        for e in [ErrorReply::unauthorized("wrong key"), ErrorReply::not_found(), ErrorReply::too_large(1)] {
            let status = e.status;
            assert_eq!(e.into_response().headers()["x-should-retry"], "false", "{status}");
        }
        for e in [ErrorReply::agent_unavailable("restarting"), ErrorReply::bad_gateway("refused")] {
            let status = e.status;
            assert!(!e.into_response().headers().contains_key("x-should-retry"), "{status}");
        }
        let e = ErrorReply::agent_unavailable("not allowed").final_answer();
        assert_eq!(e.into_response().headers()["x-should-retry"], "false");
    }

    #[test]
    fn a_key_over_its_limits_gets_the_apis_429() {
        let refusal = OverQuota::Rate { retry_after: std::time::Duration::from_millis(1500) };
        let e = ErrorReply::rate_limited(refusal, "ci");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("`ci`"));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "2");
        let resp = ErrorReply::rate_limited(OverQuota::Concurrency { limit: 3 }, "ci").into_response();
        assert_eq!(resp.headers()["retry-after"], "1");
    }

    #[test]
    fn messages_are_json_escaped() {
        let e = ErrorReply::agent_unavailable("quote \" and newline \n");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().ends_with("quote \" and newline \n"));
    }

    #[test]
    fn a_rejected_static_token_is_a_401_that_says_it_cannot_be_refreshed() {
        let refused = AgentError::Refused(sidecred_proto::ProtoError::new(
            ErrorCode::StaticTokenRejected,
            "replace $T",
        ));
        let e = agent_failure(&refused);
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.kind, "authentication_error");
        assert!(e.message.contains("a static token cannot be refreshed"), "{}", e.message);
        assert!(e.message.contains("replace $T"), "{}", e.message);
    }

    #[test]
    fn reauth_message_says_to_log_in_again() {
        let e = reauth("invalid_grant");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.kind, "authentication_error");
        assert!(e.message.contains("log in again"));
        assert_eq!(e.retry, Some(false), "Claude Code would retry it for minutes");
    }
}
