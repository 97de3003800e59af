//! Errors the forwarder answers itself, shaped like the Anthropic API's own
//! (`{"type":"error","error":{"type":...,"message":...}}`) so SDKs parse and report them as usual.

use crate::body::ResponseBody;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use std::borrow::Cow;

/// An error the forwarder answers a client with itself, never one passed on from the upstream (those
/// reach the client as the upstream sent them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: StatusCode,
    /// The Anthropic error type, e.g. `authentication_error`.
    pub kind: &'static str,
    pub message: Cow<'static, str>,
}

impl ErrorReply {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ErrorReply { status, kind, message: message.into() }
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "not found: this forwarder serves /v1/... (and /api/v1/..., the same), /health, /livez and /readyz",
        )
    }

    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("request body exceeds the forwarder's limit of {limit} bytes (--max-request-body)"),
        )
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
        json_response(self.status, self.body())
    }
}

pub fn json_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
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
    fn messages_are_json_escaped() {
        let e = ErrorReply::agent_unavailable("quote \" and newline \n");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().ends_with("quote \" and newline \n"));
    }
}
