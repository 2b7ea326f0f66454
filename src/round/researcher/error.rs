//! What can go wrong: the parties named, their faults, dropouts, and the round's errors.

use std::fmt;

use crate::party::{Fingerprint, PartyId};
use crate::round::messages::{self, ShareKind};
use crate::secagg::quantize;

use super::Phase;

/// A party the researcher names: an invitee by id and fingerprint, or a stranger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// An invited node.
    Node {
        /// Its id in our registry.
        id: PartyId,
        /// Its certificate fingerprint.
        fp: Fingerprint,
    },
    /// A party that is not invited to this round (only its fingerprint is known).
    Stranger(Fingerprint),
}

impl Culprit {
    /// The party's fingerprint.
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Culprit::Node { fp, .. } | Culprit::Stranger(fp) => fp,
        }
    }
}

impl fmt::Display for Culprit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Culprit::Node { id, fp } => write!(f, "node '{id}' ({fp})"),
            Culprit::Stranger(fp) => write!(f, "uninvited party ({fp})"),
        }
    }
}

/// What a node did wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// It is not among the invitees.
    NotInvited,
    /// It sent something this phase does not take from it.
    Unexpected(&'static str),
    /// It sent a second message of a kind a phase takes once.
    Duplicate(&'static str),
    /// Its advert names another fingerprint than its own.
    AdvertOfOther(Fingerprint),
    /// Its advert does not verify (signature or commitments).
    BadAdvert(String),
    /// Its C or S key shares an x-coordinate with a key already advertised (by this
    /// fingerprint's node).
    SameKeyX(Fingerprint),
    /// Its share bundle has no share for this member of U1.
    MissingShare(Fingerprint),
    /// Its share bundle has a share for itself, an outsider, or twice for one peer.
    ExtraShare(Fingerprint),
    /// A chunk that is not a whole number (≥ 1) of wire words.
    PartialWords {
        /// Bytes in the chunk.
        bytes: usize,
        /// Bytes per word.
        word: usize,
    },
    /// A chunk not at the next expected offset (a gap or an overlap).
    OutOfOrder {
        /// The next word expected.
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },
    /// Words past the end of the input (d + 1 words).
    Overflow {
        /// Where the chunk would end.
        end: u64,
        /// d + 1.
        words: u64,
    },
    /// Input after its end marker, or after U3 closed.
    AfterEnd,
    /// An end marker before all d + 1 words.
    ShortStream {
        /// Words received.
        got: u64,
        /// d + 1.
        words: u64,
    },
    /// Its consistency signature does not verify.
    BadSignature,
    /// It revealed a share of a party outside U2.
    ShareOfOutsider(Fingerprint),
    /// It revealed the wrong kind of share for a peer (s of a survivor, b of a dropout).
    WrongKind {
        /// The dealer.
        peer: Fingerprint,
        /// The kind revealed.
        kind: ShareKind,
    },
    /// It revealed both kinds of share for one peer.
    BothKinds(Fingerprint),
    /// A revealed share does not match its dealer's commitments.
    BadShare {
        /// The dealer.
        peer: Fingerprint,
        /// The kind.
        kind: ShareKind,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::NotInvited => f.write_str("it is not invited to this round"),
            Fault::Unexpected(what) => write!(f, "sent an unexpected {what}"),
            Fault::Duplicate(what) => write!(f, "sent a second {what}"),
            Fault::AdvertOfOther(fp) => write!(f, "sent an advert for another party ({fp})"),
            Fault::BadAdvert(e) => write!(f, "sent an invalid advert: {e}"),
            Fault::SameKeyX(fp) => {
                write!(f, "advertised a key with the same x-coordinate as {fp}'s")
            }
            Fault::MissingShare(fp) => write!(f, "sent no share for {fp}"),
            Fault::ExtraShare(fp) => write!(f, "sent a share for {fp}, who must get none"),
            Fault::PartialWords { bytes, word } => write!(
                f,
                "sent a chunk of {bytes} bytes, not a whole number of {word}-byte words"
            ),
            Fault::OutOfOrder { expected, got } => {
                write!(f, "sent a chunk at word {got}, expected word {expected}")
            }
            Fault::Overflow { end, words } => {
                write!(f, "sent words up to {end}, the input has {words}")
            }
            Fault::AfterEnd => f.write_str("sent input after its end"),
            Fault::ShortStream { got, words } => {
                write!(f, "ended its input after {got} of {words} words")
            }
            Fault::BadSignature => f.write_str("sent a consistency signature that does not verify"),
            Fault::ShareOfOutsider(fp) => write!(f, "revealed a share of {fp}, outside U2"),
            Fault::WrongKind { peer, kind } => {
                write!(f, "revealed the wrong kind of share ({kind:?}) for {peer}")
            }
            Fault::BothKinds(fp) => write!(f, "revealed both kinds of share for {fp}"),
            Fault::BadShare { peer, kind } => write!(
                f,
                "revealed a {kind:?} share of {peer} that does not match its commitments"
            ),
        }
    }
}

/// A misbehaviour the researcher can attribute, naming the party.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{culprit} misbehaved in the {phase} phase: {fault}")]
pub struct Misbehaviour {
    /// Who.
    pub culprit: Culprit,
    /// When.
    pub phase: Phase,
    /// What.
    pub fault: Fault,
}

/// Why a node left the round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Its connection closed or it aborted (the driver's words).
    Lost(String),
    /// It had not answered when its phase closed.
    MissedDeadline,
    /// It broke the protocol.
    Misbehaved(Misbehaviour),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Lost(why) => write!(f, "lost: {why}"),
            DropReason::MissedDeadline => f.write_str("missed the deadline"),
            DropReason::Misbehaved(m) => m.fmt(f),
        }
    }
}

/// One node leaving the round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropout {
    /// Who.
    pub who: Culprit,
    /// In which phase.
    pub phase: Phase,
    /// Why.
    pub why: DropReason,
}

/// Why the round failed (nothing was revealed), or could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The threshold does not suit the number of invitees.
    #[error("threshold t = {t} is not possible with {n} invited node(s): {why}")]
    Threshold {
        /// t.
        t: u32,
        /// n.
        n: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The quantization parameters do not fit the round.
    #[error(transparent)]
    Plan(#[from] quantize::Error),
    /// The announcement does not make a valid round context.
    #[error("cannot announce the round: {0}")]
    Announce(#[source] messages::Error),
    /// Fewer than t nodes were left when a phase closed.
    #[error(
        "round failed in the {phase} phase: {have} node(s) left, fewer than t = {need}; nothing was revealed"
    )]
    BelowThreshold {
        /// The phase.
        phase: Phase,
        /// Nodes left.
        have: usize,
        /// t.
        need: usize,
    },
    /// Too few good shares to rebuild a secret.
    #[error(
        "round failed: only {have} good {kind:?} share(s) of {party}, t = {need} are needed; nothing was revealed"
    )]
    TooFewShares {
        /// The dealer.
        party: Culprit,
        /// Which secret.
        kind: ShareKind,
        /// Good shares.
        have: usize,
        /// t.
        need: usize,
    },
    /// A rebuilt secret does not match the dealer's advertised key.
    #[error("round failed: the rebuilt {kind:?} secret of {party} does not match its advert")]
    WrongSecret {
        /// The dealer.
        party: Culprit,
        /// Which secret.
        kind: ShareKind,
    },
    /// The decoded total weight is outside [|U3|, |U3|·max weight].
    #[error(
        "the sum is out of range: some input was out of range (a bug or a poisoned input; which node cannot be told): total weight {total_weight} is outside [{min}, {max}]"
    )]
    SumOutOfRange {
        /// W.
        total_weight: u64,
        /// |U3|.
        min: u64,
        /// |U3|·max weight.
        max: u64,
    },
    /// The driver could not unmask or decode the sum (its words).
    #[error("{0}")]
    Unmasked(String),
    /// Our own bug.
    #[error("internal error (a bug): {0}")]
    Internal(String),
}
