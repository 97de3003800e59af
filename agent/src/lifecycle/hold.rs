//! When a refresh that fell due waits although this agent may refresh, sharing a login (`--lease`):
//! refresh tokens rotate, so spending a pair is only safe when the new pair can reach the other agents
//! and when nobody may have spent this one already. Two cases, both only while the access token has
//! life to spare (more than the refresh margin's floor):
//!
//! - **The API server is out of reach** (the last lease round failed): the new pair could not reach
//!   the Secret, and if this holder then lost the lease, the next one would refresh the spent pair in
//!   the Secret. The refresh waits for the API (the next round's news wakes it).
//! - **Right after taking over a lease its holder did not release**, the pair held is the one that
//!   holder left in the Secret, and it may have refreshed it moments before it stopped (during an
//!   outage, or cut off from the API alone) with its write still to come. The refresh of that inherited
//!   pair waits for the late write for a bounded time; a pair adopted meanwhile (the late write itself)
//!   is not inherited and is refreshed as usual. If no late write comes (the old holder was killed with
//!   a refresh done and not written), the refresh is refused and the "raced" wait follows: that case
//!   cannot be closed, the only copy of the new pair died with the process.
//!
//! A refresh a client asks for, or one after the upstream rejected the token, never waits here: the
//! token is wanted now.

use std::time::Duration;
use tokio::time::Instant;

/// What [`hold`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub now: Instant,
    /// When the live access token expires, by the monotonic clock.
    pub deadline: Instant,
    /// The least life a refresh starts with: a hold never goes past `deadline - floor`.
    pub floor: Duration,
    /// The last lease round could not renew or read the lease.
    pub api_unreachable: bool,
    /// Until when the pair inherited at an unreleased takeover waits for a late write (`None`: no such
    /// takeover, or the wait is over).
    pub late_write_by: Option<Instant>,
    /// The live pair is the one held when the lease was taken over.
    pub inherited: bool,
}

/// `None`: refresh now. `Some(t)`: the due refresh waits until `t` (or news that ends the reason).
pub fn hold(f: Facts) -> Option<Instant> {
    let latest = f.deadline.checked_sub(f.floor)?;
    if f.now >= latest {
        return None;
    }
    let late_write = f.late_write_by.filter(|t| f.inherited && f.now < *t);
    let until = match (f.api_unreachable, late_write) {
        (true, _) => latest,
        (false, Some(t)) => t.min(latest),
        (false, None) => return None,
    };
    Some(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_due_refresh_waits_only_with_a_reason_and_life_to_spare() {
        let now = Instant::now();
        let secs = Duration::from_secs;
        let base = Facts {
            now,
            deadline: now + secs(3600),
            floor: secs(300),
            api_unreachable: false,
            late_write_by: None,
            inherited: false,
        };
        let latest = now + secs(3300);
        let cases = [
            ("nothing to wait for", base, None),
            (
                "the API is out of reach: until the floor",
                Facts { api_unreachable: true, ..base },
                Some(latest),
            ),
            (
                "an inherited pair waits for the late write",
                Facts { late_write_by: Some(now + secs(30)), inherited: true, ..base },
                Some(now + secs(30)),
            ),
            (
                "a pair adopted after the takeover (the late write) does not wait",
                Facts { late_write_by: Some(now + secs(30)), inherited: false, ..base },
                None,
            ),
            (
                "the late-write wait never goes past the floor",
                Facts {
                    late_write_by: Some(now + secs(30)),
                    inherited: true,
                    deadline: now + secs(310),
                    ..base
                },
                Some(now + secs(10)),
            ),
            (
                "too little life left: refresh now, whatever else",
                Facts {
                    late_write_by: Some(now + secs(30)),
                    inherited: true,
                    api_unreachable: true,
                    deadline: now + secs(299),
                    ..base
                },
                None,
            ),
            (
                "a late-write wait that is over",
                Facts { late_write_by: Some(now), inherited: true, ..base },
                None,
            ),
            ("an expired token", Facts { api_unreachable: true, deadline: now, ..base }, None),
        ];
        for (name, facts, expected) in cases {
            assert_eq!(hold(facts), expected, "{name}");
        }
    }
}
