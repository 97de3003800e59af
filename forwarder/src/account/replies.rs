//! The guard's own answers, in the API's error shape so SDKs raise their usual errors: `403
//! permission_error` for a client `--clients claude-code` does not serve, `429 rate_limit_error` with an
//! honest `retry-after` for a pause. Each message says why and what the operator can do.

use super::guard::Refusal;
use super::reset::retry_after_secs;
use crate::errors::ErrorReply;
use crate::observe::metrics::RequestOutcome;
use http::StatusCode;
use std::time::{Duration, SystemTime};

/// The longest wait the official SDKs honour before retrying by themselves; beyond it a retry cannot
/// help, and the answer says so (`x-should-retry: false`).
pub const SDK_RETRY_LIMIT: Duration = Duration::from_secs(60);

pub fn reply(refusal: &Refusal, wall_now: SystemTime) -> ErrorReply {
    match refusal {
        Refusal::ClientNotAllowed => ErrorReply::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "this sidecred forwarder runs with --clients claude-code: it serves Claude Code's own requests only \
             (user-agent claude-cli/..., x-app: cli), which is what the subscription's plan is for, and this \
             request does not come from Claude Code. Use an Anthropic API key for this client, or ask the \
             operator for a forwarder without --clients claude-code",
        )
        .final_answer()
        .counted_as(RequestOutcome::AccountGuard),
        Refusal::WindowExhausted { window, wait } => paused(
            format!(
                "the account's {} usage window is used up until {} (the API refused a request with that \
                 window rejected); sidecred answers for the API until then instead of sending requests that \
                 cannot be served",
                window.name(),
                at(wall_now, *wait)
            ),
            *wait,
        ),
        Refusal::ExtraUsage { wait, plan_spent } => {
            let why = if *plan_spent {
                "the plan's usage window is used up, and the API billed a request to the account's extra usage"
            } else {
                "the API billed a request from this kind of client to the account's extra usage, not the plan \
                 (it does that to traffic it does not judge to be Claude Code)"
            };
            paused(
                format!(
                    "{why}; sidecred keeps the account on its plan, so it stops requests that would be billed \
                     the same way until {} (then one is let through to see whether the plan pays again). To \
                     allow extra usage, the operator runs the forwarder with --allow-extra-usage \
                     (SIDECRED_ALLOW_EXTRA_USAGE=true)",
                    at(wall_now, *wait)
                ),
                *wait,
            )
        }
    }
}

fn paused(message: String, wait: Duration) -> ErrorReply {
    let mut e = ErrorReply::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        .counted_as(RequestOutcome::AccountGuard);
    e.retry_after = Some(retry_after_secs(wait));
    if wait > SDK_RETRY_LIMIT {
        e = e.final_answer();
    }
    e
}

/// The time a wait ends, in the same whole seconds `retry-after` gives.
fn at(wall_now: SystemTime, wait: Duration) -> String {
    let wait = Duration::from_secs(retry_after_secs(wait));
    let when = wall_now.checked_add(wait).unwrap_or(wall_now);
    humantime::format_rfc3339_seconds(when).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::account::outcome::Window;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_612_400)
    }

    #[test]
    fn a_client_not_allowed_is_a_final_403_naming_the_mode() {
        let e = reply(&Refusal::ClientNotAllowed, now());
        assert_eq!((e.status, e.kind, e.retry), (StatusCode::FORBIDDEN, "permission_error", Some(false)));
        assert!(e.message.contains("--clients claude-code"), "{}", e.message);
    }

    #[test]
    fn a_short_pause_leaves_the_retry_to_the_client_and_a_long_one_says_none_helps() {
        let short = reply(
            &Refusal::WindowExhausted { window: Window::FiveHour, wait: Duration::from_millis(30_500) },
            now(),
        );
        assert_eq!((short.status, short.kind), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"));
        assert_eq!((short.retry_after, short.retry), (Some(31), None));
        assert!(
            short.message.contains("5h usage window") && short.message.contains("2026-12-07T03:00:31Z"),
            "{}",
            short.message
        );
        let long = reply(&Refusal::ExtraUsage { wait: Duration::from_secs(7200), plan_spent: false }, now());
        assert_eq!((long.retry_after, long.retry), (Some(7200), Some(false)));
        assert!(
            long.message.contains("--allow-extra-usage")
                && long.message.contains("SIDECRED_ALLOW_EXTRA_USAGE")
        );
        let resp = long.into_response();
        assert_eq!(resp.headers()["retry-after"], "7200");
        assert_eq!(resp.headers()["x-should-retry"], "false");
    }
}
