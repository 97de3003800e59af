//! One worker thread: its own single-threaded runtime, its HTTP server settings, its proxy (with its own
//! upstream pool and agent connection), and its drain. A request is served start to end on the worker
//! that accepted its connection: no work stealing, no cross-thread wake-ups, which on a small machine is
//! what most of a proxy's time goes to.

use crate::{account, agent, conn, health, keys, proxy, rejected, upstream};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// An accepted connection on its way to a worker, with its slot under `--max-connections`.
pub type Accepted = (std::net::TcpStream, std::net::SocketAddr, tokio::sync::OwnedSemaphorePermit);

/// What every worker needs to build its own proxy.
pub struct Shared {
    pub upstream: http::Uri,
    pub proxies: hyper_util::client::proxy::matcher::Matcher,
    pub roots: rustls::RootCertStore,
    pub agent: agent::AgentConfig,
    /// What the agent pushes (`--agent-mode subscribe`), for every worker.
    pub pushed: Option<Arc<agent::Pushed>>,
    pub keys: Option<Arc<keys::InboundKeys>>,
    pub max_request_body: u64,
    pub retry_body_limit: u64,
    pub drain_timeout: Duration,
    pub rejected: Arc<rejected::RejectedToken>,
    pub account: Arc<account::Account>,
    /// Set by the acceptor on SIGTERM; `/readyz` answers 503 from then on.
    pub leaving: Arc<health::Leaving>,
    pub timeouts: conn::Timeouts,
    pub max_connections: u32,
    /// True while connections wait for a slot: connections that ask nothing then make room sooner.
    pub crowded: watch::Receiver<bool>,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
}

impl Shared {
    /// Within the worker's runtime: the agent fetcher task is spawned on it.
    fn proxy(&self) -> anyhow::Result<proxy::Proxy> {
        Ok(proxy::Proxy {
            upstream: upstream::Upstream::new(&self.upstream, &self.proxies, &self.roots)
                .context("cannot set up the upstream client")?,
            tokens: agent::TokenSource::start(&self.agent, self.pushed.as_ref()),
            keys: self.keys.clone(),
            max_request_body: self.max_request_body,
            retry_body_limit: self.retry_body_limit,
            rejected: self.rejected.clone(),
            account: self.account.clone(),
            leaving: self.leaving.clone(),
        })
    }
}

/// One worker thread: serves the connections it is handed until the queue closes, then drains them.
/// Answers whether everything finished within the drain timeout.
pub fn run(mut conns: mpsc::UnboundedReceiver<Accepted>, shared: &Shared) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a worker's async runtime")?;
    runtime.block_on(async move {
        let mut server = auto::Builder::new(TokioExecutor::new());
        // No header-read timer: each connection's watcher keeps its deadlines (`conn`), and hyper's
        // would cost a timer armed and dropped, and an allocation, on every request.
        server.http1().header_read_timeout(None);
        // The HTTP/1 server for connections whose first bytes show HTTP/1 (`conn::Servers`): hyper's
        // own builder, which the auto builder cannot hand out, so any HTTP/1 setting goes on both.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.header_read_timeout(None);
        server
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(shared.http2_keepalive_interval)
            .keep_alive_timeout(shared.http2_keepalive_timeout);
        let servers = Arc::new(conn::Servers { http1, any: server });
        let worker = conn::Worker {
            servers,
            proxy: Arc::new(shared.proxy()?),
            drain: conn::Drain::new(),
            crowded: shared.crowded.clone(),
            timeouts: shared.timeouts,
        };
        while let Some((stream, peer, slot)) = conns.recv().await {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    warn!(peer = %peer, error = %e, "cannot take over a connection");
                    continue;
                }
            };
            worker.serve(stream, peer, slot);
        }
        debug!(connections = worker.drain.open_connections(), "draining");
        Ok(worker.drain.run(shared.drain_timeout).await)
    })
}
