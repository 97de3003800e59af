//! Probes. `/livez`: the process serves HTTP. `/readyz` and `/health`: the agent answers with a valid
//! token right now (no waiting out a restart: a probe must report what is, promptly). Probes share the
//! agent exchanges of requests, so a flood of them costs the agent no more than steady traffic.
//! `/health` also says when the API rejects the token the agent serves and the agent will not replace it
//! yet (its cooldown after a refresh): requests then get 401 although the agent reports a valid token.
//! `/readyz` does not: no other replica of this account would do better, so taking this one out of
//! service helps nobody. `/readyz` does say 503 from SIGTERM on ([`Leaving`]), while the forwarder still
//! accepts for its shutdown delay: that is what takes it out of the endpoints before it stops listening.

use crate::account::Account;
use crate::agent::{AgentError, TokenSource};
use crate::body::ResponseBody;
use crate::errors::json_response;
use crate::observe::metrics::METRICS;
use crate::rejected::RejectedToken;
use http::{Response, StatusCode};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once, on SIGTERM: the forwarder is on its way out.
#[derive(Debug, Default)]
pub struct Leaving(AtomicBool);

impl Leaving {
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The liveness path, which `--probe` (probe.rs) asks too.
pub const LIVEZ_PATH: &str = "/livez";

pub fn livez() -> Response<ResponseBody> {
    json_response(StatusCode::OK, json!({"status": "ok"}).to_string())
}

pub async fn readyz(tokens: &TokenSource, leaving: &Leaving) -> Response<ResponseBody> {
    if leaving.is_set() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "not_ready",
                "reason": "shutting down (SIGTERM): still serving for the shutdown delay (--shutdown-delay), \
                           then draining; send new requests to another replica",
            })
            .to_string(),
        );
    }
    match tokens.probe().await {
        Ok(_) => json_response(StatusCode::OK, json!({"status": "ready"}).to_string()),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": reason(&e)}).to_string(),
        ),
    }
}

pub async fn health(
    tokens: &TokenSource,
    rejected: &RejectedToken,
    account: &Account,
) -> Response<ResponseBody> {
    match tokens.probe().await {
        Ok(grant) => match rejected.since(&grant.access_token) {
            Some(ago) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "status": "degraded",
                    "authenticated": false,
                    "token_rejected": true,
                    "rejected_s_ago": ago.as_secs(),
                    "reason": format!(
                        "the API rejected the token the agent serves ({}) {} s ago and the agent has no \
                         other to offer yet (after a refresh it waits before refreshing again): requests \
                         get 401 until it has. Check the account (sidecred-agent validate); a refresh or a \
                         new login clears this",
                        grant.access_token.fingerprint(),
                        ago.as_secs()
                    ),
                })
                .to_string(),
            ),
            // Degraded, not failed: the token is valid and requests are served; the agent says what it
            // cannot do meanwhile (refresh, reach the Kubernetes API).
            None => {
                let mut body =
                    json!({"status": "ok", "authenticated": true, "expires_in": grant.expires_in_ms / 1000});
                if let Some(why) = &grant.degraded {
                    body["status"] = "degraded".into();
                    body["reason"] = why.as_str().into();
                }
                if let Some(usage) = METRICS.usage.summary() {
                    body["usage"] = usage;
                }
                body["account"] = account.summary();
                json_response(StatusCode::OK, body.to_string())
            }
        },
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
