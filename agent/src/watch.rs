//! Noticing outside changes to the seed file.
//!
//! The watch is on the seed's directory, not the file: Kubernetes updates a Secret by swapping a
//! `..data` symlink and editors replace files by rename, and both leave a watch on the old file
//! pointing at nothing. Any event in the directory triggers a re-read; the file's hash decides whether
//! anything changed. A slow poll backs the watch up on file systems that do not deliver events.

use crate::lifecycle::Input;
use crate::store::read_seed_file;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Events arriving within this window are handled as one change (an editor's write, chmod, rename).
const SETTLE: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_secs(10);

/// Starts watching `seed`; changes are sent to the lifecycle as [`Input::SeedChanged`]. `initial_sha` is the
/// hash of the seed as loaded, so an unchanged file is not re-sent. Runs until the lifecycle task is gone.
pub fn spawn(seed: PathBuf, initial_sha: Option<String>, inputs: mpsc::Sender<Input>) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let dir = match seed.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = events_tx.send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch the credentials directory; polling every {POLL:?} instead");
            None
        }
    };

    tokio::spawn(async move {
        // The watcher stops when dropped; keep it alive as long as this task.
        let _watcher = watcher;
        let mut last_sha = initial_sha;
        // What was wrong with the seed last time, so each new problem is said once.
        let mut last_problem: Option<String> = None;
        loop {
            tokio::select! {
                event = events.recv() => {
                    if event.is_none() {
                        // The watcher is gone (it failed to start): poll only.
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
                _ = inputs.closed() => return,
            }
            // Let a burst of events settle before reading.
            tokio::time::sleep(SETTLE).await;
            while events.try_recv().is_ok() {}

            let seed_path = seed.clone();
            let read = match tokio::task::spawn_blocking(move || read_seed_file(&seed_path)).await {
                Ok(r) => r,
                Err(_) => continue,
            };
            match read {
                Ok(read) => {
                    last_problem = None;
                    if last_sha.as_deref() == Some(read.sha256.as_str()) {
                        continue;
                    }
                    debug!(file = %seed.display(), "the seed changed on disk");
                    last_sha = Some(read.sha256.clone());
                    if inputs.send(Input::SeedChanged(read)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // A missing seed (a Secret being swapped, a logout) is not news worth repeating; a
                    // new problem (a FIFO, a device, a huge file) is.
                    let problem = e.to_string();
                    let had_seed = last_sha.take().is_some();
                    if had_seed || last_problem.as_deref() != Some(problem.as_str()) {
                        warn!(error = %problem, "the seed cannot be read; still serving the last good credentials");
                    }
                    last_problem = Some(problem);
                }
            }
        }
    });
}
