//! The Unix socket server's transport: binding safely, a thread per connection with adaptive polling,
//! and checking who is asking (by the kernel's word, SO_PEERCRED). What each request gets is in
//! [`answers`].

mod answers;

use crate::lifecycle::{Input, Snapshot};
use answers::Answers;
use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use sidecred_proto::blocking::{read_frame, write_frame};
use sidecred_proto::{ErrorCode, FrameError, ProtoError, RequestFrame, Response, ResponseFrame};
use std::io::BufReader;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

/// Connections served at once (a thread each); beyond this, new ones wait in the kernel's backlog. A
/// forwarder keeps a few per worker, a probe one for a moment.
const MAX_CONNECTIONS: usize = 256;

/// A connection thread's stack: it decodes and encodes small JSON messages and nothing deeper. Only the
/// pages touched count towards RSS.
const CONNECTION_STACK: usize = 256 * 1024;

/// Requests are a few dozen bytes; one read usually takes a whole frame.
const READ_BUFFER: usize = 2048;

/// How long a busy connection polls for its next request before parking in `read` (see [`Pacer`]).
const POLL_WINDOW: Duration = Duration::from_micros(50);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another agent is already serving on {0}; stop it first or choose another --socket")]
    InUse(PathBuf),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create the socket directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

pub struct Config {
    pub path: PathBuf,
    pub mode: u32,
    pub allowed_uids: Vec<u32>,
    /// How long a token request may wait for a refresh when the token has expired.
    pub expired_wait: Duration,
    /// Upper bound on waiting for a refresh the client asked for.
    pub refresh_wait: Duration,
}

/// Binds the socket. A leftover socket file is replaced only when nothing answers on it.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| BindError::Dir { path: dir.to_owned(), source })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket { path: path.to_owned() });
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            info!(socket = %path.display(), "removing a stale socket nothing answers on");
            let _ = std::fs::remove_file(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(BindError::Bind { path: path.to_owned(), source }),
    }
    let listener =
        UnixListener::bind(path).map_err(|source| BindError::Bind { path: path.to_owned(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| BindError::Bind { path: path.to_owned(), source })?;
    Ok(listener)
}

struct Context {
    allowed_uids: Vec<u32>,
    answers: Answers,
    /// Set at shutdown: connection threads answer nothing more.
    closing: AtomicBool,
}

/// Accepts connections until `shutdown` fires.
///
/// Each connection gets its own thread doing blocking I/O, because a token request is a few
/// microseconds of work and most of its latency is waking up whoever has to answer it: a thread parked in
/// `read` on the socket is woken by the kernel directly, where a runtime task needs the reactor, a
/// scheduler hand-off and more syscalls. Clients keep few connections open for a long time (the
/// forwarder pools them), so the threads are few; anything that has to wait is handed to the runtime.
pub async fn serve(
    listener: UnixListener,
    config: Config,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    inputs: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Context {
        allowed_uids: config.allowed_uids,
        answers: Answers::new(snapshot, inputs, config.expired_wait, config.refresh_wait),
        closing: AtomicBool::new(false),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, _)) => start_connection(stream, ctx.clone(), permit),
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    ctx.closing.store(true, Ordering::Release);
}

fn start_connection(stream: UnixStream, ctx: Arc<Context>, permit: OwnedSemaphorePermit) {
    let peer = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            warn!(error = %e, "cannot read the peer's credentials; closing");
            return;
        }
    };
    let stream = match stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot prepare the connection; closing");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("sidecred-conn".to_owned())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            serve_connection(&stream, peer, &ctx);
            drop(permit);
        });
    // On failure the closure, and with it the connection, is dropped: the client sees it closed.
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread for the connection; closing it");
    }
}

fn serve_connection(stream: &std::os::unix::net::UnixStream, peer: UCred, ctx: &Context) {
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut writer = stream;
    let mut buf = Vec::with_capacity(512);
    if !ctx.allowed_uids.contains(&peer.uid()) {
        // Read (and discard) the request first, so the peer is not writing into a closed socket when the
        // answer arrives and sees the reason instead of a broken pipe.
        if stream.set_read_timeout(Some(Duration::from_secs(1))).is_ok() {
            let _ = read_frame::<_, RequestFrame>(&mut reader, &mut buf);
        }
        warn!(uid = peer.uid(), pid = ?peer.pid(), "refusing a peer whose uid is not allowed (see --allow-uid)");
        let denied = ProtoError::new(
            ErrorCode::PermissionDenied,
            format!("uid {} is not allowed to use this agent (see --allow-uid)", peer.uid()),
        );
        let _ = write_frame(&mut writer, &ResponseFrame::from(Response::Error(denied)));
        return;
    }
    let mut pacer = Pacer::default();
    loop {
        if reader.buffer().is_empty() {
            pacer.await_request(stream);
        }
        let response = match read_frame::<_, RequestFrame>(&mut reader, &mut buf) {
            Ok(None) => return,
            Ok(Some(_)) if ctx.closing.load(Ordering::Acquire) => return,
            Ok(Some(frame)) => {
                pacer.arrived();
                ctx.answers.answer(frame.request)
            }
            Err(FrameError::Io(_) | FrameError::Truncated) => return,
            Err(e) => {
                let code = match e {
                    FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                    _ => ErrorCode::BadRequest,
                };
                debug!(uid = peer.uid(), error = %e, "bad request; closing the connection");
                let answer = Response::Error(ProtoError::new(code, e.to_string()));
                let _ = write_frame(&mut writer, &ResponseFrame::from(answer));
                return;
            }
        };
        if write_frame(&mut writer, &ResponseFrame::from(response)).is_err() {
            return;
        }
        pacer.answered();
    }
}

/// Adaptive polling of a busy connection. A client asking back to back (a loaded forwarder) sends its
/// next request a few microseconds after our answer; parking the thread in `read` then costs a sleep
/// and a cross-CPU wake-up that take longer than the wait itself, so a connection whose last request
/// came within [`POLL_WINDOW`] of the answer before it polls for that long first, yielding the CPU
/// between polls. An idle connection goes straight to `read`: polling costs nothing when there is
/// nothing to poll for.
#[derive(Default)]
struct Pacer {
    answered_at: Option<std::time::Instant>,
    busy: bool,
}

impl Pacer {
    fn answered(&mut self) {
        self.answered_at = Some(std::time::Instant::now());
    }

    fn arrived(&mut self) {
        self.busy = self.answered_at.is_some_and(|t| t.elapsed() <= POLL_WINDOW);
    }

    fn await_request(&self, stream: &std::os::unix::net::UnixStream) {
        let Some(answered_at) = self.answered_at.filter(|_| self.busy) else { return };
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let mut probe = [0u8; 1];
        while answered_at.elapsed() < POLL_WINDOW {
            match nix::sys::socket::recv(stream.as_raw_fd(), &mut probe, flags) {
                Err(Errno::EAGAIN) => std::thread::yield_now(),
                // Data, end of stream or an error: the read that follows sees it.
                _ => return,
            }
        }
    }
}
