//! The election of the one agent that refreshes a shared login, on a `coordination.k8s.io/v1` Lease:
//! the I/O. What each round decides is `decision.rs`.
//!
//! client-go's algorithm, on `get` and `update` alone (a Role can limit both to the one Lease by name;
//! `create` it cannot, so the manifests ship the Lease): every `retry` each agent reads the Lease, decides,
//! and writes what the decision says. A conflict on update means another agent won the race.
//!
//! Fencing: a renewal sent at `t` lands in a record nobody can take over before `t` plus the lease
//! duration (the fence). The lifecycle starts a refresh only with time to spare before the fence and
//! ends its request by the fence, so by the time another agent may hold the lease, this one has no
//! request at the token endpoint. A holder that was paused or cut off wakes up past its fence and does
//! nothing until it has renewed again. The fence is kept by the boot clock too (`CLOCK_BOOTTIME`, which
//! counts a suspend of the machine; the monotonic clock does not): see `lifecycle/fence.rs`.
//!
//! When the holder becomes the holder, it reads the shared Secret before it reports holding the lease,
//! so it never refreshes with a pair older than the Secret's.

use crate::cluster::client::{clip, ApiClient, CallError, Objects};
use crate::cluster::decision::{decide, Decision, Observed, Record, Timing};
use crate::cluster::secret_watch::SharedSecret;
use crate::cluster::writeback::SecretRef;
use crate::lifecycle::{since_boot, Fence, Input, LeaseView};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct Config {
    pub lease: SecretRef,
    pub identity: String,
    pub timing: Timing,
}

impl Config {
    /// The longest one round (a read and a write) may take before it counts as failed: two thirds of
    /// the lease, as client-go's renew deadline (10 s of 15 s).
    fn round_limit(&self) -> Duration {
        self.timing.duration.mul_f64(2.0 / 3.0)
    }
}

pub struct Election {
    config: Config,
    api: Objects<Lease>,
    secret: SharedSecret,
    observed: Option<Observed>,
    /// The fence of this agent's last renewal that landed, by the monotonic and the boot clock.
    fence: Option<Fence>,
    /// Whether this process holds the lease and has read the Secret since it took it: only then may the
    /// lifecycle refresh.
    holding: bool,
    holder: Option<String>,
    /// Set after taking over a lease its holder did not release (see [`LeaseView::raced_until`] and
    /// [`LeaseView::late_write_by`]).
    raced_until: Option<Instant>,
    late_write_by: Option<Instant>,
    /// The lifecycle has stopped (the agent is shutting down): renew what is held, take nothing.
    closing: bool,
}

/// What a round's write achieved.
enum Written {
    /// The record names us now; `taken` when it did not before, `released` when nobody held it.
    Held { taken: bool, released: bool },
    /// Another agent holds the lease, or wrote first (a conflict).
    Lost,
}

impl Election {
    pub fn new(config: Config, client: ApiClient, secret: SharedSecret) -> Election {
        let api = Objects::namespaced(client, &config.lease.namespace);
        Election {
            config,
            api,
            secret,
            observed: None,
            fence: None,
            holding: false,
            holder: None,
            raced_until: None,
            late_write_by: None,
            closing: false,
        }
    }

    /// Runs rounds until `stop` turns true, then gives the lease up so the next agent need not wait for
    /// it to expire. `stop` comes only once the Secret holds the live pair: until then this agent keeps
    /// renewing what it holds even after the lifecycle has stopped, because the next holder would start
    /// from the spent pair in the Secret. If the process ends first, the lease expires on its own.
    pub async fn run(mut self, inputs: mpsc::Sender<Input>, mut stop: watch::Receiver<bool>) {
        info!(lease = %self.config.lease, identity = %self.config.identity, duration = ?self.config.timing.duration, "taking part in the lease election");
        loop {
            let view = self.round(&inputs).await;
            if !self.closing && inputs.send(Input::Lease(view)).await.is_err() {
                self.closing = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.timing.retry()) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.release().await;
    }

    async fn round(&mut self, inputs: &mpsc::Sender<Input>) -> LeaseView {
        let (sent, sent_boot) = (Instant::now(), since_boot());
        let limit = self.config.round_limit();
        let problem = match tokio::time::timeout(limit, self.try_acquire_or_renew(sent, sent_boot)).await {
            Ok(Ok(Written::Held { taken, released })) => {
                if taken && !released {
                    // Its holder stopped renewing without handing the lease on: it may have a refresh
                    // whose pair has not reached the Secret yet.
                    let now = Instant::now();
                    self.raced_until = now.checked_add(self.config.timing.race_wait());
                    self.late_write_by = now.checked_add(self.config.timing.late_write_wait());
                }
                self.holder = Some(self.config.identity.clone());
                if (taken || !self.holding) && !self.closing {
                    // New to the lease: adopt the Secret's pair before anything may be refreshed.
                    match self.secret.read().await {
                        Ok(read) => {
                            if inputs.send(Input::SeedChanged(read)).await.is_err() {
                                return self.view(None);
                            }
                            info!(lease = %self.config.lease, "acquired the lease: this agent refreshes the login");
                            self.holding = true;
                            None
                        }
                        Err(e) => Some(format!("holding the lease but cannot read the Secret: {e}")),
                    }
                } else {
                    None
                }
            }
            Ok(Ok(Written::Lost)) => {
                if self.holding {
                    warn!(lease = %self.config.lease, holder = ?self.holder, "lost the lease");
                }
                self.holding = false;
                self.fence = None;
                self.raced_until = None;
                self.late_write_by = None;
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("the Kubernetes API did not answer within {limit:?}")),
        };
        if let Some(problem) = &problem {
            warn!(lease = %self.config.lease, error = %problem, "cannot renew or read the lease");
            // What could not be seen is not known to be unchanged: the holder may have renewed while
            // we were blind (or been as blind as we were, in an outage of the API server). client-go
            // keeps its observedTime across failed reads, so after an outage longer than the lease a
            // follower takes over the moment the API answers, racing a holder that is alive and whose
            // last pair may not have reached the Secret. Here the count starts again at the next read:
            // a live holder renews first, and a dead one is taken over a lease duration later.
            self.observed = None;
            let last = self.fence.map(|f| f.at);
            if let Decision::StopRefreshing { fence } =
                decide(None, &self.config.identity, sent, Instant::now(), last, self.config.timing)
            {
                // Kept only while it lies ahead by the boot clock too (a suspend uses it up).
                let boot_now = since_boot();
                self.fence = self.fence.filter(|f| fence == Some(f.at) && boot_now < f.boot);
            }
            if self.fence.is_none() {
                // Past the fence: whoever renews next reads the Secret again first.
                self.holding = false;
            }
        }
        self.view(problem)
    }

    fn view(&self, problem: Option<String>) -> LeaseView {
        LeaseView {
            lease: self.config.lease.to_string(),
            holder: self.holder.clone(),
            fence: self.fence.filter(|_| self.holding),
            least_window: self.config.timing.least_window(),
            raced_until: self.raced_until,
            late_write_by: self.late_write_by,
            problem,
        }
    }

    /// One round: read the record, decide, write what the decision says.
    async fn try_acquire_or_renew(&mut self, sent: Instant, sent_boot: Duration) -> Result<Written, String> {
        let name = &self.config.lease.name;
        let lease = self.api.get(name).await.map_err(|e| self.describe("get", e))?;
        let now = Instant::now();
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Record {
            holder: spec.holder_identity.clone(),
            duration_s: spec.lease_duration_seconds,
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            version: lease.metadata.resource_version.clone(),
        };
        let observed = Observed::update(self.observed.take(), record, now);
        let last = self.fence.map(|f| f.at);
        let decision = decide(Some(&observed), &self.config.identity, sent, now, last, self.config.timing);
        self.observed = Some(observed);
        let (fence, taken, released) = match decision {
            Decision::Follow { holder, .. } => {
                // Whatever another writer put there goes into status frames, logs and metrics: clipped.
                self.holder = Some(clip(&holder));
                return Ok(Written::Lost);
            }
            Decision::StopRefreshing { .. } => return Err("the lease's timing overflows".to_owned()),
            Decision::Renew { fence } => (fence, false, false),
            // Shutting down: a lease taken now would only wait to expire.
            Decision::TakeOver { .. } if self.closing => return Ok(Written::Lost),
            Decision::TakeOver { fence, released } => (fence, true, released),
        };
        let stamp = MicroTime(Timestamp::now());
        let mut next = spec.clone();
        next.holder_identity = Some(self.config.identity.clone());
        next.lease_duration_seconds = i32::try_from(self.config.timing.duration.as_secs().max(1)).ok();
        next.renew_time = Some(stamp.clone());
        if taken {
            next.acquire_time = Some(stamp);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        let mut update = lease;
        update.spec = Some(next);
        match self.api.replace(name, &PostParams::default(), &update).await {
            Ok(_) => {
                // The same moment by the boot clock: as far from the round's start as by the monotonic one.
                self.fence = Fence::after(sent, sent_boot, fence.saturating_duration_since(sent));
                Ok(Written::Held { taken, released })
            }
            Err(e) if e.code() == Some(409) => {
                self.holder = spec.holder_identity.filter(|h| !h.is_empty()).map(|h| clip(&h));
                Ok(Written::Lost)
            }
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
        match tokio::time::timeout(self.config.timing.retry().max(Duration::from_secs(2)), give_up).await {
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

    fn describe(&self, verb: &str, e: CallError) -> String {
        crate::cluster::describe(verb, "Lease", &self.config.lease, "`get` and `update`", &e)
    }
}
