//! Probes. `/livez`: the process serves HTTP. `/readyz` and `/health`: the agent answers with a valid
//! token right now (no waiting out a restart: a probe must report what is, promptly). Probes share the
//! agent exchanges of requests, so a flood of them costs the agent no more than steady traffic.

use crate::agent::{AgentError, TokenSource};
use crate::body::ResponseBody;
use crate::errors::json_response;
use http::{Response, StatusCode};
use serde_json::json;

pub fn livez() -> Response<ResponseBody> {
    json_response(StatusCode::OK, json!({"status": "ok"}).to_string())
}

pub async fn readyz(tokens: &TokenSource) -> Response<ResponseBody> {
    match tokens.probe().await {
        Ok(_) => json_response(StatusCode::OK, json!({"status": "ready"}).to_string()),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": reason(&e)}).to_string(),
        ),
    }
}

pub async fn health(tokens: &TokenSource) -> Response<ResponseBody> {
    match tokens.probe().await {
        Ok(token) => json_response(
            StatusCode::OK,
            json!({"status": "ok", "authenticated": true, "expires_in": token.expires_in_ms / 1000})
                .to_string(),
        ),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "degraded",
                "authenticated": false,
                "reauth_required": matches!(e, AgentError::ReauthRequired(_)),
                "reason": reason(&e),
            })
            .to_string(),
        ),
    }
}

fn reason(e: &AgentError) -> String {
    match e {
        AgentError::Unreachable { .. } | AgentError::Timeout(_) | AgentError::Impostor { .. } => {
            format!("the agent is unavailable: {e}")
        }
        AgentError::ReauthRequired(m) => format!("log in again: {m}"),
        AgentError::Refused(p) => format!("the agent has no token to serve ({}): {}", p.code, p.message),
    }
}
