//! The Anthropic API calls the account commands make with an OAuth access token: the model list (does
//! the API accept this token?), the OAuth profile (whose account is it?) and the usage windows.

use crate::oauth::describe_request_error;
use serde::Serialize;
use serde_json::Value;
use sidecred_proto::{anthropic, Secret};

const MODELS_PATH: &str = "/v1/models";
const PROFILE_PATH: &str = "/api/oauth/profile";
/// The largest answer read from the API.
const MAX_ANSWER_LEN: usize = 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request did not get an answer: DNS, connection, TLS, timeout.
    #[error("{detail}")]
    Transport { endpoint: String, detail: String },
    /// The API answered with a non-2xx status.
    #[error("{endpoint} answered {status}{}", describe(.error_type, .message))]
    Status { endpoint: String, status: u16, error_type: Option<String>, message: Option<String> },
    /// A 2xx answer we could not read.
    #[error("{endpoint} sent an answer that is not the expected JSON ({detail})")]
    Malformed { endpoint: String, detail: String },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The refusal for the person who ran a command: one machine-readable word (`revoked`,
    /// `scope_missing`, `network`, `api_error`) and a sentence that says what to do about it.
    pub fn explain(&self) -> (&'static str, String) {
        match self.status() {
            Some(401) => (
                "revoked",
                format!(
                    "the API rejected the token as revoked or invalid ({self}); log in again with \
                     `sidecred-agent login`"
                ),
            ),
            Some(403) => (
                "scope_missing",
                format!(
                    "the API refused the token ({self}): it lacks a scope it needs (user:inference); log in \
                     again with the default --scopes"
                ),
            ),
            Some(_) => ("api_error", format!("the API answered an error ({self})")),
            None if matches!(self, ApiError::Transport { .. }) => {
                ("network", format!("could not reach the API: {self}"))
            }
            None => ("api_error", self.to_string()),
        }
    }
}

fn describe(error_type: &Option<String>, message: &Option<String>) -> String {
    match (error_type, message) {
        (Some(t), Some(m)) => format!(" {t}: {m}"),
        (Some(t), None) => format!(" {t}"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

/// Talks to the API with one shared HTTP client (the token endpoint's, so proxy and User-Agent
/// settings are the same).
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Api { http, base: base.trim_end_matches('/').to_owned() }
    }

    pub fn models_url(&self) -> String {
        format!("{}{MODELS_PATH}", self.base)
    }

    pub fn usage_url(&self) -> String {
        format!("{}{}", self.base, anthropic::OAUTH_USAGE_PATH)
    }

    /// The account's usage windows as `GET /api/oauth/usage` reports them.
    pub async fn usage(&self, token: &Secret) -> Result<Value, ApiError> {
        self.get_json(&self.usage_url(), token).await
    }

    pub fn profile_url(&self) -> String {
        format!("{}{PROFILE_PATH}", self.base)
    }

    /// `Ok` when the API accepts `token` for `GET /v1/models`.
    pub async fn check_models(&self, token: &Secret) -> Result<(), ApiError> {
        self.get_json(&self.models_url(), token).await.map(|_| ())
    }

    pub async fn profile(&self, token: &Secret) -> Result<Profile, ApiError> {
        let url = self.profile_url();
        let body = self.get_json(&url, token).await?;
        Ok(Profile::from_json(&body))
    }

    /// The one place that builds an authenticated API request.
    async fn get_json(&self, url: &str, token: &Secret) -> Result<Value, ApiError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(token.expose())
            .header("anthropic-beta", anthropic::OAUTH_BETA)
            .header("anthropic-version", anthropic::ANTHROPIC_VERSION)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ApiError::Transport {
                endpoint: url.to_owned(),
                detail: describe_request_error(&e, "API", url),
            })?;
        let status = response.status();
        let bytes = read_bounded(response, url).await?;
        if !status.is_success() {
            let (error_type, message) = error_details(&bytes);
            return Err(ApiError::Status {
                endpoint: url.to_owned(),
                status: status.as_u16(),
                error_type,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Malformed {
            endpoint: url.to_owned(),
            detail: crate::credentials::json_fault(&e),
        })
    }
}

/// Reads an answer's body, at most [`MAX_ANSWER_LEN`] bytes: the answers these calls read are a few
/// KiB, and an endless one must not take the command's memory.
async fn read_bounded(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ApiError::Transport {
        endpoint: url.to_owned(),
        detail: describe_request_error(&e, "API", url),
    })? {
        if bytes.len().saturating_add(chunk.len()) > MAX_ANSWER_LEN {
            return Err(ApiError::Malformed {
                endpoint: url.to_owned(),
                detail: format!(
                    "the answer is larger than {} KiB; nothing of it was used",
                    MAX_ANSWER_LEN / 1024
                ),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `{"type":"error","error":{"type":"authentication_error","message":"..."}}`: the type, and the message
/// when it is short and cannot be an echoed token.
fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return (None, None) };
    let err = v.get("error").unwrap_or(&Value::Null);
    let error_type = err
        .get("type")
        .or_else(|| if err.is_string() { Some(err) } else { None })
        .and_then(Value::as_str)
        .filter(|t| anthropic::is_error_code(t))
        .map(str::to_owned);
    let message =
        err.get("message").and_then(Value::as_str).filter(|m| anthropic::is_quotable(m)).map(str::to_owned);
    (error_type, message)
}

/// What `/api/oauth/profile` says about the account; every field is optional because the endpoint
/// is not documented and has changed before.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Profile {
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub account_uuid: Option<String>,
    pub organization_name: Option<String>,
    pub organization_uuid: Option<String>,
    pub organization_type: Option<String>,
    pub billing_type: Option<String>,
    pub rate_limit_tier: Option<String>,
    pub has_claude_max: Option<bool>,
    pub has_claude_pro: Option<bool>,
}

impl Profile {
    pub fn from_json(v: &Value) -> Self {
        let text = |ptrs: &[&str]| {
            ptrs.iter()
                .find_map(|p| v.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()))
                .map(str::to_owned)
        };
        let flag = |p: &str| v.pointer(p).and_then(Value::as_bool);
        Profile {
            email: text(&["/account/email", "/account/email_address"]),
            display_name: text(&["/account/display_name", "/account/full_name"]),
            account_uuid: text(&["/account/uuid"]),
            organization_name: text(&["/organization/name"]),
            organization_uuid: text(&["/organization/uuid"]),
            organization_type: text(&["/organization/organization_type"]),
            billing_type: text(&["/organization/billing_type"]),
            rate_limit_tier: text(&["/organization/rate_limit_tier", "/account/rate_limit_tier"]),
            has_claude_max: flag("/account/has_claude_max"),
            has_claude_pro: flag("/account/has_claude_pro"),
        }
    }

    /// The value Claude Code stores as `subscriptionType`: `max`, `pro`, `team`, `enterprise`.
    pub fn subscription_type(&self) -> Option<String> {
        if let Some(t) = self.organization_type.as_deref() {
            let plan = t.strip_prefix("claude_").unwrap_or(t);
            if !plan.is_empty() {
                return Some(plan.to_owned());
            }
        }
        if self.has_claude_max == Some(true) {
            Some("max".into())
        } else if self.has_claude_pro == Some(true) {
            Some("pro".into())
        } else {
            None
        }
    }

    /// The plan in words: "Claude Max", "Claude Pro", or what the endpoint said.
    pub fn plan(&self) -> Option<String> {
        self.subscription_type().map(|s| match s.as_str() {
            "max" => "Claude Max".to_owned(),
            "pro" => "Claude Pro".to_owned(),
            "team" => "Claude Team".to_owned(),
            "enterprise" => "Claude Enterprise".to_owned(),
            other => other.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn profile_picks_fields_and_derives_the_plan() {
        let v = json!({
            "account": {"uuid": "acc-1", "email": "me@example.com", "display_name": "Me",
                        "has_claude_max": true, "has_claude_pro": false},
            "organization": {"uuid": "org-1", "name": "Me's org", "organization_type": "claude_max",
                             "rate_limit_tier": "default_claude_max_20x", "billing_type": "stripe_subscription"}
        });
        let p = Profile::from_json(&v);
        assert_eq!(p.email.as_deref(), Some("me@example.com"));
        assert_eq!(p.organization_uuid.as_deref(), Some("org-1"));
        assert_eq!(p.subscription_type().as_deref(), Some("max"));
        assert_eq!(p.plan().as_deref(), Some("Claude Max"));
        assert_eq!(p.rate_limit_tier.as_deref(), Some("default_claude_max_20x"));
    }

    #[test]
    fn profile_tolerates_missing_and_odd_fields() {
        let p = Profile::from_json(&json!({"account": {"email_address": "x@y", "has_claude_pro": true}}));
        assert_eq!(p.email.as_deref(), Some("x@y"));
        assert_eq!(p.plan().as_deref(), Some("Claude Pro"));
        let empty = Profile::from_json(&json!({"organization": "weird", "account": 3}));
        assert_eq!(empty, Profile::default());
        assert_eq!(empty.plan(), None);
    }

    #[test]
    fn error_details_are_short_and_never_echo_tokens() {
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid bearer token sk-ant-oat01-x"}}"#;
        assert_eq!(error_details(body), (Some("authentication_error".into()), None));
        let body = br#"{"type":"error","error":{"type":"permission_error","message":"scope user:inference required"}}"#;
        assert_eq!(error_details(body).1.as_deref(), Some("scope user:inference required"));
        assert_eq!(error_details(b"<html>"), (None, None));
    }

    #[test]
    fn base_url_is_joined_without_double_slashes() {
        let api = Api::new(reqwest::Client::new(), "http://127.0.0.1:9/");
        assert_eq!(api.models_url(), "http://127.0.0.1:9/v1/models");
        assert_eq!(api.profile_url(), "http://127.0.0.1:9/api/oauth/profile");
    }

    #[test]
    fn api_errors_are_explained() {
        let status = |s: u16| ApiError::Status {
            endpoint: "https://api.test/v1/models".into(),
            status: s,
            error_type: None,
            message: None,
        };
        assert_eq!(status(401).explain().0, "revoked");
        assert_eq!(status(403).explain().0, "scope_missing");
        assert_eq!(status(500).explain().0, "api_error");
        let net = ApiError::Transport { endpoint: "x".into(), detail: "connection refused".into() };
        assert_eq!(net.explain().0, "network");
    }
}
