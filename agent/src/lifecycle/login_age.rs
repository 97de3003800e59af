//! The login's clock as the lifecycle keeps it: started when a login without a record is first seen,
//! carried over when the same pair arrives with a better record, and judged against
//! `--login-max-age`. The record itself lives in the credentials document
//! ([`crate::credentials::LoginClock`]), so saves and the Secret write-back carry it.

use crate::credentials::{ClockStart, Credentials, LoginClock};
use std::time::Duration;
use tracing::info;

/// `credentials` with a clock: its own record, or one that starts now.
pub fn with_clock(credentials: Credentials, now_ms: u64) -> Credentials {
    if credentials.login_clock().is_some() {
        return credentials;
    }
    info!(
        access_token = %credentials.access_token,
        "the credentials carry no record of when this login was made (an older file, or a login made \
         elsewhere); its age counts from now, so the login is at least as old as shown"
    );
    credentials.with_login_clock(LoginClock::first_seen(now_ms))
}

/// When `seed` holds the pair that is live, the better of the two clocks for the live pair, if that is
/// not the live one already: every agent sharing the login ends up with the same clock.
pub fn carried(live: &Credentials, seed: &Credentials) -> Option<Credentials> {
    let theirs = seed.login_clock()?;
    let merged = live.login_clock().map_or(theirs, |ours| ours.merge(theirs));
    (live.login_clock() != Some(merged)).then(|| live.with_login_clock(merged))
}

/// The line `status` shows once the login is older than `max_age`.
pub fn warning(clock: LoginClock, max_age: Duration, now_ms: u64) -> Option<String> {
    let age = clock.age(now_ms);
    if age < max_age {
        return None;
    }
    let at_least = match clock.start {
        ClockStart::Login => "",
        ClockStart::FirstSeen => "at least ",
    };
    Some(format!(
        "the login is {at_least}{} days old (--login-max-age {} days): refresh tokens that no person \
         renews have been seen to stop working after about 55 days; log in again (`sidecred-agent login`, \
         then update the credentials file or Secret) before it does",
        age.as_secs() / 86_400,
        max_age.as_secs() / 86_400
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::TokenUpdate;
    use sidecred_proto::Secret;
    use std::path::Path;

    const DAY_MS: u64 = 86_400_000;

    fn creds(clock: Option<LoginClock>) -> Credentials {
        let json = r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1800000000000}}"#;
        let c = Credentials::parse(json.as_bytes(), Path::new("x")).expect("parse");
        match clock {
            Some(clock) => c.with_login_clock(clock),
            None => c,
        }
    }

    #[test]
    fn a_login_without_a_record_starts_its_clock_when_first_seen() {
        let c = with_clock(creds(None), 5 * DAY_MS);
        assert_eq!(c.login_clock(), Some(LoginClock::first_seen(5 * DAY_MS)));
        let c = with_clock(creds(Some(LoginClock::login(DAY_MS))), 5 * DAY_MS);
        assert_eq!(c.login_clock(), Some(LoginClock::login(DAY_MS)), "a record is kept");
    }

    #[test]
    fn the_same_pair_takes_the_better_clock() {
        let ours = creds(Some(LoginClock::first_seen(9 * DAY_MS)));
        let theirs = creds(Some(LoginClock::login(DAY_MS)));
        let merged = carried(&ours, &theirs).expect("a better clock");
        assert_eq!(merged.login_clock(), Some(LoginClock::login(DAY_MS)));
        assert!(merged.same_tokens(&ours));
        assert!(carried(&theirs, &ours).is_none(), "ours is already the better one");
        assert!(carried(&ours, &creds(None)).is_none(), "a seed without a record changes nothing");
        let refreshed = theirs.with_update(TokenUpdate {
            access_token: Secret::new("a2"),
            refresh_token: None,
            expires_at_ms: 1,
            scopes: None,
        });
        assert_eq!(refreshed.login_clock(), Some(LoginClock::login(DAY_MS)));
    }

    #[test]
    fn the_warning_comes_at_the_limit_and_says_how_sure_it_is() {
        let max = Duration::from_secs(50 * 86_400);
        let login = LoginClock::login(DAY_MS);
        assert_eq!(warning(login, max, 50 * DAY_MS), None);
        let w = warning(login, max, 51 * DAY_MS).expect("at the limit");
        assert!(w.contains("is 50 days old (--login-max-age 50 days)"), "{w}");
        let seen = LoginClock::first_seen(DAY_MS);
        assert!(warning(seen, max, 61 * DAY_MS).expect("past it").contains("at least 60 days"));
        // Absurd times neither overflow nor warn about a login from the future.
        assert_eq!(warning(LoginClock::login(u64::MAX), max, 0), None);
        assert!(warning(LoginClock::login(0), max, u64::MAX).is_some());
        assert!(warning(login, Duration::MAX, u64::MAX).is_none());
    }
}
