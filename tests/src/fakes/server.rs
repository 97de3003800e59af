//! The HTTP/1.1 server the fakes of outside services run on.

/// An HTTP/1.1 server on a loopback port, for the fakes; stopped when dropped.
pub struct FakeServer {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Serves every connection with `handler` (a `service_fn` body).
    pub async fn start<F, Fut, B, E>(handler: F) -> FakeServer
    where
        F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a fake server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(handler),
                        )
                        .await;
                });
            }
        });
        FakeServer { addr, task }
    }
}
