//! How refreshes and retries are timed: the refresh margin, the backoff, and how close to expiry a token
//! stops being handed out.

use std::time::Duration;

/// A token this close to expiry is treated as expired; the forwarder holding a pushed token uses the
/// same guard, so it is defined with the protocol.
pub use sidecred_proto::EXPIRY_GUARD;

#[derive(Debug, Clone)]
pub struct Policy {
    /// Refresh when less than max(margin_min, margin_fraction × lifetime) is left.
    pub margin_min: Duration,
    pub margin_fraction: f64,
    /// Lifetime assumed for a token read from a file, whose issue time is unknown.
    pub assumed_lifetime: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// After a successful refresh, a report that the new token was rejected does not cause another
    /// refresh within this time: an upstream that rejects every token must not drain the endpoint.
    pub rejection_cooldown: Duration,
    /// A login older than this is reported (`status`, the metric the alert compares with): refresh
    /// tokens nobody renews have been seen to stop working after about 55 days.
    pub login_max_age: Duration,
}

/// `--login-max-age`'s default: some days before the ~55 at which such logins were seen to die.
pub const LOGIN_MAX_AGE: Duration = Duration::from_secs(50 * 86_400);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            margin_min: Duration::from_secs(300),
            margin_fraction: 0.10,
            assumed_lifetime: Duration::from_secs(8 * 3600),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            rejection_cooldown: Duration::from_secs(10),
            login_max_age: LOGIN_MAX_AGE,
        }
    }
}

impl Policy {
    /// How long before expiry to refresh a token that lives `lifetime`. Never more than half the
    /// lifetime, so a short-lived token is not refreshed in a loop.
    pub fn margin(&self, lifetime: Duration) -> Duration {
        let proportional = lifetime.mul_f64(self.margin_fraction.clamp(0.0, 1.0));
        self.margin_min.max(proportional).min(lifetime / 2)
    }

    /// The wait before retry number `attempt` (1-based): doubling from `backoff_min`, capped at
    /// `backoff_max`, with `jitter` in [0, 1] taking up to half of it off so many agents do not retry in
    /// step. A `Retry-After` from the server is a floor.
    pub fn backoff(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exp = self.backoff_min.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
        let capped = exp.min(self.backoff_max);
        let jittered = capped.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0));
        jittered.max(retry_after.unwrap_or_default())
    }

    /// The wait before retrying a save that failed `attempt` times in a row (a full disk does not
    /// mend in a second): the refresh backoff, never under a second.
    pub fn save_retry(&self, attempt: u32, jitter: f64) -> Duration {
        self.backoff(attempt, jitter, None).max(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_the_larger_of_the_floor_and_the_fraction_but_at_most_half() {
        let p = Policy::default();
        assert_eq!(p.margin(Duration::from_secs(8 * 3600)), Duration::from_secs(2880));
        assert_eq!(p.margin(Duration::from_secs(3600)), Duration::from_secs(360));
        assert_eq!(p.margin(Duration::from_secs(1800)), Duration::from_secs(300));
        assert_eq!(p.margin(Duration::from_secs(60)), Duration::from_secs(30));
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_bounds() {
        let p = Policy::default();
        assert_eq!(p.backoff(1, 0.0, None), Duration::from_secs(1));
        assert_eq!(p.backoff(2, 0.0, None), Duration::from_secs(2));
        assert_eq!(p.backoff(5, 0.0, None), Duration::from_secs(16));
        assert_eq!(p.backoff(20, 0.0, None), Duration::from_secs(300));
        assert_eq!(p.backoff(u32::MAX, 0.0, None), Duration::from_secs(300));
        assert_eq!(p.backoff(20, 1.0, None), Duration::from_secs(150));
        for attempt in 1..40 {
            for jitter in [0.0, 0.3, 0.99, 1.0] {
                let d = p.backoff(attempt, jitter, None);
                assert!(d >= p.backoff_min / 2 && d <= p.backoff_max, "{attempt} {jitter} {d:?}");
            }
        }
        assert_eq!(p.backoff(1, 0.0, Some(Duration::from_secs(30))), Duration::from_secs(30));
    }
}
