//! Whether this agent may call the token endpoint. Alone, it always may. Sharing a login through a Lease,
//! only while it holds the lease with time to spare: refresh tokens rotate, so two refreshers kill each
//! other's login.

use sidecred_proto::Role;
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
    /// Set while this agent holds the lease: a refresh may *start* before this instant. It is the start
    /// of the last successful renewal plus the renew deadline, which is shorter than the lease, so the
    /// lease is still ours (by any peer's clock) for as long as a refresh may begin.
    pub held_until: Option<Instant>,
    /// Why the lease could not be read or renewed (the API server unreachable, RBAC, a missing Lease).
    pub problem: Option<String>,
}

impl Authority {
    /// Whether a refresh may start at `now`, and if not, why.
    pub fn may_refresh(&self, now: Instant) -> Result<(), String> {
        match self {
            Authority::Single => Ok(()),
            Authority::Lease(view) => match view.held_until {
                Some(until) if now < until => Ok(()),
                _ => Err(view.why_not()),
            },
        }
    }

    pub fn role(&self, now: Instant) -> Role {
        match self {
            Authority::Single => Role::Single,
            Authority::Lease(view) if view.held_until.is_some_and(|t| now < t) => Role::Holder,
            Authority::Lease(_) => Role::Follower,
        }
    }

    pub fn lease(&self) -> Option<&LeaseView> {
        match self {
            Authority::Single => None,
            Authority::Lease(view) => Some(view),
        }
    }
}

impl LeaseView {
    /// A view before the first answer from the API server.
    pub fn unknown(lease: String) -> LeaseView {
        LeaseView { lease, holder: None, held_until: None, problem: None }
    }

    fn why_not(&self) -> String {
        match (&self.problem, &self.holder) {
            (Some(problem), _) => format!("not refreshing without the lease {}: {problem}", self.lease),
            (None, Some(holder)) => {
                format!("{holder} holds the lease {} and refreshes this login", self.lease)
            }
            (None, None) => format!("waiting to acquire the lease {}", self.lease),
        }
    }
}
