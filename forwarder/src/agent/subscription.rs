//! The agent's pushes (`Request::Subscribe`), followed by one task for the whole process, so a request
//! reads the token the agent serves from memory instead of asking for it: no exchange, no wake-up of
//! the agent. The task runs on the acceptor's thread and writes each push into every worker's own copy
//! ([`Current`]), which only that worker reads per request: the moment a push is read, every worker
//! has it, and a request touches nothing another thread keeps touching.
//!
//! What is held is only ever what the agent said last, and only while it is usable: a push replaces it
//! (a revocation or an expiry on the agent's side clears it), the answer to a 401 report replaces it
//! in every worker when it is newer (by generation, which also keeps a push overtaken by that answer
//! from bringing the older token back), and a token within [`EXPIRY_GUARD`]
//! of its expiry is never used, whether or not the agent can still be reached. Whenever nothing
//! usable is held, the request asks the agent as before (the batched exchange), which is where waiting
//! for a refresh, riding out a restart and reporting the agent's refusals already live.

use super::{Agent, Backoff, Failed, Token};
use sidecred_proto::client::ClientError;
use sidecred_proto::{ErrorCode, ProtoError, Secret, TokenGrant, EXPIRY_GUARD};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info};

/// How long a new subscription may take to bring its first answer before it is given up.
const FIRST_ANSWER: Duration = Duration::from_secs(2);

/// After an agent that took a subscription and said nothing (hung), the pause before the next try:
/// every try holds one of its connections.
const AFTER_HUNG: Duration = Duration::from_secs(5);

type Held = Option<(Arc<Token>, u64)>;

/// What the agent pushed, for every worker: the latest word, and each worker's copy of it.
#[derive(Debug, Default)]
pub struct Pushed {
    latest: Mutex<Held>,
    workers: Mutex<Vec<Arc<Current>>>,
}

impl Pushed {
    /// A worker's copy, kept up to date from now on.
    pub fn for_worker(&self) -> Arc<Current> {
        // The latest word is read under the workers' lock: an update either came before (and is read
        // here) or reaches this worker's copy after it joined.
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let current = Arc::new(Current { held: Mutex::new(latest) });
        workers.push(current.clone());
        current
    }

    /// Applies `change` to the latest word and to every worker's copy.
    fn update(&self, change: impl Fn(&mut Held)) {
        change(&mut self.latest.lock().unwrap_or_else(PoisonError::into_inner));
        for worker in self.workers.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            change(&mut worker.held.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// The agent's word on its subscription. The first on a connection replaces what is held whatever
    /// its generation (a new agent, whose clock may differ); later ones replace it unless a report's
    /// answer already brought a newer token (the push saying so is then on its way). Having no token
    /// to offer always clears it: asking is never wrong.
    fn pushed(&self, answer: Result<TokenGrant, ProtoError>, first: bool) {
        match &answer {
            Ok(grant) => {
                debug!(token = %grant.access_token, generation = grant.generation, "the agent pushed a token")
            }
            Err(e) => debug!(code = %e.code, error = %e.message, "the agent pushed: no token to use now"),
        }
        let next = answer.ok().map(|grant| {
            let generation = grant.generation;
            (Arc::new(Token::new(grant)), generation)
        });
        self.update(|held| match &next {
            Some((_, generation))
                if !first && *generation > 0 && held.as_ref().is_some_and(|(_, g)| g > generation) => {}
            _ => *held = next.clone(),
        });
    }

    /// The agent answered a report that the upstream rejected `rejected`: a newer token replaces the
    /// held one at once (the push that says the same may still be on its way); a refusal, or a token
    /// whose place in the order is unknown, leaves nothing held, so the next request asks.
    pub fn reported(&self, rejected: &Secret, answer: Option<&Arc<Token>>) {
        self.update(|held| match answer {
            // The agent still serves it (its cooldown after a refresh): nothing changed.
            Some(fresh) if fresh.access_token == *rejected => {}
            Some(fresh) if fresh.generation > 0 => {
                if held.as_ref().is_none_or(|(_, g)| *g < fresh.generation) {
                    *held = Some((fresh.clone(), fresh.generation));
                }
            }
            Some(_) | None => *held = None,
        });
    }
}

/// One worker's copy of the token the agent last said to use, with its generation.
#[derive(Debug)]
pub struct Current {
    held: Mutex<Held>,
}

impl Current {
    /// The token to use now, if the agent's word on it is still good.
    pub fn usable(&self) -> Option<Arc<Token>> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.as_ref().map(|(t, _)| t).filter(|t| t.is_usable(Instant::now())).cloned()
    }
}

/// Subscribes to the agent and keeps `pushed` as it says, reconnecting whenever the connection ends,
/// until the agent turns out not to know subscriptions (then requests ask per request).
pub async fn follow(agent: Agent, pushed: Arc<Pushed>) {
    let mut backoff = Backoff::new();
    loop {
        match subscribe_once(&agent, &pushed).await {
            Ended::Unsupported(e) => {
                info!(
                    error = %e,
                    "the agent does not push tokens (an older agent?); asking it for the token per request"
                );
                return;
            }
            Ended::Followed => backoff = Backoff::new(),
            Ended::Failed(why) => debug!(error = %why, "no subscription to the agent; trying again"),
            Ended::Hung => {
                debug!(wait = ?FIRST_ANSWER, "the agent took the subscription and said nothing; trying again later");
                tokio::time::sleep(AFTER_HUNG).await;
            }
        }
        // Whatever was held stays usable until its own expiry: a restarting agent costs no request.
        let now = Instant::now();
        backoff.pause(now, now + super::RETRY_MAX).await;
    }
}

enum Ended {
    /// Pushes were read, then the connection ended.
    Followed,
    /// No connection, or it broke before the first answer.
    Failed(String),
    /// The agent took the subscription and gave no first answer in time.
    Hung,
    Unsupported(ProtoError),
}

async fn subscribe_once(agent: &Agent, pushed: &Pushed) -> Ended {
    let client = match agent.connect().await {
        Ok(c) => c,
        Err(Failed::Unreachable(e)) => return Ended::Failed(e.to_string()),
        // An impostor: requests ask, are refused, and say so at ERROR.
        Err(Failed::Final(e)) => return Ended::Failed(e.to_string()),
    };
    let mut subscription = match client.subscribe().await {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let first = match tokio::time::timeout(FIRST_ANSWER, subscription.next()).await {
        Err(_) => return Ended::Hung,
        Ok(Err(e)) => return Ended::Failed(e.to_string()),
        Ok(Ok(Err(e))) if matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnsupportedVersion) => {
            return Ended::Unsupported(e)
        }
        Ok(Ok(answer)) => answer,
    };
    pushed.pushed(first, true);
    loop {
        match subscription.next().await {
            Ok(answer) => pushed.pushed(answer, false),
            Err(ClientError::Closed) => return Ended::Followed,
            Err(e) => {
                debug!(error = %e, "the subscription to the agent ended");
                return Ended::Followed;
            }
        }
    }
}

/// Lifetimes beyond this (a static token's unknown expiry, served as decades) are held as this long:
/// an `Instant` that far ahead may not be representable.
const LONGEST_HELD: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When a token stops being usable: [`EXPIRY_GUARD`] before its expiry by both clocks, as the agent
/// itself stops handing it out.
pub fn usable_until(received: Instant, expires_in_ms: u64) -> Instant {
    let lifetime = Duration::from_millis(expires_in_ms).min(LONGEST_HELD);
    received
        .checked_add(lifetime)
        .map_or(received, |expiry| expiry.checked_sub(EXPIRY_GUARD).unwrap_or(received))
}

/// Whether the wall clock, which runs on while a machine is suspended, still allows a token that
/// expires at `expires_at_ms`.
pub fn wall_clock_allows(expires_at_ms: u64) -> bool {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(u64::MAX, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let guard_ms = u64::try_from(EXPIRY_GUARD.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(guard_ms) < expires_at_ms
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn grant(token: &str, generation: u64, expires_in_ms: u64) -> TokenGrant {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        TokenGrant {
            access_token: Secret::new(token),
            expires_at_ms: now_ms.saturating_add(expires_in_ms),
            expires_in_ms,
            degraded: None,
            generation,
        }
    }

    fn held(current: &Current) -> Option<String> {
        current.usable().map(|t| t.access_token.expose().to_owned())
    }

    #[test]
    fn a_push_reaches_every_worker_and_replaces_what_was_held() {
        let pushed = Pushed::default();
        let early = pushed.for_worker();
        pushed.pushed(Ok(grant("a", 5, 60_000)), true);
        let late = pushed.for_worker();
        assert_eq!((held(&early), held(&late)), (Some("a".into()), Some("a".into())));
        pushed.pushed(Ok(grant("b", 6, 60_000)), false);
        assert_eq!(held(&early), Some("b".into()));
        // A new connection's first word counts whatever its generation (a restarted agent's clock).
        pushed.pushed(Ok(grant("c", 1, 60_000)), true);
        assert_eq!(held(&early), Some("c".into()));
        pushed.pushed(Err(ProtoError::new(ErrorCode::ReauthRequired, "log in")), false);
        assert_eq!((held(&early), held(&late)), (None, None));
    }

    #[test]
    fn a_reports_answer_replaces_only_an_older_token() {
        let pushed = Pushed::default();
        let worker = pushed.for_worker();
        pushed.pushed(Ok(grant("a", 5, 60_000)), true);
        let a = Secret::new("a");
        // Newer: taken at once, before the push that says the same.
        pushed.reported(&a, Some(&Arc::new(Token::new(grant("b", 6, 60_000)))));
        assert_eq!(held(&worker), Some("b".into()));
        // A push overtaken by that answer does not bring the older token back; the one after it counts.
        pushed.pushed(Ok(grant("a", 5, 60_000)), false);
        assert_eq!(held(&worker), Some("b".into()));
        pushed.pushed(Ok(grant("b", 6, 60_000)), false);
        assert_eq!(held(&worker), Some("b".into()));
        // A report's answer older than what is held (another worker's report, answered earlier).
        pushed.reported(&a, Some(&Arc::new(Token::new(grant("c", 4, 60_000)))));
        assert_eq!(held(&worker), Some("b".into()));
        // The agent still serves the rejected one: nothing changes.
        pushed.reported(&Secret::new("b"), Some(&Arc::new(Token::new(grant("b", 6, 60_000)))));
        assert_eq!(held(&worker), Some("b".into()));
        // An answer of unknown order (an older agent), or a refusal: nothing held, the next request asks.
        pushed.reported(&Secret::new("b"), Some(&Arc::new(Token::new(grant("d", 0, 60_000)))));
        assert_eq!(held(&worker), None);
        pushed.pushed(Ok(grant("e", 9, 60_000)), false);
        pushed.reported(&Secret::new("e"), None);
        assert_eq!(held(&worker), None);
    }

    #[test]
    fn a_token_within_the_guard_of_its_expiry_is_never_used() {
        let pushed = Pushed::default();
        let worker = pushed.for_worker();
        let guard_ms = u64::try_from(EXPIRY_GUARD.as_millis()).unwrap();
        pushed.pushed(Ok(grant("short", 1, guard_ms - 1)), true);
        assert_eq!(held(&worker), None);
        pushed.pushed(Ok(grant("long", 2, guard_ms + 60_000)), false);
        assert_eq!(held(&worker), Some("long".into()));
        // Expired by the wall clock (a suspended machine), whatever the monotonic clock says.
        let mut stale = grant("stale", 3, 60_000);
        stale.expires_at_ms = 1;
        pushed.pushed(Ok(stale), false);
        assert_eq!(held(&worker), None);
        // A static token's unknown expiry, served as decades: held, not overflowed.
        let mut forever = grant("static", 4, u64::MAX);
        forever.expires_at_ms = u64::MAX;
        pushed.pushed(Ok(forever), false);
        assert_eq!(held(&worker), Some("static".into()));
    }
}
