//! Where `validate` and `info` get the token they show the API: from the agent when one answers on the
//! socket (it owns the refresh token there, so nobody else may spend it), from the credentials file
//! otherwise. An expired token in the file is refreshed first and the rotated pair written back before
//! it is used.

use crate::atomic::{check_replaceable, resolve_symlinks, write_atomic, WriteError};
use crate::cmd::args::{LookupArgs, Source};
use crate::credentials::{now_ms, Credentials, CredentialsError};
use crate::oauth::{OAuthClient, TokenError};
use serde::Serialize;
use sidecred_proto::client::{Client, ClientError};
use sidecred_proto::{anthropic, Secret, TokenGrant};
use std::path::Path;

/// A token this close to its expiry is refreshed before use, so the check does not race the clock.
const REFRESH_WITHIN_MS: u64 = 60_000;

/// Where a token came from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum TokenSource {
    Agent { socket: String },
    File { credentials: String },
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Agent { socket } => write!(f, "agent ({socket})"),
            TokenSource::File { credentials } => write!(f, "file ({credentials})"),
        }
    }
}

/// A token to call the API with.
pub struct Obtained {
    pub token: Secret,
    pub source: TokenSource,
    pub expires_at_ms: u64,
    /// The file's token had expired and was refreshed (and the rotated pair saved).
    pub refreshed: bool,
    /// The scopes the token carries, when the agent or the file says.
    pub scopes: Option<Vec<String>>,
}

impl Obtained {
    /// Whether the token is known to lack the profile scope: an inference-only (long-lived) login,
    /// which the profile endpoint always refuses.
    pub fn lacks_profile_scope(&self) -> bool {
        self.scopes.as_ref().is_some_and(|s| !s.iter().any(|x| x == anthropic::PROFILE_SCOPE))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObtainError {
    #[error("no agent answered on {socket} ({detail}); drop --source agent to use the credentials file")]
    NoAgent { socket: String, detail: String },
    #[error("the agent on {socket} has no usable token: {detail}")]
    Agent { socket: String, detail: String },
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error(
        "the token in {path} has expired and this login has no refresh token (a long-lived login); log in \
         again with `sidecred-agent login --long-lived`"
    )]
    ExpiredWithoutRefreshToken { path: String },
    #[error("the token in {path} has expired and refreshing it failed: {reason}")]
    RefreshFailed { path: String, reason: String, rejected: bool },
    #[error(
        "the token in {path} has expired and the file cannot be written ({source}); refreshing now would \
         lose the rotated refresh token, so nothing was done. Make the file writable, or start the agent"
    )]
    CannotSave { path: String, source: WriteError },
    #[error(
        "the token was refreshed but the rotated credentials could not be saved to {path} ({source}); the \
         old refresh token is now spent: log in again with `sidecred-agent login`"
    )]
    SaveFailed { path: String, source: WriteError },
}

impl ObtainError {
    /// A short machine-readable name for `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            ObtainError::NoAgent { .. } => "no_agent",
            ObtainError::Agent { .. } => "agent",
            ObtainError::Credentials(e) if e.is_no_login() => "missing",
            ObtainError::Credentials(_) => "unreadable",
            ObtainError::ExpiredWithoutRefreshToken { .. } => "expired_no_refresh_token",
            ObtainError::RefreshFailed { rejected: true, .. } => "expired_refresh_rejected",
            ObtainError::RefreshFailed { .. } => "expired_refresh_failed",
            ObtainError::CannotSave { .. } | ObtainError::SaveFailed { .. } => "cannot_save",
        }
    }

    /// Where the token was to come from.
    pub fn source(&self, lookup: &LookupArgs) -> TokenSource {
        match self {
            ObtainError::NoAgent { socket, .. } | ObtainError::Agent { socket, .. } => {
                TokenSource::Agent { socket: socket.clone() }
            }
            _ => TokenSource::File { credentials: lookup.credentials.path.display().to_string() },
        }
    }
}

/// The agent's token, and the scopes its status reports (not known when it reports none).
async fn agent_token(socket: &Path) -> Result<(TokenGrant, Option<Vec<String>>), ClientError> {
    let mut client = Client::connect(socket).await?;
    let grant = client.get_token().await?;
    let scopes = client.status().await.ok().map(|s| s.scopes).filter(|s| !s.is_empty());
    Ok((grant, scopes))
}

pub async fn obtain_token(lookup: &LookupArgs, oauth: &OAuthClient) -> Result<Obtained, ObtainError> {
    let socket = lookup.socket.socket.display().to_string();
    if lookup.source != Source::File {
        match agent_token(&lookup.socket.socket).await {
            Ok((grant, scopes)) => {
                return Ok(Obtained {
                    token: grant.access_token,
                    source: TokenSource::Agent { socket },
                    expires_at_ms: grant.expires_at_ms,
                    refreshed: false,
                    scopes,
                })
            }
            Err(e) if e.is_connection_failure() && lookup.source == Source::Auto => {}
            Err(e) if e.is_connection_failure() => {
                return Err(ObtainError::NoAgent { socket, detail: e.to_string() })
            }
            Err(e) => return Err(ObtainError::Agent { socket, detail: e.to_string() }),
        }
    }
    token_from_file(&lookup.credentials.path, oauth).await
}

/// The file's token, refreshed first when it has expired. The rotated pair is on disk before the new
/// token is used: a refresh token that is spent but not saved is a login lost.
async fn token_from_file(path: &Path, oauth: &OAuthClient) -> Result<Obtained, ObtainError> {
    let source = TokenSource::File { credentials: path.display().to_string() };
    let creds = Credentials::read(path)?;
    let scopes = Some(creds.scopes.clone()).filter(|s| !s.is_empty());
    if creds.remaining_ms(now_ms()) > REFRESH_WITHIN_MS {
        return Ok(Obtained {
            token: creds.access_token.clone(),
            source,
            expires_at_ms: creds.expires_at_ms,
            refreshed: false,
            scopes,
        });
    }
    let shown = path.display().to_string();
    let Some(refresh_token) = &creds.refresh_token else {
        return Err(ObtainError::ExpiredWithoutRefreshToken { path: shown });
    };
    let target = resolve_symlinks(path);
    check_replaceable(&target).map_err(|source| ObtainError::CannotSave { path: shown.clone(), source })?;
    let response = oauth.refresh(refresh_token, &creds.scopes).await.map_err(|e| {
        let rejected = matches!(e, TokenError::Rejected { .. });
        let mut reason = e.to_string();
        if rejected {
            reason.push_str(
                " (the refresh token is spent or revoked: another holder may have rotated it; \
                 log in again with `sidecred-agent login`)",
            );
        }
        ObtainError::RefreshFailed { path: shown.clone(), reason, rejected }
    })?;
    let next = creds.with_update(response.into_update(now_ms()));
    write_atomic(&target, &next.to_bytes())
        .map_err(|source| ObtainError::SaveFailed { path: shown, source })?;
    Ok(Obtained {
        token: next.access_token.clone(),
        source,
        expires_at_ms: next.expires_at_ms,
        refreshed: true,
        scopes: Some(next.scopes.clone()).filter(|s| !s.is_empty()),
    })
}
