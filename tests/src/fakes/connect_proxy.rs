//! A fake of an HTTP proxy that only tunnels (CONNECT), as found between a cluster and the internet.

use crate::fakes::server::{accept_each, Acceptor};
use std::sync::Arc;

/// The CONNECT line and the `Proxy-Authorization` value of each tunnel opened.
type Tunnels = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// A minimal HTTP CONNECT proxy: records each CONNECT line and `Proxy-Authorization`, then tunnels.
pub struct ConnectProxy {
    pub addr: std::net::SocketAddr,
    seen: Tunnels,
    _accepting: Acceptor,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Tunnels = Arc::default();
        let log = seen.clone();
        let accepting = accept_each(listener, move |client| tunnel(client, log.clone()));
        ConnectProxy { addr, seen, _accepting: accepting }
    }

    /// The tunnels opened so far.
    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }
}

async fn tunnel(mut client: tokio::net::TcpStream, log: Tunnels) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let first = head.lines().next().unwrap_or("").to_owned();
    let auth = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Proxy-Authorization: ").or_else(|| l.strip_prefix("proxy-authorization: "))
        })
        .map(str::to_owned);
    log.lock().unwrap().push((first.clone(), auth));
    let target = first.split_whitespace().nth(1).unwrap_or("").to_owned();
    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    let _ = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
