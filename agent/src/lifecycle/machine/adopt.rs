//! Taking a pair from outside: a changed seed file or the shared Secret, checked against the pairs this
//! agent already spent; and making a pair the live one.

use super::{far_future, refresh_due, Effect, Machine, Now};
use crate::credentials::Credentials;
use crate::lifecycle::login_age;
use crate::lifecycle::state::{Live, Phase, Refresh, Save, Unrefreshable};
use crate::store::{is_retired, retire, SeedRead};
use std::time::Duration;
use tracing::{error, info, warn};

impl Machine {
    /// The seed file changed on disk.
    pub fn seed_changed(&mut self, seed: SeedRead, now: Now) -> Vec<Effect> {
        // Noted at once, even while a refresh is in flight: a refusal of that refresh is judged by it.
        if seed.secret_rv.is_some() {
            let held = seed.credentials.as_ref().ok().and_then(|c| c.refresh_token.as_ref());
            self.refusals.secret_read(held.map(|r| r.fingerprint()));
        }
        if let Phase::Serving { refresh: Refresh::Never { why: Unrefreshable::Static { .. }, .. }, .. } =
            &self.phase
        {
            // A static token has no seed: whatever a file says is not what this agent was told to serve.
            return Vec::new();
        }
        if let Phase::Serving { refresh: Refresh::InFlight { pending_seed, .. }, .. } = &mut self.phase {
            *pending_seed = Some(seed);
            return Vec::new();
        }
        self.apply_seed(seed, now)
    }

    pub(super) fn apply_seed(&mut self, seed: SeedRead, now: Now) -> Vec<Effect> {
        if let Some(rv) = &seed.secret_rv {
            self.secret_rv = Some(rv.clone());
        }
        if self.seed_sha256.as_deref() == Some(seed.sha256.as_str()) {
            return Vec::new();
        }
        let credentials = match seed.credentials {
            Ok(c) => c,
            Err(e) => {
                error!(source = %seed.origin, error = %e, "ignoring the changed seed; still serving the last good credentials");
                self.last_error = Some((format!("seed change ignored: {e}"), now.wall_ms));
                return Vec::new();
            }
        };
        self.seed_sha256 = Some(seed.sha256);
        if let Phase::Serving { live, .. } = &mut self.phase {
            if live.credentials.same_tokens(&credentials) {
                if let Some(better) = login_age::carried(&live.credentials, &credentials) {
                    live.credentials = better;
                }
                return Vec::new();
            }
        }
        let from_secret = seed.secret_rv.is_some();
        if credentials.refresh_token.as_ref().is_some_and(|r| {
            let fp = r.fingerprint();
            is_retired(&self.retired, &fp) || (from_secret && self.is_kept_from_secret(&fp))
        }) {
            warn!(
                source = %seed.origin,
                refresh_token = ?credentials.refresh_token,
                "the seed holds a refresh token this agent already spent; keeping the live pair"
            );
            return Vec::new();
        }
        if seed.secret_rv.is_some() {
            if let Some(effects) = self.refuse_expired(&credentials, now) {
                return effects;
            }
        }
        info!(
            source = %seed.origin,
            access_token = %credentials.access_token,
            refresh_token = ?credentials.refresh_token,
            "adopting new credentials from {}",
            if seed.secret_rv.is_some() { "the shared Secret" } else { "the seed file" }
        );
        let kept = self.keep_replaced(&credentials, seed.secret_rv.is_some(), now.wall_ms);
        // The shared Secret only moves forward: the pair it replaces was spent by the lease holder, and
        // must never be taken back (from a lagging volume, or a state file) and refreshed. A pair kept
        // until the adopted one proves itself is retired then ([`super::kept`]).
        if seed.secret_rv.is_some() && !kept {
            let replaced =
                self.live_pair().and_then(|(c, _)| c.refresh_token.as_ref().map(|r| r.fingerprint()));
            if let Some(fp) = replaced
                .filter(|fp| Some(fp) != credentials.refresh_token.as_ref().map(|r| r.fingerprint()).as_ref())
            {
                retire(&mut self.retired, fp);
            }
        }
        self.adopt(credentials, now);
        // In a state directory, record that the live pair now grows from this seed.
        if self.saves_to_state {
            if let Phase::Serving { save, .. } = &mut self.phase {
                *save = Save::Due(now.at);
            }
        }
        Vec::new()
    }

    /// A pair in the shared Secret that has already expired (a backup restored, a GitOps revert) never
    /// replaces a live pair that is still valid: its refresh token is most likely spent, and adopting it
    /// would lose the login. It is marked stale, so the holder's write-back may put the live pair back
    /// over it (the effect returned). `None`: nothing to refuse.
    fn refuse_expired(&mut self, incoming: &Credentials, now: Now) -> Option<Vec<Effect>> {
        let (live, _) = self.live_pair()?;
        if incoming.remaining_ms(now.wall_ms) > 0 || live.remaining_ms(now.wall_ms) == 0 {
            return None;
        }
        warn!(
            refresh_token = ?incoming.refresh_token,
            live = %live.access_token,
            "the shared Secret now holds a pair that has already expired (a restored backup? a revert?); \
             keeping the live pair, which is still valid"
        );
        self.last_error = Some((
            "the shared Secret was set to an expired pair; kept the live one and put it back".to_owned(),
            now.wall_ms,
        ));
        if let Some(fp) = incoming.refresh_token.as_ref().map(|r| r.fingerprint()) {
            retire(&mut self.retired, fp);
        }
        if self.authority.may_refresh(now).is_err() {
            return Some(Vec::new());
        }
        let (credentials, retired) = self.live_pair()?;
        Some(vec![Effect::WriteBack { credentials: credentials.clone(), retired: retired.to_vec() }])
    }

    /// Makes `credentials` the live pair, timing the next refresh from its expiry. A save still due
    /// stays due: it writes whatever pair is live when it runs.
    pub(super) fn adopt(&mut self, credentials: Credentials, now: Now) {
        let credentials = login_age::with_clock(credentials, now.wall_ms);
        self.refusals.moved_on();
        let remaining = Duration::from_millis(credentials.remaining_ms(now.wall_ms));
        // A file or the Secret does not say when a pair was issued: it is timed as if it had lived the
        // assumed lifetime, so one past the margin of that is due at once (it may be older than it looks).
        // Under a lease that is safe for a holder that starts or takes a released lease (the Secret then
        // holds the live pair); after a takeover of an unreleased lease, `hold.rs` makes that due refresh
        // wait for the old holder's late write first.
        let lifetime = self.policy.assumed_lifetime.max(remaining);
        let deadline = now.at.checked_add(remaining).unwrap_or_else(far_future);
        self.account = credentials.account.clone().or(self.account.take());
        let save = match &self.phase {
            Phase::Serving { save, .. } => *save,
            Phase::NoLogin { .. } => Save::Done,
        };
        let refresh = if credentials.refresh_token.is_some() {
            Refresh::Scheduled {
                at: refresh_due(deadline, self.policy.margin(lifetime), now.at),
                failures: 0,
            }
        } else {
            info!(access_token = %credentials.access_token, "this login has no refresh token (a long-lived login): it is served until it expires and never refreshed");
            Refresh::Never { why: Unrefreshable::NoRefreshToken, token_rejected: false }
        };
        self.phase = Phase::Serving { live: Live { credentials, deadline }, refresh, save };
    }
}
