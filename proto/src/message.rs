use crate::frame::PROTOCOL_VERSION;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a client asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The current access token. Answered from memory; waits only when the token has expired.
    GetToken,
    /// The upstream rejected `token`. The agent refreshes only if it is still the current token, so many
    /// reports of the same token cause one refresh. Answered with the token to use now.
    ReportRejected { token: Secret },
    /// Refresh now, whatever the expiry. Answered once the new pair is persisted.
    Refresh,
    /// The agent's state, for `sidecred-agent status` and health checks.
    Status,
    /// Turns the connection into a subscription: the agent answers at once with what a token request
    /// would get now (a token or an error), then pushes a new answer whenever that changes. The client
    /// sends nothing more on it; closing it ends the subscription. An agent too old to know this
    /// answers `bad_request` and closes the connection.
    Subscribe,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Token(TokenGrant),
    Status(Box<StatusReport>),
    Error(ProtoError),
}

/// A request on the wire: the version it speaks, then the request itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub v: u16,
    #[serde(flatten)]
    pub request: Request,
}

/// A response on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub v: u16,
    #[serde(flatten)]
    pub response: Response,
}

impl From<Request> for RequestFrame {
    fn from(request: Request) -> Self {
        RequestFrame { v: PROTOCOL_VERSION, request }
    }
}

impl From<Response> for ResponseFrame {
    fn from(response: Response) -> Self {
        ResponseFrame { v: PROTOCOL_VERSION, response }
    }
}

/// A token this close to its expiry is treated as expired, by the agent that serves it and by anyone
/// holding it: by the time a request reaches the upstream it would be, and a token past its expiry
/// only earns a 401.
pub const EXPIRY_GUARD: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub access_token: Secret,
    /// Expiry as Unix epoch milliseconds, by the agent's clock.
    pub expires_at_ms: u64,
    /// Milliseconds of validity left when the agent answered. Clients that compare against their own
    /// clock should use this, not `expires_at_ms`.
    pub expires_in_ms: u64,
    /// Set when the token is valid but the agent cannot look after it as it should (the token endpoint
    /// failing, the Kubernetes API unreachable with `--lease`): why, for the forwarder's `/health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Orders the tokens one agent serves: a token served later has a larger generation, so a client
    /// that hears of tokens on two connections (a subscription and an answer to a report) keeps the
    /// newer. 0 when unknown (an older agent). It starts from the agent's start time in microseconds,
    /// so an agent restarted later serves larger generations than the one before it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where the agent's token lifecycle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// A valid token is being served and no refresh is failing.
    Valid,
    /// A refresh request is in flight; the current token (if still valid) is served meanwhile.
    Refreshing,
    /// Refreshes are failing; the current token is served while it is valid.
    Degraded,
    /// The token has expired and could not be refreshed yet: token requests fail with `unavailable`.
    Expired,
    /// The refresh token was rejected (`invalid_grant`): someone must log in again.
    ReauthRequired,
    /// No usable credentials were found (missing or invalid file).
    NoCredentials,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::Refreshing => "refreshing",
            TokenState::Degraded => "degraded",
            TokenState::Expired => "expired",
            TokenState::ReauthRequired => "reauth_required",
            TokenState::NoCredentials => "no_credentials",
        }
    }

    /// Whether a token is being served: what a readiness probe wants to know.
    pub fn serves_token(self) -> bool {
        matches!(self, TokenState::Valid | TokenState::Refreshing | TokenState::Degraded)
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's view of itself. Nothing in it is secret: tokens appear only as fingerprints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub state: Option<TokenState>,
    /// Human-readable explanation of the state, with what to do when action is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Something about how the agent runs that an operator must not miss, whatever the state: a static
    /// token that is never refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Seconds until the access token expires (negative once expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_in_s: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at_ms: Option<u64>,
    #[serde(default)]
    pub refresh_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The file the credentials were seeded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_path: Option<String>,
    /// The file rotated credentials are written to (the seed itself when writing back in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_path: Option<String>,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub uptime_s: u64,
    /// Who refreshes this login: `single` (this agent alone), or with `--lease` the elected `holder` or
    /// a `follower` that adopts each new pair from the shared Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The Lease (`NAMESPACE/NAME`) the agents sharing this login are elected by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The lease holder's identity as last read, this agent's own when it holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    /// The `resourceVersion` of the shared Secret the live pair was last read from or checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    /// When the login was made (epoch ms): `login_clock` says whether that is the login itself
    /// (`login`) or, for a login that carries no record of it, when an agent first saw it (`first_seen`:
    /// the login is at least that old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_clock: Option<String>,
    /// The login's age in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_age_s: Option<u64>,
    /// `--login-max-age` in seconds: past it the login is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_max_age_s: Option<u64>,
    /// Who spent the refresh token the endpoint refused, while that refusal stands: `foreign`
    /// (something else is using this login), `ours_spent` or `raced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_refused_by: Option<String>,
}

/// Who refreshes a login shared by several agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No lease: this agent is the only one that refreshes this login.
    Single,
    /// This agent holds the lease: it refreshes and writes each new pair to the shared Secret.
    Holder,
    /// Another agent holds the lease (or none can be reached): this one never refreshes.
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Holder => "holder",
            Role::Follower => "follower",
        }
    }
}

/// Why a request failed. The code is for programs, the message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError { code, message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The refresh token is dead; a person must log in again.
    ReauthRequired,
    /// The upstream rejected the static token the agent was given (`run --static-token-env`), and a
    /// static token cannot be refreshed: a person must replace it.
    StaticTokenRejected,
    /// No valid token right now (expired and the refresh is failing, or no credentials): retry later.
    Unavailable,
    /// The request was malformed; the connection is closed after this answer.
    BadRequest,
    /// The request's protocol version is not spoken by this agent.
    UnsupportedVersion,
    /// The peer's uid is not allowed to ask for tokens.
    PermissionDenied,
    /// A bug or an unexpected local failure.
    Internal,
    /// A code this build does not know (sent by a newer agent).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ReauthRequired => "reauth_required",
            ErrorCode::StaticTokenRejected => "static_token_rejected",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        let frame = RequestFrame::from(Request::GetToken);
        assert_eq!(serde_json::to_string(&frame).expect("serialize"), r#"{"v":1,"op":"get_token"}"#);
        let frame = RequestFrame::from(Request::Subscribe);
        assert_eq!(serde_json::to_string(&frame).expect("serialize"), r#"{"v":1,"op":"subscribe"}"#);
        let frame = RequestFrame::from(Request::ReportRejected { token: Secret::new("t") });
        assert_eq!(
            serde_json::to_string(&frame).expect("serialize"),
            r#"{"v":1,"op":"report_rejected","token":"t"}"#
        );
    }

    #[test]
    fn response_round_trip() {
        let responses = [
            Response::Token(TokenGrant {
                access_token: Secret::new("a"),
                expires_at_ms: 5,
                expires_in_ms: 3,
                degraded: Some("the API server is down".into()),
                generation: 7,
            }),
            Response::Status(Box::new(StatusReport {
                state: Some(TokenState::ReauthRequired),
                ..Default::default()
            })),
            Response::Error(ProtoError::new(ErrorCode::Unavailable, "x")),
        ];
        for response in responses {
            let frame = ResponseFrame::from(response);
            let json = serde_json::to_vec(&frame).expect("serialize");
            let back: ResponseFrame = serde_json::from_slice(&json).expect("deserialize");
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn unknown_error_codes_and_fields_are_tolerated() {
        let json = r#"{"v":1,"kind":"error","code":"brand_new","message":"m","extra":1}"#;
        let frame: ResponseFrame = serde_json::from_str(json).expect("deserialize");
        match frame.response {
            Response::Error(e) => assert_eq!(e.code, ErrorCode::Unknown),
            other => panic!("unexpected {other:?}"),
        }
    }
}
