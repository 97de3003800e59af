//! An HTTP proxy that refuses everything: what a client run in the compatibility tests would send
//! anywhere but the forwarder goes here (`HTTPS_PROXY`, `HTTP_PROXY`), is noted, and gets a 403. So
//! nothing a real client tries can leave the machine, and a test can see what it tried.

use crate::fakes::server::{accept_each, Acceptor};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct RefusingProxy {
    pub addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    _accepting: Acceptor,
}

impl RefusingProxy {
    pub async fn start() -> RefusingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the refusing proxy");
        let addr = listener.local_addr().expect("local addr");
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let accepting = accept_each(listener, move |client| refuse(client, log.clone()));
        RefusingProxy { addr, seen, _accepting: accepting }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The first line of every request refused so far (`CONNECT host:443 HTTP/1.1`, `GET http://...`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn refuse(mut client: tokio::net::TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let first = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
    log.lock().unwrap().push(first);
    let _ =
        client.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
}
