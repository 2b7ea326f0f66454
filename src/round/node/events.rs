//! The machine's interface: events in, actions out, and the summary of a round.

use crate::layout::Layout;
use crate::party::Fingerprint;
use crate::pki::journal::InputDigests;
use crate::round::messages::{Message2, ResultHeader, ShareKind};
use crate::secagg::prg::PeerMask;
use crate::secagg::quantize::Plan;

use super::Error;

/// What happened, from the driver or the network.
// One event or action exists at a time; boxing the large message buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// A protocol-2 message from the researcher.
    Message(Message2),
    /// The driver sent every masked word and the end marker.
    StreamSent,
    /// The round's deadline passed, the connection closed, or the researcher aborted.
    Stopped(String),
}

/// What the driver must do, in order. A `Journal*` action must be durable before the
/// next action runs; if it fails, the driver stops and runs nothing after it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Action {
    /// Record that we advertise keys for (federation, round); refused if not above the
    /// last one (the journal re-checks inside its transaction).
    JournalAdvertise {
        /// The ctx federation string.
        federation: String,
        /// The round.
        round: u64,
        /// The researcher's fingerprint.
        researcher: Fingerprint,
    },
    /// Send a message to the researcher.
    Send(Message2),
    /// Record that this input is released in (federation, round): refused if either of
    /// its digests was released before, in any federation or mode.
    JournalRelease {
        /// Input digests.
        digest: InputDigests,
        /// Federation.
        federation: String,
        /// Round.
        round: u64,
    },
    /// Read, quantize, mask and send the input: `plan` gives the ring and the wire width;
    /// `masks` holds the self mask and one pairwise mask per peer of U2(u). Then send the
    /// end marker and feed [`Event::StreamSent`].
    StreamMasked {
        /// The quantization plan announced (and checked).
        plan: Plan,
        /// The weight to send.
        weight: u64,
        /// Self mask (+) and pairwise masks (±).
        masks: Vec<PeerMask>,
    },
    /// Record the hash of the one consistency message we sign this round; refused if we
    /// signed another one.
    JournalSigned {
        /// Federation.
        federation: String,
        /// Round.
        round: u64,
        /// SHA-256 of the signed message.
        hash: [u8; 32],
    },
    /// Record which kind of share we reveal for which peer; refused if any peer already
    /// had the other kind revealed.
    JournalReveal {
        /// Federation.
        federation: String,
        /// Round.
        round: u64,
        /// One kind per peer.
        reveals: Vec<(Fingerprint, ShareKind)>,
    },
    /// One line of progress for the user.
    Progress(String),
    /// The researcher's result header passed the checks: receive `header.bytes` bytes of
    /// the mean, check every value within ±(clip + step), and write it.
    ReceiveMean {
        /// The header.
        header: ResultHeader,
        /// The plan (clip and step for the range check).
        plan: Plan,
        /// The layout of the mean.
        layout: Layout,
    },
    /// The round is over for this node.
    Finish(Summary),
    /// The round failed; tell the researcher (an `Abort` frame) and stop.
    Fail(Error),
}

/// What the node saw of a finished round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The round.
    pub round: u64,
    /// The sets, as fingerprints.
    pub u1: Vec<Fingerprint>,
    /// Nodes whose shares were forwarded.
    pub u2: Vec<Fingerprint>,
    /// Nodes whose whole input arrived.
    pub u3: Vec<Fingerprint>,
    /// Nodes whose consistency signatures we counted.
    pub signers: Vec<Fingerprint>,
    /// Total weight W.
    pub total_weight: u64,
}
