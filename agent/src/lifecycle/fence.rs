//! The lease's fence, by a clock that counts a suspend.
//!
//! The fence is a promise about real time: another agent may take the lease over a lease duration after
//! our last renewal, by *its* clock, which kept running while this machine was suspended (a VM paused or
//! migrated, a laptop lid closed). The monotonic clock (tokio's, `CLOCK_MONOTONIC`) stands still during a
//! suspend, so by it a holder that wakes up after a minute still has most of its fence left, and could
//! start a refresh with a pair the new holder is spending. `CLOCK_BOOTTIME` counts the suspend. A fence
//! is kept by both clocks, read at the same moment: the monotonic one for tokio's timers (the request's
//! deadline), the boot clock for how much time is really left, and the lesser of the two counts.
//!
//! Off Linux there is no `CLOCK_BOOTTIME`; the boot clock then falls back to the monotonic one (as
//! before: a suspend there is caught only by the lifecycle's wall-clock check and the next lease round).

use std::time::Duration;
use tokio::time::Instant;

/// Time since boot, counting a suspend.
pub fn since_boot() -> Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u32::try_from(t.tv_nsec()).unwrap_or(0).min(999_999_999);
        return Duration::new(secs, nanos);
    }
    monotonic_since_start()
}

fn monotonic_since_start() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// The instant another agent could take the lease over, by both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub at: Instant,
    /// The same instant as [`since_boot`] will read it.
    pub boot: Duration,
}

impl Fence {
    /// The fence `after` a moment read as `at` and `boot` (both clocks at once).
    pub fn after(at: Instant, boot: Duration, after: Duration) -> Option<Fence> {
        Some(Fence { at: at.checked_add(after)?, boot: boot.checked_add(after)? })
    }

    /// Time left before the fence at the moment read as `at` and `boot`: the lesser by the two clocks.
    pub fn left(&self, at: Instant, boot: Duration) -> Duration {
        self.at.saturating_duration_since(at).min(self.boot.saturating_sub(boot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward_with_the_monotonic_one() {
        let (b0, m0) = (since_boot(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (b1, m1) = (since_boot(), std::time::Instant::now());
        let boot = b1.saturating_sub(b0);
        let mono = m1.duration_since(m0);
        assert!(boot >= Duration::from_millis(20), "{boot:?}");
        // Read a moment apart: within a few milliseconds of each other while nothing is suspended.
        assert!(boot.abs_diff(mono) < Duration::from_millis(50), "boot {boot:?}, monotonic {mono:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspend_uses_up_the_fence_by_the_boot_clock() {
        let (now, boot) = (Instant::now(), Duration::from_secs(1000));
        let fence = Fence::after(now, boot, Duration::from_secs(14)).unwrap();
        assert_eq!(fence.left(now, boot), Duration::from_secs(14));
        // 4 s later by both clocks.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(fence.left(Instant::now(), boot + Duration::from_secs(4)), Duration::from_secs(10));
        // Then a suspend of a minute: the monotonic clock did not move, the boot clock did.
        assert_eq!(fence.left(Instant::now(), boot + Duration::from_secs(64)), Duration::ZERO);
        // A boot clock behind the monotonic one (off Linux, the fallback) never gives more time.
        assert_eq!(fence.left(Instant::now(), boot), Duration::from_secs(10));
    }
}
