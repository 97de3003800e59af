//! The Secret that agents sharing a login (`--lease`) keep the live pair in. The lease holder writes it
//! (`writeback`); every agent reads it through the API, here: once when it becomes the holder, and
//! through a streaming watch all the time, so a new pair reaches the followers within moments of the
//! write. The kubelet's copy of a mounted Secret lags by a minute or more, and could bring back an older
//! pair after a newer one: with a lease the file is read at start only.

use crate::cluster::warn_if_managed;
use crate::cluster::writeback::SecretRef;
use crate::lifecycle::Input;
use crate::store::SeedRead;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, WatchEvent, WatchParams};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The longest one watch request lasts before it is renewed (the API server's own limit is higher).
const WATCH_TIMEOUT_S: u32 = 290;
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Short: after an outage the followers must find the Secret again within moments, and one Secret
/// read every 2 s is nothing for an API server.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// One read or the start of a watch, with the client's own retries of 503s inside it: past this the
/// attempt counts as failed and is made again after the pause.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct SharedSecret {
    api: Api<Secret>,
    secret: SecretRef,
    key: String,
}

impl SharedSecret {
    pub fn new(client: kube::Client, secret: SecretRef, key: String) -> SharedSecret {
        SharedSecret { api: Api::namespaced(client, &secret.namespace), secret, key }
    }

    /// Reads the Secret now: its pair as a seed, with the `resourceVersion` it was read at.
    pub async fn read(&self) -> Result<SeedRead, String> {
        let object = self.get().await?;
        self.seed_of(&object)
    }

    async fn get(&self) -> Result<Secret, String> {
        match tokio::time::timeout(CALL_TIMEOUT, self.api.get(&self.secret.name)).await {
            Ok(result) => result.map_err(|e| self.describe("get", e)),
            Err(_) => Err(format!("get secret {}: no answer within {CALL_TIMEOUT:?}", self.secret)),
        }
    }

    fn seed_of(&self, object: &Secret) -> Result<SeedRead, String> {
        let rv = object.metadata.resource_version.clone().unwrap_or_default();
        let bytes =
            object.data.as_ref().and_then(|d| d.get(&self.key)).ok_or_else(|| {
                format!("secret {} has no key {} (--write-back-key)", self.secret, self.key)
            })?;
        let label = PathBuf::from(format!("secret {} key {}", self.secret, self.key));
        Ok(SeedRead::from_secret(&bytes.0, &label, rv))
    }

    fn describe(&self, verb: &str, e: kube::Error) -> String {
        crate::cluster::describe(verb, "Secret", &self.secret, "`get` and `watch`", &e)
    }

    /// Watches the Secret until `inputs` closes, sending each new pair to the lifecycle.
    pub fn spawn_watch(self, inputs: mpsc::Sender<Input>) {
        tokio::spawn(async move { self.watch(inputs).await });
    }

    async fn watch(self, inputs: mpsc::Sender<Input>) {
        let mut last_sha: Option<String> = None;
        let mut checked_manager = false;
        let mut pause = RETRY_MIN;
        // Each turn lists (a get: the watch is limited to one name) and then watches from that version
        // until the server says the version is too old (410 Gone) or the connection fails.
        loop {
            let object = match self.get().await {
                Ok(object) => object,
                Err(e) => {
                    warn!(error = %e, retry_in = ?pause, "cannot read the shared Secret");
                    if !self.rest(&inputs, &mut pause).await {
                        return;
                    }
                    continue;
                }
            };
            if !checked_manager {
                warn_if_managed(&object, &self.secret.to_string());
                checked_manager = true;
            }
            let mut rv = object.metadata.resource_version.clone().unwrap_or_default();
            if !self.deliver(&object, &mut last_sha, &inputs).await {
                return;
            }
            pause = RETRY_MIN;
            let params = WatchParams::default()
                .fields(&format!("metadata.name={}", self.secret.name))
                .timeout(WATCH_TIMEOUT_S);
            'watch: loop {
                let stream = match tokio::time::timeout(CALL_TIMEOUT, self.api.watch(&params, &rv)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        warn!(error = %self.describe("watch", e), retry_in = ?pause, "cannot watch the shared Secret");
                        break 'watch;
                    }
                    Err(_) => {
                        warn!(secret = %self.secret, retry_in = ?pause, "the watch of the shared Secret did not start in time");
                        break 'watch;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                            rv = object.metadata.resource_version.clone().unwrap_or(rv);
                            if !self.deliver(&object, &mut last_sha, &inputs).await {
                                return;
                            }
                            pause = RETRY_MIN;
                        }
                        Ok(WatchEvent::Bookmark(bookmark)) => rv = bookmark.metadata.resource_version,
                        Ok(WatchEvent::Deleted(_)) => {
                            warn!(secret = %self.secret, "the shared Secret was deleted; serving the pair held until it is back");
                        }
                        Ok(WatchEvent::Error(status)) if status.code == 410 => {
                            debug!(secret = %self.secret, "the watch's version is too old; reading the Secret again");
                            break 'watch;
                        }
                        Ok(WatchEvent::Error(status)) => {
                            warn!(secret = %self.secret, error = %status.message, "the watch of the shared Secret failed");
                            break 'watch;
                        }
                        Err(e) => {
                            debug!(secret = %self.secret, error = %e, "the watch of the shared Secret ended");
                            break;
                        }
                    }
                }
                // The stream ended (its timeout, or a dropped connection): watch again from where it was,
                // after a pause that grows if it keeps ending at once.
                if !self.rest(&inputs, &mut pause).await {
                    return;
                }
            }
            if !self.rest(&inputs, &mut pause).await {
                return;
            }
        }
    }

    /// Sends the Secret's pair when it changed. `false` once the lifecycle is gone.
    async fn deliver(
        &self,
        object: &Secret,
        last_sha: &mut Option<String>,
        inputs: &mpsc::Sender<Input>,
    ) -> bool {
        let read = match self.seed_of(object) {
            Ok(read) => read,
            Err(e) => {
                warn!(error = %e, "the shared Secret holds no credentials");
                return true;
            }
        };
        if last_sha.as_deref() == Some(read.sha256.as_str()) {
            return true;
        }
        info!(secret = %self.secret, resource_version = ?read.secret_rv, "the shared Secret changed");
        *last_sha = Some(read.sha256.clone());
        inputs.send(Input::SeedChanged(read)).await.is_ok()
    }

    /// Waits `pause` (doubling it up to the maximum); `false` if the lifecycle went away meanwhile.
    async fn rest(&self, inputs: &mpsc::Sender<Input>, pause: &mut Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(*pause) => {}
            _ = inputs.closed() => return false,
        }
        *pause = (*pause * 2).min(RETRY_MAX);
        true
    }
}
