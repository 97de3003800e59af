//! HTTP written by hand, for what a well-behaved client library will not send: paths with `..` (which
//! URL parsers resolve away), a `Connection` header naming an end-to-end header, a connection that
//! says nothing or half an HTTP/2 preface.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty HTTP/2 SETTINGS frame: length 0, type 4, no flags, stream 0.
pub const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `head` (request line and headers, without the blank line; `Connection: close` is added) and
/// `body` on a new connection, and reads the response to the end.
pub async fn send(addr: SocketAddr, head: &str, body: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the forwarder");
    let request = format!("{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let (bytes, _) = read_to_eof(&mut stream, Duration::from_secs(20)).await;
    parse(&bytes)
}

/// Reads until the peer closes; answers what arrived and when the close came (measured from the call).
/// Panics after `timeout`: a connection that is never closed is what the caller is testing for.
pub async fn read_to_eof(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = timeout.checked_sub(started.elapsed()).unwrap_or_default();
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after {timeout:?} ({} bytes read)", out.len()),
        }
    }
}

/// Parses a response read to the end of the connection (Content-Length or chunked bodies).
pub fn parse(bytes: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(bytes);
    let (head, rest) =
        text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    RawResponse { status, headers, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        body.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    body
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = super::parse(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert_eq!(
            (r.status, r.header("content-type"), r.body.as_str()),
            (400, Some("application/json"), "{}")
        );
        let r = super::parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
    }
}
