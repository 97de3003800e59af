//! `--probe`: checks from inside the container that a forwarder answers on `--listen`, for exec probes.
//! The kubelet's own `httpGet` and `tcpSocket` probes connect to the pod's IP, so they cannot see a
//! forwarder that listens on loopback only, as the sidecar does (127.0.0.1:8000); without a probe, the
//! app beside it may start before the port is open. `GET /livez` and a 200 mean "serving HTTP"; whether
//! a token is served is the agent's own probe.

use crate::health::LIVEZ_PATH;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The whole check (connect, request, status line) ends by then: under the kubelet's `timeoutSeconds`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The status line is all that is read; a peer that sends more without a line end is not a forwarder.
const MAX_STATUS_LINE: usize = 1024;

/// Where to connect for a forwarder listening on `listen`: an unspecified address (0.0.0.0, [::])
/// listens on loopback too.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Ok when `GET /livez` on `listen` is answered 200 within `timeout`; otherwise what went wrong.
pub fn check(listen: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let addr = target(listen);
    let deadline = Instant::now() + timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("no forwarder answers on {addr} (--listen / SIDECRED_LISTEN)"))?;
    conn.set_write_timeout(Some(remaining())).context("setting the probe's write timeout")?;
    let request = format!("GET {LIVEZ_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).with_context(|| format!("sending GET {LIVEZ_PATH} to {addr}"))?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !line.windows(2).any(|w| w == b"\r\n") {
        if Instant::now() >= deadline {
            bail!("{addr} did not answer GET {LIVEZ_PATH} within {timeout:?}");
        }
        conn.set_read_timeout(Some(remaining())).context("setting the probe's read timeout")?;
        let n = conn
            .read(&mut buf)
            .with_context(|| format!("{addr} did not answer GET {LIVEZ_PATH} within {timeout:?}"))?;
        if n == 0 {
            bail!("{addr} closed the connection without answering GET {LIVEZ_PATH}");
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_STATUS_LINE {
            bail!("{addr} answered GET {LIVEZ_PATH} with no HTTP status line in its first {MAX_STATUS_LINE} bytes");
        }
    }
    let end = line.windows(2).position(|w| w == b"\r\n").unwrap_or(line.len());
    let status = String::from_utf8_lossy(&line[..end]);
    let code = status.split(' ').nth(1);
    if !status.starts_with("HTTP/1.") || code != Some("200") {
        // Printable ASCII only: this goes into the kubelet's events.
        let shown: String = status.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(80).collect();
        bail!("{addr} answered GET {LIVEZ_PATH} with `{shown}`, not 200");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection server that reads the request head and answers `reply` (None: never answers).
    fn serve_once(reply: Option<&'static [u8]>) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            match reply {
                // The probe may close first (the cap): a failed write is not the test's business.
                Some(r) => drop(conn.write_all(r)),
                // Holds the connection open until the probe gives up and closes it.
                None => while conn.read(&mut buf).map(|n| n > 0).unwrap_or(false) {},
            }
            head
        });
        (addr, handle)
    }

    #[test]
    fn a_200_to_get_livez_passes() {
        let (addr, server) = serve_once(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"));
        check(addr, PROBE_TIMEOUT).unwrap();
        let head = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(head.starts_with("GET /livez HTTP/1.1\r\n"), "{head}");
    }

    #[test]
    fn another_status_fails_and_says_which() {
        let (addr, _server) = serve_once(Some(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        let err = check(addr, PROBE_TIMEOUT).unwrap_err().to_string();
        assert!(err.contains("HTTP/1.1 503 Service Unavailable") && err.contains("not 200"), "{err}");
    }

    #[test]
    fn nothing_listening_fails_naming_the_address() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = check(addr, PROBE_TIMEOUT).unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()) && err.contains("SIDECRED_LISTEN"), "{err}");
    }

    #[test]
    fn a_peer_that_never_answers_fails_by_the_deadline() {
        let (addr, _server) = serve_once(None);
        let started = Instant::now();
        let err = check(addr, Duration::from_millis(300)).unwrap_err().to_string();
        assert!(err.contains("did not answer"), "{err}");
        // Generous: a busy machine is late, never early.
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn an_endless_line_fails_at_the_cap() {
        static JUNK: [u8; 4096] = [b'x'; 4096];
        let (addr, _server) = serve_once(Some(&JUNK));
        let err = check(addr, PROBE_TIMEOUT).unwrap_err().to_string();
        assert!(err.contains("no HTTP status line"), "{err}");
    }

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        assert_eq!(target("0.0.0.0:8000".parse().unwrap()), "127.0.0.1:8000".parse().unwrap());
        assert_eq!(target("[::]:8000".parse().unwrap()), "[::1]:8000".parse().unwrap());
        assert_eq!(target("10.1.2.3:8000".parse().unwrap()), "10.1.2.3:8000".parse().unwrap());
    }
}
