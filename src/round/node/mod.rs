//! Protocol 2's node as a pure state machine: `handle(event) -> actions`.
//!
//! The node never trusts a set the researcher hands it: it checks the announcement
//! against its own policy and registry, every advert against its own registry, the
//! share senders against what it received, the survivor sets against its own view, and
//! the consistency signatures against its own registry. Every check in DESIGN.md
//! ("Rounds over TLS: protocol 2") is here, in phase order. No I/O happens here: the
//! driver executes the [`Action`]s in order, and a journal action must be durable
//! before the next action runs (so a signature or a share never leaves before the
//! journal says it did).
//!
//! ```text
//! AwaitAnnounce ─Announce→ AwaitAdverts ─AdvertList(U1)→ AwaitShares
//!   ─ForwardedShares(U2)→ Masking ─StreamSent→ AwaitSurvivors ─Survivors(U2,U3)→
//!   AwaitSignatures ─SignatureList→ AwaitResult ─Result→ Done
//! any state ─bad message / timeout / loss→ Failed (nothing more is sent)
//! ```

mod adverts;
mod announce;
mod consistency;
mod error;
mod events;
mod result;
mod shares;

pub use error::{Culprit, Error};
pub use events::{Action, Event, Summary};

use std::collections::BTreeMap;
use std::fmt;

use p256::PublicKey;
use p256::elliptic_curve::rand_core::TryCryptoRng;

use crate::layout::Layout;
use crate::party::{Fingerprint, PartyId};
use crate::pki::identity::PartyKey;
use crate::pki::journal::InputDigests;
use crate::round::messages::Message2;
use crate::round::policy::Policy;
use crate::round::schedule::{Advert, ConsistencyMessage, Ctx, RoundSecrets, SharePair};
use crate::secagg::quantize::Plan;

/// A registered node, as this node's own registry knows it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The local id (a label in this registry only).
    pub id: PartyId,
    /// The certified public key.
    pub key: PublicKey,
}

/// This node's update, validated before the round (the driver read it whole).
#[derive(Clone, Debug)]
pub struct Input {
    /// Tensor names, shapes and types.
    pub layout: Layout,
    /// Content digests (one release per input): version 2, and version 1 when the
    /// registry holds version-1 releases.
    pub digest: InputDigests,
    /// The weight this node sends.
    pub weight: u64,
}

/// What the node knows before the round: who it is, whom it trusts, what it brings.
pub struct NodeSetup<'k> {
    /// Our certificate fingerprint.
    pub me: Fingerprint,
    /// Our certified key (signs the advert and the consistency message).
    pub key: &'k PartyKey,
    /// The researcher's fingerprint, pinned by TLS.
    pub researcher: Fingerprint,
    /// Every node registered here (role node), by fingerprint.
    pub peers: BTreeMap<Fingerprint, Peer>,
    /// Our policy.
    pub policy: Policy,
    /// The last round we advertised keys for in the pinned federation (0 if none).
    pub last_round: u64,
    /// Our update.
    pub input: Input,
    /// Digest of the global model we trained from, if given.
    pub model: Option<[u8; 32]>,
}

/// The protocol phases, for messages and for the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// 1: the announcement and the policy check.
    Join,
    /// 2: key adverts (U1).
    Advertise,
    /// 3: sealed shares (U2).
    ShareKeys,
    /// 4: the masked input (U3).
    MaskedInput,
    /// 5: the signed consistency check.
    Consistency,
    /// 6: revealing shares.
    Unmask,
    /// 7: the result.
    Result,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Join => "join",
            Phase::Advertise => "advertise",
            Phase::ShareKeys => "share-keys",
            Phase::MaskedInput => "masked-input",
            Phase::Consistency => "consistency",
            Phase::Unmask => "unmask",
            Phase::Result => "result",
        })
    }
}

struct Keyed {
    ctx: Ctx,
    plan: Plan,
    secrets: RoundSecrets,
    advert: Advert,
}

struct Shared {
    keyed: Keyed,
    u1: BTreeMap<Fingerprint, Advert>,
}

struct Masking {
    shared: Shared,
    /// U2(u) = {u} ∪ the senders whose shares we received.
    u2: Vec<Fingerprint>,
    /// The shares we hold for each peer of U2(u) (ours included).
    held: BTreeMap<Fingerprint, SharePair>,
}

struct Signed {
    masking: Masking,
    u3: Vec<Fingerprint>,
    message: ConsistencyMessage,
}

struct Revealed {
    signed: Signed,
    signers: Vec<Fingerprint>,
}

enum State {
    AwaitAnnounce,
    AwaitAdverts(Box<Keyed>),
    AwaitShares(Box<Shared>),
    Masking(Box<Masking>),
    AwaitSurvivors(Box<Masking>),
    AwaitSignatures(Box<Signed>),
    AwaitResult(Box<Revealed>),
    Done,
    Failed,
}

impl State {
    fn phase(&self) -> Phase {
        match self {
            State::AwaitAnnounce => Phase::Join,
            State::AwaitAdverts(_) => Phase::Advertise,
            State::AwaitShares(_) => Phase::ShareKeys,
            State::Masking(_) | State::AwaitSurvivors(_) => Phase::MaskedInput,
            State::AwaitSignatures(_) => Phase::Consistency,
            State::AwaitResult(_) | State::Done | State::Failed => Phase::Result,
        }
    }
}

/// The node's side of one round.
pub struct Node<'k> {
    setup: NodeSetup<'k>,
    state: State,
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Node({}, {} phase)",
            self.setup.me.short(),
            self.state.phase()
        )
    }
}

type Step<T> = std::result::Result<T, Error>;

impl<'k> Node<'k> {
    /// A node waiting for the researcher's announcement. Our own certificate counts as
    /// registered (a registry never holds its own party).
    pub fn new(mut setup: NodeSetup<'k>) -> Node<'k> {
        if !setup.peers.contains_key(&setup.me) {
            let key = PublicKey::from(setup.key.signing_key().verifying_key());
            if let Ok(id) = "this-node".parse() {
                setup.peers.insert(setup.me, Peer { id, key });
            }
        }
        Node {
            setup,
            state: State::AwaitAnnounce,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Whether the round is over (finished or failed).
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// Handles one event with a fresh key source, returning the actions to run in order.
    pub fn handle<R: TryCryptoRng + ?Sized>(&mut self, event: Event, rng: &mut R) -> Vec<Action> {
        let phase = self.state.phase();
        let state = std::mem::replace(&mut self.state, State::Failed);
        let mut actions = Vec::new();
        let next = match (state, event) {
            (State::Done, _) | (State::Failed, _) => Ok(State::Failed),
            (_, Event::Stopped(why)) => Err(Error::Stopped { phase, why }),
            (State::AwaitAnnounce, Event::Message(Message2::Announce(a))) => {
                self.on_announce(a, rng, &mut actions)
            }
            (State::AwaitAdverts(k), Event::Message(Message2::AdvertList(l))) => {
                self.on_adverts(*k, l.adverts, &mut actions)
            }
            (State::AwaitShares(s), Event::Message(Message2::ForwardedShares(f))) => {
                self.on_shares(*s, f.u2, f.shares, &mut actions)
            }
            (State::Masking(m), Event::StreamSent) => Ok(State::AwaitSurvivors(m)),
            (State::AwaitSurvivors(m), Event::Message(Message2::Survivors(s))) => {
                self.on_survivors(*m, s, &mut actions)
            }
            (State::AwaitSignatures(s), Event::Message(Message2::SignatureList(l))) => {
                self.on_signatures(*s, l, &mut actions)
            }
            (State::AwaitResult(r), Event::Message(Message2::Result(h))) => {
                self.on_result(*r, h, &mut actions)
            }
            (_, Event::Message(m)) => Err(Error::Misbehaviour {
                culprit: Culprit::Researcher,
                phase,
                what: format!("sent an unexpected {} message", m.name()),
            }),
            (_, Event::StreamSent) => Err(Error::Internal {
                phase,
                what: "stream finished outside the masked-input phase".into(),
            }),
        };
        match next {
            Ok(state) => self.state = state,
            Err(e) => {
                self.state = State::Failed;
                actions.push(Action::Fail(e));
            }
        }
        actions
    }

    fn peer_name(&self, fp: &Fingerprint) -> Culprit {
        match self.setup.peers.get(fp) {
            Some(p) => Culprit::Node(p.id.clone(), *fp),
            None => Culprit::Stranger(*fp),
        }
    }

    fn label(&self, fp: &Fingerprint) -> String {
        if *fp == self.setup.me {
            return "this node".into();
        }
        match self.setup.peers.get(fp) {
            Some(p) => p.id.to_string(),
            None => fp.short(),
        }
    }

    fn names(&self, fps: &[Fingerprint]) -> String {
        if fps.is_empty() {
            return "none".into();
        }
        fps.iter()
            .map(|f| self.label(f))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn researcher_fault(phase: Phase, what: impl Into<String>) -> Error {
        Error::Misbehaviour {
            culprit: Culprit::Researcher,
            phase,
            what: what.into(),
        }
    }
}

/// `name[2x3] f32, ...` for messages.
pub fn describe_layout(l: &Layout) -> String {
    l.tensors
        .iter()
        .map(|t| {
            let dims: Vec<String> = t.shape.iter().map(u64::to_string).collect();
            let name = if t.name.is_empty() { "values" } else { &t.name };
            format!("{name}[{}] {:?}", dims.join("x"), t.dtype).to_lowercase()
        })
        .collect::<Vec<_>>()
        .join(", ")
}
