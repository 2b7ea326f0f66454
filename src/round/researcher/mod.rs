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

mod adverts;
mod error;
mod events;
mod shares;
mod streams;
mod unmask;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use p256::PublicKey;
use p256::ecdsa::Signature;

use crate::layout::Layout;
use crate::party::{Fingerprint, PartyId};
use crate::round::messages::{self, Advertise, Announce, Message2, RevealedShare, ShareBundle};
use crate::round::schedule::{self, ConsistencyMessage, Ctx, verify_consistency};
use crate::secagg::quantize::{Plan, QuantParams};

pub use error::{Culprit, DropReason, Dropout, Error, Fault, Misbehaviour};
pub use events::{Action, Event, Outcome, Summary};

use adverts::check_advert;
use shares::check_bundle;
use unmask::{check_unmask, verify_reveals};

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

#[cfg(test)]
mod tests;
