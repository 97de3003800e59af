//! Why the token endpoint refused a refresh token (`invalid_grant`): a refresh token dies when it is
//! spent, and who spent it decides what an operator must do.
//!
//! - [`Refusal::Foreign`]: no agent of ours spent it (our records and the shared Secret agree it was
//!   the live one), so something else refreshed this login: a laptop's Claude Code, another deployment
//!   given the same login. It is the most common way a login dies, and logging in again only helps
//!   once the other user stops.
//! - [`Refusal::OursSpent`]: this agent, or another agent sharing the login, spent it: it is among the
//!   refresh tokens we rotated away, the Secret has moved on to another pair, or it went out in a
//!   refresh whose answer never came back (the endpoint may have rotated it anyway).
//! - [`Refusal::Raced`]: the first refresh after taking over a lease its holder did not release; the
//!   old holder may have spent the token moments before and its write to the Secret may still come.
//!
//! [`classify`] is the decision, a pure function of what was observed; [`Witness`] keeps those
//! observations as the lifecycle makes them.

use crate::store::is_retired;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Foreign,
    OursSpent(Spent),
    Raced,
}

/// How we know the refused token was ours to spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// It is among the refresh tokens this agent rotated away.
    Rotated,
    /// The shared Secret holds another pair: an agent of ours refreshed (or someone put a new login
    /// there) and this one had not adopted it yet.
    SecretMovedOn,
    /// It went out in a refresh that got no answer (a timeout, a dropped connection): the endpoint may
    /// have rotated it and the new pair was lost on the way back.
    AnswerLost,
}

/// What the shared Secret said about the refused token when it was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSays {
    /// No Secret is shared (alone, or write-back only), or it has not been read yet.
    Nothing,
    /// It holds the refused token: the Secret agrees it was the live one.
    HoldsIt,
    HoldsAnother,
}

/// What was observed about the refused refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    pub retired: bool,
    pub sent_without_answer: bool,
    pub secret: SecretSays,
    /// This was the first refresh after taking over a lease that was not released.
    pub after_takeover: bool,
}

/// Who spent the refused token, by the evidence.
pub fn classify(e: Evidence) -> Refusal {
    if e.after_takeover {
        Refusal::Raced
    } else if e.retired {
        Refusal::OursSpent(Spent::Rotated)
    } else if e.secret == SecretSays::HoldsAnother {
        Refusal::OursSpent(Spent::SecretMovedOn)
    } else if e.sent_without_answer {
        Refusal::OursSpent(Spent::AnswerLost)
    } else {
        Refusal::Foreign
    }
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Foreign => "foreign",
            Refusal::OursSpent(_) => "ours_spent",
            Refusal::Raced => "raced",
        }
    }

    /// What `status` and the log say, before the hint to log in again.
    pub fn explain(self) -> &'static str {
        match self {
            Refusal::Foreign => {
                "SOMETHING ELSE IS USING THIS LOGIN: the token endpoint refused a refresh token that no \
                 agent of ours spent (by our records, and the shared Secret's when there is one, it was the \
                 live one), so another client refreshed this login and the rotation killed ours: a laptop's Claude Code \
                 signed in to the same account, or another deployment given the same credentials. Stop \
                 that client or give it a login of its own, then log in again for sidecred"
            }
            Refusal::OursSpent(Spent::Rotated) => {
                "the refused refresh token is one this agent already rotated away (an old copy of the \
                 credentials came back)"
            }
            Refusal::OursSpent(Spent::SecretMovedOn) => {
                "the shared Secret holds another pair: an agent sharing this login refreshed it first"
            }
            Refusal::OursSpent(Spent::AnswerLost) => {
                "an earlier refresh with this refresh token got no answer; the token endpoint most likely \
                 carried it out and the new pair was lost on the way back"
            }
            Refusal::Raced => {
                "the first refresh after taking over the lease was refused: the previous holder most \
                 likely spent this token just before it stopped"
            }
        }
    }
}

/// What the lifecycle has seen that [`classify`] needs, and the last verdict.
#[derive(Debug, Default)]
pub struct Witness {
    /// Fingerprint of a refresh token sent in a refresh that failed without a definite answer.
    unanswered: Option<String>,
    /// Fingerprint of the refresh token the shared Secret held when last read (`--lease`).
    secret_holds: Option<String>,
    last: Option<Refusal>,
}

impl Witness {
    /// A refresh with the token of fingerprint `fp` failed without being refused.
    pub fn sent_without_answer(&mut self, fp: String) {
        self.unanswered = Some(fp);
    }

    /// A refresh succeeded, or a new pair was adopted: what was seen about the old one is moot.
    pub fn moved_on(&mut self) {
        self.unanswered = None;
        self.last = None;
    }

    /// The shared Secret was read and holds the refresh token of fingerprint `fp` (or none).
    pub fn secret_read(&mut self, fp: Option<String>) {
        self.secret_holds = fp;
    }

    /// Judges the refusal of the token of fingerprint `refused` and remembers the verdict.
    pub fn judge(&mut self, refused: &str, retired: &[String], after_takeover: bool) -> Refusal {
        let secret = match &self.secret_holds {
            None => SecretSays::Nothing,
            Some(fp) if fp == refused => SecretSays::HoldsIt,
            Some(_) => SecretSays::HoldsAnother,
        };
        let verdict = classify(Evidence {
            retired: is_retired(retired, refused),
            sent_without_answer: self.unanswered.as_deref() == Some(refused),
            secret,
            after_takeover,
        });
        self.last = Some(verdict);
        verdict
    }

    /// The verdict on the refusal that stopped the live pair, until a new pair replaces it.
    pub fn last(&self) -> Option<Refusal> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_spent_the_refused_token() {
        let base = Evidence {
            retired: false,
            sent_without_answer: false,
            secret: SecretSays::Nothing,
            after_takeover: false,
        };
        let cases = [
            // Alone, nothing of ours spent it: foreign. The Secret agreeing changes nothing.
            (base, Refusal::Foreign),
            (Evidence { secret: SecretSays::HoldsIt, ..base }, Refusal::Foreign),
            (Evidence { retired: true, ..base }, Refusal::OursSpent(Spent::Rotated)),
            (Evidence { secret: SecretSays::HoldsAnother, ..base }, Refusal::OursSpent(Spent::SecretMovedOn)),
            (Evidence { sent_without_answer: true, ..base }, Refusal::OursSpent(Spent::AnswerLost)),
            (
                Evidence { sent_without_answer: true, secret: SecretSays::HoldsIt, ..base },
                Refusal::OursSpent(Spent::AnswerLost),
            ),
            // Our own rotation is the surer record than a lost answer.
            (
                Evidence { retired: true, sent_without_answer: true, ..base },
                Refusal::OursSpent(Spent::Rotated),
            ),
            // After a takeover the old holder's late write decides, whatever else was seen.
            (Evidence { after_takeover: true, ..base }, Refusal::Raced),
            (
                Evidence { after_takeover: true, retired: true, secret: SecretSays::HoldsAnother, ..base },
                Refusal::Raced,
            ),
        ];
        for (evidence, expected) in cases {
            assert_eq!(classify(evidence), expected, "{evidence:?}");
        }
    }

    #[test]
    fn the_witness_remembers_what_decides_and_forgets_it_on_a_new_pair() {
        let mut w = Witness::default();
        assert_eq!(w.judge("R1", &[], false), Refusal::Foreign);
        assert_eq!(w.last(), Some(Refusal::Foreign));
        assert_eq!(w.judge("R1", &["R1".to_owned()], false), Refusal::OursSpent(Spent::Rotated));
        w.sent_without_answer("R1".into());
        assert_eq!(w.judge("R1", &[], false), Refusal::OursSpent(Spent::AnswerLost));
        // A lost answer with another token says nothing about this one.
        assert_eq!(w.judge("R2", &[], false), Refusal::Foreign);
        w.secret_read(Some("R3".into()));
        assert_eq!(w.judge("R2", &[], false), Refusal::OursSpent(Spent::SecretMovedOn));
        w.secret_read(Some("R2".into()));
        assert_eq!(w.judge("R2", &[], false), Refusal::Foreign);
        w.sent_without_answer("R2".into());
        w.moved_on();
        assert_eq!(w.last(), None);
        assert_eq!(w.judge("R2", &[], false), Refusal::Foreign, "the lost answer was forgotten");
    }

    #[test]
    fn every_verdict_has_its_label_and_says_who() {
        assert_eq!(Refusal::Foreign.as_str(), "foreign");
        assert!(Refusal::Foreign.explain().contains("SOMETHING ELSE IS USING THIS LOGIN"));
        assert!(Refusal::Foreign.explain().contains("Claude Code"));
        assert_eq!(Refusal::OursSpent(Spent::AnswerLost).as_str(), "ours_spent");
        assert_eq!(Refusal::Raced.as_str(), "raced");
    }
}
