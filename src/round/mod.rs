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
pub mod schedule;
pub mod server;

use std::time::Duration;

use crate::identity::{PartyId, Role};
use crate::{aggregate, identity, masked, quantize, registry, tensor, transport};

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
    Aggregate(#[from] aggregate::Error),
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

impl Error {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::Identity(e) => return e.hint(),
            Error::Registry(e) => return e.hint(),
            Error::Masked(e) => return e.hint(),
            Error::Tensor(e) => return e.hint(),
            Error::Quantize(e) => return e.hint(),
            Error::Aggregate(e) => return e.hint(),
            Error::Transport(transport::Error::Handshake { .. }) => {
                "the peer's certificate is not registered here with the role this round needs, or ours is not registered there; compare 'secagg certificate list' on both sides".into()
            }
            Error::Transport(_) => return None,
            Error::WrongRole(Role::Node, _) => {
                "run 'round serve' in the researcher's home (--home)".into()
            }
            Error::WrongRole(Role::Researcher, _) => {
                "run 'round join' in a node's home (--home)".into()
            }
            Error::MinNodes { .. } => {
                "--min-nodes must be at least 2 and at most the number of --nodes".into()
            }
            Error::Listen { .. } => {
                "pass --listen with a local address and a free port, e.g. --listen 0.0.0.0:7000".into()
            }
            Error::NoResearcher => {
                "register the researcher's certificate with 'secagg certificate register --role researcher ...'".into()
            }
            Error::ManyResearchers(..) => "pass --researcher ID".into(),
            Error::UnknownResearcher(_) => "see 'secagg certificate list'".into(),
            Error::Unreachable { .. } => {
                "check that 'round serve' is running there and that the registered ip and port are right".into()
            }
            Error::CertificateRefused { .. } => {
                "ask the researcher to register this node's certificate with role node and to name this node in --nodes".into()
            }
            Error::Protocol { .. } => {
                "check that both sides run the same secagg version; report it if they do".into()
            }
            Error::Refused { .. } => {
                "the round did not meet this node's policy (see --min-nodes and --max-attempts)".into()
            }
            Error::Aborted(_) => "see the researcher's log; a new round needs a new --round number".into(),
            Error::TooFew { .. } | Error::AttemptCap { .. } => {
                "run a new round (next --round number) when enough nodes are available, or lower --min-nodes".into()
            }
        })
    }
}

type Result<T> = std::result::Result<T, Error>;
