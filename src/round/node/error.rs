//! Who is at fault when a round stops, and why.

use std::fmt;

use crate::party::{Fingerprint, PartyId};
use crate::round::policy::Refusal;

use super::Phase;

/// Who is at fault when a round stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// The researcher (a wrong set, a malformed or unexpected message).
    Researcher,
    /// A node, named by this registry's id and its fingerprint.
    Node(PartyId, Fingerprint),
    /// A node that is not registered here (only its fingerprint is known).
    Stranger(Fingerprint),
}

impl fmt::Display for Culprit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Culprit::Researcher => f.write_str("the researcher"),
            Culprit::Node(id, fp) => write!(f, "node '{id}' ({})", fp.short()),
            Culprit::Stranger(fp) => write!(f, "an unregistered party ({})", fp.short()),
        }
    }
}

/// Why the node stopped the round. Nothing more is sent after any of these.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// The announcement is outside this node's policy (before any key was made).
    #[error("this node refused round {round}: {refusal}")]
    Refused {
        /// The round announced.
        round: u64,
        /// What is out of policy.
        refusal: Refusal,
    },
    /// A party broke the protocol.
    #[error("{culprit} misbehaved in the {phase} phase: {what}")]
    Misbehaviour {
        /// Who.
        culprit: Culprit,
        /// Which phase.
        phase: Phase,
        /// What it did.
        what: String,
    },
    /// Fewer than t parties were left at a phase.
    #[error("only {have} of the t = {need} parties needed remain in the {phase} phase")]
    BelowThreshold {
        /// Which phase.
        phase: Phase,
        /// How many were left.
        have: usize,
        /// t.
        need: usize,
    },
    /// The researcher left this node out of the survivors (its input counts as released).
    #[error("the researcher did not count this node among the survivors (U3)")]
    Excluded,
    /// The round ended before it finished (timeout, lost connection, researcher's abort).
    #[error("the round stopped in the {phase} phase: {why}")]
    Stopped {
        /// Which phase.
        phase: Phase,
        /// Why.
        why: String,
    },
    /// Our own failure (e.g. the random generator).
    #[error("internal error in the {phase} phase: {what}")]
    Internal {
        /// Which phase.
        phase: Phase,
        /// What failed.
        what: String,
    },
}
