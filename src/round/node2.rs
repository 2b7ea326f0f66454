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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use p256::PublicKey;
use p256::elliptic_curve::rand_core::TryCryptoRng;
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use crate::party::{Fingerprint, PartyId};
use crate::pki::identity::PartyKey;
use crate::round::messages::{
    Advertise, Announce, ConsistencySig, Message2, ResultHeader, RevealedShare, SealedShare,
    ShareBundle, ShareKind, SignatureList, Survivors, Unmask,
};
use crate::round::policy::{Policy, Refusal, tolerated_colluders};
use crate::round::schedule::{
    self, Advert, ConsistencyMessage, Ctx, RoundSecrets, ShareKey, SharePair, find_same_x,
    is_subset, pairwise_mask, self_mask_key, sign_advert, sign_consistency, verify_advert,
    verify_consistency,
};
use crate::secagg::keys::Sign;
use crate::secagg::prg::PeerMask;
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
    /// Content digest of the decoded values (one release per input).
    pub digest: [u8; 32],
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
    /// Record that this input is released in (federation, round): refused if the digest
    /// was released before, in any federation or mode.
    JournalRelease {
        /// Input digest.
        digest: [u8; 32],
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

    // Phase 1: the announcement, checked against our policy, registry and input.
    fn on_announce<R: TryCryptoRng + ?Sized>(
        &mut self,
        a: Announce,
        rng: &mut R,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let s = &self.setup;
        let refused = |refusal| Error::Refused {
            round: a.round,
            refusal,
        };
        let plan = s
            .policy
            .check(&a, s.last_round, s.input.weight, s.model.as_ref())
            .map_err(refused)?;
        if a.researcher != s.researcher {
            return Err(Self::researcher_fault(
                Phase::Join,
                "announced another researcher than the one TLS authenticated",
            ));
        }
        if !a.invitees.contains(&s.me) {
            return Err(refused(Refusal {
                parameter: "invitees",
                got: "a list without this node".into(),
                allowed: "a list that includes this node".into(),
            }));
        }
        if let Some(stranger) = a.invitees.iter().find(|fp| !s.peers.contains_key(fp)) {
            return Err(refused(Refusal {
                parameter: "invitees",
                got: format!("a party not registered here as a node ({stranger})"),
                allowed: "only nodes registered here".into(),
            }));
        }
        if a.layout != s.input.layout {
            return Err(refused(Refusal {
                parameter: "tensor layout",
                got: describe_layout(&a.layout),
                allowed: format!("this node's update, {}", describe_layout(&s.input.layout)),
            }));
        }
        let ctx = a
            .ctx(&s.researcher)
            .map_err(|e| Self::researcher_fault(Phase::Join, e.to_string()))?;
        let secrets = RoundSecrets::generate(&ctx, rng).map_err(|e| Error::Internal {
            phase: Phase::Join,
            what: e.to_string(),
        })?;
        let advert = secrets.advert(s.me);
        let sig = sign_advert(s.key, &ctx, &advert);
        let n = a.invitees.len();
        let t = a.threshold as usize;
        actions.push(Action::Progress(format!(
            "round {}: accepted ({n} nodes invited, threshold {t}: tolerates {} dropouts and up to {} colluding nodes)",
            a.round,
            n - t,
            tolerated_colluders(n, t)
        )));
        actions.push(Action::JournalAdvertise {
            federation: a.federation.clone(),
            round: a.round,
            researcher: s.researcher,
        });
        actions.push(Action::Send(Message2::Advertise(Advertise {
            advert: advert.clone(),
            sig,
        })));
        Ok(State::AwaitAdverts(Box::new(Keyed {
            ctx,
            plan,
            secrets,
            advert,
        })))
    }

    // Phase 2: U1, checked whole; then our shares, sealed once per peer.
    fn on_adverts(
        &mut self,
        k: Keyed,
        adverts: Vec<Advertise>,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Advertise;
        let t = k.ctx.threshold();
        let mut u1 = BTreeMap::new();
        for Advertise { advert, sig } in adverts {
            let fp = advert.fp;
            let Some(peer) = self.setup.peers.get(&fp) else {
                return Err(Self::researcher_fault(
                    phase,
                    format!("forwarded an advert of a party not registered here ({fp})"),
                ));
            };
            if k.ctx.x_of(&fp).is_none() {
                return Err(Self::researcher_fault(
                    phase,
                    format!("forwarded an advert of '{}', who was not invited", peer.id),
                ));
            }
            // Our own entry first: if the researcher altered it, the signature check
            // below would fail too, and blame this node for the researcher's change.
            let valid = verify_advert(&peer.key, &k.ctx, &advert, &sig).is_ok();
            if fp == self.setup.me && (advert != k.advert || !valid) {
                return Err(Self::researcher_fault(
                    phase,
                    "altered this node's own advert",
                ));
            }
            if !valid {
                return Err(Error::Misbehaviour {
                    culprit: self.peer_name(&fp),
                    phase,
                    what: "its advertised keys are not signed by its registered certificate".into(),
                });
            }
            if u1.insert(fp, advert).is_some() {
                return Err(Self::researcher_fault(phase, "forwarded an advert twice"));
            }
        }
        if !u1.contains_key(&self.setup.me) {
            return Err(Self::researcher_fault(
                phase,
                "left this node's advert out of U1",
            ));
        }
        if u1.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: u1.len(),
                need: t,
            });
        }
        // No two C or S keys may share an x-coordinate (that covers P and -P): a node
        // mirroring another's mask key under its own certificate would make their masks
        // cancel or coincide.
        let (fps, keys): (Vec<Fingerprint>, Vec<PublicKey>) = u1
            .values()
            .flat_map(|a| [(a.fp, a.c_pub), (a.fp, a.s_pub)])
            .unzip();
        if let Some((i, j)) = find_same_x(&keys) {
            let culprit = if fps[i] == self.setup.me {
                self.peer_name(&fps[j])
            } else {
                self.peer_name(&fps[i])
            };
            return Err(Error::Misbehaviour {
                culprit,
                phase,
                what: format!(
                    "advertised a key with the same x-coordinate as {}'s (one of the two copied the other's key; a third party cannot tell which)",
                    self.label(if fps[i] == self.setup.me {
                        &fps[i]
                    } else {
                        &fps[j]
                    })
                ),
            });
        }
        let me = self.setup.me;
        let mut shares = Vec::with_capacity(u1.len().saturating_sub(1));
        for (fp, advert) in u1.iter().filter(|(fp, _)| **fp != me) {
            let x = k.ctx.x_of(fp).ok_or_else(|| Error::Internal {
                phase,
                what: "an U1 member has no x-coordinate".into(),
            })?;
            let (s_share, b_share) = k.secrets.shares_for(x).ok_or_else(|| Error::Internal {
                phase,
                what: format!("no share dealt for x = {x}"),
            })?;
            let pair = SharePair {
                s: *s_share.y(),
                b: *b_share.y(),
            };
            let key = ShareKey::derive(k.secrets.c(), &advert.c_pub, &k.ctx, &me, fp);
            let sealed = key
                .seal(&k.ctx, &me, fp, &pair)
                .map_err(|e| Error::Internal {
                    phase,
                    what: e.to_string(),
                })?;
            shares.push(SealedShare { peer: *fp, sealed });
        }
        actions.push(Action::Progress(format!(
            "advertise: {} of {} nodes advertised keys ({})",
            u1.len(),
            k.ctx.invitees().len(),
            self.names(&u1.keys().copied().collect::<Vec<_>>())
        )));
        actions.push(Action::Send(Message2::ShareBundle(ShareBundle { shares })));
        Ok(State::AwaitShares(Box::new(Shared { keyed: k, u1 })))
    }

    // Phase 3: U2 and the shares forwarded to us; then the masked input.
    fn on_shares(
        &mut self,
        s: Shared,
        u2: Vec<Fingerprint>,
        forwarded: Vec<SealedShare>,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::ShareKeys;
        let me = self.setup.me;
        let ctx = &s.keyed.ctx;
        let t = ctx.threshold();
        if !u2.contains(&me) {
            return Err(Self::researcher_fault(phase, "left this node out of U2"));
        }
        let u1: Vec<Fingerprint> = s.u1.keys().copied().collect();
        if !is_subset(&u2, &u1) {
            return Err(Self::researcher_fault(
                phase,
                "announced a U2 that is not inside U1",
            ));
        }
        // U2(u) = {u} ∪ senders; it must equal the announced U2 exactly.
        let senders: Vec<Fingerprint> = forwarded.iter().map(|f| f.peer).collect();
        let mut mine: Vec<Fingerprint> = senders.clone();
        mine.push(me);
        mine.sort();
        if senders.contains(&me) || mine.windows(2).any(|w| w[0] == w[1]) {
            return Err(Self::researcher_fault(
                phase,
                "forwarded a share from this node to itself, or two from one sender",
            ));
        }
        if mine != u2 {
            return Err(Self::researcher_fault(
                phase,
                format!(
                    "announced U2 = {{{}}} but forwarded shares from {{{}}}",
                    self.names(&u2),
                    self.names(&mine)
                ),
            ));
        }
        if u2.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: u2.len(),
                need: t,
            });
        }
        let x_me = ctx.x_of(&me).ok_or_else(|| Error::Internal {
            phase,
            what: "this node has no x-coordinate".into(),
        })?;
        let mut held = BTreeMap::new();
        for f in &forwarded {
            let dealer = s.u1.get(&f.peer).ok_or_else(|| {
                Self::researcher_fault(phase, "forwarded a share from outside U1")
            })?;
            let key = ShareKey::derive(s.keyed.secrets.c(), &dealer.c_pub, ctx, &f.peer, &me);
            let opened = key.open(ctx, &f.peer, &me, &f.sealed);
            let pair = match opened {
                Ok(p) => p,
                Err(e) => {
                    // The researcher relays the ciphertext: a broken seal may be its doing
                    // or the dealer's; we cannot tell, so we name the dealer's share and
                    // say it was relayed.
                    return Err(Error::Misbehaviour {
                        culprit: self.peer_name(&f.peer),
                        phase,
                        what: format!(
                            "its share, as relayed by the researcher, does not open: {e}"
                        ),
                    });
                }
            };
            if let Err(e) = pair.verify(dealer, x_me) {
                return Err(Error::Misbehaviour {
                    culprit: self.peer_name(&f.peer),
                    phase,
                    what: format!("dealt a bad share: {e}"),
                });
            }
            held.insert(f.peer, pair);
        }
        let (own_s, own_b) = s
            .keyed
            .secrets
            .shares_for(x_me)
            .ok_or_else(|| Error::Internal {
                phase,
                what: "no own share".into(),
            })?;
        held.insert(
            me,
            SharePair {
                s: *own_s.y(),
                b: *own_b.y(),
            },
        );
        // Masks: our self mask, and one pairwise mask per peer of U2(u).
        let mut masks = Vec::with_capacity(u2.len());
        masks.push(PeerMask {
            key: self_mask_key(s.keyed.secrets.b(), ctx, &me),
            sign: Sign::Add,
        });
        for v in u2.iter().filter(|v| **v != me) {
            let peer = s.u1.get(v).ok_or_else(|| Error::Internal {
                phase,
                what: "an U2 member has no advert".into(),
            })?;
            masks.push(pairwise_mask(
                s.keyed.secrets.s(),
                &me,
                &s.keyed.advert.s_pub,
                v,
                &peer.s_pub,
                ctx,
            ));
        }
        actions.push(Action::Progress(format!(
            "share-keys: shares from {} nodes; dropped before sharing: {}",
            u2.len(),
            self.names(
                &u1.iter()
                    .filter(|f| !u2.contains(f))
                    .copied()
                    .collect::<Vec<_>>()
            )
        )));
        actions.push(Action::JournalRelease {
            digest: self.setup.input.digest,
            federation: ctx.params().federation.clone(),
            round: ctx.params().round,
        });
        actions.push(Action::StreamMasked {
            plan: s.keyed.plan,
            weight: self.setup.input.weight,
            masks,
        });
        Ok(State::Masking(Box::new(Masking {
            shared: s,
            u2,
            held,
        })))
    }

    // Phase 5: U2 and U3 against our own view; sign once.
    fn on_survivors(
        &mut self,
        m: Masking,
        sv: Survivors,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Consistency;
        let me = self.setup.me;
        let ctx = &m.shared.keyed.ctx;
        let t = ctx.threshold();
        if sv.u2 != m.u2 {
            return Err(Self::researcher_fault(
                phase,
                "announced a U2 that differs from the one this node saw",
            ));
        }
        if !is_subset(&sv.u3, &m.u2) {
            return Err(Self::researcher_fault(
                phase,
                "announced a U3 that is not inside U2",
            ));
        }
        if !sv.u3.contains(&me) {
            return Err(Error::Excluded);
        }
        if sv.u3.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: sv.u3.len(),
                need: t,
            });
        }
        let p = &self.setup.policy;
        let trusted = sv.u3.iter().filter(|f| p.require_peers.contains(f)).count();
        if trusted < p.require_peers_count {
            return Err(Error::Refused {
                round: ctx.params().round,
                refusal: Refusal {
                    parameter: "trusted peers among the survivors",
                    got: trusted.to_string(),
                    allowed: format!("at least {} (require-peers)", p.require_peers_count),
                },
            });
        }
        let adverts: Vec<&Advert> = m.u2.iter().filter_map(|f| m.shared.u1.get(f)).collect();
        let message = ConsistencyMessage::new(ctx, &adverts, &sv.u3)
            .map_err(|e| Self::researcher_fault(phase, e.to_string()))?;
        let sig = sign_consistency(self.setup.key, &message);
        actions.push(Action::Progress(format!(
            "masked-input: whole inputs from {} nodes; dropped mid-round: {}",
            sv.u3.len(),
            self.names(
                &m.u2
                    .iter()
                    .filter(|f| !sv.u3.contains(f))
                    .copied()
                    .collect::<Vec<_>>()
            )
        )));
        actions.push(Action::JournalSigned {
            federation: ctx.params().federation.clone(),
            round: ctx.params().round,
            hash: Sha256::digest(message.as_bytes()).into(),
        });
        actions.push(Action::Send(Message2::ConsistencySig(ConsistencySig {
            sig,
        })));
        Ok(State::AwaitSignatures(Box::new(Signed {
            masking: m,
            u3: sv.u3,
            message,
        })))
    }

    // Phase 6: t valid signatures from distinct registered members of U3, then reveal
    // one kind of share per peer.
    fn on_signatures(
        &mut self,
        s: Signed,
        list: SignatureList,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Unmask;
        let ctx = &s.masking.shared.keyed.ctx;
        let t = ctx.threshold();
        let mut signers = BTreeSet::new();
        for (fp, sig) in &list.sigs {
            if !s.u3.contains(fp) {
                continue;
            }
            let Some(peer) = self.setup.peers.get(fp) else {
                continue;
            };
            if verify_consistency(&peer.key, &s.message, sig).is_ok() {
                signers.insert(*fp);
            }
        }
        if signers.len() < t {
            return Err(Error::BelowThreshold {
                phase,
                have: signers.len(),
                need: t,
            });
        }
        let p = &self.setup.policy;
        let trusted = signers
            .iter()
            .filter(|f| p.require_peers.contains(f))
            .count();
        if trusted < p.require_peers_count {
            return Err(Error::Refused {
                round: ctx.params().round,
                refusal: Refusal {
                    parameter: "trusted peers among the signers",
                    got: trusted.to_string(),
                    allowed: format!("at least {} (require-peers)", p.require_peers_count),
                },
            });
        }
        let mut reveals = Vec::with_capacity(s.masking.u2.len());
        let mut shares = Vec::with_capacity(s.masking.u2.len());
        for v in &s.masking.u2 {
            let pair = s.masking.held.get(v).ok_or_else(|| Error::Internal {
                phase,
                what: "a share of an U2 member is missing".into(),
            })?;
            let (kind, value) = if s.u3.contains(v) {
                (ShareKind::B, pair.b)
            } else {
                (ShareKind::S, pair.s)
            };
            reveals.push((*v, kind));
            shares.push(RevealedShare {
                peer: *v,
                kind,
                value,
            });
        }
        actions.push(Action::JournalReveal {
            federation: ctx.params().federation.clone(),
            round: ctx.params().round,
            reveals,
        });
        actions.push(Action::Send(Message2::Unmask(Unmask { shares })));
        Ok(State::AwaitResult(Box::new(Revealed {
            signed: s,
            signers: signers.into_iter().collect(),
        })))
    }

    // Phase 7: a result that a weighted mean of U3's clipped inputs could have.
    fn on_result(
        &mut self,
        r: Revealed,
        h: ResultHeader,
        actions: &mut Vec<Action>,
    ) -> Step<State> {
        let phase = Phase::Result;
        let keyed = &r.signed.masking.shared.keyed;
        let n3 = r.signed.u3.len() as u64;
        if u64::from(h.survivors) != n3 {
            return Err(Self::researcher_fault(
                phase,
                format!("reported {} survivors, U3 has {n3}", h.survivors),
            ));
        }
        let lo = n3.max(self.setup.input.weight);
        let hi = n3.saturating_mul(keyed.ctx.params().max_weight);
        if h.total_weight < lo || h.total_weight > hi {
            return Err(Self::researcher_fault(
                phase,
                format!(
                    "reported a total weight of {}, impossible for {n3} nodes (allowed {lo}..={hi})",
                    h.total_weight
                ),
            ));
        }
        let layout = self.setup.input.layout.clone();
        if h.bytes != layout.encoded_len() {
            return Err(Self::researcher_fault(
                phase,
                format!(
                    "announced a mean of {} bytes, the layout has {}",
                    h.bytes,
                    layout.encoded_len()
                ),
            ));
        }
        actions.push(Action::ReceiveMean {
            header: h.clone(),
            plan: keyed.plan,
            layout,
        });
        actions.push(Action::Finish(Summary {
            round: keyed.ctx.params().round,
            u1: r.signed.masking.shared.u1.keys().copied().collect(),
            u2: r.signed.masking.u2.clone(),
            u3: r.signed.u3.clone(),
            signers: r.signers.clone(),
            total_weight: h.total_weight,
        }));
        Ok(State::Done)
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

/// The context a test or a driver needs from a state (for attack tests).
pub fn ctx_of(a: &Announce, researcher: &Fingerprint) -> Result<Ctx, schedule::Error> {
    a.ctx(researcher).map_err(|e| schedule::Error::Ctx {
        field: "announce",
        reason: e.to_string(),
    })
}
