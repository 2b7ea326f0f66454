//! Secure rounds over mutual TLS, protocol 2: double masking, certified per-round keys,
//! one pass whatever drops out (DESIGN.md, "Rounds over TLS: protocol 2").
//!
//! - [`schedule`] and [`messages`]: the key schedule, the signed messages and the wire
//!   payloads, byte for byte as `docs/protocol.md` specifies them;
//! - [`policy`]: what a node accepts, checked before any key is made;
//! - [`node`] and [`researcher`]: the two sides as pure state machines
//!   (`handle(event) -> actions`), tested message by message;
//! - [`join`] and [`serve`]: the small drivers that connect the machines to sockets, the
//!   registry's journal, the input file and the researcher's spill files.

mod conn;
mod dial;
pub mod join;
pub mod messages;
pub mod node;
pub mod policy;
pub mod researcher;
pub mod schedule;
pub mod serve;
pub mod spill;

use std::time::Duration;

use crate::party::{PartyId, Role};
use crate::{files, net, pki, secagg};

/// The largest update accepted, in values (the researcher keeps one word each).
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
    Identity(#[from] pki::identity::Error),
    /// Registry or journal.
    #[error(transparent)]
    Registry(#[from] pki::registry::Error),
    /// Masking or the input file.
    #[error(transparent)]
    Masked(#[from] files::masked::Error),
    /// Input or output tensors.
    #[error(transparent)]
    Tensor(#[from] files::tensor::Error),
    /// Quantization plan.
    #[error(transparent)]
    Quantize(#[from] secagg::quantize::Error),
    /// Decoding the sum.
    #[error(transparent)]
    Sum(#[from] secagg::sum::Error),
    /// Network or TLS.
    #[error(transparent)]
    Transport(#[from] net::error::Error),
    /// The node's side of the protocol stopped the round.
    #[error(transparent)]
    Node(#[from] node::Error),
    /// The researcher's side of the protocol stopped the round.
    #[error(transparent)]
    Researcher(#[from] researcher::Error),
    /// This command needs the other role.
    #[error("this home belongs to a {0}; {1}")]
    WrongRole(Role, &'static str),
    /// A parameter of `round serve` or `round join` that cannot work.
    #[error("{0}")]
    Setup(String),
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
    #[error("{0} researchers are registered here ({1})")]
    ManyResearchers(usize, String),
    /// The chosen researcher is not registered as one.
    #[error("'{0}' is not registered here as a researcher")]
    UnknownResearcher(PartyId),
    /// Could not reach the researcher before the deadline.
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
    /// The peer broke the framing or sent something out of place.
    #[error("{peer} broke the round protocol: {what}")]
    Protocol {
        /// Who.
        peer: String,
        /// What it did.
        what: String,
    },
    /// The researcher ended the round for this node (its words, sanitised).
    #[error("the researcher ended the round: {0}")]
    Aborted(String),
    /// The output file.
    #[error("{0}")]
    Output(String),
}

type Result<T> = std::result::Result<T, Error>;
