//! Giving back to the system the memory a burst of connections used, once they are gone.
//!
//! glibc keeps what a thread freed in that thread's arena for reuse, and returns to the system only
//! free memory at the very top of a heap. After a burst of connections (each holds about 40 KiB of
//! hyper's buffers on both sides) the holes between what is still live stay resident: 1.6 MiB of the
//! 5.6 MiB left after 10 s at 64 connections, all of which `malloc_trim` gives back. So when the
//! process's last client connection has ended, every arena is trimmed: at that moment no request is
//! waiting on it, and at most once a second, so a client that connects for each request does not pay
//! for it each time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Client connections open in the whole process (every worker).
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// When the arenas were last trimmed, in milliseconds after [`EPOCH`] plus [`GAP_MS`]; 0 is never.
static TRIMMED_AT: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();
/// The least time between two trims.
const GAP_MS: u64 = 1_000;

/// One open client connection, counted until it is dropped.
pub struct Open(());

impl Open {
    pub fn count() -> Self {
        OPEN.fetch_add(1, Ordering::Relaxed);
        Open(())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if OPEN.fetch_sub(1, Ordering::AcqRel) == 1 && due() {
            release_free_memory();
        }
    }
}

/// Whether a trim may run now; if so, the time is taken, so only one caller runs it.
fn due() -> bool {
    let since_epoch = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    let now = u64::try_from(since_epoch).unwrap_or(u64::MAX).saturating_add(GAP_MS);
    let last = TRIMMED_AT.load(Ordering::Relaxed);
    now.saturating_sub(last) >= GAP_MS
        && TRIMMED_AT.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: `malloc_trim` takes no pointers and has no preconditions; glibc locks each arena while
    // it trims it, so it is safe beside other threads' allocations. Its answer (whether anything was
    // given back) needs no action.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Other C libraries (musl, for one) return what they free on their own, or offer no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_connection_to_end_trims_at_most_once_a_second() {
        let first = Open::count();
        let second = Open::count();
        let before = TRIMMED_AT.load(Ordering::Relaxed);
        drop(first);
        assert_eq!(TRIMMED_AT.load(Ordering::Relaxed), before, "a connection is still open");
        drop(second);
        let trimmed = TRIMMED_AT.load(Ordering::Relaxed);
        assert!(trimmed > before, "the last one to end trims");
        drop(Open::count());
        assert_eq!(TRIMMED_AT.load(Ordering::Relaxed), trimmed, "not again within a second");
    }
}
