//! The Unix socket server's transport: binding safely, a thread per connection with adaptive polling,
//! and checking who is asking (by the kernel's word, SO_PEERCRED). What each request gets is in
//! [`answers`]; a connection that subscribes is handed to a task on the runtime ([`subscription`]),
//! keeping its slot.

mod answers;
mod connection;
mod subscription;

use crate::lifecycle::{Input, Snapshot};
use answers::Answers;
use sidecred_proto::ErrorCode;
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// Connections of allowed peers served at once (a thread each); beyond this, new ones wait in the
/// kernel's backlog. A forwarder keeps a few per worker, a probe one for a moment.
const MAX_CONNECTIONS: usize = 256;

/// When more than one uid is allowed, the most connections one of them may hold, so that the others
/// (the forwarder among them) always find a slot.
const MAX_PER_UID: usize = MAX_CONNECTIONS * 3 / 4;

/// Refused peers being told why at once; more are closed without an answer. Each takes at most one
/// frame deadline.
const MAX_REFUSALS: usize = 8;

/// A connection thread's stack: it decodes and encodes small JSON messages and nothing deeper. Only the
/// pages touched count towards RSS.
const CONNECTION_STACK: usize = 256 * 1024;

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
    #[error("the socket directory is not safe: {0}")]
    UnsafeDir(#[from] crate::atomic::UnsafeDir),
}

pub struct Config {
    pub path: PathBuf,
    pub mode: u32,
    pub allowed_uids: Vec<u32>,
    /// How long a token request may wait for a refresh when the token has expired.
    pub expired_wait: Duration,
    /// Upper bound on waiting for a refresh the client asked for.
    pub refresh_wait: Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

/// Binds the socket. A leftover socket file is replaced only when nothing answers on it.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            // Others may traverse it (the socket's own mode decides who may connect), never write.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| BindError::Dir { path: dir.to_owned(), source })?;
        }
        crate::atomic::check_private_dir(dir)?;
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
    idle_timeout: Duration,
    answers: Answers,
    /// Connections each allowed uid holds now.
    held: Mutex<HashMap<u32, usize>>,
    refusals: AtomicUsize,
    /// Set at shutdown: connection threads answer nothing more.
    closing: AtomicBool,
}

/// Who may take a connection thread, decided before anything is read from the peer.
enum Admission {
    Serve(UidSlot),
    Refuse(ErrorCode, String),
}

/// One connection's share of its uid's slots, given back when the connection ends.
struct UidSlot {
    ctx: Arc<Context>,
    uid: u32,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut held = self.ctx.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Context {
    fn admit(self: &Arc<Self>, uid: u32) -> Admission {
        if !self.allowed_uids.contains(&uid) {
            return Admission::Refuse(
                ErrorCode::PermissionDenied,
                format!("uid {uid} is not allowed to use this agent (see --allow-uid)"),
            );
        }
        let cap = if self.allowed_uids.len() > 1 { MAX_PER_UID } else { MAX_CONNECTIONS };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(uid).or_insert(0);
        if *n >= cap {
            return Admission::Refuse(
                ErrorCode::Unavailable,
                format!("uid {uid} holds {cap} connections to this agent already; close some and retry"),
            );
        }
        *n += 1;
        Admission::Serve(UidSlot { ctx: self.clone(), uid })
    }
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
        idle_timeout: config.idle_timeout,
        answers: Answers::new(snapshot, inputs, config.expired_wait, config.refresh_wait),
        held: Mutex::new(HashMap::new()),
        refusals: AtomicUsize::new(0),
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
    // Who is asking is known before a byte is read: the kernel says so.
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
    let uid = peer.uid();
    let work: Box<dyn FnOnce() + Send> = match ctx.admit(uid) {
        Admission::Serve(slot) => Box::new(move || {
            if connection::serve(&stream, uid, &slot.ctx) == connection::Ended::Subscribed {
                let (runtime, snapshot) = slot.ctx.answers.follow();
                subscription::start(&runtime, stream, snapshot, (slot, permit));
            }
        }),
        Admission::Refuse(code, why) => {
            // A refused peer gives its slot back at once and is told why from a budget of its own.
            drop(permit);
            connection::log_refusal(uid, peer.pid(), &why);
            if ctx.refusals.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS {
                ctx.refusals.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            let ctx = ctx.clone();
            Box::new(move || {
                connection::turn_away(&stream, code, &why);
                ctx.refusals.fetch_sub(1, Ordering::AcqRel);
            })
        }
    };
    let spawned =
        std::thread::Builder::new().name("sidecred-conn".to_owned()).stack_size(CONNECTION_STACK).spawn(work);
    // On failure the closure, and with it the connection, is dropped: the client sees it closed.
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread for the connection; closing it");
    }
}
