//! The browser mode: the redirect comes back to a listener on localhost, which answers the browser with
//! a small page once the login has finished.

use super::callback::Callback;
use super::error::LoginError;
use sidecred_proto::Secret;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long one browser connection may take to send its request line and headers.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_HEAD_MAX: usize = 16 * 1024;

/// Tells the person where to sign in, opening a browser on it when asked to.
pub fn announce_browser(url: &str, redirect_uri: &str, timeout: Duration, open: bool) {
    let opened = open && open_browser(url);
    if opened {
        eprintln!("Opening a browser to log in. If it does not open, visit this URL on this machine:");
    } else {
        eprintln!("To log in, visit this URL in a browser on this machine:");
    }
    eprintln!();
    eprintln!("{url}");
    eprintln!();
    eprintln!(
        "Waiting up to {} for the browser to come back to {} ...",
        humantime::format_duration(timeout),
        redirect_uri
    );
}

/// Starts the desktop's browser on `url`; a failure (no `xdg-open`, no desktop) only means the person
/// opens the printed URL by hand.
fn open_browser(url: &str) -> bool {
    let program = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    match std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // Reap it whenever it exits; the login does not wait for it.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            true
        }
        Err(_) => false,
    }
}

/// The loopback listener of the browser mode: `localhost` may resolve to either address family, so
/// both are served on one port.
pub struct Loopback {
    v4: TcpListener,
    v6: Option<TcpListener>,
    port: u16,
}

impl Loopback {
    pub async fn bind(port: u16) -> Result<Loopback, LoginError> {
        let v4_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v4 = TcpListener::bind(v4_addr)
            .await
            .map_err(|source| LoginError::Listen { addr: v4_addr.to_string(), source })?;
        let port = v4
            .local_addr()
            .map_err(|source| LoginError::Listen { addr: v4_addr.to_string(), source })?
            .port();
        // Hosts without IPv6 simply get no second listener.
        let v6 = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await.ok();
        Ok(Loopback { v4, v6, port })
    }

    pub fn redirect_uri(&self) -> String {
        format!("http://localhost:{}/callback", self.port)
    }

    async fn accept(&self) -> std::io::Result<TcpStream> {
        let (stream, _) = match &self.v6 {
            Some(v6) => tokio::select! {
                r = self.v4.accept() => r?,
                r = v6.accept() => r?,
            },
            None => self.v4.accept().await?,
        };
        Ok(stream)
    }

    /// Serves requests until one reaches `/callback` with this login's `state`; returns what it carried
    /// and its connection, to be answered once the login has finished. A callback with another state (a
    /// forged or stale one) is answered with an error page and the wait goes on; other requests (a
    /// favicon) get a 404.
    pub async fn wait_for_callback(&self, state: &Secret) -> Result<(Callback, TcpStream), LoginError> {
        let (tx, mut rx) = mpsc::channel::<(String, TcpStream)>(8);
        loop {
            tokio::select! {
                accepted = self.accept() => {
                    let mut stream = accepted
                        .map_err(|source| LoginError::Listen { addr: self.redirect_uri(), source })?;
                    let tx = tx.clone();
                    // Each connection reads its request on its own, so a browser's idle pre-connection
                    // cannot hold up the one that carries the code.
                    tokio::spawn(async move {
                        if let Some(target) = read_request_target(&mut stream).await {
                            let _ = tx.send((target, stream)).await;
                        }
                    });
                }
                Some((target, stream)) = rx.recv() => {
                    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
                    if path == "/callback" && Callback::query_has_state(query, state) {
                        return Ok((Callback::from_query(query), stream));
                    }
                    if path == "/callback" {
                        tracing::warn!("ignoring a callback that does not carry this login's state; still waiting");
                        let page = Page::failure("this callback does not belong to the login in progress");
                        tokio::spawn(page.send(stream));
                        continue;
                    }
                    tokio::spawn(Page::not_found().send(stream));
                }
            }
        }
    }
}

/// Reads one request head and returns its target (`/callback?code=..`) when it is a GET; answers
/// anything else itself.
async fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, async {
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_MAX {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    })
    .await;
    if !matches!(read, Ok(Some(()))) {
        return None;
    }
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" {
        let _ = stream
            .write_all(
                Page::response("405 Method Not Allowed", "Not allowed", "Only GET is served here.")
                    .as_bytes(),
            )
            .await;
        return None;
    }
    Some(target.to_owned())
}

/// The small page the browser shows once the redirect reached us.
pub struct Page {
    status: &'static str,
    title: &'static str,
    message: String,
}

impl Page {
    pub fn success(who: &str) -> Page {
        Page {
            status: "200 OK",
            title: "sidecred: logged in",
            message: format!("Logged in as {who}. You can close this tab and return to the terminal."),
        }
    }

    pub fn failure(reason: &str) -> Page {
        Page {
            status: "400 Bad Request",
            title: "sidecred: login failed",
            message: format!("The login failed: {reason}. You can close this tab; the terminal says more."),
        }
    }

    fn not_found() -> Page {
        Page { status: "404 Not Found", title: "Not found", message: "Nothing here.".into() }
    }

    fn response(status: &str, title: &str, message: &str) -> String {
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family: sans-serif; margin: 3em\"><h1>{t}</h1><p>{m}</p></body></html>\n",
            t = html_escape(title),
            m = html_escape(message)
        );
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    pub async fn send(self, mut stream: TcpStream) {
        let bytes = Page::response(self.status, self.title, &self.message);
        let _ = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, async {
            let _ = stream.write_all(bytes.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_html() {
        let r = Page::response("400 Bad Request", "t", "<script>");
        assert!(r.contains("&lt;script&gt;"));
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    }

    #[tokio::test]
    async fn loopback_serves_one_callback_and_404s_the_rest() {
        let lb = Loopback::bind(0).await.expect("bind");
        assert!(lb.redirect_uri().starts_with("http://localhost:"));
        let port = lb.port;
        let client = tokio::spawn(async move {
            let mut favicon = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            favicon.write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
            let mut answer = String::new();
            favicon.read_to_string(&mut answer).await.expect("read");
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
            // A callback with another state (forged, or a stale tab) is refused and the wait goes on.
            let mut forged = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            forged
                .write_all(b"GET /callback?code=evil&state=forged HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .expect("write");
            let mut answer = String::new();
            forged.read_to_string(&mut answer).await.expect("read");
            assert!(answer.contains("does not belong to the login in progress"), "{answer}");
            // An idle connection must not block the real one.
            let _idle = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            let mut cb = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            cb.write_all(b"GET /callback?code=c&state=s HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .expect("write");
            let mut answer = String::new();
            cb.read_to_string(&mut answer).await.expect("read");
            answer
        });
        let (callback, stream) = lb.wait_for_callback(&Secret::new("s")).await.expect("callback");
        let code = callback.into_code(&Secret::new("s")).expect("code");
        assert_eq!(code.expose(), "c");
        Page::success("me@example.com").send(stream).await;
        let answer = client.await.expect("client");
        assert!(answer.contains("You can close this tab"), "{answer}");
    }
}
