//! Where the lifecycle hands each new pair besides its own file: a store other agents and new pods start
//! from. The lifecycle owns this interface and knows nothing of what implements it (the cluster wing's
//! Secret write-back does).

use crate::credentials::Credentials;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A store that shares the live pair.
pub trait SharedStore: Send + Sync {
    /// Hands over the live pair; `replaced` are the fingerprints of the refresh tokens it replaced (a
    /// store holding one of those is stale). Returns at once; the store writes in the background.
    fn offer(&self, credentials: &Credentials, replaced: &[String]);

    /// Offers the pair and waits, at most `limit`, until the store holds it; `false` when the wait ran out
    /// (the store keeps trying).
    fn offer_and_confirm<'a>(
        &'a self,
        credentials: &'a Credentials,
        replaced: &'a [String],
        limit: Duration,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

    /// Tells the agent that refreshes (the lease holder) that the API rejected the access token with
    /// this fingerprint: a follower does not refresh itself. One attempt, in the background.
    fn report_rejected(&self, access_fp: String);
}

/// How new pairs leave this agent besides its own file, decided once at start.
#[derive(Clone, Default)]
pub enum Sharing {
    /// Nowhere: the login is this agent's alone.
    #[default]
    Nowhere,
    /// Offered to the store after each refresh, served at once (`--write-back-secret` alone).
    WriteBack(Arc<dyn SharedStore>),
    /// Many agents on one login: a new pair is served only once the store holds it, or `confirm` has
    /// passed (the store keeps trying).
    Shared { store: Arc<dyn SharedStore>, confirm: Duration },
}

impl Sharing {
    pub fn store(&self) -> Option<&Arc<dyn SharedStore>> {
        match self {
            Sharing::Nowhere => None,
            Sharing::WriteBack(store) | Sharing::Shared { store, .. } => Some(store),
        }
    }
}
