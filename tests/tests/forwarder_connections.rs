//! The forwarder's client connections against the real binaries: deadlines for connections that never
//! ask, idle and unresponsive HTTP/2 peers, the connection cap under a low file-descriptor limit, and
//! what a client sees of a drain (a kept-alive connection, a connection still in the listen backlog).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use sidecred_tests::forwarder_harness::{forwarder_cmd, http_client, start_forwarder, Backends};
use sidecred_tests::harness::wait_until;
use sidecred_tests::raw_http::{self, read_to_eof, H2_EMPTY_SETTINGS, H2_PREFACE};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn message() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/messages")
        .header("host", "forwarder")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"model":"m","max_tokens":1,"messages":[]}"#)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_asks_is_closed_after_the_first_request_timeout() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &["--first-request-timeout", "500ms"]).await;
    // Nothing; half the HTTP/2 preface (the protocol sniff waits for the rest); the whole preface and
    // SETTINGS but never a stream; an HTTP/1 head that never ends.
    let openings: [&[u8]; 4] = [
        b"",
        &H2_PREFACE[..16],
        &[H2_PREFACE, H2_EMPTY_SETTINGS].concat(),
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n",
    ];
    let mut conns = Vec::new();
    for opening in openings {
        let mut stream = TcpStream::connect(fwd.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        conns.push(stream);
    }
    for (i, stream) in conns.iter_mut().enumerate() {
        // Before, each of these was held open for good (the last one for hyper's 30 s header timeout).
        let (_, closed_after) = read_to_eof(stream, Duration::from_secs(10)).await;
        assert!(closed_after < Duration::from_secs(5), "connection {i} closed after {closed_after:?}");
    }
    // A client that asks is served as usual.
    let resp = http_client().post(fwd.url("/v1/messages")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let mut late = TcpStream::connect(fwd.addr).await.unwrap();
    let (_, closed_after) = read_to_eof(&mut late, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the timeout: {closed_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_sent_goaway_and_a_silent_peer_is_dropped() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &["--idle-timeout", "500ms"]).await;

    // An HTTP/2 client that asked once and then went quiet: closed by the server, not held.
    let stream = TcpStream::connect(fwd.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(message()).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let idle_from = Instant::now();
    // Well before the first-request timeout (10 s), which once set the watcher's timer until then.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was still open after 5 s (idle timeout 500 ms)");
    assert!(idle_from.elapsed() >= Duration::from_millis(400), "closed after {:?}", idle_from.elapsed());

    // A peer that completes the handshake and then answers no ping is dropped by the keepalive.
    let fwd = backends
        .forwarder(
            "forwarder-keepalive",
            &[
                "--first-request-timeout",
                "60s",
                "--http2-keepalive-interval",
                "200ms",
                "--http2-keepalive-timeout",
                "300ms",
            ],
        )
        .await;
    let mut stream = TcpStream::connect(fwd.addr).await.unwrap();
    stream.write_all(&[H2_PREFACE, H2_EMPTY_SETTINGS].concat()).await.unwrap();
    let (bytes, closed_after) = read_to_eof(&mut stream, Duration::from_secs(10)).await;
    assert!(frame_types(&bytes).contains(&6), "no PING before the close: {:?}", frame_types(&bytes));
    assert!(closed_after < Duration::from_secs(5), "closed after {closed_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_connection_idle_or_stalled_in_its_next_head_is_closed_after_the_idle_timeout() {
    let backends = Backends::start().await;
    let fwd = backends.forwarder("forwarder", &["--idle-timeout", "500ms"]).await;
    let body = r#"{"model":"m","max_tokens":1,"messages":[]}"#;
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: forwarder\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // After one answered request: nothing more, and the start of a head that never ends (the
    // slowloris that hyper's own header timer once cut, after 30 s).
    for next in ["", "POST /v1/messages HTTP/1.1\r\nHost: forwarder\r\n"] {
        let mut stream = TcpStream::connect(fwd.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_one_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let idle_from = Instant::now();
        stream.write_all(next.as_bytes()).await.unwrap();
        let (rest, _) = read_to_eof(&mut stream, Duration::from_secs(10)).await;
        let closed_after = idle_from.elapsed();
        assert!(rest.is_empty(), "{next:?}: answered {:?}", String::from_utf8_lossy(&rest));
        assert!(closed_after >= Duration::from_millis(400), "{next:?}: closed after {closed_after:?}");
        assert!(closed_after < Duration::from_secs(5), "{next:?}: closed after {closed_after:?}");
    }
}

/// Reads one whole HTTP/1 response (a Content-Length or chunked body) and nothing after it.
async fn read_one_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|n| n.trim().parse::<usize>().unwrap());
            let done = match length {
                Some(n) => body.len() >= n,
                None => body.ends_with("0\r\n\r\n"),
            };
            if done {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("no whole response within 10 s")
            .unwrap();
        assert!(n > 0, "closed before the response was whole: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// The types of the HTTP/2 frames in `bytes` (a server sends no preface).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = bytes.get(9 + len..).unwrap_or_default();
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_past_the_descriptor_limit_do_not_lock_clients_out() {
    let backends = Backends::start().await;
    // The review's attack, scaled down: a forwarder allowed 128 descriptors and 200 connections that
    // say nothing. Before, they took every descriptor and were never closed: no client got in again.
    // Now about 36 are served at once, and while others wait, those that ask nothing get a second.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--nofile=128:128", "--"]).arg(sidecred_tests::harness::forwarder_bin());
    let inner = forwarder_cmd(&backends.sandbox, &backends.upstream.url());
    cmd.args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let fwd = start_forwarder(&backends.sandbox, "forwarder", cmd).await;
    let log = fwd.proc.log();
    let cap_line = log.lines().find(|l| l.contains("connection cap")).expect("the cap is logged");
    assert!(cap_line.contains("fd_limit=128"), "{cap_line}");

    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(fwd.addr).await.unwrap());
    }
    let started = Instant::now();
    let resp = http_client()
        .post(fwd.url("/v1/messages"))
        .body("{}")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("a client behind 200 silent connections is served");
    assert_eq!(resp.status(), 200);
    eprintln!("served after {:?} behind 200 silent connections", started.elapsed());
    fwd.proc.wait_for_log("connection cap reached (--max-connections)", Duration::from_secs(5)).await;
    drop(silent);

    // A cap the limit cannot carry is refused at start, naming the flag.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--nofile=128:128", "--"]).arg(sidecred_tests::harness::forwarder_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--max-connections", "5000"]).env_remove("SIDECRED_MAX_CONNECTIONS");
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-connections 5000") && stderr.contains("128"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_kept_alive_http1_clients_to_close_instead_of_dropping_their_request() {
    let backends = Backends::start().await;
    // A linger long enough that the request below surely comes within it, however slow the machine: what
    // is tested is what happens to a request on an idle connection during the drain, not how long.
    let mut fwd = backends.forwarder("forwarder", &["--drain-linger", "60s"]).await;
    let stream = TcpStream::connect(fwd.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(message()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("connection").is_none(), "kept alive before the drain");
    resp.into_body().collect().await.unwrap();

    // The connection is idle when the drain starts. Before, it was closed at that instant, and a
    // request the client sent at the same moment was lost.
    fwd.proc.signal(Signal::SIGTERM);
    fwd.proc.wait_for_log("shutting down", Duration::from_secs(10)).await;
    // hyper's client refuses a request ("connection was not ready") until its connection task has taken
    // in the end of the last response, which a loaded machine may not have run yet.
    sender.ready().await.expect("the kept-alive connection is still open during the drain");
    let resp =
        sender.send_request(message()).await.expect("a request on the kept-alive connection is served");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    resp.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the server closes after it")
        .unwrap()
        .unwrap();
    // The connection closed, so the drain is over long before the linger.
    assert!(fwd.proc.wait_exit(Duration::from_secs(10)).success());

    // With the default linger (1 s), a kept-alive connection nobody uses does not hold the drain.
    let mut fwd = backends.forwarder("forwarder-idle", &[]).await;
    let stream = TcpStream::connect(fwd.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    sender.send_request(message()).await.unwrap().into_body().collect().await.unwrap();
    fwd.proc.signal(Signal::SIGTERM);
    assert!(fwd.proc.wait_exit(Duration::from_secs(15)).success());
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .unwrap();

    // A request in flight when the drain starts is answered, and told the connection closes.
    let mut fwd = backends.forwarder("forwarder-2", &[]).await;
    backends.upstream.set_delay(Duration::from_millis(500));
    let stream = TcpStream::connect(fwd.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let connections_before = backends.upstream.connections();
    let in_flight = tokio::spawn(sender.send_request(message()));
    // This forwarder opens its first upstream connection for this request.
    wait_until("the request to reach the upstream", Duration::from_secs(10), || {
        backends.upstream.connections() > connections_before
    })
    .await;
    fwd.proc.signal(Signal::SIGTERM);
    let resp = in_flight.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert!(fwd.proc.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_in_the_backlog_at_sigterm_are_served() {
    let backends = Backends::start().await;
    let mut fwd = backends.forwarder("forwarder", &[]).await;
    // Stopped, the forwarder accepts nothing; the kernel still completes handshakes into the backlog,
    // and the clients send their requests. Before, closing the listener reset them all.
    fwd.proc.signal(Signal::SIGSTOP);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(fwd.addr).await.unwrap();
        let request =
            "POST /v1/messages HTTP/1.1\r\nHost: f\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        stream.write_all(request.as_bytes()).await.unwrap();
        clients.push(stream);
    }
    fwd.proc.signal(Signal::SIGTERM);
    fwd.proc.signal(Signal::SIGCONT);
    for (i, mut stream) in clients.into_iter().enumerate() {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
        assert!(matches!(read, Ok(Ok(_))), "client {i}: {read:?}");
        let resp = raw_http::parse(&bytes);
        assert_eq!(resp.status, 200, "client {i}: {resp:?}");
    }
    assert!(fwd.proc.wait_exit(Duration::from_secs(10)).success());
}
