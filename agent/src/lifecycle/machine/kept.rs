//! The pair an adopted pair replaced, kept until the adopted one has proved itself.
//!
//! A pair adopted from the Secret or the seed file may be dead although it has not expired: a backup
//! restored, a copy of a login that another client has since refreshed. Adopting it drops a live pair
//! that nobody spent. So when the pair replaced was valid and this agent never spent it, and the adopted
//! one did not grow from it (the holder notes in each pair it writes which refresh token it was
//! refreshed from; a normal rotation grows from the live pair, which is then spent), the replaced pair is
//! kept, in memory, until the adopted one's refresh succeeds. If that refresh is refused
//! (`invalid_grant`), the agent goes back to the kept pair instead of declaring the login lost; the next
//! refresh then spends the kept pair, and its result goes to the file and the Secret as usual.
//!
//! In a state directory the kept pair is saved beside the live one (every change of it comes with a save
//! of the live pair), so an agent restarted in between still has it; without one it lives in memory.

use super::Machine;
use crate::credentials::Credentials;
use crate::store::{is_retired, retire, KeptPair as Kept};
use tracing::{info, warn};

impl Machine {
    /// Before `incoming` replaces the live pair: keeps the live pair if it may still be worth having,
    /// and says whether it was kept (a kept pair is not retired yet).
    pub(super) fn keep_replaced(&mut self, incoming: &Credentials, from_secret: bool, wall_ms: u64) -> bool {
        let candidate = self.live_pair().map(|(live, _)| live.clone()).filter(|live| {
            let (Some(live_rt), Some(incoming_rt)) = (&live.refresh_token, &incoming.refresh_token) else {
                return false;
            };
            let live_fp = live_rt.fingerprint();
            live.remaining_ms(wall_ms) > 0
                && !is_retired(&self.retired, &live_fp)
                && incoming.refreshed_from() != Some(live_fp.as_str())
                && incoming_rt.fingerprint() != live_fp
        });
        let replaced_by = incoming.refresh_token.as_ref().map(|r| r.fingerprint());
        // The Secret moved past an earlier kept pair twice: it only moves forward.
        if let Some(older) = self.kept.take().filter(|k| k.from_secret) {
            if let Some(fp) = older.credentials.refresh_token.as_ref().map(|r| r.fingerprint()) {
                retire(&mut self.retired, fp);
            }
        }
        self.kept = candidate.zip(replaced_by).map(|(credentials, replaced_by)| {
            info!(kept = ?credentials.refresh_token, "keeping the replaced pair until the adopted one has been refreshed once");
            Kept { credentials, replaced_by, from_secret }
        });
        self.kept.is_some()
    }

    /// Whether `fp` is the refresh token of the pair kept from the Secret. The Secret never goes back to
    /// it legitimately (the holder that falls back to a kept pair refreshes it before writing), so a
    /// Secret holding it again is a lagging copy, refused like a retired one.
    pub(super) fn is_kept_from_secret(&self, fp: &str) -> bool {
        self.kept.as_ref().is_some_and(|k| {
            k.from_secret && k.credentials.refresh_token.as_ref().is_some_and(|r| r.fingerprint() == fp)
        })
    }

    /// Whether a pair is kept for the adopted pair whose refresh token has fingerprint `fp`.
    pub(super) fn has_kept_for(&self, fp: &str) -> bool {
        self.kept.as_ref().is_some_and(|k| k.replaced_by == fp)
    }

    /// A refresh with the refresh token of fingerprint `fp` succeeded: the pair adopted with it has
    /// proved itself, and the pair it replaced is let go.
    pub(super) fn proved(&mut self, fp: &str) {
        if let Some(kept) = self.kept.take_if(|k| k.replaced_by == fp) {
            let kept_fp = kept.credentials.refresh_token.as_ref().map(|r| r.fingerprint());
            if let Some(kept_fp) = kept_fp.filter(|_| kept.from_secret) {
                retire(&mut self.retired, kept_fp);
            }
        }
    }

    /// The refresh token of fingerprint `refused` was refused: the kept pair it replaced, if any, to go
    /// back to. The refused token is retired (a Secret holding it is stale, and it never comes back).
    pub(super) fn fall_back(&mut self, refused: &str) -> Option<Credentials> {
        let kept = self.kept.take_if(|k| k.replaced_by == refused)?;
        retire(&mut self.retired, refused.to_owned());
        warn!(
            kept = ?kept.credentials.refresh_token,
            "the adopted pair's refresh token was refused: going back to the pair it replaced, which no agent \
             of ours spent"
        );
        Some(kept.credentials)
    }
}
