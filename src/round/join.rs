//! `round join`'s driver: validate everything local first, connect to the pinned
//! researcher (retrying while it is not up), then feed the node state machine
//! ([`super::node`]) and run its actions in order: journal entries before the message
//! they protect, the masked input streamed block by block, the mean checked and written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use p256::elliptic_curve::rand_core::UnwrapErr;
use zeroize::Zeroizing;

pub use super::dial::check_out;
use super::dial::{
    LocalChecks, open, protocol, recv, registered_nodes, researcher, validate_input,
};
use super::node::{Action, Event, Node, NodeSetup, Peer, Summary};
use super::policy::Policy;
use super::{Error, Result};
use crate::clock::unix_secs;
use crate::files::job::{self, Stopped};
use crate::files::tensor;
use crate::layout::Layout;
use crate::net::channel::Channel;
use crate::net::error as transport;
use crate::net::frame::{self, Abort, Message, RoundId};
use crate::net::tls::Pins;
use crate::party::{Fingerprint, PartyId, Role};
use crate::pki::identity::Identity;
use crate::pki::journal::{Revealed, RoundEnd};
use crate::pki::registry::Registry;
use crate::round::messages::{Message2, ShareKind};
use crate::secagg::quantize::Plan;
use crate::secagg::ring::{Machine, Word};
use crate::text::sanitize;

/// What `round join` needs.
#[derive(Clone, Debug)]
pub struct JoinParams {
    /// The researcher to join; the only registered one if `None`.
    pub researcher: Option<PartyId>,
    /// The update.
    pub input: PathBuf,
    /// Its weight (sample count).
    pub weight: u64,
    /// Where to write the mean (checked before connecting).
    pub out: Option<PathBuf>,
    /// Replace an existing `out`.
    pub force: bool,
    /// This node's policy (its federation pinned).
    pub policy: Policy,
    /// Digest of the model this node trained from.
    pub model: Option<[u8; 32]>,
    /// How long the whole round may take, connecting included.
    pub timeout: Duration,
    /// Threads for masking.
    pub threads: usize,
    /// Test only: pause this long after sending this many bytes of the masked input.
    pub stall: Option<(u64, Duration)>,
}

/// What the node sees happen, for progress lines.
#[derive(Debug)]
pub enum JoinEvent<'a> {
    /// The researcher does not answer yet.
    Waiting {
        /// Where.
        addr: &'a str,
        /// Seconds left before giving up.
        left: u64,
    },
    /// Connected and authenticated; the round is announced.
    Announced {
        /// Federation.
        federation: &'a str,
        /// Round.
        round: u64,
    },
    /// A phase line from the protocol.
    Phase(&'a str),
    /// Masked words sent so far.
    Sending {
        /// Bytes sent.
        sent: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Values clipped while quantizing.
    Clipped {
        /// How many.
        count: u64,
        /// The clip bound.
        clip: f64,
    },
    /// The whole masked input and its end marker were sent (bytes).
    Sent(u64),
    /// The test-only stall started.
    Stalling(u64),
}

/// The outcome of a round this node completed.
#[derive(Debug)]
pub struct Joined {
    /// Federation.
    pub federation: String,
    /// Round.
    pub round: u64,
    /// The sets and the total weight.
    pub summary: Summary,
    /// The update's layout.
    pub layout: Layout,
    /// Where the mean was written.
    pub out: Option<PathBuf>,
    /// Local ids of the fingerprints in the summary (for printing).
    pub names: BTreeMap<Fingerprint, String>,
}

/// Takes part in one round.
pub fn join(
    me: &Identity,
    reg: &mut Registry,
    p: &JoinParams,
    mut events: impl FnMut(JoinEvent<'_>),
) -> Result<Joined> {
    if me.config.role != Role::Node {
        return Err(Error::WrongRole(
            me.config.role,
            "'round join' is for nodes",
        ));
    }
    let deadline = Instant::now() + p.timeout;
    // Everything local first: nothing of a round is used up by a local mistake.
    let (input, checked) = validate_input(
        reg,
        &LocalChecks {
            input: &p.input,
            weight: p.weight,
            fixed_weight: p.policy.fixed_weight,
            out: p.out.as_deref(),
            force: p.force,
        },
    )?;
    let (rid, addr, cert) = researcher(reg, p.researcher.as_ref())?;
    let mut peers = registered_nodes(reg)?;
    peers.insert(
        me.certificate.fingerprint(),
        Peer {
            id: me.config.party_id.clone(),
            key: *me.certificate.public_key(),
        },
    );
    let federation = p
        .policy
        .federation
        .clone()
        .ok_or_else(|| Error::Setup("no federation is pinned for this node".into()))?;
    let last_round = reg.last_round(&federation, Role::Node)?;
    let mut pins = Pins::default();
    pins.insert(rid.clone(), &cert);
    let config = crate::net::tls::client_config(me, pins)?;
    let (ch, announce) = open(&rid, &addr, config, deadline, &mut |addr, left| {
        events(JoinEvent::Waiting { addr, left })
    })?;
    if ch.round() != Some(RoundId::new(&announce.federation, announce.round)) {
        return Err(protocol(
            &rid,
            "framed its announcement for another round".into(),
        ));
    }
    events(JoinEvent::Announced {
        federation: &announce.federation,
        round: announce.round,
    });
    let round = announce.round;
    let mut driver = Driver {
        reg,
        ch,
        p,
        rid: rid.clone(),
        federation: announce.federation.clone(),
        round,
        layout: input.layout.clone(),
        checked,
        began: false,
    };
    let mut node = Node::new(NodeSetup {
        me: me.certificate.fingerprint(),
        key: &me.key,
        researcher: cert.fingerprint(),
        peers: peers.clone(),
        policy: p.policy.clone(),
        last_round,
        input,
        model: p.model,
    });
    let mut rng = UnwrapErr(getrandom::SysRng);
    let mut event = Event::Message(Message2::Announce(announce));
    loop {
        let actions = node.handle(event, &mut rng);
        match driver.run(actions, deadline, &mut events) {
            Ok(Next::Done(summary)) => {
                let names = peers
                    .iter()
                    .map(|(fp, peer)| (*fp, peer.id.to_string()))
                    .chain([(me.certificate.fingerprint(), me.config.party_id.to_string())])
                    .collect();
                driver.ch.close();
                return Ok(Joined {
                    federation: driver.federation,
                    round,
                    summary,
                    layout: driver.layout,
                    out: p.out.clone(),
                    names,
                });
            }
            Ok(Next::StreamSent) => {
                event = Event::StreamSent;
                continue;
            }
            Ok(Next::Receive) => {}
            Err(e) => {
                driver.end(&format!("failed: {e}"));
                let _ = driver.ch.send(&Message::Abort(Abort {
                    reason: e.to_string(),
                }));
                driver.ch.close();
                return Err(e);
            }
        }
        event = match recv(&mut driver.ch, deadline) {
            Ok(m) => Event::Message(m),
            Err(Error::Aborted(why)) => Event::Stopped(format!("the researcher aborted: {why}")),
            Err(e) => Event::Stopped(e.to_string()),
        };
    }
}

/// What the node machine needs after its actions ran.
enum Next {
    /// The researcher's next message.
    Receive,
    /// To hear that the masked input was sent.
    StreamSent,
    /// Nothing: the round is done.
    Done(Summary),
}

struct Driver<'a> {
    reg: &'a mut Registry,
    ch: Channel,
    p: &'a JoinParams,
    rid: PartyId,
    federation: String,
    round: u64,
    layout: Layout,
    /// The digests of the input's blocks when it was checked and its release journaled:
    /// masking reads it again and stops at the first block that differs.
    checked: Vec<[u8; 32]>,
    /// Whether the journal has this round (so its end is recorded).
    began: bool,
}

impl Driver<'_> {
    /// Runs actions in order; says what the node machine needs next. `Err` when the
    /// round stopped (the machine's own failure or a journal refusal).
    fn run(
        &mut self,
        actions: Vec<Action>,
        deadline: Instant,
        events: &mut impl FnMut(JoinEvent<'_>),
    ) -> Result<Next> {
        let now = || unix_secs(SystemTime::now());
        let mut next = Next::Receive;
        for action in actions {
            match action {
                Action::Progress(line) => events(JoinEvent::Phase(&line)),
                Action::JournalAdvertise {
                    federation,
                    round,
                    researcher,
                } => {
                    // invitees are counted in the detail at the end; 0 here
                    self.reg
                        .begin_round(&federation, round, Role::Node, &researcher, 0, now())?;
                    self.began = true;
                }
                Action::Send(m) => self.send(&m)?,
                Action::JournalRelease {
                    digest,
                    federation,
                    round,
                } => self
                    .reg
                    .release_input(&digest, "round", &federation, round, now())?,
                Action::StreamMasked {
                    plan,
                    weight,
                    masks,
                } => {
                    self.stream(&plan, weight, &masks, events)?;
                    next = Next::StreamSent;
                }
                Action::JournalSigned {
                    federation,
                    round,
                    hash,
                } => self.reg.record_signed(&federation, round, &hash)?,
                Action::JournalReveal {
                    federation,
                    round,
                    reveals,
                } => {
                    let reveals: Vec<(Fingerprint, Revealed)> = reveals
                        .into_iter()
                        .map(|(fp, k)| {
                            (
                                fp,
                                match k {
                                    ShareKind::B => Revealed::B,
                                    ShareKind::S => Revealed::S,
                                },
                            )
                        })
                        .collect();
                    self.reg
                        .record_reveals(&federation, round, &reveals, now())?;
                }
                Action::ReceiveMean {
                    header,
                    plan,
                    layout,
                } => self.receive_mean(header.bytes, &plan, &layout, deadline)?,
                Action::Finish(summary) => {
                    let detail = serde_json::json!({
                        "u1": summary.u1.len(),
                        "u2": summary.u2.len(),
                        "u3": summary.u3.len(),
                        "signers": summary.signers.len(),
                        "total_weight": summary.total_weight,
                    })
                    .to_string();
                    let out = self.p.out.as_ref().map(|o| o.display().to_string());
                    self.reg.finish_round(
                        &RoundEnd {
                            federation: &self.federation,
                            round: self.round,
                            role: Role::Node,
                            outcome: "completed",
                            detail: &detail,
                            result_path: out.as_deref(),
                        },
                        now(),
                    )?;
                    next = Next::Done(summary);
                }
                Action::Fail(e) => return Err(e.into()),
            }
        }
        Ok(next)
    }

    fn send(&mut self, m: &Message2) -> Result<()> {
        let payload = Zeroizing::new(m.encode().map_err(|e| Error::Protocol {
            peer: "this node".into(),
            what: format!("cannot encode its {} message: {e}", m.name()),
        })?);
        self.ch.send(&Message::Protocol {
            kind: m.kind(),
            payload: payload.to_vec(),
        })?;
        Ok(())
    }

    fn stream(
        &mut self,
        plan: &Plan,
        weight: u64,
        masks: &[crate::secagg::prg::PeerMask],
        events: &mut impl FnMut(JoinEvent<'_>),
    ) -> Result<()> {
        let width = plan.wire_bytes();
        let total = (self.layout.elements() + 1) * width as u64;
        let streamed = match plan.modulus.machine() {
            Machine::U32 => self.stream_words::<u32>(plan, weight, masks, width, total, events),
            Machine::U64 => self.stream_words::<u64>(plan, weight, masks, width, total, events),
        };
        let streamed = match streamed {
            Ok(s) => s,
            Err(Stopped::Masking(e)) => return Err(e.into()),
            Err(Stopped::Emit(e)) => return Err(e.into()),
        };
        if streamed.layout != self.layout {
            return Err(Error::Protocol {
                peer: "this node".into(),
                what: format!("{} changed during the round", self.p.input.display()),
            });
        }
        if streamed.clipped > 0 {
            events(JoinEvent::Clipped {
                count: streamed.clipped,
                clip: plan.params.clip,
            });
        }
        self.ch.send(&Message::End)?;
        events(JoinEvent::Sent(total));
        Ok(())
    }

    fn stream_words<W: Word>(
        &mut self,
        plan: &Plan,
        weight: u64,
        masks: &[crate::secagg::prg::PeerMask],
        width: usize,
        total: u64,
        events: &mut impl FnMut(JoinEvent<'_>),
    ) -> std::result::Result<job::Streamed, Stopped<transport::Error>> {
        // Whole masking blocks (4096 words: 2048 u64 or 4096 u32 words are one `prg`
        // block), so that every chunk starts a keystream request on a whole AES-CTR
        // parallel block (secagg::prg).
        let block = (frame::CHUNK_BYTES / width).max(4096) / 4096 * 4096;
        let mut sent = 0u64;
        let mut stalled = false;
        let stall = self.p.stall;
        let ch = &mut self.ch;
        job::stream_checked::<W, transport::Error>(
            plan,
            masks,
            &self.p.input,
            weight,
            self.p.threads,
            block,
            job::Checked {
                layout: &self.layout,
                blocks: &self.checked,
            },
            |offset, words| {
                if let Some((after, secs)) = stall.filter(|(after, _)| !stalled && sent >= *after) {
                    let _ = after;
                    stalled = true;
                    events(JoinEvent::Stalling(secs.as_secs()));
                    std::thread::sleep(secs);
                }
                ch.send_words(offset, words, width)?;
                sent += (words.len() * width) as u64;
                events(JoinEvent::Sending { sent, total });
                Ok(())
            },
        )
    }

    fn receive_mean(
        &mut self,
        total: u64,
        plan: &Plan,
        layout: &Layout,
        deadline: Instant,
    ) -> Result<()> {
        let mut mean = Vec::with_capacity(layout.encoded_len() as usize);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ch.recv_within(left)? {
                Message::Chunk(c) if c.offset == mean.len() as u64 => {
                    if c.data.is_empty() || (mean.len() + c.data.len()) as u64 > total {
                        return Err(protocol(&self.rid, "sent a malformed result chunk".into()));
                    }
                    mean.extend_from_slice(&c.data);
                    self.ch.recycle(c.data);
                }
                Message::End if mean.len() as u64 == total => break,
                Message::Abort(a) => return Err(Error::Aborted(sanitize(&a.reason).into_owned())),
                other => {
                    return Err(protocol(
                        &self.rid,
                        format!("sent an unexpected {} in the result", other.name()),
                    ));
                }
            }
        }
        check_mean(layout, plan, &mean).map_err(|what| protocol(&self.rid, what))?;
        if let Some(out) = &self.p.out {
            tensor::write_encoded(out, layout, &mean)?;
        }
        Ok(())
    }

    /// Records a failed end, if the journal has the round.
    fn end(&mut self, outcome: &str) {
        if self.began {
            let _ = self.reg.finish_round(
                &RoundEnd {
                    federation: &self.federation,
                    round: self.round,
                    role: Role::Node,
                    outcome: &sanitize(outcome),
                    detail: "{}",
                    result_path: None,
                },
                unix_secs(SystemTime::now()),
            );
        }
    }
}

/// A weighted mean of values clipped to [-c, c] lies in [-c, c] up to half a step of
/// rounding, and the f32 encoding may round it up by 2^-24 relative (more than a step
/// when `--bits` is 32); anything else (or NaN) is not the mean of this round.
pub fn check_mean(layout: &Layout, plan: &Plan, mean: &[u8]) -> std::result::Result<(), String> {
    let bound = (plan.params.clip + plan.step()) * (1.0 + 1e-6);
    match crate::layout::find_value(layout, mean, |v| v.is_nan() || v.abs() > bound) {
        Some(bad) => Err(format!(
            "sent a mean whose value #{bad} lies outside the clip range ±{bound}"
        )),
        None => Ok(()),
    }
}
