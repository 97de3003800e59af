//! The token lifecycle: when to refresh, what to serve meanwhile, what to do when the token endpoint
//! fails or a new login appears, and saving every new pair before it is served.
//!
//! - [`machine`]: the states as types and the pure transitions ("this happened at time t → these
//!   effects"), unit-tested with chosen times.
//! - [`task`]: the one async task that feeds the machine and performs its effects (token requests,
//!   saves, the Secret write-back, answering waiters) and publishes a [`Snapshot`] after every change.
//! - [`state`]: the phases as types, and what each shows to readers.
//! - [`snapshot`]: what readers see: the token to hand out and the status report.
//! - [`policy`]: refresh margins, backoff, the expiry guard.
//! - [`fence`]: the lease's fence by a clock that counts a suspend (`CLOCK_BOOTTIME`).
//! - [`hold`]: when a refresh that fell due waits although the lease holder may refresh (the API out of
//!   reach, or a pair inherited from a holder that did not release the lease).
//! - [`login_age`]: the login's clock (when it was made) as the lifecycle starts, carries and judges it.
//! - [`refusal`]: who spent a refresh token the endpoint refused: something else (a foreign refresher),
//!   one of ours, or the previous lease holder in a race.
//! - [`share`]: the interface to the store that shares each new pair with other agents (the Secret
//!   write-back implements it; the lifecycle imports nothing from Kubernetes).
//!
//! Everyone else sends the task an [`Input`] or reads the latest [`Snapshot`] from a watch channel,
//! which is how a token request is answered from memory.

mod authority;
mod fence;
mod hold;
mod login_age;
mod machine;
mod policy;
mod refusal;
mod share;
mod snapshot;
mod state;
mod task;
#[cfg(test)]
mod tests;

pub use authority::LeaseView;
pub use fence::{since_boot, Fence};
pub use policy::{Policy, EXPIRY_GUARD};
pub use share::{SharedStore, Sharing};
pub use snapshot::Snapshot;
pub use task::Lifecycle;

use crate::store::SeedRead;
use sidecred_proto::{ProtoError, Secret, TokenGrant};
use tokio::sync::oneshot;

pub type Reply = oneshot::Sender<Result<TokenGrant, ProtoError>>;

/// What the lifecycle task is told.
pub enum Input {
    /// The upstream rejected `token`.
    Rejected { token: Secret, reply: Reply },
    /// Refresh now.
    Refresh { reply: Reply },
    /// The seed file changed on disk.
    SeedChanged(SeedRead),
    /// A client waits for a token that is not there yet: look at the clocks now rather than at the next
    /// timer (after a suspend, the timer is late).
    Waiting,
    /// The lease task's latest view of the election (`--lease`).
    Lease(LeaseView),
    /// Another agent sharing the login reports, through the shared Secret, that the upstream rejected
    /// the access token with this fingerprint (`--lease`).
    PeerRejected { fingerprint: String },
}
