//! The election of the one agent that refreshes a shared login, on a `coordination.k8s.io/v1` Lease.
//!
//! client-go's algorithm, on `get` and `update` alone (a Role can limit both to the one Lease by name;
//! `create` it cannot, so the manifests ship the Lease): every `retry` each agent reads the Lease. The
//! holder renews it; anyone else takes it over only when nobody holds it, or when the record has not
//! changed for a whole lease duration *by its own clock* (the `renewTime` written by another machine is
//! never compared with ours, so clock skew does not matter). A conflict on update means another agent
//! won the race.
//!
//! Fencing: a renewal that started at `t` lets the holder start refreshes until `t + renew_deadline`,
//! which is shorter than the lease, so by the time anyone else may take over, this agent has stopped
//! starting refreshes. A holder that was paused or cut off wakes up past that instant and does nothing
//! until it has renewed again. A refresh already in flight still finishes and its pair is written: it
//! is the only live one.
//!
//! When the holder becomes the holder, it reads the shared Secret before it reports holding the lease,
//! so it never refreshes with a pair older than the Secret's.

use crate::cluster::secret_watch::SharedSecret;
use crate::cluster::writeback::SecretRef;
use crate::lifecycle::{Input, LeaseView};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct Config {
    pub lease: SecretRef,
    pub identity: String,
    pub duration: Duration,
}

impl Config {
    /// How long after the start of a successful renewal refreshes may start: two thirds of the lease,
    /// as client-go's defaults (15 s and 10 s), leaving a third for clock rates and a slow request.
    pub fn renew_deadline(&self) -> Duration {
        self.duration.mul_f64(2.0 / 3.0)
    }

    /// How often the Lease is read and renewed (2 s for a 15 s lease).
    pub fn retry(&self) -> Duration {
        self.duration.mul_f64(2.0 / 15.0).max(Duration::from_millis(100))
    }
}

/// What one round found.
enum Round {
    /// This agent holds the lease now; `taken` when it was not the holder on record before.
    Held { taken: bool },
    /// Someone else does (or won the race to take it).
    Other(Option<String>),
}

/// The record as last seen, and when this agent first saw it so.
struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<String>),
    at: Instant,
}

pub struct Election {
    config: Config,
    api: Api<Lease>,
    secret: SharedSecret,
    observed: Option<Observed>,
    held_until: Option<Instant>,
    /// Whether this process held the lease at its last successful round: a holder that is new (to the
    /// lease or to this process) reads the Secret first.
    holding: bool,
    holder: Option<String>,
}

impl Election {
    pub fn new(config: Config, client: kube::Client, secret: SharedSecret) -> Election {
        let api = Api::namespaced(client, &config.lease.namespace);
        Election { config, api, secret, observed: None, held_until: None, holding: false, holder: None }
    }

    /// Runs rounds until `stop` turns true (after the lifecycle has finished any refresh), then gives the
    /// lease up so the next agent need not wait for it to expire.
    pub async fn run(mut self, inputs: mpsc::Sender<Input>, mut stop: watch::Receiver<bool>) {
        info!(lease = %self.config.lease, identity = %self.config.identity, duration = ?self.config.duration, "taking part in the lease election");
        loop {
            let view = self.round(&inputs).await;
            if inputs.send(Input::Lease(view)).await.is_err() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry()) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.release().await;
    }

    async fn round(&mut self, inputs: &mpsc::Sender<Input>) -> LeaseView {
        let started = Instant::now();
        let attempt = tokio::time::timeout(self.config.renew_deadline(), self.try_acquire_or_renew()).await;
        let problem = match attempt {
            Ok(Ok(Round::Held { taken })) => {
                if taken || !self.holding {
                    // New to the lease: adopt the Secret's pair before anything may be refreshed.
                    match self.secret.read().await {
                        Ok(read) => {
                            if inputs.send(Input::SeedChanged(read)).await.is_err() {
                                return self.view(None);
                            }
                            info!(lease = %self.config.lease, "acquired the lease: this agent refreshes the login");
                            self.holding = true;
                        }
                        Err(e) => {
                            return self
                                .view(Some(format!("holding the lease but cannot read the Secret: {e}")))
                        }
                    }
                }
                self.holder = Some(self.config.identity.clone());
                self.held_until = started.checked_add(self.config.renew_deadline());
                None
            }
            Ok(Ok(Round::Other(holder))) => {
                if self.holding {
                    warn!(lease = %self.config.lease, holder = ?holder, "lost the lease");
                }
                self.holding = false;
                self.held_until = None;
                self.holder = holder;
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => {
                Some(format!("the Kubernetes API did not answer within {:?}", self.config.renew_deadline()))
            }
        };
        if let Some(problem) = &problem {
            warn!(lease = %self.config.lease, error = %problem, "cannot renew or read the lease");
            if self.held_until.is_none_or(|t| t <= Instant::now()) {
                self.holding = false;
                self.held_until = None;
            }
        }
        self.view(problem)
    }

    fn view(&self, problem: Option<String>) -> LeaseView {
        LeaseView {
            lease: self.config.lease.to_string(),
            holder: self.holder.clone(),
            held_until: self.held_until,
            problem,
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Round, String> {
        let name = &self.config.lease.name;
        let lease = self.api.get(name).await.map_err(|e| self.describe("get", e))?;
        let seen_at = Instant::now();
        let spec = lease.spec.clone().unwrap_or_default();
        let record =
            (spec.holder_identity.clone(), spec.renew_time.clone(), lease.metadata.resource_version.clone());
        if self.observed.as_ref().is_none_or(|o| o.record != record) {
            self.observed = Some(Observed { record, at: seen_at });
        }
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        // The holder's own duration counts, clamped: a record saying 0 or a year is not believed.
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(|s| Duration::from_secs(s.clamp(1, 3600)))
            .unwrap_or(self.config.duration);
        let expired = self
            .observed
            .as_ref()
            .and_then(|o| o.at.checked_add(duration))
            .is_some_and(|until| until <= seen_at);
        if holder.is_some() && !mine && !expired {
            return Ok(Round::Other(holder));
        }
        let now = MicroTime(Timestamp::now());
        let mut next = spec.clone();
        next.holder_identity = Some(self.config.identity.clone());
        next.lease_duration_seconds = i32::try_from(self.config.duration.as_secs().max(1)).ok();
        next.renew_time = Some(now.clone());
        if !mine {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        let mut update = lease;
        update.spec = Some(next);
        match self.api.replace(name, &PostParams::default(), &update).await {
            Ok(_) => Ok(Round::Held { taken: !mine }),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Round::Other(holder)),
            Err(e) => Err(self.describe("update", e)),
        }
    }

    /// Hands the lease back: an empty holder, which the next agent takes at its next round.
    async fn release(&mut self) {
        if !self.holding {
            return;
        }
        let name = &self.config.lease.name;
        let give_up = async {
            let mut lease = self.api.get(name).await.map_err(|e| self.describe("get", e))?;
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(name, &PostParams::default(), &lease)
                .await
                .map_err(|e| self.describe("update", e))?;
            Ok::<(), String>(())
        };
        match tokio::time::timeout(self.config.retry().max(Duration::from_secs(2)), give_up).await {
            Ok(Ok(())) => {
                self.holding = false;
                info!(lease = %self.config.lease, "released the lease")
            }
            Ok(Err(e)) => {
                warn!(lease = %self.config.lease, error = %e, "could not release the lease; it expires on its own")
            }
            Err(_) => {
                warn!(lease = %self.config.lease, "releasing the lease timed out; it expires on its own")
            }
        }
    }

    fn describe(&self, verb: &str, e: kube::Error) -> String {
        crate::cluster::describe(verb, "Lease", &self.config.lease, "`get` and `update`", &e)
    }
}
