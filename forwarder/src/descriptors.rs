//! The file-descriptor budget. At start the soft `RLIMIT_NOFILE` is raised to the hard limit, and the
//! connection cap is set below what that allows: past the cap, new connections wait in the kernel's
//! listen backlog, instead of `accept` failing with EMFILE for every client while the descriptors the
//! forwarder itself needs (upstream and agent connections) run out too.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors one client connection may hold: its own and, while an HTTP/1 upstream request is in
/// flight, one to the upstream.
const FDS_PER_CONNECTION: u64 = 2;

/// The cap when none is given and the descriptor limit allows more: about 50 KiB of memory per open
/// stream puts this near 500 MiB.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// Descriptors the process needs besides its connections: stdio, the listener, each worker's runtime
/// (epoll, eventfd) and its pooled agent connections, and room for a log file or a DNS lookup.
fn reserved(workers: u16) -> u64 {
    32 + u64::from(workers) * (crate::agent::MAX_IDLE as u64 + 4)
}

/// The descriptor limit after [`raise_nofile`].
#[derive(Debug, Clone, Copy)]
pub struct NoFile {
    pub limit: u64,
    /// The soft limit found at start, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft descriptor limit to the hard one; answers the limit in force. A failure leaves the
/// soft limit as it was (the cap is then computed from it).
pub fn raise_nofile() -> Result<NoFile, String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    if soft >= hard {
        return Ok(NoFile { limit: soft, raised_from: None });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(NoFile { limit: hard, raised_from: Some(soft) }),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the file-descriptor limit; keeping the soft one");
            Ok(NoFile { limit: soft, raised_from: None })
        }
    }
}

/// The connection cap: `requested` when the limit can carry it, else an error naming the flag; by
/// default as many as fit, at most [`DEFAULT_MAX_CONNECTIONS`].
pub fn max_connections(requested: Option<u32>, limit: u64, workers: u16) -> Result<u32, String> {
    let reserve = reserved(workers);
    let fit = u32::try_from(limit.saturating_sub(reserve) / FDS_PER_CONNECTION).unwrap_or(u32::MAX);
    if fit == 0 {
        return Err(format!(
            "the file-descriptor limit (RLIMIT_NOFILE) is {limit}: too low to serve anyone with \
             --workers {workers}, which needs {} besides its connections; raise it (ulimit -n, or the \
             container runtime's nofile limit)",
            reserve
        ));
    }
    match requested {
        None => Ok(fit.min(DEFAULT_MAX_CONNECTIONS)),
        Some(n) if n <= fit => Ok(n),
        Some(n) => Err(format!(
            "--max-connections {n} needs about {} file descriptors, but the limit (RLIMIT_NOFILE) is \
             {limit}: lower --max-connections to {fit} or less, or raise the limit (ulimit -n, or the \
             container runtime's nofile limit)",
            u64::from(n) * FDS_PER_CONNECTION + reserve
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fits_under_the_limit() {
        // The review's machine: `ulimit -n 256`.
        let cap = max_connections(None, 256, 2).expect("fits");
        assert!(u64::from(cap) * FDS_PER_CONNECTION + reserved(2) <= 256, "{cap}");
        assert!(cap >= 50, "{cap}");
        assert_eq!(max_connections(None, 1 << 20, 2), Ok(DEFAULT_MAX_CONNECTIONS));
    }

    #[test]
    fn a_cap_the_limit_cannot_carry_is_an_error_naming_the_flag() {
        assert_eq!(max_connections(Some(100), 256, 2), Ok(100));
        let e = max_connections(Some(5000), 1024, 2).expect_err("too many");
        assert!(e.contains("--max-connections 5000") && e.contains("1024"), "{e}");
        let e = max_connections(None, 40, 2).expect_err("too low");
        assert!(e.contains("RLIMIT_NOFILE") && e.contains("40"), "{e}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let before = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let nofile = raise_nofile().expect("raise");
        let after = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(after.0, after.1, "soft raised to hard");
        assert_eq!(nofile.limit, after.0);
        assert_eq!(nofile.raised_from, (before.0 < before.1).then_some(before.0));
    }
}
