//! The account's metrics, registered together in one place: every upstream answer by outcome and client
//! shape, the guard's own answers by reason and shape, and the account's state as a one-hot gauge.
//! Label values are fixed sets; each label set is resolved once and kept in a slot, so a request costs
//! an atomic add.

use super::guard::{State, STATES};
use super::outcome::{Outcome, OUTCOMES};
use super::shape::{Shape, SHAPES};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

/// Why the guard answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    ClientNotAllowed,
    WindowExhausted,
    ExtraUsage,
}

crate::observe::instruments::label_values!(RefusalReason {
    ClientNotAllowed => "client_not_allowed",
    WindowExhausted => "window_exhausted",
    ExtraUsage => "extra_usage",
});

const REASONS: [RefusalReason; 3] =
    [RefusalReason::ClientNotAllowed, RefusalReason::WindowExhausted, RefusalReason::ExtraUsage];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
    client: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: RefusalReason,
    client: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: State,
}

pub struct AccountMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    outcome_slots: Box<[OnceLock<Counter>]>,
    refusals: Family<RefusalLabels, Counter>,
    refusal_slots: Box<[OnceLock<Counter>]>,
    state: Family<StateLabels, Gauge>,
}

impl AccountMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let outcomes = Family::default();
        registry.register(
            "upstream_outcomes",
            "Upstream answers by what they say of the account (plan, extra_usage, window_exhausted, ...) and \
             by client shape (claude_code, other)",
            outcomes.clone(),
        );
        let refusals = Family::default();
        registry.register(
            "account_guard_refusals",
            "Requests the forwarder answered itself to keep the account on its plan, by reason and client shape",
            refusals.clone(),
        );
        let state = Family::default();
        registry.register(
            "account_state",
            "1 for the account's state as this forwarder last saw it (on_plan, window_exhausted, \
             extra_usage_in_use, third_party_refused)",
            state.clone(),
        );
        let metrics = AccountMetrics {
            outcomes,
            outcome_slots: (0..OUTCOMES.len() * SHAPES.len()).map(|_| OnceLock::new()).collect(),
            refusals,
            refusal_slots: (0..REASONS.len() * SHAPES.len()).map(|_| OnceLock::new()).collect(),
            state,
        };
        // Every series exists from the start at 0, so the first billed answer is an increase an alert
        // sees (a series that appears at 1 shows none).
        for outcome in OUTCOMES {
            for client in SHAPES {
                let _ = metrics.outcomes.get_or_create(&OutcomeLabels { outcome, client });
            }
        }
        for reason in REASONS {
            for client in SHAPES {
                let _ = metrics.refusals.get_or_create(&RefusalLabels { reason, client });
            }
        }
        metrics.set_state(State::OnPlan);
        metrics
    }

    pub fn outcome(&self, outcome: Outcome, client: Shape) {
        let slot = outcome as usize * SHAPES.len() + client.index();
        if let Some(slot) = self.outcome_slots.get(slot) {
            slot.get_or_init(|| self.outcomes.get_or_create(&OutcomeLabels { outcome, client }).clone())
                .inc();
        }
    }

    pub fn refusal(&self, reason: RefusalReason, client: Shape) {
        let slot = reason as usize * SHAPES.len() + client.index();
        if let Some(slot) = self.refusal_slots.get(slot) {
            slot.get_or_init(|| self.refusals.get_or_create(&RefusalLabels { reason, client }).clone()).inc();
        }
    }

    pub fn set_state(&self, now: State) {
        for state in STATES {
            self.state.get_or_create(&StateLabels { state }).set(i64::from(state == now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_set_has_a_slot_and_the_state_is_one_hot() {
        let mut registry = Registry::default();
        let m = AccountMetrics::register(&mut registry);
        for outcome in OUTCOMES {
            for client in SHAPES {
                m.outcome(outcome, client);
            }
        }
        m.refusal(RefusalReason::ExtraUsage, Shape::Other);
        m.refusal(RefusalReason::ClientNotAllowed, Shape::Other);
        m.set_state(State::WindowExhausted);
        let mut page = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut page, &registry);
        assert!(
            page.contains(
                r#"account_guard_refusals_total{reason="window_exhausted",client="claude_code"} 0"#
            ),
            "{page}"
        );
        assert_eq!(page.matches("upstream_outcomes_total{").count(), OUTCOMES.len() * SHAPES.len(), "{page}");
        assert!(
            page.contains(r#"upstream_outcomes_total{outcome="extra_usage",client="other"} 1"#),
            "{page}"
        );
        assert!(
            page.contains(r#"account_guard_refusals_total{reason="client_not_allowed",client="other"} 1"#)
        );
        assert!(page.contains(r#"account_state{state="window_exhausted"} 1"#), "{page}");
        assert!(page.contains(r#"account_state{state="on_plan"} 0"#), "{page}");
    }
}
