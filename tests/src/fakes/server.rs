//! The HTTP/1.1 server the fakes of outside services run on.

/// An HTTP/1.1 server for the fakes (on a loopback port in the tests); stopped when dropped.
pub struct FakeServer {
    pub addr: std::net::SocketAddr,
    _accepting: Acceptor,
}

/// The accept loop of a fake that speaks TCP; dropping it stops accepting (connections already taken
/// run on in their own tasks until they end).
pub struct Acceptor(tokio::task::JoinHandle<()>);

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes every connection `listener` accepts and serves it with `serve` in a task of its own. A failed
/// accept (a peer gone before it was taken) is skipped.
pub fn accept_each<F, Fut>(listener: tokio::net::TcpListener, mut serve: F) -> Acceptor
where
    F: FnMut(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Acceptor(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(serve(stream));
        }
    }))
}

impl FakeServer {
    /// Serves every connection on `addr` with `handler` (a `service_fn` body). A busy port is an error
    /// to report, not a panic: the demo stand-in takes its address from the user.
    pub async fn bind<F, Fut, B, E>(addr: std::net::SocketAddr, handler: F) -> std::io::Result<FakeServer>
    where
        F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let accepting = accept_each(listener, move |stream| {
            let handler = handler.clone();
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper::service::service_fn(handler),
                    )
                    .await;
            }
        });
        Ok(FakeServer { addr, _accepting: accepting })
    }
}
