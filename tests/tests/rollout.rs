//! A rolling update under load: two real forwarders (one agent, the fake API) behind a round-robin TCP
//! balancer that learns of a backend's end late, as a Service's endpoints do. One forwarder is sent
//! SIGTERM while clients keep opening connections. With the default `--shutdown-delay` no connection is
//! refused and no request fails: the forwarder keeps accepting while its `/readyz` says 503, and the
//! balancer stops routing to it before its listener closes. With no delay the listener closes while the
//! balancer still routes to it, and connections are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sidecred_tests::forwarder_harness::{forwarder_cmd, start_forwarder, Backends, Forwarder};
use sidecred_tests::harness::wait_until;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How often the balancer asks each backend's `/readyz`.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long after a backend is seen not ready the balancer still routes to it: kube-proxy, an ingress
/// controller or a cloud load balancer learns of an endpoint change this late, or later.
const PROPAGATION: Duration = Duration::from_millis(500);
/// Clients sending at once, each one request per connection.
const CLIENTS: usize = 4;

/// A backend as the balancer sees it.
struct Backend {
    addr: SocketAddr,
    /// When `/readyz` first failed; out of rotation from `PROPAGATION` later on.
    not_ready_since: Mutex<Option<Instant>>,
    /// Connections routed to it.
    routed: AtomicU64,
}

impl Backend {
    fn in_rotation(&self, now: Instant) -> bool {
        self.not_ready_since.lock().unwrap().is_none_or(|since| now < since + PROPAGATION)
    }
}

/// Round robin over the backends in rotation. A connection to a backend that refuses it is not retried
/// elsewhere (kube-proxy's DNAT does not either): the client's connection is dropped and counted.
struct Balancer {
    addr: SocketAddr,
    backends: Vec<Arc<Backend>>,
    refused: Arc<AtomicU64>,
    other_connect_errors: Arc<AtomicU64>,
}

impl Balancer {
    async fn start(backends: &[SocketAddr]) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends: Vec<Arc<Backend>> = backends
            .iter()
            .map(|&addr| {
                Arc::new(Backend { addr, not_ready_since: Mutex::new(None), routed: AtomicU64::new(0) })
            })
            .collect();
        let refused = Arc::new(AtomicU64::new(0));
        let other_connect_errors = Arc::new(AtomicU64::new(0));
        for backend in &backends {
            tokio::spawn(check_readiness(backend.clone()));
        }
        let (pool, refused_, others) = (backends.clone(), refused.clone(), other_connect_errors.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let now = Instant::now();
                let live: Vec<&Arc<Backend>> = pool.iter().filter(|b| b.in_rotation(now)).collect();
                if live.is_empty() {
                    others.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let backend = live[next % live.len()].clone();
                next = next.wrapping_add(1);
                backend.routed.fetch_add(1, Ordering::SeqCst);
                let (refused, others) = (refused_.clone(), others.clone());
                tokio::spawn(async move {
                    let upstream =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(backend.addr)).await;
                    match upstream {
                        Ok(Ok(mut upstream)) => {
                            let mut client = client;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            others.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        Balancer { addr, backends, refused, other_connect_errors }
    }

    fn routed_to(&self, addr: SocketAddr) -> u64 {
        self.backends.iter().find(|b| b.addr == addr).map_or(0, |b| b.routed.load(Ordering::SeqCst))
    }
}

/// Asks `/readyz` every `CHECK_EVERY`; the first answer that is not 200 (or no answer) takes the backend
/// out of rotation `PROPAGATION` later, for good (a terminating pod does not come back).
async fn check_readiness(backend: Arc<Backend>) {
    loop {
        let ready = tokio::time::timeout(Duration::from_secs(1), status_of(backend.addr, "/readyz"))
            .await
            .is_ok_and(|status| status == Some(200));
        if !ready {
            backend.not_ready_since.lock().unwrap().get_or_insert_with(Instant::now);
            return;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// The status of a GET on its own connection, or None when the connection or the answer failed.
async fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut head = Vec::new();
    conn.read_to_end(&mut head).await.ok()?;
    std::str::from_utf8(&head).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// Clients that each send one request per connection, through the balancer, until stopped.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_failure: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(balancer: SocketAddr) -> Load {
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let first_failure = Arc::new(Mutex::new(None));
        // No pooled connections: every request opens its own, as new clients of a Service do.
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
        let url = format!("http://{balancer}/v1/messages");
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (ok, failed, stop, client, url, first_failure) =
                    (ok.clone(), failed.clone(), stop.clone(), client.clone(), url.clone(), first_failure.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let sent = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await;
                        let outcome = match sent {
                            Ok(resp) if resp.status() == 200 => resp.bytes().await.map(|_| ()).map_err(|e| e.to_string()),
                            Ok(resp) => Err(format!("status {}", resp.status())),
                            Err(e) => Err(e.to_string()),
                        };
                        match outcome {
                            Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                            Err(e) => {
                                first_failure.lock().unwrap().get_or_insert(e);
                                failed.fetch_add(1, Ordering::SeqCst)
                            }
                        };
                    }
                })
            })
            .collect();
        Load { ok, failed, first_failure, stop, tasks }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    async fn stop(self) -> (u64, u64, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failure = self.first_failure.lock().unwrap().take();
        (self.ok.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst), failure)
    }
}

/// Two forwarders in front of one agent; the first with `delay` as its `--shutdown-delay` (None: the
/// binary's default, as the manifests' 5 s is).
async fn two_forwarders(backends: &Backends, delay: Option<&str>) -> (Forwarder, Forwarder) {
    let mut cmd = forwarder_cmd(&backends.sandbox, &backends.upstream.url());
    // The harness sets no delay for the tests that are not about it; this one is.
    cmd.env_remove("SIDECRED_SHUTDOWN_DELAY");
    if let Some(delay) = delay {
        cmd.args(["--shutdown-delay", delay]);
    }
    let leaving = start_forwarder(&backends.sandbox, "forwarder-leaving", cmd).await;
    let staying = backends.forwarder("forwarder-staying", &[]).await;
    (leaving, staying)
}

/// Two forwarders behind the balancer, with requests flowing through both. Fields drop in this order:
/// the load first, the backends last.
struct Rollout {
    load: Load,
    balancer: Balancer,
    staying: Forwarder,
    leaving: Forwarder,
    backends: Backends,
}

impl Rollout {
    /// `delay` is the leaving forwarder's `--shutdown-delay` (see [`two_forwarders`]).
    async fn under_load(delay: Option<&str>) -> Rollout {
        let backends = Backends::start().await;
        let (leaving, staying) = two_forwarders(&backends, delay).await;
        let balancer = Balancer::start(&[leaving.addr, staying.addr]).await;
        let load = Load::start(balancer.addr);
        wait_until("requests through both forwarders", Duration::from_secs(30), || {
            load.ok() >= 40 && balancer.routed_to(leaving.addr) >= 10
        })
        .await;
        Rollout { load, balancer, staying, leaving, backends }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_forwarder_refuses_no_connection_while_the_balancer_catches_up() {
    let Rollout { load, balancer, staying: _staying, mut leaving, backends: _backends } =
        Rollout::under_load(None).await;

    leaving.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let routed_before = balancer.routed_to(leaving.addr);
    let terminated = Instant::now();
    let status = leaving.proc.wait_exit(Duration::from_secs(40));
    let stopped_after = terminated.elapsed();
    assert!(status.success(), "the terminated forwarder exited {status:?}; log:\n{}", leaving.proc.log());
    // Traffic goes on through the other one.
    let ok_at_exit = load.ok();
    wait_until("requests after the exit", Duration::from_secs(30), || load.ok() >= ok_at_exit + 40).await;
    let (ok, failed, first_failure) = load.stop().await;

    let routed_after_sigterm = balancer.routed_to(leaving.addr) - routed_before;
    let refused = balancer.refused.load(Ordering::SeqCst);
    let other = balancer.other_connect_errors.load(Ordering::SeqCst);
    eprintln!(
        "{ok} requests ok, {failed} failed; {routed_after_sigterm} connections reached the terminated forwarder \
         after SIGTERM; {refused} refused; it stopped {stopped_after:?} after SIGTERM"
    );
    assert!(
        routed_after_sigterm >= 1,
        "the balancer never routed to it after SIGTERM: the test proves nothing"
    );
    assert_eq!(refused, 0, "connections refused during the rollout");
    assert_eq!(other, 0, "connections to a backend failed during the rollout");
    assert_eq!(failed, 0, "requests failed during the rollout; the first: {first_failure:?}");
    assert!(stopped_after >= Duration::from_secs(5), "it stopped before its 5 s delay: {stopped_after:?}");
    let log = leaving.proc.log();
    assert!(log.contains("connections are still accepted for the shutdown delay"), "{log}");
    assert!(log.contains("shutting down: not accepting"), "{log}");
}

/// The same rollout without the delay: the failure the delay prevents, so that the test above is known to
/// be able to fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_shutdown_delay_the_balancer_meets_a_closed_listener() {
    let Rollout { load, balancer, staying, mut leaving, backends: _backends } =
        Rollout::under_load(Some("0s")).await;

    leaving.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = leaving.proc.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "exit status {status:?}");
    let refused = balancer.refused.clone();
    wait_until("a refused connection", Duration::from_secs(10), || refused.load(Ordering::SeqCst) >= 1).await;
    let (_, failed, _) = load.stop().await;
    assert!(failed >= 1, "a refused connection is a failed request for its client");
    drop(staying);
}
