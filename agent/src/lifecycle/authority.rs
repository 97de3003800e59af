//! Whether this agent may call the token endpoint. Alone, it always may. Sharing a login through a Lease,
//! only while it holds the lease with time to spare, and each request must end by the lease's fence:
//! refresh tokens rotate, so two refreshers kill each other's login.

use super::fence::Fence;
use super::machine::Now;
use sidecred_proto::Role;
use std::time::Duration;
use tokio::time::Instant;

/// Who decides about refreshes.
#[derive(Debug, Clone)]
pub enum Authority {
    /// No lease: this agent is the only one using the login.
    Single,
    /// Elected through a Lease; the latest view of the election.
    Lease(LeaseView),
}

/// What the lease task last learned, sent to the lifecycle after every attempt to acquire or renew.
#[derive(Debug, Clone)]
pub struct LeaseView {
    /// `NAMESPACE/NAME` of the Lease.
    pub lease: String,
    /// The holder by the last successful read, or none (never read, or nobody holds it).
    pub holder: Option<String>,
    /// Set while this agent holds the lease: the fence, the instant another agent could take the lease
    /// over if no renewal lands before it. Every refresh request must have ended by then. Kept by the
    /// boot clock too, so a suspend uses it up ([`super::fence`]).
    pub fence: Option<Fence>,
    /// A refresh starts only with at least this long left before the fence.
    pub least_window: Duration,
    /// After taking over a lease its holder did not release: until this instant, a refusal of a refresh
    /// may mean that holder's last refresh won, and its pair may still reach the Secret.
    pub raced_until: Option<Instant>,
    /// After taking over a lease its holder did not release: until this instant a refresh that falls
    /// due for the pair held at the takeover waits for that holder's late write to the Secret (while
    /// the access token has life to spare), instead of spending a pair that holder may have spent.
    pub late_write_by: Option<Instant>,
    /// Why the lease could not be read or renewed (the API server unreachable, RBAC, a missing Lease).
    pub problem: Option<String>,
}

/// A refresh may start; under a lease its request must end by `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub deadline: Option<Instant>,
}

impl Authority {
    /// Whether a refresh may start at `now`, and if not, why. The time left before the fence is the
    /// lesser by the monotonic and the boot clock: after a suspend the boot clock says the lease may
    /// have passed on, whatever the monotonic clock says.
    pub fn may_refresh(&self, now: Now) -> Result<Permit, String> {
        match self {
            Authority::Single => Ok(Permit { deadline: None }),
            Authority::Lease(view) => match view.fence.map(|f| f.left(now.at, now.boot)) {
                Some(left) if left > view.least_window => Ok(Permit { deadline: now.at.checked_add(left) }),
                _ => Err(view.why_not()),
            },
        }
    }

    /// The role `status` shows at `now`, by the monotonic clock alone (a suspend is caught by
    /// [`Authority::may_refresh`] and, within a round, by the election).
    pub fn role(&self, now: Instant) -> Role {
        match self {
            Authority::Single => Role::Single,
            Authority::Lease(view)
                if view.fence.is_some_and(|f| f.at.saturating_duration_since(now) > view.least_window) =>
            {
                Role::Holder
            }
            Authority::Lease(_) => Role::Follower,
        }
    }

    pub fn lease(&self) -> Option<&LeaseView> {
        match self {
            Authority::Single => None,
            Authority::Lease(view) => Some(view),
        }
    }

    /// Until when a refused refresh may be the previous holder's win (see [`LeaseView::raced_until`]).
    pub fn raced_until(&self, now: Instant) -> Option<Instant> {
        self.lease().and_then(|l| l.raced_until).filter(|t| now < *t)
    }

    /// Until when a due refresh of the pair held at an unreleased takeover waits for the old holder's
    /// late write (see [`LeaseView::late_write_by`]).
    pub fn late_write_by(&self, now: Instant) -> Option<Instant> {
        self.lease().and_then(|l| l.late_write_by).filter(|t| now < *t)
    }

    /// Whether the last round could not renew or read the lease: a new pair could not reach the Secret
    /// now either.
    pub fn api_unreachable(&self) -> bool {
        self.lease().is_some_and(|l| l.problem.is_some())
    }
}

impl LeaseView {
    /// A view before the first answer from the API server.
    pub fn unknown(lease: String) -> LeaseView {
        LeaseView {
            lease,
            holder: None,
            fence: None,
            least_window: Duration::ZERO,
            raced_until: None,
            late_write_by: None,
            problem: None,
        }
    }

    fn why_not(&self) -> String {
        match (&self.problem, &self.holder) {
            (Some(problem), _) => format!("not refreshing without the lease {}: {problem}", self.lease),
            (None, Some(holder)) if self.fence.is_none() => {
                format!("{holder} holds the lease {} and refreshes this login", self.lease)
            }
            (None, Some(_)) => format!(
                "too little time is left before the lease {} must be renewed; the refresh waits for the renewal",
                self.lease
            ),
            (None, None) => format!("waiting to acquire the lease {}", self.lease),
        }
    }
}
