//! Writing the live pair back to the Kubernetes Secret the seed is mounted from.
//!
//! Refresh tokens rotate: after the first refresh the token in the Secret is dead, so a replacement pod
//! that starts from the Secret fails hours later. With `--write-back-secret NAMESPACE/NAME` the agent patches
//! the Secret after every refresh, so a new pod always starts from the live pair. The RBAC this needs is
//! `get` and `patch` on that one Secret (`resourceNames`), nothing else.
//!
//! The Secret may also change under us: someone logs in again and updates it. The write-back never
//! overwrites a login it has not seen: it patches only when the Secret holds the pair it is replacing (or
//! one it spent earlier), and uses the Secret's `resourceVersion` so a concurrent update makes the patch
//! fail with a conflict instead of being lost.

use crate::cluster::client::{is_object, ApiClient, CallError, Objects};
use crate::credentials::Credentials;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Patch, PatchParams};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for SecretRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not NAMESPACE/NAME (e.g. default/sidecred)"))?;
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        if !valid(namespace) || !valid(name) {
            return Err(format!("`{s}`: namespace and name must be lowercase DNS names"));
        }
        Ok(SecretRef { namespace: namespace.to_owned(), name: name.to_owned() })
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What to write: the credentials document, and the fingerprints of refresh tokens this agent held
/// before (a Secret holding one of those is stale and may be overwritten).
#[derive(Clone)]
struct Offer {
    bytes: Arc<Vec<u8>>,
    refresh_fp: String,
    known_fps: Vec<String>,
}

/// Handle the refresh manager uses to hand over each newly persisted pair.
#[derive(Clone)]
pub struct WriteBack {
    tx: watch::Sender<Option<Offer>>,
    /// The fingerprint of the refresh token the Secret is known to hold, after each write or check.
    written: watch::Receiver<Option<String>>,
    /// The fingerprint of the last offer the writer is done with: written, found there already, or
    /// passed over for a newer login in the Secret.
    settled: watch::Receiver<Option<String>>,
    api: Objects<KubeSecret>,
    secret: SecretRef,
}

/// The annotation on the shared Secret through which a follower tells the lease holder that the API
/// rejected an access token: its value is the token's fingerprint and the report's time (`FP MS`, so a
/// report repeated is a change the watch sees). The holder watches the Secret, and refreshes when the
/// fingerprint is its live token's.
pub const REJECTED_ANNOTATION: &str = "sidecred.dev/rejected-access-token";

impl WriteBack {
    /// Starts the writer task. Only the newest pair matters: offers that arrive while a write is in
    /// progress replace each other.
    pub fn spawn(client: ApiClient, secret: SecretRef, key: String) -> WriteBack {
        let (tx, rx) = watch::channel(None);
        let (written_tx, written) = watch::channel(None);
        let (settled_tx, settled) = watch::channel(None);
        let api = Objects::namespaced(client, &secret.namespace);
        let done = Done { written: written_tx, settled: settled_tx };
        tokio::spawn(writer(api.clone(), secret.clone(), key, rx, done));
        WriteBack { tx, written, settled, api, secret }
    }

    /// Tells the lease holder, through an annotation on the Secret, that the API rejected the access
    /// token with fingerprint `access_fp` (a follower does not refresh itself). One attempt, in the
    /// background: the follower asks again at the next rejection.
    pub fn report_rejected(&self, access_fp: String) {
        let (api, secret) = (self.api.clone(), self.secret.clone());
        tokio::spawn(async move {
            let value = format!("{access_fp} {}", crate::credentials::now_ms());
            let patch = serde_json::json!({ "metadata": { "annotations": { REJECTED_ANNOTATION: value } } });
            let params =
                PatchParams { field_manager: Some("sidecred-agent".to_owned()), ..PatchParams::default() };
            match api.patch(&secret.name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    info!(secret = %secret, token = %access_fp, "told the lease holder through the Secret that the API rejected the token")
                }
                Err(e) => warn!(
                    error = %classify(e, "patch", &secret),
                    "cannot tell the lease holder that the API rejected the token; serving what the Secret brings next"
                ),
            }
        });
    }

    /// Returns once the writer is done with the last pair offered (at once if none was): the Secret
    /// holds it, or holds a newer login that every agent adopts instead. Until then the pair exists only
    /// in this process (and its state file), and a lease holder must not hand the lease on.
    pub async fn settled(&self) {
        let Some(wanted) = self.last_offered() else { return };
        let mut settled = self.settled.clone();
        let _ = settled.wait_for(|done| done.as_deref() == Some(wanted.as_str())).await;
    }

    /// Whether [`WriteBack::settled`] would return at once.
    pub fn is_settled(&self) -> bool {
        self.last_offered().is_none_or(|wanted| self.settled.borrow().as_deref() == Some(wanted.as_str()))
    }

    fn last_offered(&self) -> Option<String> {
        self.tx.borrow().as_ref().map(|o| o.refresh_fp.clone())
    }

    /// Offers the pair and waits, at most `limit`, until the Secret holds it. The lease holder serves a
    /// new pair only once the other agents can adopt it: if it died right after, the pair lives on in the
    /// Secret. `false` when the wait ran out (the writer keeps trying).
    pub async fn offer_and_confirm(
        &self,
        credentials: &Credentials,
        known: &[String],
        limit: Duration,
    ) -> bool {
        let Some(fp) = credentials.refresh_token.as_ref().map(|r| r.fingerprint()) else { return true };
        let mut written = self.written.clone();
        self.offer(credentials, known);
        let confirmed = async { written.wait_for(|held| held.as_deref() == Some(fp.as_str())).await.is_ok() };
        tokio::time::timeout(limit, confirmed).await.unwrap_or(false)
    }

    /// `known` are the fingerprints of the refresh tokens this pair replaced. A login without a refresh
    /// token is never refreshed, so the Secret already holds it: there is nothing to offer.
    pub fn offer(&self, credentials: &Credentials, known: &[String]) {
        let Some(refresh_token) = &credentials.refresh_token else { return };
        let offer = Offer {
            bytes: Arc::new(credentials.to_bytes()),
            refresh_fp: refresh_token.fingerprint(),
            known_fps: known.to_vec(),
        };
        self.tx.send_replace(Some(offer));
    }
}

impl crate::lifecycle::SharedStore for WriteBack {
    fn offer(&self, credentials: &Credentials, replaced: &[String]) {
        WriteBack::offer(self, credentials, replaced);
    }

    fn offer_and_confirm<'a>(
        &'a self,
        credentials: &'a Credentials,
        replaced: &'a [String],
        limit: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(WriteBack::offer_and_confirm(self, credentials, replaced, limit))
    }

    fn report_rejected(&self, access_fp: String) {
        WriteBack::report_rejected(self, access_fp);
    }
}

/// Why the live pair did not reach the Kubernetes Secret (the file writes have `atomic::WriteError`).
#[derive(Debug, thiserror::Error)]
enum SecretWriteError {
    // Each variant holds `cluster::describe`'s wording; the variant is what the writer acts on.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}; retrying")]
    Conflict(String),
    /// No answer, or a 5xx: the API server is away. The writer tries again as soon as it answers.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Api(String),
}

enum Outcome {
    Written,
    AlreadyCurrent,
    /// The Secret holds a login this agent has not seen.
    NewerLogin,
}

/// The pause after a write-back lost a race with another writer, doubling up to the maximum.
const CONFLICT_PAUSE_MIN: Duration = Duration::from_millis(100);
const CONFLICT_PAUSE_MAX: Duration = Duration::from_secs(5);

/// What the writer reports after each offer.
struct Done {
    written: watch::Sender<Option<String>>,
    settled: watch::Sender<Option<String>>,
}

impl Done {
    fn held(&self, fp: &str) {
        self.written.send_replace(Some(fp.to_owned()));
        self.settled.send_replace(Some(fp.to_owned()));
    }
}

async fn writer(
    api: Objects<KubeSecret>,
    secret: SecretRef,
    key: String,
    mut rx: watch::Receiver<Option<Offer>>,
    done: Done,
) {
    let mut delay = Duration::from_secs(1);
    let mut conflict_pause = CONFLICT_PAUSE_MIN;
    let mut answered = api.client().answered();
    let mut checked_manager = false;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        loop {
            let Some(offer) = rx.borrow_and_update().clone() else { break };
            match write(&api, &secret, &key, &offer, &mut checked_manager).await {
                Ok(Outcome::Written) => {
                    info!(secret = %secret, refresh_token = %offer.refresh_fp, "wrote the live pair back to the Secret");
                    done.held(&offer.refresh_fp);
                    delay = Duration::from_secs(1);
                    conflict_pause = CONFLICT_PAUSE_MIN;
                    break;
                }
                Ok(Outcome::AlreadyCurrent) => {
                    debug!(secret = %secret, "the Secret already holds the live pair");
                    done.held(&offer.refresh_fp);
                    break;
                }
                Ok(Outcome::NewerLogin) => {
                    warn!(
                        secret = %secret,
                        "the Secret holds a login this agent has not seen; not overwriting it (it is adopted when the mount updates)"
                    );
                    done.settled.send_replace(Some(offer.refresh_fp.clone()));
                    break;
                }
                Err(SecretWriteError::Conflict(_)) => {
                    // Someone else wrote meanwhile: read again, after a pause that grows, so two writers
                    // (or an API server that conflicts every time) do not spin.
                    debug!(secret = %secret, retry_in = ?conflict_pause, "the Secret changed under the write; retrying");
                    tokio::time::sleep(conflict_pause).await;
                    conflict_pause = (conflict_pause * 2).min(CONFLICT_PAUSE_MAX);
                }
                Err(e) => {
                    warn!(secret = %secret, error = %e, retry_in = ?delay, "writing the live pair back to the Secret failed");
                    // After an outage the API server's first answer (to the election or the watch) ends
                    // the pause: the Secret must catch up at once, not when a pause grown during the
                    // outage runs out. Refusals (403, 404) wait their pause: the API answering says
                    // nothing about them.
                    let away = matches!(e, SecretWriteError::Unavailable(_));
                    answered.borrow_and_update();
                    let api_back = async {
                        if !away || answered.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    // A newer pair cuts the wait short; it is retried from the top. The agent going away
                    // ends the wait too, without turning it into a spin.
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { return },
                        () = api_back => {
                            info!(secret = %secret, "the Kubernetes API answers again; writing the live pair back now");
                            delay = Duration::from_secs(1);
                            continue;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

async fn write(
    api: &Objects<KubeSecret>,
    secret: &SecretRef,
    key: &str,
    offer: &Offer,
    checked_manager: &mut bool,
) -> Result<Outcome, SecretWriteError> {
    let current = api.get(&secret.name).await.map_err(|e| classify(e, "get", secret))?;
    if !is_object(&current.metadata, &secret.namespace, &secret.name) {
        return Err(SecretWriteError::Api(format!(
            "the answer to get the Secret {secret} is another object ({:?}/{:?}); not writing",
            current.metadata.namespace.as_deref().map(crate::cluster::client::clip),
            current.metadata.name.as_deref().map(crate::cluster::client::clip),
        )));
    }
    if !*checked_manager {
        crate::cluster::warn_if_managed(&current, &secret.to_string());
        *checked_manager = true;
    }
    let held =
        current.data.as_ref().and_then(|d| d.get(key)).and_then(|b| {
            Credentials::parse(&b.0, &PathBuf::from(format!("secret {secret} key {key}"))).ok()
        });
    if let Some(held) = &held {
        // A Secret holding a login without a refresh token holds no pair of ours: someone put a
        // (long-lived) login there, which is never overwritten.
        let Some(held_fp) = held.refresh_token.as_ref().map(|r| r.fingerprint()) else {
            return Ok(Outcome::NewerLogin);
        };
        if held_fp == offer.refresh_fp {
            return Ok(Outcome::AlreadyCurrent);
        }
        if !offer.known_fps.contains(&held_fp) {
            return Ok(Outcome::NewerLogin);
        }
    }
    let encoded = base64_encode(&offer.bytes);
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": current.metadata.resource_version },
        "data": { key: encoded },
    });
    let params = PatchParams { field_manager: Some("sidecred-agent".to_owned()), ..PatchParams::default() };
    api.patch(&secret.name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(e, "patch", secret))?;
    Ok(Outcome::Written)
}

fn classify(e: CallError, verb: &'static str, secret: &SecretRef) -> SecretWriteError {
    let text = crate::cluster::describe(verb, "Secret", secret, "`get` and `patch`", &e);
    match (e.code(), &e) {
        (Some(403), _) => SecretWriteError::Forbidden(text),
        (Some(404), _) => SecretWriteError::NotFound(text),
        (Some(409), _) => SecretWriteError::Conflict(text),
        (Some(code), _) if code >= 500 => SecretWriteError::Unavailable(text),
        (None, CallError::Timeout(_) | CallError::Kube(_)) => SecretWriteError::Unavailable(text),
        _ => SecretWriteError::Api(text),
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_parse_and_bad_ones_say_why() {
        let r: SecretRef = "sidecred/sidecred-credentials".parse().unwrap();
        assert_eq!(r.to_string(), "sidecred/sidecred-credentials");
        for bad in ["nope", "/x", "x/", "Upper/x", "a/b/c"] {
            let err = bad.parse::<SecretRef>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
