//! What came back: the token endpoint's answer to a refresh, and the outcome of a save.

use super::{far_future, refresh_due, unavailable, Effect, Machine, Now, SaveJob};
use crate::lifecycle::snapshot::REAUTH_HINT;
use crate::lifecycle::state::{served, Live, Phase, Refresh, Save, RACED};
use crate::oauth::{TokenError, TokenResponse};
use crate::store::retire;
use sidecred_proto::{ErrorCode, ProtoError};
use tracing::{error, info, warn};

impl Machine {
    /// The request to the token endpoint came back.
    pub fn refresh_done(&mut self, result: Result<TokenResponse, TokenError>, now: Now) -> Vec<Effect> {
        let Phase::Serving { live, refresh, save } =
            std::mem::replace(&mut self.phase, Phase::NoLogin { reason: String::new() })
        else {
            return Vec::new();
        };
        let (failures, pending_seed) = match refresh {
            Refresh::InFlight { failures, pending_seed, .. } => (failures, pending_seed),
            other => {
                // Not waiting for one: nothing to do with the answer.
                self.phase = Phase::Serving { live, refresh: other, save };
                return Vec::new();
            }
        };
        let mut effects = Vec::new();
        match result {
            Ok(response) => effects = self.refreshed(live, response, now),
            Err(TokenError::Transient { reason, retry_after }) => {
                let attempts = failures.saturating_add(1);
                let delay = self.policy.backoff(attempts, (self.jitter)(), retry_after);
                warn!(error = %reason, attempt = attempts, retry_in = ?delay, "token refresh failed; will retry");
                let at = now.at.checked_add(delay).unwrap_or_else(far_future);
                if let Some(sent) = &live.credentials.refresh_token {
                    self.refusals.sent_without_answer(sent.fingerprint());
                }
                self.last_error = Some((reason.clone(), now.wall_ms));
                self.phase =
                    Phase::Serving { live, refresh: Refresh::Scheduled { at, failures: attempts }, save };
                effects.push(Effect::AnswerWaiters(Err(unavailable(&format!("refresh failed: {reason}")))));
            }
            Err(TokenError::Rejected { reason }) if self.authority.raced_until(now.at).is_some() => {
                let until = self.authority.raced_until(now.at).unwrap_or(now.at);
                warn!(error = %reason, wait = ?until.saturating_duration_since(now.at), "{RACED}");
                self.last_error = Some((reason.clone(), now.wall_ms));
                let reason = format!("{reason}. {REAUTH_HINT}");
                self.phase = Phase::Serving { live, refresh: Refresh::Raced { reason, until }, save };
                effects.push(Effect::AnswerWaiters(Err(unavailable(RACED))));
            }
            Err(TokenError::Rejected { reason })
                if live
                    .credentials
                    .refresh_token
                    .as_ref()
                    .is_some_and(|r| self.has_kept_for(&r.fingerprint())) =>
            {
                let refused =
                    live.credentials.refresh_token.as_ref().map(|r| r.fingerprint()).unwrap_or_default();
                self.last_error = Some((reason, now.wall_ms));
                self.phase =
                    Phase::Serving { live, refresh: Refresh::Scheduled { at: now.at, failures: 0 }, save };
                if let Some(kept) = self.fall_back(&refused) {
                    self.adopt(kept, now);
                }
                // The kept pair proves itself at once, and its result goes to the file and the Secret.
                if let Phase::Serving { refresh: Refresh::Scheduled { at, .. }, save, .. } = &mut self.phase {
                    *at = now.at;
                    *save = Save::Due(now.at);
                }
                let restarted = self.start_refresh("going back to the pair the refused one replaced", now);
                if restarted.is_empty() {
                    effects.push(Effect::AnswerWaiters(Err(unavailable(
                        "the adopted pair was refused; serving the pair it replaced until it is refreshed",
                    ))));
                }
                effects.extend(restarted);
            }
            Err(TokenError::Rejected { reason }) => {
                let refused = live.credentials.refresh_token.as_ref().map(|r| r.fingerprint());
                // A refusal right after taking over an unreleased lease is "raced", and waits above.
                let verdict =
                    self.refusals.judge(refused.as_deref().unwrap_or_default(), &self.retired, false);
                let message = format!("{reason}. {}. {REAUTH_HINT}", verdict.explain());
                error!(error = %reason, cause = verdict.as_str(), "the refresh token is dead; a new login is needed (watching the seed for one): {}", verdict.explain());
                self.last_error = Some((reason, now.wall_ms));
                let refresh = Refresh::ReauthRequired { reason: message.clone(), token_rejected: false };
                self.phase = Phase::Serving { live, refresh, save };
                effects.push(Effect::AnswerWaiters(Err(ProtoError::new(ErrorCode::ReauthRequired, message))));
            }
        }
        if let Some(seed) = pending_seed {
            effects.extend(self.apply_seed(seed, now));
        }
        effects
    }

    fn refreshed(&mut self, live: Live, response: TokenResponse, now: Now) -> Vec<Effect> {
        let old_refresh = live.credentials.refresh_token.clone();
        let rotated = response.refresh_token.as_ref().is_some_and(|r| old_refresh.as_ref() != Some(r));
        let lifetime = response.expires_in;
        if let Some(email) = response.account_email.clone() {
            self.account = Some(email);
        }
        let mut credentials = live.credentials.with_update(response.into_update(now.wall_ms));
        if let Some(old) = &old_refresh {
            self.proved(&old.fingerprint());
        }
        if let Some(old) = old_refresh.filter(|_| rotated) {
            // Noted in the pair, so an agent adopting it knows the pair it holds is spent ([`super::kept`]).
            credentials = credentials.with_refreshed_from(&old.fingerprint());
            retire(&mut self.retired, old.fingerprint());
        }
        let deadline = now.at.checked_add(lifetime).unwrap_or_else(far_future);
        info!(
            access_token = %credentials.access_token,
            refresh_token = ?credentials.refresh_token,
            rotated,
            expires_in = ?lifetime,
            "refreshed the access token"
        );
        let at = refresh_due(deadline, self.policy.margin(lifetime), now.at);
        let served = served(&credentials, deadline);
        // Saved before anyone is handed the new access token: once it is served, a crash must not leave
        // the old (now dead) refresh token as the only one on disk. Until the save succeeds the phase says
        // it is due, so a failed save is retried.
        self.phase = Phase::Serving {
            live: Live { credentials, deadline },
            refresh: Refresh::Scheduled { at, failures: 0 },
            save: Save::Due(now.at),
        };
        self.refresh_count = self.refresh_count.saturating_add(1);
        self.last_refresh_at_ms = Some(now.wall_ms);
        self.last_success = Some(now.at);
        self.last_error = None;
        self.refusals.moved_on();
        let mut effects: Vec<Effect> = self.save_job().map(Effect::Save).into_iter().collect();
        if let Some((credentials, retired)) = self.live_pair() {
            effects.push(Effect::WriteBack { credentials: credentials.clone(), retired: retired.to_vec() });
        }
        effects.push(Effect::AnswerWaiters(Ok(served)));
        effects
    }

    /// A save ended. It counts only for what it wrote: a pair or seed adopted since then is still due.
    pub fn saved(&mut self, job: &SaveJob, result: Result<(), String>, now: Now) {
        let Phase::Serving { live, save, .. } = &mut self.phase else { return };
        match result {
            Ok(()) => {
                self.save_failures = 0;
                if live.credentials.same_tokens(&job.credentials) && self.seed_sha256 == job.seed_sha256 {
                    *save = Save::Done;
                }
            }
            Err(e) => {
                self.save_failures = self.save_failures.saturating_add(1);
                let retry = self.policy.save_retry(self.save_failures, (self.jitter)());
                error!(error = %e, attempt = self.save_failures, retry_in = ?retry, "could not save the credentials; they live only in memory until a retry succeeds");
                self.last_error = Some((format!("saving credentials failed: {e}"), now.wall_ms));
                *save = Save::Due(now.at.checked_add(retry).unwrap_or_else(far_future));
            }
        }
    }

    pub(super) fn save_job(&self) -> Option<SaveJob> {
        let (credentials, retired) = self.live_pair()?;
        Some(SaveJob {
            credentials: credentials.clone(),
            seed_sha256: self.seed_sha256.clone(),
            retired: retired.to_vec(),
            kept: self.kept.clone().map(Box::new),
        })
    }
}
