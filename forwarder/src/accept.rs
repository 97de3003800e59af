//! The accepting side: takes connections off the listener under `--max-connections` and hands each to a
//! worker, round robin, until SIGTERM or SIGINT; then hands over what waits in the backlog and closes the
//! listener, which tells the workers to drain.

use crate::worker::{Accepted, Shared};
use crate::{agent, cli};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{error, info, warn};

/// The cap's warning is repeated at most this often while connections keep hitting it.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The accepting side: the workers' queues, the slots under `--max-connections`, and the signal that
/// connections are waiting for one.
pub struct Acceptor {
    queues: Handoff,
    slots: Arc<Semaphore>,
    crowding: watch::Sender<bool>,
}

impl Acceptor {
    /// `crowding` is set while connections wait for one of the `slots`.
    pub fn new(
        queues: Vec<mpsc::UnboundedSender<Accepted>>,
        slots: Arc<Semaphore>,
        crowding: watch::Sender<bool>,
    ) -> Self {
        Acceptor { queues: Handoff { queues, next: 0 }, slots, crowding }
    }

    /// Accepts until SIGTERM or SIGINT; after SIGTERM, goes on accepting for `--shutdown-delay` while
    /// `/readyz` answers 503 (a second signal ends the delay). Then hands over what already waits in the
    /// backlog and closes the listener and the workers' queues, which tells them to drain.
    pub async fn run(
        mut self,
        listener: std::net::TcpListener,
        shared: &Shared,
        cli: &cli::Cli,
        local: SocketAddr,
        via: Option<String>,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener).context("cannot register the listener")?;
        let sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        info!(
            addr = %local,
            upstream = %cli.upstream,
            via_proxy = via.as_deref().unwrap_or("none"),
            socket = %cli.socket.display(),
            agent_uid = shared.agent.uid,
            inbound_keys = shared.keys.as_ref().map_or(0, |k| k.len()),
            workers = cli.workers,
            "listening"
        );
        // A sidecar may start before its agent: say so, but serve (requests wait for the agent, then
        // 503). In the background, so /livez answers from the start whatever the agent does.
        let agent = shared.agent.clone();
        tokio::spawn(async move {
            if let Err(e) = agent::TokenSource::check_at_start(&agent).await {
                warn!(error = %e, "the agent has no token for us yet; requests get 503 until it does");
            }
        });
        // The subscription lives on this thread, which only accepts: a push wakes no worker, and every
        // worker has the new token the moment it is read.
        if let Some(pushed) = &shared.pushed {
            tokio::spawn(agent::TokenSource::follow(shared.agent.clone(), pushed.clone()));
        }

        let mut signals = Signals { sigterm, sigint };
        let mut cap_warned = None;
        let stop = match self.accept(&listener, shared, &mut signals, &mut cap_warned, None).await? {
            Ended::Signal(Signal::Term) if !cli.shutdown_delay.is_zero() => {
                // Endpoints and load balancers learn of the SIGTERM later than this process does, and
                // route new connections here meanwhile: closing the listener now would refuse them.
                shared.leaving.start();
                info!(
                    shutdown_delay = ?cli.shutdown_delay,
                    "SIGTERM: /readyz answers 503 and connections are still accepted for the shutdown delay \
                     (--shutdown-delay), so that load balancers stop sending new ones first"
                );
                // A delay too long to count ends only with a second signal.
                let until = Instant::now().checked_add(cli.shutdown_delay);
                match self.accept(&listener, shared, &mut signals, &mut cap_warned, until).await? {
                    Ended::DelayOver => "SIGTERM".to_owned(),
                    Ended::Signal(again) => {
                        info!(signal = again.name(), "a second signal ends the shutdown delay early");
                        format!("SIGTERM, then {}", again.name())
                    }
                    Ended::FailedWorker => "a failed worker".to_owned(),
                }
            }
            Ended::Signal(signal) => signal.name().to_owned(),
            Ended::FailedWorker => "a failed worker".to_owned(),
            // Not reached: the first phase has no deadline.
            Ended::DelayOver => "the end of the shutdown delay".to_owned(),
        };
        // The kernel completed these connections' handshakes and their clients may have sent a request:
        // closing the listener now would reset them. They are served like the rest (and told to close).
        // Straight from the socket: the runtime's idea of its readiness may lag behind the kernel's.
        let listener = listener.into_std().context("cannot take the listener back from the runtime")?;
        let mut backlog = 0usize;
        while let Ok(slot) = self.slots.clone().try_acquire_owned() {
            let Ok((stream, peer)) = listener.accept() else { break };
            if !self.queues.send(stream, peer, slot) {
                break;
            }
            backlog += 1;
        }
        drop(listener);
        drop(self);
        info!(
            signal = stop,
            drain_timeout = ?cli.drain_timeout,
            taken_from_backlog = backlog,
            "shutting down: not accepting; letting in-flight requests finish"
        );
        Ok(())
    }

    /// Hands accepted connections to the workers until a signal, a failed worker or `until` (the end of
    /// the shutdown delay).
    async fn accept(
        &mut self,
        listener: &tokio::net::TcpListener,
        shared: &Shared,
        signals: &mut Signals,
        cap_warned: &mut Option<Instant>,
        until: Option<Instant>,
    ) -> anyhow::Result<Ended> {
        let delay_over = sleep_until(until);
        tokio::pin!(delay_over);
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    self.crowding.send_if_modified(|crowded| std::mem::replace(crowded, false));
                    slot
                }
                Err(_) => {
                    if cap_warned.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
                        warn!(
                            max_connections = shared.max_connections,
                            "connection cap reached (--max-connections): new connections wait in the listen \
                             backlog, and connections that ask nothing or sit idle get a second to make room"
                        );
                        *cap_warned = Some(Instant::now());
                    }
                    self.crowding.send_if_modified(|crowded| !std::mem::replace(crowded, true));
                    tokio::select! {
                        slot = self.slots.clone().acquire_owned() => slot.context("the connection slots closed")?,
                        signal = signals.recv() => return Ok(Ended::Signal(signal)),
                        () = &mut delay_over => return Ok(Ended::DelayOver),
                    }
                }
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let stream = match stream.into_std() {
                            Ok(stream) => stream,
                            Err(e) => {
                                warn!(peer = %peer, error = %e, "cannot hand a connection to a worker");
                                continue;
                            }
                        };
                        if !self.queues.send(stream, peer, slot) {
                            return Ok(Ended::FailedWorker);
                        }
                    }
                    Err(e) => {
                        // Below the descriptor limit by the cap, but other limits (memory, the system's
                        // file table) exist: back off briefly instead of spinning.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                signal = signals.recv() => return Ok(Ended::Signal(signal)),
                () = &mut delay_over => return Ok(Ended::DelayOver),
            }
        }
    }
}

/// Why accepting stopped.
enum Ended {
    Signal(Signal),
    /// The shutdown delay ran out.
    DelayOver,
    FailedWorker,
}

#[derive(Clone, Copy)]
enum Signal {
    Term,
    Int,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }
}

struct Signals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

impl Signals {
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.sigterm.recv() => Signal::Term,
            _ = self.sigint.recv() => Signal::Int,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The workers' queues, taken round robin.
struct Handoff {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    next: usize,
}

impl Handoff {
    /// Answers false when a worker has stopped, which happens only when its runtime failed (its error
    /// is reported on join).
    fn send(&mut self, stream: std::net::TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) -> bool {
        // Streams of small SSE events must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        // One taken straight from the listener's socket is blocking, and a worker's runtime needs it not.
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(peer = %peer, error = %e, "cannot hand a connection to a worker");
            return true;
        }
        if self.queues[self.next % self.queues.len()].send((stream, peer, slot)).is_err() {
            error!("a worker thread stopped; shutting down");
            return false;
        }
        self.next = self.next.wrapping_add(1);
        true
    }
}
