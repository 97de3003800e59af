//! The token the API keeps rejecting although the agent will not replace it: the agent refreshed moments
//! ago and waits out its cooldown before refreshing again, so requests get the API's 401 while the agent
//! itself reports a valid token. Remembered here, across workers, so `/health` can say so.

use sidecred_proto::Secret;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct RejectedToken {
    /// Whether anything is remembered: every request that the API accepts asks, so the common answer
    /// (nothing) costs one load and no lock.
    held: AtomicBool,
    last: Mutex<Option<(Secret, Instant)>>,
}

impl RejectedToken {
    /// The API rejected `token` and the agent has no other to offer.
    pub fn rejected(&self, token: &Secret) {
        *self.lock() = Some((token.clone(), Instant::now()));
        self.held.store(true, Ordering::Release);
    }

    /// The API accepted `token`: whatever was said against it no longer holds.
    pub fn accepted(&self, token: &Secret) {
        if !self.held.load(Ordering::Acquire) {
            return;
        }
        let mut last = self.lock();
        if last.as_ref().is_some_and(|(t, _)| t == token) {
            *last = None;
            self.held.store(false, Ordering::Release);
        }
    }

    /// How long ago the API rejected `token`, when it did and has not accepted it since.
    pub fn since(&self, token: &Secret) -> Option<Duration> {
        if !self.held.load(Ordering::Acquire) {
            return None;
        }
        match &*self.lock() {
            Some((t, at)) if t == token => Some(at.elapsed()),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Secret, Instant)>> {
        // Two plain assignments: a panic cannot leave the value half-written.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_holds_for_its_token_until_that_token_is_accepted() {
        let (a, b) = (Secret::new("token-a"), Secret::new("token-b"));
        let r = RejectedToken::default();
        assert_eq!(r.since(&a), None);
        r.rejected(&a);
        assert!(r.since(&a).is_some());
        assert_eq!(r.since(&b), None, "another token (a refresh since) is not suspect");
        r.accepted(&b);
        assert!(r.since(&a).is_some(), "accepting another token says nothing of this one");
        r.accepted(&a);
        assert_eq!(r.since(&a), None);
        r.rejected(&a);
        r.rejected(&b);
        assert_eq!(r.since(&a), None, "only the latest rejection is kept");
        assert!(r.since(&b).is_some());
    }
}
