//! The guard: what this forwarder knows of the account, as states, and the two pure transitions that
//! change them: [`Guard::admit`] (a request arrives: send it, let it probe, or answer it here) and
//! [`Guard::observe`] (an answer came back). No I/O and no clock of its own: `now` is passed in, so the
//! tests drive it on tokio's paused clock.
//!
//! - A billed answer pauses the requests that would be billed the same way: those of the same client
//!   shape, or all of them when the plan itself is spent (a plan window was rejected). The pause ends at
//!   the plan window's reset, or after the probe interval; then one request goes through to see whether
//!   the plan pays again, and the rest wait for its answer. So at most one billed request per pause.
//! - A window that refused (account-wide, with a believable reset) pauses every metered request until
//!   that reset.

use super::outcome::{Outcome, Verdict, Window};
use super::shape::{Shape, SHAPES};
use std::time::Duration;
use tokio::time::Instant;

/// A probe whose answer never came (the client went away, the upstream failed) stops holding the others
/// back after this long: then the next request probes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which clients the forwarder serves at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Clients {
    /// Every client.
    Any,
    /// Claude Code's own requests only; the rest get 403.
    ClaudeCode,
}

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Off by default: the first billed answer pauses what would be billed the same way.
    pub allow_extra_usage: bool,
    pub clients: Clients,
    /// How long a pause without a known reset lasts before a request probes.
    pub probe_interval: Duration,
}

/// How one client shape's requests are paid for, as far as the answers have shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Billing {
    OnPlan,
    /// An answer was billed to extra usage: requests of this shape are answered here until `until`.
    Paused {
        since: Instant,
        until: Instant,
        window: Option<Window>,
    },
    /// One request was let through at `sent` to see whether the plan pays again.
    Probing {
        since: Instant,
        sent: Instant,
    },
}

/// Whether the account's windows let requests through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Windows {
    Open,
    Exhausted { window: Window, until: Instant },
}

/// What the guard decides for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward,
    /// Forward it as the one request that finds out whether a pause can end.
    Probe,
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `--clients claude-code`, and this is not Claude Code.
    ClientNotAllowed,
    WindowExhausted {
        window: Window,
        wait: Duration,
    },
    /// Requests like this one were billed; `plan_spent` when because the plan window is used up.
    ExtraUsage {
        wait: Duration,
        plan_spent: bool,
    },
}

/// The account's state as `/health` and the metrics show it, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    ExtraUsageInUse,
    WindowExhausted,
    ThirdPartyRefused,
    OnPlan,
}

crate::observe::instruments::label_values!(State {
    ExtraUsageInUse => "extra_usage_in_use",
    WindowExhausted => "window_exhausted",
    ThirdPartyRefused => "third_party_refused",
    OnPlan => "on_plan",
});

pub const STATES: [State; 4] =
    [State::ExtraUsageInUse, State::WindowExhausted, State::ThirdPartyRefused, State::OnPlan];

#[derive(Debug, Clone)]
pub struct Guard {
    pub config: Config,
    pub billing: [Billing; 2],
    pub windows: Windows,
    /// When the API last refused a request of each shape as third-party traffic, until one is served.
    pub refused: [Option<Instant>; 2],
}

impl Guard {
    pub fn new(config: Config) -> Guard {
        Guard {
            config,
            billing: [Billing::OnPlan, Billing::OnPlan],
            windows: Windows::Open,
            refused: [None; 2],
        }
    }

    /// Nothing paused, nothing refused: requests need no look at the state.
    pub fn is_calm(&self) -> bool {
        self.windows == Windows::Open
            && self.billing.iter().all(|b| *b == Billing::OnPlan)
            && self.refused.iter().all(Option::is_none)
    }

    /// A request of `shape` arrives; `metered` when it is one the plan pays for (a message).
    pub fn admit(&mut self, shape: Shape, metered: bool, now: Instant) -> Decision {
        if self.config.clients == Clients::ClaudeCode && shape != Shape::ClaudeCode {
            return Decision::Refuse(Refusal::ClientNotAllowed);
        }
        if !metered {
            return Decision::Forward;
        }
        if let Windows::Exhausted { window, until } = &self.windows {
            if now < *until {
                return Decision::Refuse(Refusal::WindowExhausted {
                    window: window.clone(),
                    wait: *until - now,
                });
            }
            self.windows = Windows::Open;
        }
        if self.config.allow_extra_usage {
            return Decision::Forward;
        }
        let billing = &mut self.billing[shape.index()];
        match billing {
            Billing::OnPlan => Decision::Forward,
            Billing::Paused { until, window, .. } if now < *until => {
                Decision::Refuse(Refusal::ExtraUsage { wait: *until - now, plan_spent: window.is_some() })
            }
            Billing::Probing { sent, .. } if now.saturating_duration_since(*sent) < PROBE_TIMEOUT => {
                let wait = PROBE_TIMEOUT.saturating_sub(now.saturating_duration_since(*sent));
                Decision::Refuse(Refusal::ExtraUsage { wait, plan_spent: false })
            }
            Billing::Paused { since, .. } | Billing::Probing { since, .. } => {
                *billing = Billing::Probing { since: *since, sent: now };
                Decision::Probe
            }
        }
    }

    /// An answer to a request of `shape` came back, classified as `verdict`.
    pub fn observe(&mut self, shape: Shape, verdict: &Verdict, now: Instant) {
        let i = shape.index();
        match verdict.outcome {
            Outcome::Plan => {
                self.billing[i] = Billing::OnPlan;
                self.refused[i] = None;
                self.windows = Windows::Open;
            }
            Outcome::ExtraUsage => {
                self.refused[i] = None;
                self.windows = Windows::Open;
                // Spent plan: every shape is billed until its window resets. Otherwise only requests like
                // this one are, and only a probe can tell when that ends.
                let (until, affected) = match (&verdict.window, verdict.reset) {
                    (Some(_), Some(reset)) => (now + reset, &SHAPES[..]),
                    (Some(_), None) => (now + self.config.probe_interval, &SHAPES[..]),
                    (None, _) => (now + self.config.probe_interval, &SHAPES[i..=i]),
                };
                for s in affected {
                    let billing = &mut self.billing[s.index()];
                    let since = match billing {
                        Billing::Paused { since, .. } | Billing::Probing { since, .. } => *since,
                        Billing::OnPlan => now,
                    };
                    *billing = Billing::Paused { since, until, window: verdict.window.clone() };
                }
            }
            Outcome::WindowExhausted => {
                if let (Some(window), Some(reset)) = (&verdict.window, verdict.reset) {
                    if window.is_account_wide() && !reset.is_zero() {
                        self.windows = Windows::Exhausted { window: window.clone(), until: now + reset };
                    }
                }
                self.unresolved_probe(i, now);
            }
            Outcome::ThirdPartyRefused => {
                // Refused, not billed: nothing more is spent by letting them through to be refused.
                self.refused[i] = Some(now);
                self.billing[i] = Billing::OnPlan;
            }
            Outcome::Throttled
            | Outcome::RequestLimit
            | Outcome::Overloaded
            | Outcome::Auth
            | Outcome::Other => self.unresolved_probe(i, now),
        }
    }

    /// A probe's answer said nothing about billing: the next request probes again.
    fn unresolved_probe(&mut self, i: usize, now: Instant) {
        if let Billing::Probing { since, .. } = self.billing[i] {
            self.billing[i] = Billing::Paused { since, until: now, window: None };
        }
    }

    pub fn state(&self, now: Instant) -> State {
        if self.billing.iter().any(|b| *b != Billing::OnPlan) {
            State::ExtraUsageInUse
        } else if matches!(&self.windows, Windows::Exhausted { until, .. } if now < *until) {
            State::WindowExhausted
        } else if self.refused.iter().any(Option::is_some) {
            State::ThirdPartyRefused
        } else {
            State::OnPlan
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const PROBE: Duration = Duration::from_secs(300);

    fn guard(allow_extra_usage: bool, clients: Clients) -> Guard {
        Guard::new(Config { allow_extra_usage, clients, probe_interval: PROBE })
    }

    fn verdict(outcome: Outcome, window: Option<Window>, reset: Option<Duration>) -> Verdict {
        Verdict { outcome, window, reset }
    }

    fn plan() -> Verdict {
        verdict(Outcome::Plan, None, None)
    }

    fn billed() -> Verdict {
        verdict(Outcome::ExtraUsage, None, None)
    }

    fn refused_for(wait: Duration, plan_spent: bool) -> Decision {
        Decision::Refuse(Refusal::ExtraUsage { wait, plan_spent })
    }

    #[tokio::test(start_paused = true)]
    async fn a_billed_answer_pauses_its_shape_until_one_probe_finds_the_plan_again() {
        let mut g = guard(false, Clients::Any);
        let now = Instant::now();
        assert_eq!(g.admit(Shape::Other, true, now), Decision::Forward);
        g.observe(Shape::Other, &billed(), now);
        assert_eq!(g.state(now), State::ExtraUsageInUse);
        assert_eq!(g.admit(Shape::Other, true, now), refused_for(PROBE, false));
        assert_eq!(g.admit(Shape::ClaudeCode, true, now), Decision::Forward, "Claude Code is on its plan");
        assert_eq!(g.admit(Shape::Other, false, now), Decision::Forward, "count_tokens costs nothing");

        advance(PROBE - Duration::from_secs(1)).await;
        assert_eq!(g.admit(Shape::Other, true, Instant::now()), refused_for(Duration::from_secs(1), false));
        advance(Duration::from_secs(1)).await;
        assert_eq!(g.admit(Shape::Other, true, Instant::now()), Decision::Probe, "one goes through");
        assert!(matches!(g.admit(Shape::Other, true, Instant::now()), Decision::Refuse(_)), "the rest wait");
        g.observe(Shape::Other, &plan(), Instant::now());
        assert_eq!(g.admit(Shape::Other, true, Instant::now()), Decision::Forward);
        assert_eq!(g.state(Instant::now()), State::OnPlan);
        assert!(g.is_calm());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_billed_again_pauses_again_and_keeps_when_it_started() {
        let mut g = guard(false, Clients::Any);
        let start = Instant::now();
        g.observe(Shape::Other, &billed(), start);
        advance(PROBE).await;
        assert_eq!(g.admit(Shape::Other, true, Instant::now()), Decision::Probe);
        g.observe(Shape::Other, &billed(), Instant::now());
        assert_eq!(
            g.billing[1],
            Billing::Paused { since: start, until: Instant::now() + PROBE, window: None }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_without_an_answer_or_with_an_unrelated_one_lets_another_probe() {
        let mut g = guard(false, Clients::Any);
        g.observe(Shape::Other, &billed(), Instant::now());
        advance(PROBE).await;
        assert_eq!(g.admit(Shape::Other, true, Instant::now()), Decision::Probe);
        advance(PROBE_TIMEOUT - Duration::from_secs(1)).await;
        assert!(matches!(g.admit(Shape::Other, true, Instant::now()), Decision::Refuse(_)));
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            g.admit(Shape::Other, true, Instant::now()),
            Decision::Probe,
            "the lost probe stops holding"
        );
        g.observe(Shape::Other, &verdict(Outcome::Overloaded, None, None), Instant::now());
        assert_eq!(
            g.admit(Shape::Other, true, Instant::now()),
            Decision::Probe,
            "a 529 says nothing of billing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_plan_pauses_every_shape_until_its_reset() {
        let mut g = guard(false, Clients::Any);
        let reset = Duration::from_secs(7200);
        g.observe(
            Shape::ClaudeCode,
            &verdict(Outcome::ExtraUsage, Some(Window::FiveHour), Some(reset)),
            Instant::now(),
        );
        for shape in SHAPES {
            assert_eq!(g.admit(shape, true, Instant::now()), refused_for(reset, true), "{shape:?}");
        }
        advance(reset).await;
        assert_eq!(g.admit(Shape::Other, true, Instant::now()), Decision::Probe);
        assert_eq!(g.admit(Shape::ClaudeCode, true, Instant::now()), Decision::Probe, "each shape probes");
        let mut g = guard(false, Clients::Any);
        g.observe(Shape::Other, &verdict(Outcome::ExtraUsage, Some(Window::SevenDay), None), Instant::now());
        assert_eq!(
            g.admit(Shape::ClaudeCode, true, Instant::now()),
            refused_for(PROBE, true),
            "no reset: the probe interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn allowed_extra_usage_is_shown_but_not_stopped() {
        let mut g = guard(true, Clients::Any);
        g.observe(Shape::Other, &billed(), Instant::now());
        assert_eq!(g.state(Instant::now()), State::ExtraUsageInUse);
        for _ in 0..50 {
            assert_eq!(g.admit(Shape::Other, true, Instant::now()), Decision::Forward);
        }
        g.observe(Shape::Other, &plan(), Instant::now());
        assert_eq!(g.state(Instant::now()), State::OnPlan);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_window_answers_everything_until_its_reset() {
        let mut g = guard(true, Clients::Any);
        let reset = Duration::from_secs(90);
        g.observe(
            Shape::Other,
            &verdict(Outcome::WindowExhausted, Some(Window::FiveHour), Some(reset)),
            Instant::now(),
        );
        assert_eq!(g.state(Instant::now()), State::WindowExhausted);
        for shape in SHAPES {
            assert_eq!(
                g.admit(shape, true, Instant::now()),
                Decision::Refuse(Refusal::WindowExhausted { window: Window::FiveHour, wait: reset }),
                "even with extra usage allowed: the API refused, it did not bill"
            );
        }
        assert_eq!(g.admit(Shape::Other, false, Instant::now()), Decision::Forward, "not metered");
        advance(Duration::from_secs(89)).await;
        assert!(matches!(g.admit(Shape::Other, true, Instant::now()), Decision::Refuse(_)));
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            g.admit(Shape::Other, true, Instant::now()),
            Decision::Forward,
            "traffic flows at the reset"
        );
        assert_eq!(g.state(Instant::now()), State::OnPlan);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_without_a_believable_reset_or_per_model_pause_nothing() {
        let mut g = guard(false, Clients::Any);
        let now = Instant::now();
        for v in [
            verdict(Outcome::WindowExhausted, Some(Window::FiveHour), None),
            verdict(Outcome::WindowExhausted, Some(Window::Account), Some(Duration::ZERO)),
            verdict(Outcome::WindowExhausted, Some(Window::Model("7d_oi".into())), Some(PROBE)),
            verdict(Outcome::RequestLimit, None, None),
            verdict(Outcome::Throttled, None, None),
            verdict(Outcome::Overloaded, None, None),
            verdict(Outcome::Auth, None, None),
            verdict(Outcome::Other, None, None),
        ] {
            g.observe(Shape::Other, &v, now);
            assert_eq!(g.admit(Shape::Other, true, now), Decision::Forward, "{v:?}");
            assert!(g.is_calm(), "{v:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_third_party_refusal_is_shown_until_a_request_of_that_shape_is_served() {
        let mut g = guard(false, Clients::Any);
        g.observe(Shape::Other, &verdict(Outcome::ThirdPartyRefused, None, None), Instant::now());
        assert_eq!(g.state(Instant::now()), State::ThirdPartyRefused);
        assert_eq!(g.admit(Shape::Other, true, Instant::now()), Decision::Forward, "refused costs nothing");
        g.observe(Shape::ClaudeCode, &plan(), Instant::now());
        assert_eq!(g.state(Instant::now()), State::ThirdPartyRefused);
        g.observe(Shape::Other, &plan(), Instant::now());
        assert_eq!(g.state(Instant::now()), State::OnPlan);
    }

    #[tokio::test(start_paused = true)]
    async fn claude_code_only_refuses_other_clients_on_every_route() {
        let mut g = guard(true, Clients::ClaudeCode);
        for metered in [true, false] {
            assert_eq!(
                g.admit(Shape::Other, metered, Instant::now()),
                Decision::Refuse(Refusal::ClientNotAllowed)
            );
            assert_eq!(g.admit(Shape::ClaudeCode, metered, Instant::now()), Decision::Forward);
        }
    }
}
