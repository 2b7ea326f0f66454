//! Secure rounds over mutual TLS: the researcher serves, nodes join.
//!
//! The protocol (see `docs/protocol.md` for the diagram):
//!
//! 1. A node connects; the handshake succeeds only between pinned, registered
//!    certificates. The researcher speaks first with `Hello` (federation, round).
//! 2. The node answers `Join` with the layout of its update.
//! 3. When every named node has joined (or the join timeout passes with at least
//!    `min-nodes`), the researcher sends `Start` for attempt 1 with the participant set.
//! 4. Each participant masks under (federation, round, attempt, participants, label) and
//!    streams `Chunk`s, then `Done`. The researcher adds chunks into one accumulator as
//!    they arrive.
//! 5. If a participant is lost before its update is complete, the researcher drops the
//!    sum and sends `Start` for attempt+1 to the survivors, as long as `min-nodes`
//!    remain; otherwise everyone gets `Abort` and nothing is revealed.
//! 6. When every participant is done, the researcher sends `Outcome` and the summed
//!    words to each participant, which decode the weighted mean themselves.
//!
//! The researcher's states are types in [`server`]; the node is a straight line of
//! checks in [`node`].

pub mod messages;
pub mod node;
pub mod node2;
pub mod policy;
pub mod schedule;
pub mod server;

use std::time::Duration;

use crate::files::masked::{self};
use crate::files::tensor::{self};
use crate::net::error::{self as transport};
use crate::party::{PartyId, Role};
use crate::pki::identity::{self};
use crate::pki::registry::{self};
use crate::secagg::quantize::{self};

/// The largest update accepted, in values (the researcher allocates one word each).
pub const MAX_ELEMENTS: u64 = 1 << 30;
/// The vector label used by rounds.
pub const LABEL: &str = "update";
/// How often connection threads look for outgoing messages while waiting for input.
const POLL: Duration = Duration::from_millis(20);

/// Why a round failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Identity.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// Registry.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// Masking.
    #[error(transparent)]
    Masked(#[from] masked::Error),
    /// Input or output tensors.
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    /// Quantization plan.
    #[error(transparent)]
    Quantize(#[from] quantize::Error),
    /// Decoding the sum.
    #[error(transparent)]
    Aggregate(#[from] crate::files::aggregate::Error),
    /// Decoding the sum.
    #[error(transparent)]
    Sum(#[from] crate::secagg::sum::Error),
    /// Network or TLS.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// This command needs the other role.
    #[error("this home belongs to a {0}; {1}")]
    WrongRole(Role, &'static str),
    /// Bad `--min-nodes`.
    #[error("--min-nodes {min} is not possible with {nodes} node(s) named")]
    MinNodes {
        /// Asked.
        min: usize,
        /// Named.
        nodes: usize,
    },
    /// The listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// No researcher to join.
    #[error("no researcher is registered here")]
    NoResearcher,
    /// More than one researcher, and none chosen.
    #[error("{0} researchers are registered here ({1}); say which with --researcher")]
    ManyResearchers(usize, String),
    /// The chosen researcher is not registered as one.
    #[error("'{0}' is not registered here as a researcher")]
    UnknownResearcher(PartyId),
    /// Could not reach the researcher.
    #[error("cannot reach researcher {id} at {addr}: {reason}")]
    Unreachable {
        /// Who.
        id: PartyId,
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The researcher refused our certificate at the handshake.
    #[error("researcher {id} refused this node's certificate ({alert})")]
    CertificateRefused {
        /// Who.
        id: PartyId,
        /// The TLS alert.
        alert: String,
    },
    /// The peer broke the protocol (the peer's fault).
    #[error("{peer} broke the round protocol: {what}")]
    Protocol {
        /// Who.
        peer: String,
        /// What it did.
        what: String,
    },
    /// This node refused the round (its own policy).
    #[error("this node refused round {round} attempt {attempt}: {reason}")]
    Refused {
        /// Round.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// The researcher ended the round for this node.
    #[error("the researcher ended the round for this node: {0}")]
    Aborted(String),
    /// Too few participants left.
    #[error(
        "round failed: {have} node(s) left, fewer than --min-nodes {min}; nothing was revealed"
    )]
    TooFew {
        /// Survivors.
        have: usize,
        /// Needed.
        min: usize,
        /// Who dropped and why.
        dropped: Vec<(PartyId, String)>,
    },
    /// The attempt cap was reached.
    #[error(
        "round failed: attempt {attempt} would exceed --max-attempts {max}; nothing was revealed"
    )]
    AttemptCap {
        /// The attempt that would run.
        attempt: u32,
        /// The cap.
        max: u32,
    },
}

type Result<T> = std::result::Result<T, Error>;
