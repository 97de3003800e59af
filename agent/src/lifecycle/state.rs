//! The lifecycle's states as types, and what each shows to readers and `status`.

use super::snapshot::{Served, Snapshot};
use crate::credentials::Credentials;
use crate::store::SeedRead;
use sidecred_proto::{ErrorCode, ProtoError, TokenState};
use tokio::time::Instant;

/// Where the lifecycle stands. There is one per agent, so the variants' sizes do not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Phase {
    /// No usable login: waiting for one to appear in the seed.
    NoLogin {
        reason: String,
    },
    Serving {
        live: Live,
        refresh: Refresh,
        save: Save,
    },
}

/// The pair being served, and when its access token expires by the monotonic clock.
#[derive(Debug)]
pub(super) struct Live {
    pub credentials: Credentials,
    pub deadline: Instant,
}

/// What is being done about the next refresh.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Refresh {
    /// The next attempt is at `at`; `failures` attempts in a row have failed (0: all is well).
    Scheduled { at: Instant, failures: u32 },
    /// A request to the token endpoint is out. A seed change that arrives meanwhile waits here: the
    /// pair the request brings back must be saved whatever the seed says.
    InFlight { scheduled: Instant, failures: u32, pending_seed: Option<SeedRead> },
    /// Refused right after taking over a lease its holder did not release: that holder's last refresh
    /// probably won and its pair may still reach the Secret. Until `until` the current token is served and
    /// the Secret awaited; then it is [`Refresh::ReauthRequired`] with `reason`.
    Raced { reason: String, until: Instant },
    /// The refresh token was refused: nothing is tried until a new login appears in the seed.
    /// `token_rejected` once the upstream refused the access token too.
    ReauthRequired { reason: String, token_rejected: bool },
    /// There is nothing to refresh with, so nothing is ever tried: the token is served until it expires
    /// or the upstream rejects it (`token_rejected`), and then a person must act.
    Never { why: Unrefreshable, token_rejected: bool },
}

/// Why a token is never refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrefreshable {
    /// A login that came without a refresh token: a long-lived, inference-only login (`login
    /// --long-lived`), which any number of agents may share because none of them ever rotates it.
    NoRefreshToken,
    /// A token from this environment variable (`run --static-token-env`), without a file, a refresh
    /// token or a known expiry.
    Static { var: String },
}

const LONG_LIVED_SERVING: &str = "a login without a refresh token (a long-lived login): it is never \
    refreshed and is served until it expires; log in again before then";

const LONG_LIVED_EXPIRED: &str = "the token has expired and this login has no refresh token (a long-lived \
    login); log in again (`sidecred-agent login --long-lived`, then update the credentials file or Secret) \
    and the agent picks it up";

pub(super) const RACED: &str = "the refresh was refused right after this agent took over a lease its \
    holder had not released: that holder's last refresh probably won; waiting for its pair to reach the \
    shared Secret";

impl Unrefreshable {
    /// What `status` says while the token is served.
    fn serving(&self) -> String {
        match self {
            Unrefreshable::NoRefreshToken => LONG_LIVED_SERVING.to_owned(),
            Unrefreshable::Static { var } => format!(
                "a static token from ${var}: never refreshed, its expiry unknown; when the API rejects \
                 it, put a new token in ${var} and restart the agent"
            ),
        }
    }

    /// The loud line `status` shows whatever the state, and the agent logs at start.
    pub fn warning(&self) -> Option<String> {
        match self {
            Unrefreshable::NoRefreshToken => None,
            Unrefreshable::Static { var } => Some(format!(
                "STATIC TOKEN from ${var}: it is never refreshed and its expiry is unknown; once it \
                 expires or is revoked every request fails until someone replaces it. Prefer a long-lived \
                 login (`sidecred-agent login --long-lived`) in a credentials file"
            )),
        }
    }

    /// The answer once the upstream has rejected the token.
    pub fn rejected(&self) -> ProtoError {
        match self {
            Unrefreshable::NoRefreshToken => ProtoError::new(
                ErrorCode::ReauthRequired,
                "the API rejected the token and this login has no refresh token (a long-lived login); log in \
                 again (`sidecred-agent login --long-lived`, then update the credentials file or Secret) and \
                 the agent picks it up",
            ),
            Unrefreshable::Static { var } => ProtoError::new(
                ErrorCode::StaticTokenRejected,
                format!(
                    "the API rejected the static token from ${var}, and a static token cannot be \
                     refreshed: put a new token in ${var} and restart the agent"
                ),
            ),
        }
    }

    /// The answer once the token has expired (only a login with a known expiry gets there).
    fn expired(&self) -> String {
        match self {
            Unrefreshable::NoRefreshToken => LONG_LIVED_EXPIRED.to_owned(),
            Unrefreshable::Static { var } => {
                format!("the static token from ${var} has expired; put a new token in ${var} and restart")
            }
        }
    }

    /// Why a requested refresh cannot happen.
    pub fn cannot_refresh(&self) -> String {
        match self {
            Unrefreshable::NoRefreshToken => {
                "this login has no refresh token (a long-lived login): there is nothing to refresh with"
                    .to_owned()
            }
            Unrefreshable::Static { var } => format!("the static token from ${var} cannot be refreshed"),
        }
    }
}

/// Whether the live pair is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Save {
    Done,
    /// Not yet (it failed, or a new seed must be recorded): try at this time. Until then the live pair
    /// exists only in memory.
    Due(Instant),
}

impl Phase {
    /// Fills in what the phase decides in `snap`: the token, the state and its message, the next refresh.
    pub(super) fn describe(&self, now: Instant, snap: &mut Snapshot) {
        let (live, refresh, save) = match self {
            Phase::NoLogin { reason } => {
                snap.state = TokenState::NoCredentials;
                snap.message = Some(reason.clone());
                return;
            }
            Phase::Serving { live, refresh, save } => (live, refresh, save),
        };
        let token = served(&live.credentials, live.deadline);
        snap.token_rejected = matches!(
            refresh,
            Refresh::ReauthRequired { token_rejected: true, .. }
                | Refresh::Never { token_rejected: true, .. }
        );
        let valid = token.is_valid(now) && !snap.token_rejected;
        snap.subscription_type = live.credentials.subscription_type.clone();
        snap.login_clock = live.credentials.login_clock();
        snap.scopes = live.credentials.scopes.clone();
        snap.next_refresh = match refresh {
            Refresh::Scheduled { at, .. } => Some(*at),
            Refresh::InFlight { scheduled, .. } => Some(*scheduled),
            Refresh::ReauthRequired { .. } | Refresh::Never { .. } | Refresh::Raced { .. } => None,
        };
        let failures = match refresh {
            Refresh::Scheduled { failures, .. } | Refresh::InFlight { failures, .. } => *failures,
            Refresh::ReauthRequired { .. } | Refresh::Never { .. } | Refresh::Raced { .. } => 0,
        };
        if let Refresh::Never { why, .. } = refresh {
            snap.warning = why.warning();
            snap.static_token = matches!(why, Unrefreshable::Static { .. });
        }
        let (state, message) = match refresh {
            Refresh::ReauthRequired { reason, .. } => (TokenState::ReauthRequired, Some(reason.clone())),
            Refresh::Raced { reason, until } if now >= *until => {
                (TokenState::ReauthRequired, Some(reason.clone()))
            }
            Refresh::Raced { .. } if !valid => (TokenState::Expired, Some(RACED.to_owned())),
            Refresh::Raced { .. } => (TokenState::Degraded, Some(RACED.to_owned())),
            // Nothing will bring a token back: a client is told at once instead of waiting for a refresh.
            Refresh::Never { why, token_rejected: true } => {
                (TokenState::ReauthRequired, Some(why.rejected().message))
            }
            Refresh::Never { why, .. } if !valid => (TokenState::ReauthRequired, Some(why.expired())),
            _ if !valid => (
                TokenState::Expired,
                Some("the access token has expired and has not been refreshed yet".to_owned()),
            ),
            // A retry in flight is still degraded: the failures are what an operator needs to see.
            _ if failures > 0 => (
                TokenState::Degraded,
                Some(format!(
                    "{failures} refresh attempt(s) failed; serving the current token while it is valid"
                )),
            ),
            Refresh::InFlight { .. } => (TokenState::Refreshing, None),
            _ if matches!(save, Save::Due(_)) => {
                (TokenState::Degraded, Some("the current credentials are not saved yet; retrying".to_owned()))
            }
            Refresh::Never { why, .. } => (TokenState::Valid, Some(why.serving())),
            _ => (TokenState::Valid, None),
        };
        snap.token = Some(token);
        snap.state = state;
        snap.message = message;
    }
}

pub(super) fn served(credentials: &Credentials, deadline: Instant) -> Served {
    Served {
        access_token: credentials.access_token.clone(),
        expires_at_ms: credentials.expires_at_ms,
        deadline,
    }
}
