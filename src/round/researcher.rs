//! Protocol 2's researcher as a pure state machine: `handle(event) -> actions`.
//!
//! The researcher collects adverts (U1), share bundles (U2), masked streams (U3),
//! consistency signatures (U4) and revealed shares (U5), checks every one of them
//! against its own registry (the [`Invitee`] keys) and the sets it closed, and rebuilds
//! the masks of the survivors and of the nodes that dropped after sharing. DESIGN.md
//! ("Rounds over TLS: protocol 2") is normative; the phases below follow it.
//!
//! ```text
//! Advertise ─all invitees or Deadline→ ShareKeys ─all of U1 or Deadline→ MaskedInput
//!   ─all of U2 ended or Deadline→ Consistency ─all of U3 or Deadline→ Unmask
//!   ─all signers or Deadline→ (Action::Unmask) Result ─Unmasked→ Done
//! any phase ─fewer than t left, or a failed rebuild / decode→ Failed (only Abort follows)
//! ```
//!
//! No I/O happens here: no sockets, threads, files, clocks or printing. The driver feeds
//! [`Event`]s and runs the [`Action`]s in order: it owns the accumulator and the spill
//! files, and applies the corrections of [`Action::Unmask`] before decoding.
//!
//! Readings chosen where the brief is open (see the tests for each):
//! - a phase closes early once every member of its set has answered or left;
//! - a node lost or dropped before a phase closes leaves that phase's set (a lost node's
//!   advert, bundle, stream, signature or shares are not used), and after a close it is
//!   simply no longer expected or sent to; the sets announced (U2 in `ForwardedShares`,
//!   U3 in `Survivors`) never change afterwards;
//! - members that have not answered when a phase closes are dropped ("missed the
//!   deadline"), so their connection closes and they learn the round went on without them;
//! - a completed stream keeps its spill until U3 closes (a node lost before the close
//!   is not in U3, and its words are subtracted); `StreamComplete` is sent at the close;
//! - a revealed share that fails its dealer's commitments is discarded and its revealer
//!   named in [`Outcome::misbehaviours`]; the revealer stays in U5 (its other shares are
//!   checked one by one). A share of the wrong kind, of a peer outside U2, or both kinds
//!   for one peer, is a protocol violation: all of that node's shares are discarded and
//!   it is dropped;
//! - an advert whose C or S key shares an x-coordinate with an accepted one (or its own
//!   other key) is refused, since every node would abort on it; the later sender is named.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use p256::ecdsa::Signature;
use p256::{NonZeroScalar, ProjectivePoint, PublicKey, Scalar};
use zeroize::{Zeroize, Zeroizing};

use crate::layout::Layout;
use crate::party::{Fingerprint, PartyId};
use crate::round::messages::{
    self, AdvertList, Advertise, Announce, ForwardedShares, Message2, ResultHeader, RevealedShare,
    SealedShare, ShareBundle, ShareKind, SignatureList, Survivors, Unmask,
};
use crate::round::schedule::{
    self, Advert, ConsistencyMessage, Ctx, pairwise_mask, same_x, self_mask_key, verify_advert,
    verify_consistency,
};
use crate::secagg::keys::Sign;
use crate::secagg::prg::PeerMask;
use crate::secagg::quantize::{self, Plan, QuantParams};
use crate::secagg::shamir;

/// An invited node, as the researcher's own registry knows it (role node).
#[derive(Clone, Debug)]
pub struct Invitee {
    /// The local id (a label in this registry only).
    pub id: PartyId,
    /// The certified public key.
    pub key: PublicKey,
}

/// What the researcher knows before the round.
#[derive(Clone, Debug)]
pub struct ResearcherSetup {
    /// Our certificate fingerprint.
    pub me: Fingerprint,
    /// The ctx federation string (roster fingerprint or name).
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// The invited nodes, from our registry, by fingerprint.
    pub invitees: BTreeMap<Fingerprint, Invitee>,
    /// Clip, bits, max weight.
    pub quant: QuantParams,
    /// Threshold t: refused when t > n or 2t ≤ n.
    pub threshold: u32,
    /// The tensors every node brings.
    pub layout: Layout,
    /// Digest of the global model, if announced.
    pub model_digest: Option<[u8; 32]>,
    /// Vector label ("update").
    pub label: String,
    /// The per-phase deadline announced to the nodes.
    pub deadline_secs: u32,
}

/// The researcher's phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Collecting adverts (U1).
    Advertise,
    /// Collecting share bundles (U2).
    ShareKeys,
    /// Collecting masked streams (U3).
    MaskedInput,
    /// Collecting consistency signatures (U4).
    Consistency,
    /// Collecting revealed shares (U5).
    Unmask,
    /// Decoding and sending the result (and after the round is over).
    Result,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Advertise => "advertise",
            Phase::ShareKeys => "share-keys",
            Phase::MaskedInput => "masked-input",
            Phase::Consistency => "consistency",
            Phase::Unmask => "unmask",
            Phase::Result => "result",
        })
    }
}

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

/// One node's stream in the masked-input phase.
#[derive(Clone, Copy, Debug)]
struct Stream {
    next: u64,
    ended: bool,
}

enum Stage {
    Advertise {
        adverts: BTreeMap<Fingerprint, Advertise>,
    },
    ShareKeys {
        bundles: BTreeMap<Fingerprint, ShareBundle>,
    },
    MaskedInput {
        streams: BTreeMap<Fingerprint, Stream>,
    },
    Consistency {
        message: ConsistencyMessage,
        sigs: BTreeMap<Fingerprint, Signature>,
    },
    Unmask {
        /// Good shares (checked against the commitments), by revealer.
        reveals: BTreeMap<Fingerprint, Vec<RevealedShare>>,
    },
    Decode,
    Done,
    Failed,
}

impl Stage {
    fn phase(&self) -> Phase {
        match self {
            Stage::Advertise { .. } => Phase::Advertise,
            Stage::ShareKeys { .. } => Phase::ShareKeys,
            Stage::MaskedInput { .. } => Phase::MaskedInput,
            Stage::Consistency { .. } => Phase::Consistency,
            Stage::Unmask { .. } => Phase::Unmask,
            Stage::Decode | Stage::Done | Stage::Failed => Phase::Result,
        }
    }
}

/// Interpolation points; the values are zeroized on drop.
struct Points(Vec<(u32, Scalar)>);

impl Drop for Points {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|(_, y)| y.zeroize());
    }
}

/// The researcher's side of one round.
pub struct Researcher {
    invitees: BTreeMap<Fingerprint, Invitee>,
    ctx: Ctx,
    plan: Plan,
    /// d + 1.
    words: u64,
    /// Bytes of the mean in the layout's encoding.
    mean_bytes: u64,
    t: usize,
    stage: Stage,
    /// The current phase's set: nodes whose answer is expected or was accepted.
    members: BTreeSet<Fingerprint>,
    /// Invitees that left; anything still in flight from them is ignored.
    gone: BTreeSet<Fingerprint>,
    u1: BTreeMap<Fingerprint, Advertise>,
    u2: Vec<Fingerprint>,
    u3: Vec<Fingerprint>,
    u4: Vec<Fingerprint>,
    u5: Vec<Fingerprint>,
    dropouts: Vec<Dropout>,
    misbehaviours: Vec<Misbehaviour>,
}

impl fmt::Debug for Researcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Researcher(round {}, {} phase, {} member(s))",
            self.ctx.params().round,
            self.stage.phase(),
            self.members.len()
        )
    }
}

type Step = Result<(), Error>;

impl Researcher {
    /// Checks the setup, and returns the machine and the announcement to send each
    /// invitee as it connects.
    pub fn new(setup: ResearcherSetup) -> Result<(Researcher, Announce), Error> {
        let n = setup.invitees.len();
        let t = setup.threshold;
        if t == 0 || t as usize > n {
            return Err(Error::Threshold {
                t,
                n,
                why: "t must be in 1..=n",
            });
        }
        if 2 * t as usize <= n {
            return Err(Error::Threshold {
                t,
                n,
                why: "2t must exceed n, or the researcher could split the honest nodes",
            });
        }
        let plan = Plan::new(setup.quant, n)?;
        let mean_bytes = encoded_len(&setup.layout).ok_or_else(|| too_large("layout"))?;
        let announce = Announce {
            federation: setup.federation,
            round: setup.round,
            researcher: setup.me,
            invitees: setup.invitees.keys().copied().collect(),
            clip: setup.quant.clip,
            bits: setup.quant.bits,
            modulus_bits: plan.modulus.bits(),
            word_bytes: plan.wire_bytes() as u32,
            max_weight: setup.quant.max_weight,
            threshold: t,
            layout: setup.layout,
            model_digest: setup.model_digest,
            label: setup.label,
            deadline_secs: setup.deadline_secs,
        };
        let ctx = announce.ctx(&setup.me).map_err(Error::Announce)?;
        let words = ctx
            .params()
            .length
            .checked_add(1)
            .ok_or_else(|| too_large("layout"))?;
        let members = setup.invitees.keys().copied().collect();
        let researcher = Researcher {
            invitees: setup.invitees,
            ctx,
            plan,
            words,
            mean_bytes,
            t: t as usize,
            stage: Stage::Advertise {
                adverts: BTreeMap::new(),
            },
            members,
            gone: BTreeSet::new(),
            u1: BTreeMap::new(),
            u2: Vec::new(),
            u3: Vec::new(),
            u4: Vec::new(),
            u5: Vec::new(),
            dropouts: Vec::new(),
            misbehaviours: Vec::new(),
        };
        Ok((researcher, announce))
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.stage.phase()
    }

    /// Whether the round is over (finished or failed).
    pub fn is_over(&self) -> bool {
        matches!(self.stage, Stage::Done | Stage::Failed)
    }

    /// Whether `fp` is in the current phase's set. Frames from invitees that left are
    /// ignored by [`Researcher::handle`]; a driver may use this to close a connection
    /// that arrives after its node left (a late joiner).
    pub fn expects(&self, fp: &Fingerprint) -> bool {
        !self.is_over() && self.members.contains(fp)
    }

    /// The round context (as every honest node computes it).
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// The quantization plan (ring and wire width).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Handles one event; returns the actions to run in order. After `Finish` or `Fail`
    /// every event yields nothing.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if let Err(e) = self.step(event, &mut out) {
            self.stage = Stage::Failed;
            out.push(Action::Fail(e));
        }
        out
    }

    fn step(&mut self, event: Event, out: &mut Vec<Action>) -> Step {
        if self.is_over() {
            return Ok(());
        }
        match event {
            Event::Deadline => return self.close(out),
            Event::Unmasked(result) => return self.on_unmasked(result, out),
            Event::Lost { from, reason } => {
                if self.members.contains(&from) {
                    self.remove(from, DropReason::Lost(reason), false, out);
                }
            }
            Event::Message { from, msg } => {
                if self.admit(from, out) {
                    self.on_message(from, msg, out);
                }
            }
            Event::Chunk { from, offset, data } => {
                if self.admit(from, out) {
                    self.on_chunk(from, offset, data, out);
                }
            }
            Event::StreamEnd { from } => {
                if self.admit(from, out) {
                    self.on_end(from, out);
                }
            }
        }
        if self.all_answered() {
            self.close(out)?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Membership

    fn culprit(&self, fp: Fingerprint) -> Culprit {
        match self.invitees.get(&fp) {
            Some(i) => Culprit::Node {
                id: i.id.clone(),
                fp,
            },
            None => Culprit::Stranger(fp),
        }
    }

    /// Whether `from` belongs to the current set. Leavers are ignored (their frames may
    /// still be in flight); strangers are dropped. Invitees are always members or gone.
    fn admit(&mut self, from: Fingerprint, out: &mut Vec<Action>) -> bool {
        if self.members.contains(&from) {
            return true;
        }
        if !self.gone.contains(&from) && !self.invitees.contains_key(&from) {
            let m = Misbehaviour {
                culprit: Culprit::Stranger(from),
                phase: self.phase(),
                fault: Fault::NotInvited,
            };
            self.misbehaviours.push(m.clone());
            out.push(Action::Drop {
                who: from,
                why: DropReason::Misbehaved(m),
            });
        }
        false
    }

    /// Takes `who` out of the current set and of everything it sent in this phase.
    fn remove(&mut self, who: Fingerprint, why: DropReason, drop: bool, out: &mut Vec<Action>) {
        self.members.remove(&who);
        self.gone.insert(who);
        match &mut self.stage {
            Stage::Advertise { adverts } => {
                adverts.remove(&who);
            }
            Stage::ShareKeys { bundles } => {
                bundles.remove(&who);
            }
            Stage::MaskedInput { streams } => {
                if streams.remove(&who).is_some() {
                    out.push(Action::DiscardStream { from: who });
                }
            }
            Stage::Consistency { sigs, .. } => {
                sigs.remove(&who);
            }
            Stage::Unmask { reveals } => {
                reveals.remove(&who);
            }
            Stage::Decode | Stage::Done | Stage::Failed => {}
        }
        self.dropouts.push(Dropout {
            who: self.culprit(who),
            phase: self.phase(),
            why: why.clone(),
        });
        if drop {
            out.push(Action::Drop { who, why });
        }
    }

    fn misbehaved(&mut self, who: Fingerprint, fault: Fault, out: &mut Vec<Action>) {
        let m = Misbehaviour {
            culprit: self.culprit(who),
            phase: self.phase(),
            fault,
        };
        self.misbehaviours.push(m.clone());
        self.remove(who, DropReason::Misbehaved(m), true, out);
    }

    fn all_answered(&self) -> bool {
        let n = self.members.len();
        match &self.stage {
            Stage::Advertise { adverts } => adverts.len() == n,
            Stage::ShareKeys { bundles } => bundles.len() == n,
            Stage::MaskedInput { streams } => streams.values().all(|s| s.ended),
            Stage::Consistency { sigs, .. } => sigs.len() == n,
            Stage::Unmask { reveals } => reveals.len() == n,
            Stage::Decode | Stage::Done | Stage::Failed => false,
        }
    }

    // -----------------------------------------------------------------------------------
    // Messages

    fn on_message(&mut self, from: Fingerprint, msg: Message2, out: &mut Vec<Action>) {
        let fault = match (&mut self.stage, msg) {
            (Stage::Advertise { adverts }, Message2::Advertise(a)) => {
                if adverts.contains_key(&from) {
                    Some(Fault::Duplicate("advert"))
                } else {
                    // Not the entry API: the check reads the other accepted adverts.
                    match check_advert(&self.invitees, &self.ctx, adverts, from, &a) {
                        Some(f) => Some(f),
                        None => {
                            adverts.insert(from, a);
                            None
                        }
                    }
                }
            }
            (Stage::ShareKeys { bundles }, Message2::ShareBundle(b)) => match bundles.entry(from) {
                Entry::Occupied(_) => Some(Fault::Duplicate("share bundle")),
                Entry::Vacant(e) => match check_bundle(&self.u1, from, &b) {
                    Some(f) => Some(f),
                    None => {
                        e.insert(b);
                        None
                    }
                },
            },
            (Stage::Consistency { message, sigs }, Message2::ConsistencySig(s)) => {
                match sigs.entry(from) {
                    Entry::Occupied(_) => Some(Fault::Duplicate("consistency signature")),
                    Entry::Vacant(e) => match self.invitees.get(&from) {
                        Some(i) if verify_consistency(&i.key, message, &s.sig).is_ok() => {
                            e.insert(s.sig);
                            None
                        }
                        _ => Some(Fault::BadSignature),
                    },
                }
            }
            (Stage::Unmask { reveals }, Message2::Unmask(u)) => match reveals.entry(from) {
                Entry::Occupied(_) => Some(Fault::Duplicate("unmask")),
                Entry::Vacant(e) => match check_unmask(&self.u2, &self.u3, &u) {
                    Some(f) => Some(f),
                    None => {
                        let (good, bad) = verify_reveals(&self.ctx, &self.u1, from, u);
                        e.insert(good);
                        let culprit = culprit_of(&self.invitees, from);
                        self.misbehaviours
                            .extend(bad.into_iter().map(|fault| Misbehaviour {
                                culprit: culprit.clone(),
                                phase: Phase::Unmask,
                                fault,
                            }));
                        None
                    }
                },
            },
            (_, m) => Some(Fault::Unexpected(m.name())),
        };
        if let Some(f) = fault {
            self.misbehaved(from, f, out);
        }
    }

    fn on_chunk(&mut self, from: Fingerprint, offset: u64, data: Vec<u8>, out: &mut Vec<Action>) {
        let word = self.plan.wire_bytes();
        let words = self.words;
        let fault = match &mut self.stage {
            Stage::MaskedInput { streams } => match streams.get_mut(&from) {
                None => Some(Fault::Unexpected("chunk")),
                Some(s) if s.ended => Some(Fault::AfterEnd),
                Some(_) if data.is_empty() || data.len() % word != 0 => Some(Fault::PartialWords {
                    bytes: data.len(),
                    word,
                }),
                Some(s) if offset != s.next => Some(Fault::OutOfOrder {
                    expected: s.next,
                    got: offset,
                }),
                Some(s) => {
                    let end = s.next.saturating_add((data.len() / word) as u64);
                    if end > words {
                        Some(Fault::Overflow { end, words })
                    } else {
                        s.next = end;
                        out.push(Action::Absorb { from, offset, data });
                        None
                    }
                }
            },
            Stage::Advertise { .. } | Stage::ShareKeys { .. } => Some(Fault::Unexpected("chunk")),
            _ => Some(Fault::AfterEnd),
        };
        if let Some(f) = fault {
            self.misbehaved(from, f, out);
        }
    }

    fn on_end(&mut self, from: Fingerprint, out: &mut Vec<Action>) {
        let words = self.words;
        let fault = match &mut self.stage {
            Stage::MaskedInput { streams } => match streams.get_mut(&from) {
                None => Some(Fault::Unexpected("end marker")),
                Some(s) if s.ended => Some(Fault::AfterEnd),
                Some(s) if s.next != words => Some(Fault::ShortStream { got: s.next, words }),
                Some(s) => {
                    s.ended = true;
                    None
                }
            },
            Stage::Advertise { .. } | Stage::ShareKeys { .. } => {
                Some(Fault::Unexpected("end marker"))
            }
            _ => Some(Fault::AfterEnd),
        };
        if let Some(f) = fault {
            self.misbehaved(from, f, out);
        }
    }

    // -----------------------------------------------------------------------------------
    // Closing phases

    /// Closes the current phase: drops members that did not answer, checks |set| ≥ t,
    /// and sends the next phase's messages.
    fn close(&mut self, out: &mut Vec<Action>) -> Step {
        let stage = std::mem::replace(&mut self.stage, Stage::Failed);
        let answered: Vec<Fingerprint> = match &stage {
            Stage::Advertise { adverts } => adverts.keys().copied().collect(),
            Stage::ShareKeys { bundles } => bundles.keys().copied().collect(),
            Stage::MaskedInput { streams } => streams
                .iter()
                .filter(|(_, s)| s.ended)
                .map(|(fp, _)| *fp)
                .collect(),
            Stage::Consistency { sigs, .. } => sigs.keys().copied().collect(),
            Stage::Unmask { reveals } => reveals.keys().copied().collect(),
            Stage::Decode | Stage::Done | Stage::Failed => {
                self.stage = stage;
                return Ok(());
            }
        };
        self.stage = stage;
        let late: Vec<Fingerprint> = self
            .members
            .iter()
            .filter(|fp| answered.binary_search(fp).is_err())
            .copied()
            .collect();
        for fp in late {
            self.remove(fp, DropReason::MissedDeadline, true, out);
        }
        let phase = self.phase();
        if answered.len() < self.t {
            return Err(Error::BelowThreshold {
                phase,
                have: answered.len(),
                need: self.t,
            });
        }
        let stage = std::mem::replace(&mut self.stage, Stage::Failed);
        match stage {
            Stage::Advertise { adverts } => self.close_adverts(adverts, out),
            Stage::ShareKeys { bundles } => self.close_shares(bundles, out),
            Stage::MaskedInput { .. } => self.close_input(answered, out),
            Stage::Consistency { sigs, .. } => self.close_signatures(sigs, out),
            Stage::Unmask { reveals } => self.close_unmask(reveals, out),
            Stage::Decode | Stage::Done | Stage::Failed => Ok(()),
        }
    }

    fn progress(&self, phase: Phase, set: &str, have: usize, of: usize, out: &mut Vec<Action>) {
        let left: Vec<String> = self
            .dropouts
            .iter()
            .filter(|d| d.phase == phase)
            .map(|d| match &d.who {
                Culprit::Node { id, .. } => format!("'{id}' ({})", d.why),
                Culprit::Stranger(fp) => format!("{} ({})", fp.short(), d.why),
            })
            .collect();
        let mut line = format!("{phase}: {set} = {have} of {of} (t = {})", self.t);
        if !left.is_empty() {
            line.push_str("; left: ");
            line.push_str(&left.join(", "));
        }
        out.push(Action::Progress(line));
    }

    fn close_adverts(
        &mut self,
        adverts: BTreeMap<Fingerprint, Advertise>,
        out: &mut Vec<Action>,
    ) -> Step {
        self.progress(
            Phase::Advertise,
            "U1",
            adverts.len(),
            self.invitees.len(),
            out,
        );
        let list = AdvertList {
            adverts: adverts.values().cloned().collect(),
        };
        self.members = adverts.keys().copied().collect();
        for fp in adverts.keys() {
            out.push(Action::Send {
                to: *fp,
                msg: Message2::AdvertList(list.clone()),
            });
        }
        self.u1 = adverts;
        self.stage = Stage::ShareKeys {
            bundles: BTreeMap::new(),
        };
        Ok(())
    }

    fn close_shares(
        &mut self,
        bundles: BTreeMap<Fingerprint, ShareBundle>,
        out: &mut Vec<Action>,
    ) -> Step {
        let u2: Vec<Fingerprint> = bundles.keys().copied().collect();
        self.progress(Phase::ShareKeys, "U2", u2.len(), self.u1.len(), out);
        for u in &u2 {
            let shares: Vec<SealedShare> = bundles
                .iter()
                .filter(|(v, _)| *v != u)
                .filter_map(|(v, b)| {
                    b.shares.iter().find(|s| s.peer == *u).map(|s| SealedShare {
                        peer: *v,
                        sealed: s.sealed,
                    })
                })
                .collect();
            out.push(Action::Send {
                to: *u,
                msg: Message2::ForwardedShares(ForwardedShares {
                    u2: u2.clone(),
                    shares,
                }),
            });
        }
        self.members = u2.iter().copied().collect();
        let streams = u2
            .iter()
            .map(|fp| {
                (
                    *fp,
                    Stream {
                        next: 0,
                        ended: false,
                    },
                )
            })
            .collect();
        self.u2 = u2;
        self.stage = Stage::MaskedInput { streams };
        Ok(())
    }

    fn close_input(&mut self, u3: Vec<Fingerprint>, out: &mut Vec<Action>) -> Step {
        // Every stream outside U3 was discarded as it left; the U3 spills go now.
        for fp in &u3 {
            out.push(Action::StreamComplete { from: *fp });
        }
        self.progress(Phase::MaskedInput, "U3", u3.len(), self.u2.len(), out);
        let adverts = self
            .u2
            .iter()
            .map(|fp| self.u1.get(fp).map(|a| &a.advert))
            .collect::<Option<Vec<&Advert>>>()
            .ok_or_else(|| Error::Internal("a member of U2 has no advert".into()))?;
        let message = ConsistencyMessage::new(&self.ctx, &adverts, &u3)
            .map_err(|e| Error::Internal(format!("consistency message: {e}")))?;
        for fp in &u3 {
            out.push(Action::Send {
                to: *fp,
                msg: Message2::Survivors(Survivors {
                    u2: self.u2.clone(),
                    u3: u3.clone(),
                }),
            });
        }
        self.members = u3.iter().copied().collect();
        self.u3 = u3;
        self.stage = Stage::Consistency {
            message,
            sigs: BTreeMap::new(),
        };
        Ok(())
    }

    fn close_signatures(
        &mut self,
        sigs: BTreeMap<Fingerprint, Signature>,
        out: &mut Vec<Action>,
    ) -> Step {
        self.progress(Phase::Consistency, "U4", sigs.len(), self.u3.len(), out);
        let list = SignatureList {
            sigs: sigs.iter().map(|(fp, s)| (*fp, *s)).collect(),
        };
        for fp in sigs.keys() {
            out.push(Action::Send {
                to: *fp,
                msg: Message2::SignatureList(list.clone()),
            });
        }
        self.u4 = sigs.keys().copied().collect();
        self.members = sigs.keys().copied().collect();
        self.stage = Stage::Unmask {
            reveals: BTreeMap::new(),
        };
        Ok(())
    }

    fn close_unmask(
        &mut self,
        reveals: BTreeMap<Fingerprint, Vec<RevealedShare>>,
        out: &mut Vec<Action>,
    ) -> Step {
        self.progress(Phase::Unmask, "U5", reveals.len(), self.u4.len(), out);
        let mut corrections =
            Vec::with_capacity(self.u3.len() * (1 + self.u2.len() - self.u3.len()));
        for v in &self.u3 {
            let b = self.rebuild(&reveals, *v, ShareKind::B)?;
            corrections.push(PeerMask {
                key: self_mask_key(&b, &self.ctx, v),
                sign: Sign::Sub,
            });
        }
        let dropped: Vec<Fingerprint> = self
            .u2
            .iter()
            .filter(|u| self.u3.binary_search(u).is_err())
            .copied()
            .collect();
        for u in &dropped {
            let s = self.rebuild(&reveals, *u, ShareKind::S)?;
            let s = Zeroizing::new(
                Option::<NonZeroScalar>::from(NonZeroScalar::new(*s)).ok_or_else(|| {
                    Error::WrongSecret {
                        party: self.culprit(*u),
                        kind: ShareKind::S,
                    }
                })?,
            );
            let s_u = self.advert(u)?.s_pub;
            for v in &self.u3 {
                let s_v = self.advert(v)?.s_pub;
                // u's own side of the pair: adding it cancels v's term δ(v,u)·PRG(k_vu).
                corrections.push(pairwise_mask(&s, u, &s_u, v, &s_v, &self.ctx));
            }
        }
        self.u5 = reveals.keys().copied().collect();
        self.members = reveals.keys().copied().collect();
        self.stage = Stage::Decode;
        out.push(Action::Unmask { corrections });
        Ok(())
    }

    fn advert(&self, fp: &Fingerprint) -> Result<&Advert, Error> {
        self.u1
            .get(fp)
            .map(|a| &a.advert)
            .ok_or_else(|| Error::Internal("a member of U2 has no advert".into()))
    }

    /// The secret of `dealer` of this kind, from the first t good shares; checked against
    /// the advertised public key.
    fn rebuild(
        &self,
        reveals: &BTreeMap<Fingerprint, Vec<RevealedShare>>,
        dealer: Fingerprint,
        kind: ShareKind,
    ) -> Result<Zeroizing<Scalar>, Error> {
        let mut points = Points(Vec::with_capacity(self.t));
        for (revealer, shares) in reveals {
            if let Some(s) = shares.iter().find(|s| s.peer == dealer && s.kind == kind) {
                let x = self
                    .ctx
                    .x_of(revealer)
                    .ok_or_else(|| Error::Internal("a revealer is not an invitee".into()))?;
                points.0.push((x, s.value));
            }
        }
        if points.0.len() < self.t {
            return Err(Error::TooFewShares {
                party: self.culprit(dealer),
                kind,
                have: points.0.len(),
                need: self.t,
            });
        }
        points.0.truncate(self.t);
        let secret = Zeroizing::new(
            shamir::interpolate(&points.0).map_err(|e| Error::Internal(e.to_string()))?,
        );
        let advert = self.advert(&dealer)?;
        let public = match kind {
            ShareKind::B => advert.b_pub,
            ShareKind::S => advert.s_pub,
        };
        if ProjectivePoint::GENERATOR * *secret != public.to_projective() {
            return Err(Error::WrongSecret {
                party: self.culprit(dealer),
                kind,
            });
        }
        Ok(secret)
    }

    fn on_unmasked(&mut self, result: Result<Summary, String>, out: &mut Vec<Action>) -> Step {
        if !matches!(self.stage, Stage::Decode) {
            // The driver only reports after an Unmask action; anything else is our bug.
            return Err(Error::Internal(format!(
                "an unmasking result in the {} phase",
                self.phase()
            )));
        }
        let summary = result.map_err(Error::Unmasked)?;
        let n3 = self.u3.len() as u64;
        let min = n3;
        let max = n3.saturating_mul(self.plan.params.max_weight);
        let w = summary.total_weight;
        if w < min || w > max {
            return Err(Error::SumOutOfRange {
                total_weight: w,
                min,
                max,
            });
        }
        let header = ResultHeader {
            total_weight: w,
            survivors: self.u3.len() as u32,
            bytes: self.mean_bytes,
        };
        out.push(Action::SendResult {
            to: self.members.iter().copied().collect(),
            header,
        });
        out.push(Action::Progress(format!(
            "result: total weight {w} over {} node(s), sent to {} node(s)",
            self.u3.len(),
            self.members.len()
        )));
        self.stage = Stage::Done;
        out.push(Action::Finish(Outcome {
            round: self.ctx.params().round,
            u1: self.u1.keys().copied().collect(),
            u2: self.u2.clone(),
            u3: self.u3.clone(),
            u4: self.u4.clone(),
            u5: self.u5.clone(),
            dropouts: std::mem::take(&mut self.dropouts),
            misbehaviours: std::mem::take(&mut self.misbehaviours),
            total_weight: w,
        }));
        Ok(())
    }
}

fn too_large(field: &'static str) -> Error {
    Error::Announce(messages::Error::Ctx(schedule::Error::Ctx {
        field,
        reason: "holds too many values".into(),
    }))
}

/// Bytes of the mean in the layout's encoding, or `None` on overflow.
fn encoded_len(layout: &Layout) -> Option<u64> {
    layout.tensors.iter().try_fold(0u64, |acc, t| {
        let n = t.shape.iter().try_fold(1u64, |p, d| p.checked_mul(*d))?;
        acc.checked_add(n.checked_mul(t.dtype.bytes() as u64)?)
    })
}

fn culprit_of(invitees: &BTreeMap<Fingerprint, Invitee>, fp: Fingerprint) -> Culprit {
    match invitees.get(&fp) {
        Some(i) => Culprit::Node {
            id: i.id.clone(),
            fp,
        },
        None => Culprit::Stranger(fp),
    }
}

/// Phase 1: the sender's own advert, valid under its registered key, with keys no other
/// accepted advert shares an x-coordinate with.
fn check_advert(
    invitees: &BTreeMap<Fingerprint, Invitee>,
    ctx: &Ctx,
    accepted: &BTreeMap<Fingerprint, Advertise>,
    from: Fingerprint,
    a: &Advertise,
) -> Option<Fault> {
    if a.advert.fp != from {
        return Some(Fault::AdvertOfOther(a.advert.fp));
    }
    let key = &invitees.get(&from)?.key;
    if let Err(e) = verify_advert(key, ctx, &a.advert, &a.sig) {
        return Some(Fault::BadAdvert(e.to_string()));
    }
    let (c, s) = (&a.advert.c_pub, &a.advert.s_pub);
    if same_x(c, s) {
        return Some(Fault::SameKeyX(from));
    }
    accepted
        .values()
        .find(|o| {
            [&o.advert.c_pub, &o.advert.s_pub]
                .iter()
                .any(|k| same_x(k, c) || same_x(k, s))
        })
        .map(|o| Fault::SameKeyX(o.advert.fp))
}

/// Phase 2: exactly one sealed share for every other member of U1.
fn check_bundle(
    u1: &BTreeMap<Fingerprint, Advertise>,
    from: Fingerprint,
    b: &ShareBundle,
) -> Option<Fault> {
    let mut seen = BTreeSet::new();
    for s in &b.shares {
        if s.peer == from || !u1.contains_key(&s.peer) || !seen.insert(s.peer) {
            return Some(Fault::ExtraShare(s.peer));
        }
    }
    u1.keys()
        .find(|fp| **fp != from && !seen.contains(*fp))
        .map(|fp| Fault::MissingShare(*fp))
}

/// Phase 5, structure: every peer in U2, kind B for U3 and S for U2 \ U3, one per peer.
fn check_unmask(u2: &[Fingerprint], u3: &[Fingerprint], u: &Unmask) -> Option<Fault> {
    let mut seen: BTreeMap<Fingerprint, ShareKind> = BTreeMap::new();
    for s in &u.shares {
        if let Some(k) = seen.insert(s.peer, s.kind) {
            return Some(if k == s.kind {
                Fault::Duplicate("share for one peer")
            } else {
                Fault::BothKinds(s.peer)
            });
        }
    }
    for s in &u.shares {
        if u2.binary_search(&s.peer).is_err() {
            return Some(Fault::ShareOfOutsider(s.peer));
        }
        let want = if u3.binary_search(&s.peer).is_ok() {
            ShareKind::B
        } else {
            ShareKind::S
        };
        if s.kind != want {
            return Some(Fault::WrongKind {
                peer: s.peer,
                kind: s.kind,
            });
        }
    }
    None
}

/// Phase 5, values: each share against its dealer's commitments at the revealer's x.
fn verify_reveals(
    ctx: &Ctx,
    u1: &BTreeMap<Fingerprint, Advertise>,
    revealer: Fingerprint,
    u: Unmask,
) -> (Vec<RevealedShare>, Vec<Fault>) {
    let x = ctx.x_of(&revealer);
    let mut good = Vec::with_capacity(u.shares.len());
    let mut bad = Vec::new();
    for s in u.shares {
        let ok = match (x, u1.get(&s.peer)) {
            (Some(x), Some(dealer)) => {
                let com = match s.kind {
                    ShareKind::B => &dealer.advert.b_commitments,
                    ShareKind::S => &dealer.advert.s_commitments,
                };
                com.verify(x, &s.value)
            }
            _ => false,
        };
        if ok {
            good.push(s);
        } else {
            bad.push(Fault::BadShare {
                peer: s.peer,
                kind: s.kind,
            });
        }
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Container, DType, TensorSpec};
    use crate::pki::identity::PartyKey;
    use crate::round::messages::ConsistencySig;
    use crate::round::schedule::{
        RoundSecrets, ShareKey, SharePair, sign_advert, sign_consistency,
    };
    use crate::secagg::prg::apply_masks;
    use crate::secagg::test_rng::TestRng;
    use p256::elliptic_curve::Generate;

    const D: usize = 4;

    fn key(seed: u64) -> PartyKey {
        let s = NonZeroScalar::generate_from_rng(&mut TestRng::new(seed));
        PartyKey::from_scalar_bytes(&s.to_bytes()).expect("key")
    }

    fn cert_pub(k: &PartyKey) -> PublicKey {
        PublicKey::from(k.signing_key().verifying_key())
    }

    fn layout() -> Layout {
        Layout {
            container: Container::Npy,
            tensors: vec![TensorSpec {
                name: "w".into(),
                shape: vec![D as u64],
                dtype: DType::F32,
            }],
        }
    }

    /// An honest node built from the library pieces.
    struct TestNode {
        id: PartyId,
        fp: Fingerprint,
        key: PartyKey,
        secrets: Option<RoundSecrets>,
        values: Vec<i64>,
        weight: u64,
        inbox: Vec<Message2>,
        u1: Vec<Advertise>,
        held: BTreeMap<Fingerprint, SharePair>,
        u2: Vec<Fingerprint>,
        u3: Vec<Fingerprint>,
    }

    /// The machine, honest nodes, and an in-memory accumulator standing in for the driver.
    struct H {
        r: Researcher,
        nodes: Vec<TestNode>,
        acc: Vec<u32>,
        spills: BTreeMap<Fingerprint, Vec<u8>>,
        log: Vec<Action>,
        /// Decoded (Σ w·q per coordinate, W) after an Unmask action.
        result: Option<(Vec<i64>, u64)>,
    }

    fn setup(n: usize, t: u32) -> (ResearcherSetup, Vec<TestNode>) {
        let nodes: Vec<TestNode> = (0..n)
            .map(|i| TestNode {
                id: format!("h{i}").parse().expect("id"),
                fp: Fingerprint::of_der(&[i as u8, 7]),
                key: key(100 + i as u64),
                secrets: None,
                values: (0..D)
                    .map(|k| ((i * 37 + k * 61) % 255) as i64 - 127)
                    .collect(),
                weight: i as u64 + 1,
                inbox: Vec::new(),
                u1: Vec::new(),
                held: BTreeMap::new(),
                u2: Vec::new(),
                u3: Vec::new(),
            })
            .collect();
        let invitees = nodes
            .iter()
            .map(|n| {
                (
                    n.fp,
                    Invitee {
                        id: n.id.clone(),
                        key: cert_pub(&n.key),
                    },
                )
            })
            .collect();
        let s = ResearcherSetup {
            me: Fingerprint::of_der(b"researcher"),
            federation: "fed".into(),
            round: 3,
            invitees,
            quant: QuantParams {
                clip: 1.0,
                bits: 8,
                max_weight: 10,
            },
            threshold: t,
            layout: layout(),
            model_digest: Some([9; 32]),
            label: "update".into(),
            deadline_secs: 30,
        };
        (s, nodes)
    }

    impl H {
        fn new(n: usize, t: u32) -> H {
            let (s, nodes) = setup(n, t);
            let (r, announce) = Researcher::new(s).expect("setup");
            assert_eq!(announce.ctx(&announce.researcher).expect("ctx"), *r.ctx());
            H {
                r,
                nodes,
                acc: vec![0; D + 1],
                spills: BTreeMap::new(),
                log: Vec::new(),
                result: None,
            }
        }

        fn wb(&self) -> usize {
            self.r.plan().wire_bytes()
        }

        fn fp(&self, i: usize) -> Fingerprint {
            self.nodes[i].fp
        }

        fn idx(&self, fp: &Fingerprint) -> Option<usize> {
            self.nodes.iter().position(|n| n.fp == *fp)
        }

        /// Feeds an event and runs the actions as the driver would; returns where this
        /// event's actions start in the log.
        fn feed(&mut self, ev: Event) -> usize {
            let start = self.log.len();
            let mut pending = vec![ev];
            while let Some(ev) = pending.pop() {
                for a in self.r.handle(ev) {
                    self.run(&a, &mut pending);
                    self.log.push(a);
                }
            }
            start
        }

        fn run(&mut self, a: &Action, pending: &mut Vec<Event>) {
            let wb = self.wb();
            let word = |c: &[u8]| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(b)
            };
            match a {
                Action::Send { to, msg } => {
                    let i = self.idx(to).expect("sent to a node");
                    self.nodes[i].inbox.push(msg.clone());
                }
                Action::Absorb { from, offset, data } => {
                    for (k, c) in data.chunks_exact(wb).enumerate() {
                        let at = *offset as usize + k;
                        self.acc[at] = self.acc[at].wrapping_add(word(c));
                    }
                    self.spills
                        .entry(*from)
                        .or_default()
                        .extend_from_slice(data);
                }
                Action::StreamComplete { from } => {
                    self.spills.remove(from);
                }
                Action::DiscardStream { from } => {
                    for (k, c) in self
                        .spills
                        .remove(from)
                        .unwrap_or_default()
                        .chunks_exact(wb)
                        .enumerate()
                    {
                        self.acc[k] = self.acc[k].wrapping_sub(word(c));
                    }
                }
                Action::Unmask { corrections } => {
                    apply_masks(&mut self.acc, corrections, 1);
                    let values = self.acc[..D]
                        .iter()
                        .map(|w| i64::from(*w as u16 as i16))
                        .collect();
                    let total_weight = u64::from(self.acc[D] as u16);
                    self.result = Some((values, total_weight));
                    pending.push(Event::Unmasked(Ok(Summary { total_weight })));
                }
                _ => {}
            }
        }

        fn msg(&mut self, i: usize, msg: Message2) -> usize {
            let from = self.fp(i);
            self.feed(Event::Message { from, msg })
        }

        fn take<T>(&mut self, i: usize, f: impl Fn(&Message2) -> Option<T>) -> T {
            let inbox = &mut self.nodes[i].inbox;
            let at = inbox.iter().position(|m| f(m).is_some()).expect("message");
            f(&inbox.remove(at)).expect("message")
        }

        // --- what an honest node sends -------------------------------------------------

        fn advert_msg(&mut self, i: usize) -> Advertise {
            let ctx = self.r.ctx().clone();
            let node = &mut self.nodes[i];
            let secrets =
                RoundSecrets::generate(&ctx, &mut TestRng::new(1000 + i as u64)).expect("keys");
            let advert = secrets.advert(node.fp);
            let sig = sign_advert(&node.key, &ctx, &advert);
            node.secrets = Some(secrets);
            Advertise { advert, sig }
        }

        fn bundle_msg(&mut self, i: usize) -> ShareBundle {
            let list = self.take(i, |m| match m {
                Message2::AdvertList(l) => Some(l.clone()),
                _ => None,
            });
            let ctx = self.r.ctx().clone();
            let node = &mut self.nodes[i];
            let secrets = node.secrets.as_ref().expect("advertised");
            let shares = list
                .adverts
                .iter()
                .filter(|a| a.advert.fp != node.fp)
                .map(|a| {
                    let x = ctx.x_of(&a.advert.fp).expect("x");
                    let (s, b) = secrets.shares_for(x).expect("share");
                    let pair = SharePair {
                        s: *s.y(),
                        b: *b.y(),
                    };
                    let k = ShareKey::derive(
                        secrets.c(),
                        &a.advert.c_pub,
                        &ctx,
                        &node.fp,
                        &a.advert.fp,
                    );
                    SealedShare {
                        peer: a.advert.fp,
                        sealed: k.seal(&ctx, &node.fp, &a.advert.fp, &pair).expect("seal"),
                    }
                })
                .collect();
            node.u1 = list.adverts;
            ShareBundle { shares }
        }

        /// The node's masked words as wire bytes, after opening its forwarded shares.
        fn masked(&mut self, i: usize) -> Vec<u8> {
            let f = self.take(i, |m| match m {
                Message2::ForwardedShares(f) => Some(f.clone()),
                _ => None,
            });
            let ctx = self.r.ctx().clone();
            let wb = self.wb();
            let node = &mut self.nodes[i];
            let secrets = node.secrets.as_ref().expect("advertised");
            let advert_of = |fp: &Fingerprint| {
                node.u1
                    .iter()
                    .find(|a| a.advert.fp == *fp)
                    .map(|a| a.advert.clone())
                    .expect("in U1")
            };
            let x = ctx.x_of(&node.fp).expect("x");
            for s in &f.shares {
                let dealer = advert_of(&s.peer);
                let k = ShareKey::derive(secrets.c(), &dealer.c_pub, &ctx, &s.peer, &node.fp);
                let pair = k.open(&ctx, &s.peer, &node.fp, &s.sealed).expect("open");
                pair.verify(&dealer, x).expect("commitments");
                node.held.insert(s.peer, pair);
            }
            let mine = advert_of(&node.fp);
            let mut masks = vec![PeerMask {
                key: self_mask_key(secrets.b(), &ctx, &node.fp),
                sign: Sign::Add,
            }];
            for v in f.u2.iter().filter(|v| **v != node.fp) {
                let peer = advert_of(v);
                masks.push(pairwise_mask(
                    secrets.s(),
                    &node.fp,
                    &mine.s_pub,
                    v,
                    &peer.s_pub,
                    &ctx,
                ));
            }
            let w = node.weight as i64;
            let mut y: Vec<u32> = node.values.iter().map(|q| (q * w) as u32).collect();
            y.push(node.weight as u32);
            apply_masks(&mut y, &masks, 1);
            node.u2 = f.u2;
            y.iter()
                .flat_map(|w| w.to_le_bytes()[..wb].to_vec())
                .collect()
        }

        /// Streams the first `words` words (all and the end marker when `None`), two
        /// words a chunk.
        fn stream(&mut self, i: usize, words: Option<usize>) {
            let bytes = self.masked(i);
            let wb = self.wb();
            let n = words.unwrap_or(D + 1);
            let from = self.fp(i);
            for (k, c) in bytes[..n * wb].chunks(2 * wb).enumerate() {
                self.feed(Event::Chunk {
                    from,
                    offset: 2 * k as u64,
                    data: c.to_vec(),
                });
            }
            if words.is_none() {
                self.feed(Event::StreamEnd { from });
            }
        }

        fn sig_msg(&mut self, i: usize) -> ConsistencySig {
            let s = self.take(i, |m| match m {
                Message2::Survivors(s) => Some(s.clone()),
                _ => None,
            });
            let ctx = self.r.ctx().clone();
            let node = &mut self.nodes[i];
            assert_eq!(s.u2, node.u2);
            let adverts: Vec<&Advert> = node
                .u1
                .iter()
                .filter(|a| s.u2.contains(&a.advert.fp))
                .map(|a| &a.advert)
                .collect();
            let m = ConsistencyMessage::new(&ctx, &adverts, &s.u3).expect("message");
            node.u3 = s.u3;
            ConsistencySig {
                sig: sign_consistency(&node.key, &m),
            }
        }

        fn unmask_msg(&mut self, i: usize) -> Unmask {
            let list = self.take(i, |m| match m {
                Message2::SignatureList(l) => Some(l.clone()),
                _ => None,
            });
            assert!(list.sigs.len() >= self.r.t);
            let ctx = self.r.ctx().clone();
            let node = &self.nodes[i];
            let secrets = node.secrets.as_ref().expect("advertised");
            let x = ctx.x_of(&node.fp).expect("x");
            let shares = node
                .u2
                .iter()
                .map(|p| {
                    let (s, b) = if *p == node.fp {
                        let (s, b) = secrets.shares_for(x).expect("own");
                        (*s.y(), *b.y())
                    } else {
                        let pair = &node.held[p];
                        (pair.s, pair.b)
                    };
                    if node.u3.contains(p) {
                        RevealedShare {
                            peer: *p,
                            kind: ShareKind::B,
                            value: b,
                        }
                    } else {
                        RevealedShare {
                            peer: *p,
                            kind: ShareKind::S,
                            value: s,
                        }
                    }
                })
                .collect();
            Unmask { shares }
        }

        // --- whole phases --------------------------------------------------------------

        fn advertise(&mut self, who: &[usize]) {
            for &i in who {
                let a = self.advert_msg(i);
                self.msg(i, Message2::Advertise(a));
            }
        }

        fn share(&mut self, who: &[usize]) {
            for &i in who {
                let b = self.bundle_msg(i);
                self.msg(i, Message2::ShareBundle(b));
            }
        }

        fn input(&mut self, who: &[usize]) {
            for &i in who {
                self.stream(i, None);
            }
        }

        fn sign(&mut self, who: &[usize]) {
            for &i in who {
                let s = self.sig_msg(i);
                self.msg(i, Message2::ConsistencySig(s));
            }
        }

        fn unmask(&mut self, who: &[usize]) {
            for &i in who {
                let u = self.unmask_msg(i);
                self.msg(i, Message2::Unmask(u));
            }
        }

        /// Σ w·q over these nodes, and Σ w.
        fn expected(&self, who: &[usize]) -> (Vec<i64>, u64) {
            let mut sum = vec![0i64; D];
            for &i in who {
                let n = &self.nodes[i];
                for (s, q) in sum.iter_mut().zip(&n.values) {
                    *s += q * n.weight as i64;
                }
            }
            (sum, who.iter().map(|&i| self.nodes[i].weight).sum())
        }

        fn outcome(&self) -> &Outcome {
            match self.log.last() {
                Some(Action::Finish(o)) => o,
                other => panic!("the round did not finish: {other:?}"),
            }
        }

        fn failure(&self) -> &Error {
            match self.log.last() {
                Some(Action::Fail(e)) => e,
                other => panic!("the round did not fail: {other:?}"),
            }
        }

        fn drops(&self, from: usize) -> Vec<(Fingerprint, DropReason)> {
            self.log[from..]
                .iter()
                .filter_map(|a| match a {
                    Action::Drop { who, why } => Some((*who, why.clone())),
                    _ => None,
                })
                .collect()
        }

        fn sorted(&self, who: &[usize]) -> Vec<Fingerprint> {
            let mut v: Vec<Fingerprint> = who.iter().map(|&i| self.fp(i)).collect();
            v.sort();
            v
        }

        fn culprit(&self, i: usize) -> Culprit {
            Culprit::Node {
                id: self.nodes[i].id.clone(),
                fp: self.fp(i),
            }
        }

        fn no_unmask(&self) -> bool {
            !self.log.iter().any(|a| matches!(a, Action::Unmask { .. }))
        }
    }

    fn misbehaved(why: &DropReason) -> &Fault {
        match why {
            DropReason::Misbehaved(m) => &m.fault,
            other => panic!("not a misbehaviour: {other:?}"),
        }
    }

    const ALL: [usize; 5] = [0, 1, 2, 3, 4];

    #[test]
    fn a_full_round_gives_the_exact_weighted_sum() {
        let mut h = H::new(5, 3);
        assert_eq!(h.wb(), 2, "the test exercises narrow wire words");
        assert_eq!(h.r.phase(), Phase::Advertise);
        h.advertise(&ALL);
        assert_eq!(h.r.phase(), Phase::ShareKeys, "closes once all advertised");
        h.share(&ALL);
        assert_eq!(h.r.phase(), Phase::MaskedInput);
        h.input(&ALL);
        assert_eq!(h.r.phase(), Phase::Consistency);
        h.sign(&ALL);
        assert_eq!(h.r.phase(), Phase::Unmask);
        h.unmask(&ALL);
        assert!(h.r.is_over());
        assert_eq!(h.result, Some(h.expected(&ALL)));
        let o = h.outcome();
        let all = h.sorted(&ALL);
        for set in [&o.u1, &o.u2, &o.u3, &o.u4, &o.u5] {
            assert_eq!(set, &all);
        }
        assert_eq!(o.total_weight, 15);
        assert!(o.dropouts.is_empty() && o.misbehaviours.is_empty());
        assert!(h.spills.is_empty(), "every spill was completed");
        // The result goes to U5 with the header the nodes check.
        let sent = h.log.iter().find_map(|a| match a {
            Action::SendResult { to, header } => Some((to.clone(), header.clone())),
            _ => None,
        });
        assert_eq!(
            sent,
            Some((
                all,
                ResultHeader {
                    total_weight: 15,
                    survivors: 5,
                    bytes: 4 * D as u64
                }
            ))
        );
        // One progress line per phase.
        let lines = h
            .log
            .iter()
            .filter(|a| matches!(a, Action::Progress(_)))
            .count();
        assert_eq!(lines, 6);
        // Nothing happens after the end.
        assert!(h.r.handle(Event::Deadline).is_empty());
    }

    #[test]
    fn dropouts_before_advertising_and_after_sharing_leave_the_exact_sum_of_u3() {
        let mut h = H::new(5, 3);
        h.advertise(&[1, 2, 3, 4]);
        assert_eq!(h.r.phase(), Phase::Advertise);
        let at = h.feed(Event::Deadline);
        assert_eq!(h.drops(at), vec![(h.fp(0), DropReason::MissedDeadline)]);
        assert!(!h.r.expects(&h.fp(0)) && h.r.expects(&h.fp(1)));
        // A late advert from the dropped node is ignored.
        let late = h.advert_msg(0);
        let at = h.msg(0, Message2::Advertise(late));
        assert_eq!(h.log.len(), at);
        h.share(&[1, 2, 3, 4]);
        // Node 1 sends a prefix of its input, then its connection breaks.
        h.stream(1, Some(3));
        assert!(h.spills.contains_key(&h.fp(1)));
        let at = h.feed(Event::Lost {
            from: h.fp(1),
            reason: "connection reset".into(),
        });
        assert!(matches!(&h.log[at], Action::DiscardStream { from } if *from == h.fp(1)));
        assert!(!h.spills.contains_key(&h.fp(1)));
        h.input(&[2, 3, 4]);
        assert_eq!(h.r.phase(), Phase::Consistency);
        h.sign(&[2, 3, 4]);
        // Each survivor reveals s of node 1 (in U2 \ U3) and b of the others.
        let u = h.unmask_msg(2);
        let kinds: Vec<(Fingerprint, ShareKind)> =
            u.shares.iter().map(|s| (s.peer, s.kind)).collect();
        assert!(kinds.contains(&(h.fp(1), ShareKind::S)));
        assert!(kinds.contains(&(h.fp(3), ShareKind::B)));
        h.msg(2, Message2::Unmask(u));
        h.unmask(&[3, 4]);
        assert_eq!(h.result, Some(h.expected(&[2, 3, 4])));
        let o = h.outcome();
        assert_eq!(o.u1, h.sorted(&[1, 2, 3, 4]));
        assert_eq!(o.u2, h.sorted(&[1, 2, 3, 4]));
        assert_eq!(o.u3, h.sorted(&[2, 3, 4]));
        let d: Vec<(Culprit, Phase)> = o
            .dropouts
            .iter()
            .map(|d| (d.who.clone(), d.phase))
            .collect();
        assert_eq!(
            d,
            vec![
                (h.culprit(0), Phase::Advertise),
                (h.culprit(1), Phase::MaskedInput)
            ]
        );
    }

    /// Below t at each phase: the round fails, no Unmask and no message after the Fail.
    #[test]
    fn below_threshold_at_each_phase_fails_before_unmasking() {
        let two = [0, 1];
        let mut runs: Vec<(Phase, H)> = Vec::new();
        for phase in [
            Phase::Advertise,
            Phase::ShareKeys,
            Phase::MaskedInput,
            Phase::Consistency,
            Phase::Unmask,
        ] {
            let mut h = H::new(5, 3);
            let who = |p: Phase| if p == phase { &two[..] } else { &ALL[..] };
            h.advertise(who(Phase::Advertise));
            if phase > Phase::Advertise {
                h.share(who(Phase::ShareKeys));
            }
            if phase > Phase::ShareKeys {
                h.input(who(Phase::MaskedInput));
            }
            if phase == Phase::MaskedInput {
                h.stream(2, Some(3));
            }
            if phase > Phase::MaskedInput {
                h.sign(who(Phase::Consistency));
            }
            if phase > Phase::Consistency {
                h.unmask(who(Phase::Unmask));
            }
            assert_eq!(h.r.phase(), phase);
            h.feed(Event::Deadline);
            runs.push((phase, h));
        }
        for (phase, h) in &runs {
            assert!(
                matches!(h.failure(), Error::BelowThreshold { phase: p, have: 2, need: 3 } if p == phase),
                "{phase}: {}",
                h.failure()
            );
            assert!(h.no_unmask(), "{phase}");
            assert!(h.r.is_over());
            let fail = h.log.len() - 1;
            let last_send = h.log.iter().rposition(|a| matches!(a, Action::Send { .. }));
            assert!(last_send.is_none_or(|s| s < fail));
        }
        // The late nodes of the input phase had their partial spills discarded.
        // Completed streams keep their spills (the driver drops the store on Fail).
        let (_, h) = &runs[2];
        let kept: Vec<Fingerprint> = h.spills.keys().copied().collect();
        assert_eq!(kept, h.sorted(&[0, 1]));
        let discarded = h
            .log
            .iter()
            .filter(|a| matches!(a, Action::DiscardStream { .. }))
            .count();
        assert_eq!(discarded, 3);
    }

    #[test]
    fn bad_adverts_are_dropped_and_named() {
        let mut h = H::new(5, 3);
        // A bad signature: node 0 signs with node 1's key.
        let mut a = h.advert_msg(0);
        a.sig = sign_advert(&h.nodes[1].key, h.r.ctx(), &a.advert);
        let at = h.msg(0, Message2::Advertise(a));
        let d = h.drops(at);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, h.fp(0));
        assert!(matches!(misbehaved(&d[0].1), Fault::BadAdvert(_)));
        assert!(d[0].1.to_string().contains("node 'h0'"), "{}", d[0].1);
        // An advert for another node (node 2 relays node 3's).
        let other = h.advert_msg(3);
        let at = h.msg(2, Message2::Advertise(other));
        assert_eq!(
            misbehaved(&h.drops(at)[0].1),
            &Fault::AdvertOfOther(h.fp(3))
        );
        // An uninvited party.
        let stranger = Fingerprint::of_der(b"stranger");
        let a = h.advert_msg(4);
        let at = h.feed(Event::Message {
            from: stranger,
            msg: Message2::Advertise(a),
        });
        let d = h.drops(at);
        assert_eq!(d[0].0, stranger);
        match &d[0].1 {
            DropReason::Misbehaved(m) => {
                assert_eq!(m.culprit, Culprit::Stranger(stranger));
                assert_eq!(m.fault, Fault::NotInvited);
            }
            other => panic!("{other:?}"),
        }
        // A duplicate advert drops the node and forgets the first one.
        h.advertise(&[4]);
        let again = h.advert_msg(4);
        let at = h.msg(4, Message2::Advertise(again));
        assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::Duplicate("advert"));
        // Nodes 1 and 3 remain: below t.
        h.advertise(&[1, 3]);
        h.feed(Event::Deadline);
        assert!(matches!(h.failure(), Error::BelowThreshold { have: 2, .. }));
        let named: Vec<Culprit> = h
            .log
            .iter()
            .filter_map(|a| match a {
                Action::Drop {
                    why: DropReason::Misbehaved(m),
                    ..
                } => Some(m.culprit.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            named,
            vec![
                h.culprit(0),
                h.culprit(2),
                Culprit::Stranger(stranger),
                h.culprit(4)
            ]
        );
    }

    #[test]
    fn a_bundle_missing_a_peer_or_with_an_extra_share_is_dropped() {
        let mut h = H::new(5, 3);
        h.advertise(&ALL);
        let mut b = h.bundle_msg(0);
        b.shares.pop();
        let missing = h.sorted(&[1, 2, 3, 4])[3];
        let at = h.msg(0, Message2::ShareBundle(b));
        assert_eq!(
            h.drops(at),
            vec![(
                h.fp(0),
                DropReason::Misbehaved(Misbehaviour {
                    culprit: h.culprit(0),
                    phase: Phase::ShareKeys,
                    fault: Fault::MissingShare(missing),
                })
            )]
        );
        // A share addressed to itself.
        let mut b = h.bundle_msg(1);
        b.shares[0].peer = h.fp(1);
        let at = h.msg(1, Message2::ShareBundle(b));
        assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::ExtraShare(h.fp(1)));
        h.share(&[2, 3, 4]);
        assert_eq!(h.r.phase(), Phase::MaskedInput);
        // Only U2 members get shares, and only from other members of U2.
        let f = h.nodes[2]
            .inbox
            .iter()
            .find_map(|m| match m {
                Message2::ForwardedShares(f) => Some(f.clone()),
                _ => None,
            })
            .expect("forwarded");
        assert_eq!(f.u2, h.sorted(&[2, 3, 4]));
        assert_eq!(
            f.shares.iter().map(|s| s.peer).collect::<Vec<_>>(),
            h.sorted(&[3, 4])
        );
        h.input(&[2, 3, 4]);
        h.sign(&[2, 3, 4]);
        h.unmask(&[2, 3, 4]);
        assert_eq!(h.result, Some(h.expected(&[2, 3, 4])));
    }

    #[test]
    fn stream_violations_drop_the_node_and_discard_its_stream() {
        let wb = 2;
        type Bad = Box<dyn Fn(&mut H, Fingerprint, &[u8]) -> usize>;
        let cases: Vec<(Bad, Fault)> = vec![
            // A gap: the second chunk skips a word.
            (
                Box::new(move |h, from, y| {
                    h.feed(Event::Chunk {
                        from,
                        offset: 0,
                        data: y[..2 * wb].to_vec(),
                    });
                    h.feed(Event::Chunk {
                        from,
                        offset: 3,
                        data: y[3 * wb..4 * wb].to_vec(),
                    })
                }),
                Fault::OutOfOrder {
                    expected: 2,
                    got: 3,
                },
            ),
            // An overlap.
            (
                Box::new(move |h, from, y| {
                    h.feed(Event::Chunk {
                        from,
                        offset: 0,
                        data: y[..2 * wb].to_vec(),
                    });
                    h.feed(Event::Chunk {
                        from,
                        offset: 1,
                        data: y[wb..2 * wb].to_vec(),
                    })
                }),
                Fault::OutOfOrder {
                    expected: 2,
                    got: 1,
                },
            ),
            // A partial word.
            (
                Box::new(move |h, from, y| {
                    h.feed(Event::Chunk {
                        from,
                        offset: 0,
                        data: y[..wb + 1].to_vec(),
                    })
                }),
                Fault::PartialWords {
                    bytes: wb + 1,
                    word: wb,
                },
            ),
            // Past the end.
            (
                Box::new(move |h, from, y| {
                    let mut long = y.to_vec();
                    long.extend_from_slice(&[0; 2]);
                    h.feed(Event::Chunk {
                        from,
                        offset: 0,
                        data: long,
                    })
                }),
                Fault::Overflow {
                    end: D as u64 + 2,
                    words: D as u64 + 1,
                },
            ),
            // An early end marker.
            (
                Box::new(move |h, from, y| {
                    h.feed(Event::Chunk {
                        from,
                        offset: 0,
                        data: y[..2 * wb].to_vec(),
                    });
                    h.feed(Event::StreamEnd { from })
                }),
                Fault::ShortStream {
                    got: 2,
                    words: D as u64 + 1,
                },
            ),
            // A chunk after the end.
            (
                Box::new(move |h, from, y| {
                    h.feed(Event::Chunk {
                        from,
                        offset: 0,
                        data: y.to_vec(),
                    });
                    h.feed(Event::StreamEnd { from });
                    h.feed(Event::Chunk {
                        from,
                        offset: 5,
                        data: y[..wb].to_vec(),
                    })
                }),
                Fault::AfterEnd,
            ),
        ];
        for (k, (bad, fault)) in cases.into_iter().enumerate() {
            let mut h = H::new(5, 3);
            h.advertise(&ALL);
            h.share(&ALL);
            let y = h.masked(0);
            let from = h.fp(0);
            let at = bad(&mut h, from, &y);
            assert_eq!(misbehaved(&h.drops(at)[0].1), &fault, "case {k}");
            assert!(
                h.log[at..]
                    .iter()
                    .any(|a| matches!(a, Action::DiscardStream { from: f } if *f == from)),
                "case {k}"
            );
            assert!(!h.spills.contains_key(&from), "case {k}");
            // Later chunks from it are ignored (never absorbed).
            let at = h.feed(Event::Chunk {
                from,
                offset: 0,
                data: y[..wb].to_vec(),
            });
            assert_eq!(h.log.len(), at, "case {k}");
            h.input(&[1, 2, 3, 4]);
            h.sign(&[1, 2, 3, 4]);
            h.unmask(&[1, 2, 3, 4]);
            assert_eq!(h.result, Some(h.expected(&[1, 2, 3, 4])), "case {k}");
        }
    }

    #[test]
    fn late_chunks_after_u3_closed_are_refused() {
        let mut h = H::new(5, 3);
        h.advertise(&ALL);
        h.share(&ALL);
        h.input(&[1, 2, 3, 4]);
        let y = h.masked(0);
        let at = h.feed(Event::Deadline);
        assert!(
            h.log[at..]
                .iter()
                .any(|a| matches!(a, Action::DiscardStream { from } if *from == h.fp(0)))
        );
        assert_eq!(h.r.phase(), Phase::Consistency);
        let at = h.feed(Event::Chunk {
            from: h.fp(0),
            offset: 0,
            data: y,
        });
        assert!(
            !h.log[at..]
                .iter()
                .any(|a| matches!(a, Action::Absorb { .. }))
        );
        // A survivor sending more input is dropped from the signers, words not absorbed.
        let at = h.feed(Event::Chunk {
            from: h.fp(1),
            offset: 5,
            data: vec![0; 2],
        });
        assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::AfterEnd);
        assert!(
            !h.log[at..]
                .iter()
                .any(|a| matches!(a, Action::Absorb { .. }))
        );
    }

    #[test]
    fn a_bad_consistency_signature_is_not_counted() {
        let mut h = H::new(5, 3);
        h.advertise(&ALL);
        h.share(&ALL);
        h.input(&ALL);
        h.sign(&[0, 1, 2]);
        // Node 3 signs another U3.
        let s = h.take(3, |m| match m {
            Message2::Survivors(s) => Some(s.clone()),
            _ => None,
        });
        let adverts: Vec<Advert> = h.nodes[3].u1.iter().map(|a| a.advert.clone()).collect();
        let refs: Vec<&Advert> = adverts.iter().collect();
        let other = ConsistencyMessage::new(h.r.ctx(), &refs, &s.u3[1..]).expect("message");
        let sig = sign_consistency(&h.nodes[3].key, &other);
        let at = h.msg(3, Message2::ConsistencySig(ConsistencySig { sig }));
        assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::BadSignature);
        h.sign(&[4]);
        assert_eq!(h.r.phase(), Phase::Unmask);
        let list = h.nodes[0]
            .inbox
            .iter()
            .find_map(|m| match m {
                Message2::SignatureList(l) => Some(l.clone()),
                _ => None,
            })
            .expect("list");
        let signers: Vec<Fingerprint> = list.sigs.iter().map(|(f, _)| *f).collect();
        assert_eq!(signers, h.sorted(&[0, 1, 2, 4]));
        assert!(h.nodes[3].inbox.is_empty(), "a non-signer gets no list");
        h.unmask(&[0, 1, 2, 4]);
        // Node 3's input is still in the sum (it is in U3).
        assert_eq!(h.result, Some(h.expected(&ALL)));
        assert_eq!(h.outcome().u4, h.sorted(&[0, 1, 2, 4]));
    }

    #[test]
    fn a_tampered_share_is_discarded_and_its_revealer_named() {
        let mut h = H::new(5, 3);
        h.advertise(&ALL);
        h.share(&ALL);
        h.input(&ALL);
        h.sign(&ALL);
        let mut u = h.unmask_msg(2);
        let peer = u.shares[0].peer;
        u.shares[0].value += Scalar::ONE;
        let at = h.msg(2, Message2::Unmask(u));
        assert!(h.drops(at).is_empty(), "the revealer stays");
        h.unmask(&[0, 1, 3, 4]);
        assert_eq!(h.result, Some(h.expected(&ALL)));
        let o = h.outcome();
        assert_eq!(o.u5, h.sorted(&ALL));
        assert_eq!(
            o.misbehaviours,
            vec![Misbehaviour {
                culprit: h.culprit(2),
                phase: Phase::Unmask,
                fault: Fault::BadShare {
                    peer,
                    kind: ShareKind::B
                },
            }]
        );
    }

    #[test]
    fn too_few_good_shares_fail_the_round() {
        let mut h = H::new(5, 3);
        h.advertise(&ALL);
        h.share(&ALL);
        h.input(&ALL);
        h.sign(&ALL);
        let peer = h.fp(0);
        for i in [1, 2, 3] {
            let mut u = h.unmask_msg(i);
            for s in u.shares.iter_mut().filter(|s| s.peer == peer) {
                s.value += Scalar::ONE;
            }
            h.msg(i, Message2::Unmask(u));
        }
        h.feed(Event::Deadline);
        assert!(matches!(
            h.failure(),
            Error::TooFewShares { party, kind: ShareKind::B, have: 0, need: 3 } if *party == h.culprit(0)
        ));
        assert!(h.no_unmask());
    }

    #[test]
    fn revealing_the_wrong_kind_or_both_kinds_is_named() {
        let mut h = H::new(5, 3);
        h.advertise(&ALL);
        h.share(&ALL);
        h.input(&ALL);
        h.sign(&ALL);
        // Both kinds for one peer (bypassing the codec, which refuses it).
        let mut u = h.unmask_msg(0);
        let p = u.shares[1].peer;
        let s = h.nodes[0].held[&p].s;
        u.shares.insert(
            2,
            RevealedShare {
                peer: p,
                kind: ShareKind::S,
                value: s,
            },
        );
        let at = h.msg(0, Message2::Unmask(u));
        assert_eq!(h.drops(at)[0].0, h.fp(0));
        assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::BothKinds(p));
        // The s-share of a survivor alone.
        let mut u = h.unmask_msg(1);
        let p = u
            .shares
            .iter()
            .find(|s| s.peer != h.fp(1))
            .expect("peer")
            .peer;
        let s = h.nodes[1].held[&p].s;
        for r in u.shares.iter_mut().filter(|r| r.peer == p) {
            *r = RevealedShare {
                peer: p,
                kind: ShareKind::S,
                value: s,
            };
        }
        let at = h.msg(1, Message2::Unmask(u));
        assert_eq!(
            misbehaved(&h.drops(at)[0].1),
            &Fault::WrongKind {
                peer: p,
                kind: ShareKind::S
            }
        );
        // A second unmask message.
        h.unmask(&[2]);
        let again = Unmask { shares: vec![] };
        let at = h.msg(2, Message2::Unmask(again));
        assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::Duplicate("unmask"));
        // Two honest revealers are below t: their shares alone cannot unmask.
        h.unmask(&[3, 4]);
        assert!(matches!(
            h.failure(),
            Error::BelowThreshold {
                phase: Phase::Unmask,
                have: 2,
                need: 3
            }
        ));
        assert!(h.no_unmask());
    }

    #[test]
    fn a_total_weight_out_of_range_fails_the_round() {
        let mut h = H::new(5, 3);
        h.nodes[4].weight = 1000; // above max weight 10: a poisoned input
        h.advertise(&ALL);
        h.share(&ALL);
        h.input(&ALL);
        h.sign(&ALL);
        h.unmask(&ALL);
        assert!(matches!(
            h.failure(),
            Error::SumOutOfRange {
                total_weight: 1010,
                min: 5,
                max: 50
            }
        ));
        assert!(
            h.failure()
                .to_string()
                .starts_with("the sum is out of range")
        );
        assert!(!h.log.iter().any(|a| matches!(a, Action::SendResult { .. })));
        // The driver's decoding error fails too.
        let mut h = H::new(5, 3);
        h.advertise(&ALL);
        h.share(&ALL);
        h.input(&ALL);
        h.sign(&ALL);
        h.unmask(&ALL[..4]);
        h.nodes[4].inbox.clear();
        let u = Unmask { shares: vec![] };
        // Feed a decode error in place of the accumulator's answer.
        let mut r = std::mem::replace(&mut h.r, H::new(5, 3).r);
        let actions = r.handle(Event::Message {
            from: h.fp(4),
            msg: Message2::Unmask(u),
        });
        assert!(actions.iter().any(|a| matches!(a, Action::Unmask { .. })));
        let actions = r.handle(Event::Unmasked(Err("coordinate 3 is out of range".into())));
        assert!(
            matches!(actions.last(), Some(Action::Fail(Error::Unmasked(m))) if m == "coordinate 3 is out of range")
        );
    }

    #[test]
    fn messages_out_of_phase_and_lost_nodes() {
        let mut h = H::new(5, 3);
        // A chunk before any shares: misbehaviour.
        let at = h.feed(Event::Chunk {
            from: h.fp(0),
            offset: 0,
            data: vec![0; 2],
        });
        assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::Unexpected("chunk"));
        // A bundle during the advert phase.
        let at = h.msg(1, Message2::ShareBundle(ShareBundle { shares: vec![] }));
        assert_eq!(
            misbehaved(&h.drops(at)[0].1),
            &Fault::Unexpected("share bundle")
        );
        // A lost node leaves without a Drop action; the phase closes when the rest answered.
        let at = h.feed(Event::Lost {
            from: h.fp(2),
            reason: "closed".into(),
        });
        assert!(h.drops(at).is_empty());
        h.advertise(&[3]);
        assert_eq!(h.r.phase(), Phase::Advertise);
        h.advertise(&[4]);
        assert!(matches!(
            h.failure(),
            Error::BelowThreshold {
                phase: Phase::Advertise,
                have: 2,
                ..
            }
        ));
    }

    #[test]
    fn the_setup_refuses_impossible_thresholds() {
        for t in [0, 2, 6] {
            let (s, _) = setup(5, t);
            assert!(
                matches!(Researcher::new(s), Err(Error::Threshold { .. })),
                "t = {t}"
            );
        }
        let (s, _) = setup(4, 3);
        assert!(Researcher::new(s).is_ok());
        let (mut s, _) = setup(5, 3);
        s.quant.bits = 40;
        assert!(matches!(Researcher::new(s), Err(Error::Plan(_))));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let h = H::new(5, 3);
        assert!(format!("{:?}", h.r).starts_with("Researcher(round 3, advertise phase"));
    }
}
