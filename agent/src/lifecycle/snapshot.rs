//! What the lifecycle publishes after every change: the token to hand out and everything `status`
//! shows. Readers (the socket's connection threads) answer from the latest snapshot without asking the
//! lifecycle task anything.

use super::policy::EXPIRY_GUARD;
use super::refusal::Refusal;
use crate::credentials::{now_ms, LoginClock};
use sidecred_proto::{ErrorCode, ProtoError, Secret, StatusReport, TokenGrant, TokenState};
use std::time::Duration;
use tokio::time::Instant;

/// The token being served.
#[derive(Debug, Clone)]
pub struct Served {
    pub access_token: Secret,
    pub expires_at_ms: u64,
    pub deadline: Instant,
}

impl Served {
    /// Valid by both clocks: the monotonic one, and the wall clock against the expiry written in the
    /// credentials, which still runs while the machine is suspended and the monotonic one does not.
    pub fn is_valid(&self, now: Instant) -> bool {
        let guard_ms = u64::try_from(EXPIRY_GUARD.as_millis()).unwrap_or(u64::MAX);
        now + EXPIRY_GUARD < self.deadline && now_ms().saturating_add(guard_ms) < self.expires_at_ms
    }

    pub fn grant(&self, now: Instant) -> TokenGrant {
        TokenGrant {
            access_token: self.access_token.clone(),
            expires_at_ms: self.expires_at_ms,
            expires_in_ms: u64::try_from(self.deadline.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX),
            degraded: None,
            generation: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub token: Option<Served>,
    /// Set when the served token must not be handed out even if unexpired (it was rejected upstream
    /// and the refresh token is dead).
    pub token_rejected: bool,
    pub state: TokenState,
    pub message: Option<String>,
    /// What an operator must not miss whatever the state (a static token).
    pub warning: Option<String>,
    /// The token came from `run --static-token-env`: its expiry is unknown and a rejection of it is
    /// answered with its own code.
    pub static_token: bool,
    pub next_refresh: Option<Instant>,
    pub refresh_count: u64,
    pub last_refresh_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub subscription_type: Option<String>,
    pub scopes: Vec<String>,
    pub account: Option<String>,
    pub seed_path: String,
    pub persist_path: String,
    pub role: sidecred_proto::Role,
    pub lease: Option<String>,
    pub lease_holder: Option<String>,
    pub secret_resource_version: Option<String>,
    /// When the live login was made (or first seen), from its credentials document.
    pub login_clock: Option<LoginClock>,
    pub login_max_age: Duration,
    /// Who spent the refresh token the endpoint refused, while that refusal stands.
    pub refusal: Option<Refusal>,
    /// The served token's place in the order of tokens this agent served (see
    /// [`TokenGrant::generation`]); set by the task when it publishes.
    pub generation: u64,
}

pub(super) const REAUTH_HINT: &str = "the refresh token was rejected; log in again (`sidecred-agent login`, \
                                      then update the credentials file or Secret) and the agent picks it up";

impl Snapshot {
    /// The token to hand out now, if any.
    pub fn servable(&self, now: Instant) -> Option<&Served> {
        self.token.as_ref().filter(|t| !self.token_rejected && t.is_valid(now))
    }

    /// The error to answer with when there is no servable token and waiting cannot help.
    pub fn terminal_error(&self) -> Option<ProtoError> {
        match self.state {
            TokenState::ReauthRequired if self.static_token => Some(ProtoError::new(
                ErrorCode::StaticTokenRejected,
                self.message.clone().unwrap_or_else(|| "the static token was rejected".to_owned()),
            )),
            TokenState::ReauthRequired => Some(ProtoError::new(
                ErrorCode::ReauthRequired,
                self.message.clone().unwrap_or_else(|| REAUTH_HINT.to_owned()),
            )),
            TokenState::NoCredentials => Some(ProtoError::new(
                ErrorCode::Unavailable,
                self.message.clone().unwrap_or_else(|| "no credentials".to_owned()),
            )),
            _ => None,
        }
    }

    /// What a token request gets at once: a token, a final error, or nothing yet (a refresh is due).
    pub fn immediate_answer(&self, now: Instant) -> Option<Result<TokenGrant, ProtoError>> {
        match self.servable(now) {
            Some(token) => {
                let mut grant = token.grant(now);
                grant.generation = self.generation;
                if self.state == TokenState::Degraded {
                    grant.degraded = self.message.clone();
                }
                Some(Ok(grant))
            }
            None => self.terminal_error().map(Err),
        }
    }

    /// The status report as of `now`. Only the agent's uptime is left for the caller to fill in.
    pub fn report(&self, now: Instant) -> StatusReport {
        let signed_secs = |t: Instant| -> i64 {
            if t >= now {
                i64::try_from(t.duration_since(now).as_secs()).unwrap_or(i64::MAX)
            } else {
                i64::try_from(now.duration_since(t).as_secs()).map_or(i64::MIN, |s| -s)
            }
        };
        let wall_ms = now_ms();
        let age_warning =
            self.login_clock.and_then(|c| super::login_age::warning(c, self.login_max_age, wall_ms));
        // A static token's expiry is unknown: it is shown as such, not as a date decades away.
        let known_expiry = self.token.as_ref().filter(|_| !self.static_token);
        StatusReport {
            state: Some(self.state),
            message: self.message.clone(),
            warning: self.warning.clone().or(age_warning),
            token_fingerprint: self.token.as_ref().map(|t| t.access_token.fingerprint()),
            expires_at_ms: known_expiry.map(|t| t.expires_at_ms),
            expires_in_s: known_expiry.map(|t| signed_secs(t.deadline)),
            next_refresh_in_s: self.next_refresh.map(signed_secs),
            last_refresh_at_ms: self.last_refresh_at_ms,
            last_error: self.last_error.clone(),
            last_error_at_ms: self.last_error_at_ms,
            refresh_count: self.refresh_count,
            subscription_type: self.subscription_type.clone(),
            scopes: self.scopes.clone(),
            account: self.account.clone(),
            seed_path: Some(self.seed_path.clone()),
            persist_path: Some(self.persist_path.clone()).filter(|p| !p.is_empty()),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: 0,
            role: Some(self.role),
            lease: self.lease.clone(),
            lease_holder: self.lease_holder.clone(),
            secret_resource_version: self.secret_resource_version.clone(),
            login_started_at_ms: self.login_clock.map(|c| c.started_at_ms),
            login_clock: self.login_clock.map(|c| c.start.as_str().to_owned()),
            login_age_s: self.login_clock.map(|c| c.age(wall_ms).as_secs()),
            login_max_age_s: Some(self.login_max_age.as_secs()),
            refresh_refused_by: self.refusal.map(|r| r.as_str().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_guard_applies() {
        let now = Instant::now();
        let t = Served {
            access_token: Secret::new("a"),
            expires_at_ms: now_ms() + 60_000,
            deadline: now + Duration::from_secs(4),
        };
        assert!(!t.is_valid(now));
        let t = Served { deadline: now + Duration::from_secs(60), ..t };
        assert!(t.is_valid(now));
        assert!(t.grant(now).expires_in_ms >= 59_000);
        // Expired by the wall clock (the machine slept) is expired, whatever the monotonic clock says.
        let t = Served { expires_at_ms: now_ms().saturating_sub(1), ..t };
        assert!(!t.is_valid(now));
    }
}
