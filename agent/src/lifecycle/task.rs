//! The task that runs the lifecycle: it feeds the [`Machine`] what happens (inputs, timers, the token
//! endpoint's answers, saves) and performs the effects the machine asks for. It is the only task that
//! talks to the token endpoint, so "single flight" holds by construction.

use super::machine::{Answer, Effect, Machine, Now, Paths, SaveJob};
use super::{Input, Policy, Sharing, Snapshot};
use crate::oauth::{OAuthClient, TokenError, TokenResponse};
use crate::store::{Loaded, Store, Target};
use sidecred_proto::{ErrorCode, ProtoError, Role, Secret, TokenGrant};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

type Waiter = super::Reply;

/// Why a refresh request was abandoned at the lease's fence.
const FENCED: &str = "the token endpoint did not answer before the lease could pass to another agent; \
    the request was abandoned so that two agents never refresh at once";

/// The longest the task sleeps without comparing the monotonic and wall clocks.
const CLOCK_CHECK: Duration = Duration::from_secs(30);
/// How long a follower holds a client whose token the upstream rejected, waiting for the pair the
/// holder refreshes when told (through the shared Secret) before answering with the error.
const PEER_REFRESH_WAIT: Duration = Duration::from_secs(10);

/// A client of a follower waiting for the pair that replaces the token the upstream rejected.
struct AwaitingPair {
    reply: Waiter,
    rejected: Secret,
    until: Instant,
    /// The answer if no new pair comes in time.
    otherwise: ProtoError,
}
type RefreshFuture = Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send>>;

pub struct Lifecycle {
    machine: Machine,
    /// Where saves go; `None` for a static token, which is never saved.
    store: Option<Store>,
    oauth: OAuthClient,
    published: watch::Sender<Arc<Snapshot>>,
    sharing: Sharing,
    inflight: Option<RefreshFuture>,
    waiters: Vec<Waiter>,
    awaiting_pair: Vec<AwaitingPair>,
    /// The access token this follower last told the holder about, and when: many clients make one
    /// report, repeated after [`PEER_REFRESH_WAIT`] if no new pair came (the holder may have been in its
    /// cooldown after a refresh).
    reported: Option<(String, Instant)>,
    generations: Generations,
}

/// Numbers the tokens this agent serves, in order, for the grants it hands out.
struct Generations {
    current: u64,
    /// The token `current` numbers.
    token: Option<Secret>,
}

impl Generations {
    /// Starts from the wall clock in microseconds, so that an agent started later (a restart) numbers
    /// its tokens above the ones its predecessor served, without remembering anything.
    fn start() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Generations { current: micros, token: None }
    }

    /// The generation of `token` as the one served now, a new one when it changed.
    fn of(&mut self, token: Option<&Secret>) -> u64 {
        if token != self.token.as_ref() {
            self.current = self.current.saturating_add(1);
            self.token = token.cloned();
        }
        self.current
    }

    /// Stamps an answer with the current generation when it hands out the token published now;
    /// anything else is left at 0 (unknown), which makes a client fall back to asking.
    fn stamp(&self, answer: Result<TokenGrant, ProtoError>) -> Result<TokenGrant, ProtoError> {
        answer.map(|mut grant| {
            if self.token.as_ref() == Some(&grant.access_token) {
                grant.generation = self.current;
            }
            grant
        })
    }
}

impl Lifecycle {
    /// `start` is what the store loaded, or why nothing could be.
    pub fn new(
        store: Store,
        oauth: OAuthClient,
        policy: Policy,
        start: Result<Loaded, String>,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let paths = Paths {
            seed: store.seed_path().display().to_string(),
            persist: store.persist_path().display().to_string(),
            saves_to_state: matches!(store.target(), Target::StateFile(_)),
        };
        let machine = Machine::new(policy, paths, start, Now::read());
        Self::with_machine(machine, Some(store), oauth)
    }

    /// Serves `token`, read from the environment variable `var`, and nothing else: no file is read or
    /// written and the token endpoint is never called.
    pub fn new_static(
        oauth: OAuthClient,
        policy: Policy,
        var: &str,
        token: Secret,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let paths = Paths {
            seed: format!("${var} (a static token; no file is read or written)"),
            persist: String::new(),
            saves_to_state: false,
        };
        Self::with_machine(Machine::static_token(policy, paths, var, token), None, oauth)
    }

    fn with_machine(
        machine: Machine,
        store: Option<Store>,
        oauth: OAuthClient,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let mut generations = Generations::start();
        let mut first = machine.snapshot(Instant::now());
        first.generation = generations.of(first.token.as_ref().map(|t| &t.access_token));
        let (published, rx) = watch::channel(Arc::new(first));
        let lifecycle = Lifecycle {
            machine,
            store,
            oauth,
            published,
            sharing: Sharing::Nowhere,
            inflight: None,
            waiters: Vec::new(),
            awaiting_pair: Vec::new(),
            reported: None,
            generations,
        };
        (lifecycle, rx)
    }

    /// Shares every new pair through `sharing`. The pair running now is offered at once, so a store left
    /// behind by an earlier pod (state from a volume) catches up. With [`Sharing::Shared`], refreshes wait
    /// for the Lease `lease` (`NAMESPACE/NAME`).
    pub fn with_sharing(mut self, sharing: Sharing, lease: Option<String>) -> Self {
        if let (Some(store), Some((credentials, retired))) = (sharing.store(), self.machine.live_pair()) {
            store.offer(credentials, retired);
        }
        self.sharing = sharing;
        if let Some(lease) = lease {
            self.machine = self.machine.with_lease(lease);
            self.publish();
        }
        self
    }

    /// Runs until `shutdown` fires and any refresh in flight has finished and been saved.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>, mut shutdown: watch::Receiver<bool>) {
        let mut stopping = false;
        loop {
            if stopping && self.inflight.is_none() {
                break;
            }
            // The clocks are compared at least this often, so a suspend is noticed soon after the wake-up.
            let wake = self
                .machine
                .next_wake(Now::read())
                .map_or(Instant::now() + CLOCK_CHECK, |w| w.min(Instant::now() + CLOCK_CHECK));
            let wake = self.awaiting_pair.iter().map(|a| a.until).fold(wake, Instant::min);
            tokio::select! {
                biased;
                result = poll_inflight(&mut self.inflight), if self.inflight.is_some() => {
                    self.inflight = None;
                    crate::metrics::refresh_finished(&result);
                    let effects = self.machine.refresh_done(result, Now::read());
                    self.perform(effects).await;
                }
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() || *shutdown.borrow() {
                        stopping = true;
                        if self.inflight.is_some() {
                            info!("shutting down: waiting for the refresh in flight to finish and be saved");
                        }
                    }
                }
                input = inputs.recv(), if !stopping => match input {
                    Some(input) => self.on_input(input).await,
                    None => stopping = true,
                },
                _ = sleep_until(wake), if !stopping => {
                    let effects = self.machine.tick(Now::read());
                    self.perform(effects).await;
                }
            }
            self.publish();
            self.answer_awaiting_pair(Instant::now());
        }
        for awaiting in self.awaiting_pair.drain(..) {
            let _ = awaiting.reply.send(Err(awaiting.otherwise));
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(ProtoError::new(ErrorCode::Unavailable, "the agent is shutting down")));
        }
    }

    async fn on_input(&mut self, input: Input) {
        let now = Now::read();
        let (reply, waiter, effects) = match input {
            Input::Refresh { reply } => {
                let (answer, effects) = self.machine.refresh_requested(now);
                (answer, reply, effects)
            }
            Input::Rejected { token, reply } => {
                let (answer, effects) = self.machine.rejected(&token, now);
                match answer {
                    Answer::Now(Err(otherwise)) if self.ask_the_holder(&token, &otherwise) => {
                        let until = Instant::now() + PEER_REFRESH_WAIT;
                        self.awaiting_pair.push(AwaitingPair { reply, rejected: token, until, otherwise });
                        return self.perform(effects).await;
                    }
                    answer => (answer, reply, effects),
                }
            }
            Input::PeerRejected { fingerprint } => {
                let live = self.machine.live_pair().map(|(c, _)| c.access_token.clone());
                let Some(token) = live.filter(|t| t.fingerprint() == fingerprint) else { return };
                if self.machine.snapshot(Instant::now()).role != Role::Holder {
                    return;
                }
                info!(token = %token, "another agent reports that the upstream rejected the live token; refreshing");
                // No client waits on this one: the followers get the new pair through the Secret.
                let (_, effects) = self.machine.rejected(&token, now);
                return self.perform(effects).await;
            }
            Input::SeedChanged(seed) => {
                let effects = self.machine.seed_changed(seed, now);
                return self.perform(effects).await;
            }
            Input::Waiting => {
                let effects = self.machine.tick(now);
                return self.perform(effects).await;
            }
            Input::Lease(view) => {
                let effects = self.machine.lease_changed(view, now);
                return self.perform(effects).await;
            }
        };
        match reply {
            Answer::Now(answer) => {
                // Published first, so the answer's token carries its generation.
                self.publish();
                let _ = waiter.send(self.generations.stamp(answer));
            }
            Answer::AfterRefresh => self.waiters.push(waiter),
        }
        self.perform(effects).await;
    }

    async fn perform(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Refresh { token, deadline } => {
                    let oauth = self.oauth.clone();
                    let scopes =
                        self.machine.live_pair().map(|(live, _)| live.scopes.clone()).unwrap_or_default();
                    self.inflight = Some(Box::pin(async move {
                        let request = oauth.refresh(&token, &scopes);
                        match deadline {
                            Some(fence) => {
                                tokio::time::timeout_at(fence, request).await.unwrap_or_else(|_| {
                                    Err(TokenError::Transient {
                                        reason: FENCED.to_owned(),
                                        retry_after: None,
                                    })
                                })
                            }
                            None => request.await,
                        }
                    }));
                }
                Effect::Save(job) => {
                    let result = match &self.store {
                        Some(store) => save(store.clone(), job.clone()).await,
                        None => Err("this agent has nowhere to save credentials".to_owned()),
                    };
                    if result.is_err() {
                        crate::metrics::persist_failed();
                    }
                    self.machine.saved(&job, result, Now::read());
                }
                Effect::WriteBack { credentials, retired } => match &self.sharing {
                    Sharing::Shared { store, confirm } => {
                        // Until the store holds the pair, readers keep the snapshot from before the
                        // refresh: the old access token, which is still valid (holders refresh early).
                        if !store.offer_and_confirm(&credentials, &retired, *confirm).await {
                            warn!(wait = ?confirm, "the shared store does not hold the new pair yet; serving it anyway (the write is retried)");
                        }
                    }
                    Sharing::WriteBack(store) => store.offer(&credentials, &retired),
                    Sharing::Nowhere => {}
                },
                Effect::AnswerWaiters(outcome) => {
                    // Readers see the new token no later than the waiters do.
                    self.publish();
                    let now = Instant::now();
                    let answer = outcome.and_then(|served| {
                        if served.is_valid(now) {
                            Ok(served.grant(now))
                        } else {
                            Err(ProtoError::new(ErrorCode::Unavailable, "the new token is already expired"))
                        }
                    });
                    let answer = self.generations.stamp(answer);
                    for waiter in self.waiters.drain(..) {
                        let _ = waiter.send(answer.clone());
                    }
                }
            }
        }
    }

    /// A follower does not refresh: when the upstream rejects the live token, it tells the holder
    /// (once per token) and holds the client until the next pair arrives.
    fn ask_the_holder(&mut self, token: &Secret, otherwise: &ProtoError) -> bool {
        let live = self.machine.live_pair().is_some_and(|(c, _)| c.access_token == *token);
        let follower = self.machine.snapshot(Instant::now()).role == Role::Follower;
        let Sharing::Shared { store, .. } = &self.sharing else { return false };
        if !(live && follower && otherwise.code == ErrorCode::Unavailable) {
            return false;
        }
        let fingerprint = token.fingerprint();
        let now = Instant::now();
        let again = match &self.reported {
            Some((fp, at)) => *fp != fingerprint || now.saturating_duration_since(*at) >= PEER_REFRESH_WAIT,
            None => true,
        };
        if again {
            store.report_rejected(fingerprint.clone());
            self.reported = Some((fingerprint, now));
        }
        true
    }

    /// Answers the clients held by [`Self::ask_the_holder`] once a new pair is live, or their wait is over.
    fn answer_awaiting_pair(&mut self, now: Instant) {
        if self.awaiting_pair.is_empty() {
            return;
        }
        let live = self.machine.live_pair().map(|(c, _)| c.access_token.clone());
        let snapshot = self.machine.snapshot(now);
        for awaiting in std::mem::take(&mut self.awaiting_pair) {
            let replaced = live.as_ref().is_some_and(|t| *t != awaiting.rejected);
            match snapshot.immediate_answer(now).filter(|_| replaced) {
                Some(answer) => {
                    let _ = awaiting.reply.send(answer);
                }
                None if now >= awaiting.until => {
                    let _ = awaiting.reply.send(Err(awaiting.otherwise));
                }
                None => self.awaiting_pair.push(awaiting),
            }
        }
    }

    fn publish(&mut self) {
        let mut snap = self.machine.snapshot(Instant::now());
        snap.generation = self.generations.of(snap.token.as_ref().map(|t| &t.access_token));
        self.published.send_replace(Arc::new(snap));
    }
}

/// Writes on a blocking thread (fsync can take a while) and says how it went.
async fn save(store: Store, job: SaveJob) -> Result<(), String> {
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        store.persist(&job.credentials, job.seed_sha256.as_deref(), &job.retired, job.kept.as_deref())
    })
    .await;
    match result {
        Ok(Ok(())) => {
            debug!(took = ?started.elapsed(), "wrote the credentials");
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(join) => Err(format!("the credentials writer failed: {join}")),
    }
}

async fn poll_inflight(inflight: &mut Option<RefreshFuture>) -> Result<TokenResponse, TokenError> {
    match inflight {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}
