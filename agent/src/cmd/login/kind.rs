//! The two kinds of login: a full login as Claude Code's, refreshed by the one agent that holds it, and
//! a long-lived, inference-only login as `claude setup-token`'s, which any number of agents share.

use super::LoginArgs;
use sidecred_proto::anthropic;
use std::time::Duration;

/// The two kinds of login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    Full,
    LongLived,
}

/// A long-lived login whose token lives no longer than this was not granted as one: the endpoint
/// ignored the `expires_in` it was sent.
pub(super) const SHORTEST_LONG_LIVED: Duration = Duration::from_secs(86_400);

impl LoginKind {
    pub(super) fn of(args: &LoginArgs) -> LoginKind {
        if args.long_lived {
            LoginKind::LongLived
        } else {
            LoginKind::Full
        }
    }

    pub(super) fn scopes<'a>(&self, args: &'a LoginArgs) -> &'a str {
        match self {
            LoginKind::Full => &args.scopes,
            LoginKind::LongLived => anthropic::LONG_LIVED_SCOPES,
        }
    }

    /// The lifetime the code exchange asks for; `None` leaves it to the endpoint.
    pub(super) fn lifetime(&self) -> Option<Duration> {
        match self {
            LoginKind::Full => None,
            LoginKind::LongLived => Some(Duration::from_secs(anthropic::LONG_LIVED_EXPIRES_IN_SECS)),
        }
    }
}
