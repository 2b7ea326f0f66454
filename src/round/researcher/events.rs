//! The machine's interface: events in, actions out, and the outcome of a round.

use crate::party::Fingerprint;
use crate::round::messages::{Message2, ResultHeader};
use crate::secagg::prg::PeerMask;

use super::{DropReason, Dropout, Error, Misbehaviour};

/// What the driver reports after unmasking and decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The total weight W (the values passed the driver's range check).
    pub total_weight: u64,
}

/// A finished round, as the researcher saw it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The round.
    pub round: u64,
    /// Valid adverts.
    pub u1: Vec<Fingerprint>,
    /// Nodes whose shares were forwarded.
    pub u2: Vec<Fingerprint>,
    /// Nodes whose whole input is in the sum.
    pub u3: Vec<Fingerprint>,
    /// Nodes whose consistency signatures were counted.
    pub u4: Vec<Fingerprint>,
    /// Nodes whose revealed shares were used.
    pub u5: Vec<Fingerprint>,
    /// Every node that left, with the phase and the reason.
    pub dropouts: Vec<Dropout>,
    /// Every attributable misbehaviour, including bad revealed shares (whose revealer
    /// stayed in the round).
    pub misbehaviours: Vec<Misbehaviour>,
    /// W.
    pub total_weight: u64,
}

/// What happened, from the driver or the network. Every `from` is the fingerprint TLS
/// authenticated.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// A protocol-2 message.
    Message {
        /// Sender.
        from: Fingerprint,
        /// The message.
        msg: Message2,
    },
    /// A chunk of masked input: whole wire words, starting at word `offset`.
    Chunk {
        /// Sender.
        from: Fingerprint,
        /// First word.
        offset: u64,
        /// Little-endian words of `wire_bytes` each.
        data: Vec<u8>,
    },
    /// The node's end marker after its last chunk.
    StreamEnd {
        /// Sender.
        from: Fingerprint,
    },
    /// The connection closed or the node aborted.
    Lost {
        /// Who.
        from: Fingerprint,
        /// Why (for the log).
        reason: String,
    },
    /// The current phase's deadline passed.
    Deadline,
    /// The driver applied [`Action::Unmask`]'s corrections and decoded the sum.
    Unmasked(Result<Summary, String>),
}

/// What the driver must do, in order.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Action {
    /// Send a message to one node.
    Send {
        /// The node.
        to: Fingerprint,
        /// The message.
        msg: Message2,
    },
    /// Add these words to the accumulator and append them to the sender's spill.
    Absorb {
        /// The node.
        from: Fingerprint,
        /// First word.
        offset: u64,
        /// Whole wire words.
        data: Vec<u8>,
    },
    /// This stream is in U3: delete its spill (its words stay in the sum).
    StreamComplete {
        /// The node.
        from: Fingerprint,
    },
    /// This stream is not in the sum: subtract its spill, then delete it.
    DiscardStream {
        /// The node.
        from: Fingerprint,
    },
    /// Close this node's connection; log who and why.
    Drop {
        /// The node.
        who: Fingerprint,
        /// Why.
        why: DropReason,
    },
    /// One line of progress for the user.
    Progress(String),
    /// Apply these masks to the accumulator (self masks carry `Sign::Sub`), decode and
    /// range-check, then feed back [`Event::Unmasked`].
    Unmask {
        /// Self masks of U3 and pairwise corrections for U2 \ U3.
        corrections: Vec<PeerMask>,
    },
    /// Send the header, then the mean as chunks, to each of these nodes.
    SendResult {
        /// Recipients (U5, still connected).
        to: Vec<Fingerprint>,
        /// The header.
        header: ResultHeader,
    },
    /// The round is done.
    Finish(Outcome),
    /// The round is over and nothing was revealed; send Abort to everyone.
    Fail(Error),
}
