//! The Secret that agents sharing a login (`--lease`) keep the live pair in. The lease holder writes it
//! (`writeback`); every agent reads it through the API, here: once when it becomes the holder, and
//! through a streaming watch all the time, so a new pair reaches the followers within moments of the
//! write. The kubelet's copy of a mounted Secret lags by a minute or more, and could bring back an older
//! pair after a newer one: with a lease the file is read at start only.
//!
//! A watch can fail without ending: a half-open connection stays silent, a broken proxy drips bytes, a
//! server sends only BOOKMARKs or garbage. So the watch is given up when no whole event arrives for
//! [`WATCH_IDLE_LIMIT`], and the Secret is also read on a timer that runs faster as the pair it holds
//! nears expiry: a rotation the watch missed is found, said at WARN, and the watch started again.

use crate::cluster::client::{clip, is_object, ApiClient, CallError, EventLines, Objects, WATCH_IDLE_LIMIT};
use crate::cluster::warn_if_managed;
use crate::cluster::writeback::{SecretRef, REJECTED_ANNOTATION};
use crate::credentials::now_ms;
use crate::lifecycle::Input;
use crate::store::SeedRead;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{WatchEvent, WatchParams};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The longest one watch request lasts before it is renewed (the API server's own limit is higher).
const WATCH_TIMEOUT_S: u32 = 290;
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Short: after an outage the followers must find the Secret again within moments, and one Secret
/// read every 2 s is nothing for an API server.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A watch that keeps failing at once (410 Gone every time, garbage) is started again after a pause
/// that doubles up to this, with jitter; the timed re-read still brings each new pair meanwhile.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);
/// The Secret is read again at least this often, whatever the watch says.
const REREAD_MAX: Duration = Duration::from_secs(60);
const REREAD_MIN: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct SharedSecret {
    api: Objects<Secret>,
    secret: SecretRef,
    key: String,
}

/// Why one watch request ended.
enum WatchEnd {
    /// Ended as watches do (its timeout, a dropped connection): watch again from where it was.
    Ended,
    /// Something was wrong (410, garbage, a stall, a missed change): read the Secret again first.
    Relist,
    /// The lifecycle is gone.
    Stop,
}

/// What the watch loop remembers between events.
struct Seen {
    sha: Option<String>,
    rejected: Option<String>,
    /// When the pair last delivered expires (wall clock, ms).
    expires_at_ms: Option<u64>,
}

impl SharedSecret {
    pub fn new(client: ApiClient, secret: SecretRef, key: String) -> SharedSecret {
        SharedSecret { api: Objects::namespaced(client, &secret.namespace), secret, key }
    }

    /// Reads the Secret now: its pair as a seed, with the `resourceVersion` it was read at.
    pub async fn read(&self) -> Result<SeedRead, String> {
        let object = self.get().await?;
        self.seed_of(&object)
    }

    async fn get(&self) -> Result<Secret, String> {
        let object = self.api.get(&self.secret.name).await.map_err(|e| self.describe("get", e))?;
        self.check_object(&object)?;
        Ok(object)
    }

    /// Refuses an object that is not the shared Secret (a server that ignores the field selector).
    fn check_object(&self, object: &Secret) -> Result<(), String> {
        if is_object(&object.metadata, &self.secret.namespace, &self.secret.name) {
            return Ok(());
        }
        let meta = &object.metadata;
        Err(format!(
            "the API server sent the Secret {}/{} where {} was asked for; ignoring it",
            clip(meta.namespace.as_deref().unwrap_or("?")),
            clip(meta.name.as_deref().unwrap_or("?")),
            self.secret
        ))
    }

    fn seed_of(&self, object: &Secret) -> Result<SeedRead, String> {
        let rv = object.metadata.resource_version.as_deref().map(clip).unwrap_or_default();
        let bytes =
            object.data.as_ref().and_then(|d| d.get(&self.key)).ok_or_else(|| {
                format!("secret {} has no key {} (--write-back-key)", self.secret, self.key)
            })?;
        let label = PathBuf::from(format!("secret {} key {}", self.secret, self.key));
        Ok(SeedRead::from_secret(&bytes.0, &label, rv))
    }

    fn describe(&self, verb: &str, e: CallError) -> String {
        crate::cluster::describe(verb, "Secret", &self.secret, "`get`, `watch` and `patch`", &e)
    }

    /// Watches the Secret until `inputs` closes, sending each new pair to the lifecycle.
    pub fn spawn_watch(self, inputs: mpsc::Sender<Input>) {
        tokio::spawn(async move { self.watch(inputs).await });
    }

    async fn watch(self, inputs: mpsc::Sender<Input>) {
        let mut seen = Seen { sha: None, rejected: None, expires_at_ms: None };
        let mut checked_manager = false;
        let mut pause = RETRY_MIN;
        let mut watch_pause = RETRY_MIN;
        // Each turn lists (a get: the watch is limited to one name) and then watches from that version
        // until something is wrong with the watch.
        loop {
            let object = match self.get().await {
                Ok(object) => object,
                Err(e) => {
                    warn!(error = %e, retry_in = ?pause, "cannot read the shared Secret");
                    if !rest(&inputs, pause).await {
                        return;
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                    continue;
                }
            };
            pause = RETRY_MIN;
            if !checked_manager {
                warn_if_managed(&object, &self.secret.to_string());
                checked_manager = true;
            }
            let mut rv = object.metadata.resource_version.as_deref().map(clip).unwrap_or_default();
            if !self.deliver(&object, &mut seen, &inputs).await {
                return;
            }
            loop {
                let (end, healthy) = self.watch_once(&mut rv, &mut seen, &inputs).await;
                // A watch that brought events was fine; one that failed at once is not started again
                // at once, or a server answering 410 every time gets four watches a second forever.
                watch_pause = if healthy { RETRY_MIN } else { (watch_pause * 2).min(WATCH_RETRY_MAX) };
                let wait = jittered(watch_pause).min(reread_in(seen.remaining()));
                match end {
                    WatchEnd::Stop => return,
                    WatchEnd::Ended => {
                        if !rest(&inputs, wait).await {
                            return;
                        }
                    }
                    WatchEnd::Relist => {
                        if !rest(&inputs, wait).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// One watch request from `rv`, with the timed re-read beside it. Says how it ended, and whether
    /// it brought at least one event.
    async fn watch_once(
        &self,
        rv: &mut String,
        seen: &mut Seen,
        inputs: &mpsc::Sender<Input>,
    ) -> (WatchEnd, bool) {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.secret.name))
            .timeout(WATCH_TIMEOUT_S);
        let mut lines: EventLines = match self.api.watch(&params, rv).await {
            Ok(lines) => lines,
            Err(e) => {
                warn!(error = %self.describe("watch", e), "cannot watch the shared Secret");
                return (WatchEnd::Relist, false);
            }
        };
        let mut healthy = false;
        let mut idle_until = Instant::now() + WATCH_IDLE_LIMIT;
        let mut reread_at = Instant::now() + reread_in(seen.remaining());
        loop {
            let line = tokio::select! {
                line = tokio::time::timeout_at(idle_until, lines.next_line()) => line,
                () = tokio::time::sleep_until(reread_at) => {
                    match self.reread(seen, inputs).await {
                        Reread::Same => {}
                        Reread::Missed => return (WatchEnd::Relist, healthy),
                        Reread::Stop => return (WatchEnd::Stop, healthy),
                    }
                    reread_at = Instant::now() + reread_in(seen.remaining());
                    continue;
                }
                () = inputs.closed() => return (WatchEnd::Stop, healthy),
            };
            let line = match line {
                Err(_) => {
                    warn!(secret = %self.secret, idle = ?WATCH_IDLE_LIMIT, "the watch of the shared Secret sent no event for too long (stalled); reading the Secret again");
                    return (WatchEnd::Relist, healthy);
                }
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => return (WatchEnd::Ended, healthy),
                Ok(Err(e)) => {
                    warn!(secret = %self.secret, error = %e, "the watch of the shared Secret failed");
                    return (WatchEnd::Relist, healthy);
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event = match serde_json::from_slice::<WatchEvent<Secret>>(&line) {
                Ok(event) => event,
                Err(e) => {
                    warn!(secret = %self.secret, error = %clip(&e.to_string()), bytes = line.len(), "the watch of the shared Secret sent something that is not a watch event; reading the Secret again");
                    return (WatchEnd::Relist, healthy);
                }
            };
            healthy = true;
            idle_until = Instant::now() + WATCH_IDLE_LIMIT;
            match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    if let Err(e) = self.check_object(&object) {
                        warn!(error = %e, "an event of the watch of the shared Secret is for another object");
                        continue;
                    }
                    if let Some(v) = object.metadata.resource_version.as_deref() {
                        *rv = clip(v);
                    }
                    if !self.deliver(&object, seen, inputs).await {
                        return (WatchEnd::Stop, healthy);
                    }
                    reread_at = Instant::now() + reread_in(seen.remaining());
                }
                WatchEvent::Bookmark(bookmark) => *rv = clip(&bookmark.metadata.resource_version),
                WatchEvent::Deleted(_) => {
                    warn!(secret = %self.secret, "the shared Secret was deleted; serving the pair held until it is back");
                }
                WatchEvent::Error(status) if status.code == 410 => {
                    debug!(secret = %self.secret, "the watch's version is too old; reading the Secret again");
                    return (WatchEnd::Relist, false);
                }
                WatchEvent::Error(status) => {
                    warn!(secret = %self.secret, error = %clip(&status.message), "the watch of the shared Secret failed");
                    return (WatchEnd::Relist, false);
                }
            }
        }
    }

    /// The timed read beside the watch: a pair the watch did not bring means the watch is broken.
    async fn reread(&self, seen: &mut Seen, inputs: &mpsc::Sender<Input>) -> Reread {
        let object = match self.get().await {
            Ok(object) => object,
            Err(e) => {
                warn!(error = %e, "cannot read the shared Secret (the timed read beside the watch)");
                return Reread::Same;
            }
        };
        let changed =
            self.seed_of(&object).is_ok_and(|read| seen.sha.as_deref() != Some(read.sha256.as_str()));
        if !self.deliver(&object, seen, inputs).await {
            return Reread::Stop;
        }
        if changed {
            warn!(secret = %self.secret, "the watch of the shared Secret missed a change that a read of the Secret found; starting the watch again");
            return Reread::Missed;
        }
        Reread::Same
    }

    /// Sends the Secret's pair when it changed, and a peer's report of a rejected token when it is
    /// new. `false` once the lifecycle is gone.
    async fn deliver(&self, object: &Secret, seen: &mut Seen, inputs: &mpsc::Sender<Input>) -> bool {
        let rejected =
            object.metadata.annotations.as_ref().and_then(|a| a.get(REJECTED_ANNOTATION)).map(|fp| clip(fp));
        if rejected.is_some() && rejected != seen.rejected {
            seen.rejected = rejected.clone();
            if let Some(fp) = rejected.as_deref().and_then(|r| r.split_whitespace().next()).map(str::to_owned)
            {
                debug!(secret = %self.secret, token = %fp, "a peer reports that the API rejected a token");
                if inputs.send(Input::PeerRejected { fingerprint: fp }).await.is_err() {
                    return false;
                }
            }
        }
        let read = match self.seed_of(object) {
            Ok(read) => read,
            Err(e) => {
                warn!(error = %e, "the shared Secret holds no credentials");
                return true;
            }
        };
        if seen.sha.as_deref() == Some(read.sha256.as_str()) {
            return true;
        }
        info!(secret = %self.secret, resource_version = ?read.secret_rv, "the shared Secret changed");
        seen.sha = Some(read.sha256.clone());
        seen.expires_at_ms = read.credentials.as_ref().ok().map(|c| c.expires_at_ms);
        inputs.send(Input::SeedChanged(read)).await.is_ok()
    }
}

enum Reread {
    Same,
    Missed,
    Stop,
}

impl Seen {
    fn remaining(&self) -> Option<Duration> {
        self.expires_at_ms.map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
    }
}

/// How long until the Secret is read again beside the watch: a quarter of the time the pair it holds
/// has left, between [`REREAD_MIN`] and [`REREAD_MAX`], so a rotation the watch missed is found while
/// the pair served is still valid.
fn reread_in(remaining: Option<Duration>) -> Duration {
    remaining.map_or(REREAD_MAX, |r| (r / 4).clamp(REREAD_MIN, REREAD_MAX))
}

/// `pause` less up to a quarter, so agents that failed together do not come back together.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(1.0 - rand::random::<f64>() / 4.0)
}

/// Waits `pause`; `false` if the lifecycle went away meanwhile.
async fn rest(inputs: &mpsc::Sender<Input>, pause: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        () = inputs.closed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_read_again_sooner_as_its_pair_nears_expiry() {
        assert_eq!(reread_in(None), REREAD_MAX);
        assert_eq!(reread_in(Some(Duration::from_secs(8 * 3600))), REREAD_MAX);
        assert_eq!(reread_in(Some(Duration::from_secs(20))), Duration::from_secs(5));
        assert_eq!(reread_in(Some(Duration::from_secs(4))), REREAD_MIN);
        assert_eq!(reread_in(Some(Duration::ZERO)), REREAD_MIN);
    }

    #[test]
    fn jitter_only_shortens_by_a_quarter_at_most() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(4));
            assert!(j <= Duration::from_secs(4) && j >= Duration::from_secs(3), "{j:?}");
        }
    }
}
