//! The lifecycle's states as types, and what each shows to readers and `status`.

use super::snapshot::{Served, Snapshot};
use crate::credentials::Credentials;
use crate::store::SeedRead;
use sidecred_proto::TokenState;
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
    /// The refresh token was refused: nothing is tried until a new login appears in the seed.
    /// `token_rejected` once the upstream refused the access token too.
    ReauthRequired { reason: String, token_rejected: bool },
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
        snap.token_rejected = matches!(refresh, Refresh::ReauthRequired { token_rejected: true, .. });
        let valid = token.is_valid(now) && !snap.token_rejected;
        snap.subscription_type = live.credentials.subscription_type.clone();
        snap.scopes = live.credentials.scopes.clone();
        snap.next_refresh = match refresh {
            Refresh::Scheduled { at, .. } => Some(*at),
            Refresh::InFlight { scheduled, .. } => Some(*scheduled),
            Refresh::ReauthRequired { .. } => None,
        };
        let failures = match refresh {
            Refresh::Scheduled { failures, .. } | Refresh::InFlight { failures, .. } => *failures,
            Refresh::ReauthRequired { .. } => 0,
        };
        let (state, message) = match refresh {
            Refresh::ReauthRequired { reason, .. } => (TokenState::ReauthRequired, Some(reason.clone())),
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
