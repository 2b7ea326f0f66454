//! The node's side: connect to the pinned researcher, check each attempt against our
//! own policy, mask, stream, and decode the mean that comes back.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{Error, LABEL, MAX_ELEMENTS, Result};
use crate::clock::unix_secs;
use crate::files::job::{RoundSpec, Stopped, Streamed};
use crate::files::masked::{self};
use crate::files::tensor::{self};
use crate::layout::Layout;
use crate::net::channel::Channel;
use crate::net::error::{self as transport};
use crate::net::frame::{self as wire, Abort, Join, Message, Outcome, RoundId, Start};
use crate::net::tls::Pins;
use crate::party::{PartyId, Role};
use crate::pki::certificate::PeerCertificate;
use crate::pki::identity::Identity;
use crate::pki::registry::Registry;
use crate::secagg::quantize::Plan;
use crate::secagg::ring::Modulus;
use crate::secagg::ring::Word;

/// What `round join` needs.
#[derive(Clone, Debug)]
pub struct JoinParams {
    /// The researcher to join; the only registered one if `None`.
    pub researcher: Option<PartyId>,
    /// The update.
    pub input: PathBuf,
    /// Its weight (sample count).
    pub weight: u64,
    /// Fewest participants this node accepts.
    pub min_nodes: usize,
    /// Most attempts this node joins per round.
    pub max_attempts: u32,
    /// Longest wait for the researcher (connecting, and each message).
    pub timeout: Duration,
    /// Masking threads.
    pub threads: usize,
    /// Fault injection for tests: pause after sending this many bytes of an update.
    pub stall: Option<Stall>,
}

/// A deliberate pause in the middle of sending (tests of slow and dying nodes).
#[derive(Clone, Copy, Debug)]
pub struct Stall {
    /// Bytes of the update to send first.
    pub after_bytes: u64,
    /// How long to pause.
    pub secs: u64,
}

/// What the node sees happen.
#[derive(Debug)]
pub enum Event<'a> {
    /// Trying to reach the researcher.
    Connecting {
        /// Who.
        researcher: &'a PartyId,
        /// Where.
        addr: &'a str,
    },
    /// Connected and greeted.
    Connected {
        /// Federation.
        federation: &'a str,
        /// Round.
        round: u64,
    },
    /// An attempt was announced and accepted.
    Attempt {
        /// Its number.
        attempt: u32,
        /// Participants.
        participants: &'a [PartyId],
    },
    /// Masked, about to send.
    Masked {
        /// Values.
        values: u64,
        /// Clipped values.
        clipped: u64,
        /// The clip bound.
        clip: f64,
        /// Seconds spent.
        secs: f64,
    },
    /// Bytes of the masked update sent.
    Sending {
        /// So far.
        sent: u64,
        /// All.
        total: u64,
    },
    /// Pausing on purpose (fault injection).
    Stalling(u64),
    /// Receiving the mean.
    Receiving {
        /// Bytes so far.
        bytes: u64,
        /// All.
        total: u64,
    },
}

/// The outcome for this node.
#[derive(Debug)]
pub struct Joined {
    /// Federation.
    pub federation: String,
    /// Round.
    pub round: u64,
    /// The attempt that completed.
    pub attempt: u32,
    /// Its participants.
    pub participants: Vec<PartyId>,
    /// Our update's layout (the mean has the same).
    pub layout: Layout,
    /// The sum of the participants' weights.
    pub total_weight: u64,
    /// The weighted mean as the researcher sent it: every value in layout order,
    /// little-endian in its tensor's type (see [`tensor::encode_values`]).
    pub mean: Vec<u8>,
}

/// The researcher to join, with its pinned certificate.
fn researcher(
    reg: &Registry,
    chosen: Option<&PartyId>,
) -> Result<(PartyId, String, PeerCertificate)> {
    let peer = match chosen {
        Some(id) => match reg.get(id)? {
            Some((p, _)) if p.role == Role::Researcher => p,
            _ => return Err(Error::UnknownResearcher(id.clone())),
        },
        None => {
            let mut all: Vec<_> = reg
                .list()?
                .into_iter()
                .filter(|p| p.role == Role::Researcher)
                .collect();
            match all.len() {
                0 => return Err(Error::NoResearcher),
                1 => all.remove(0),
                n => {
                    let ids: Vec<&str> = all.iter().map(|p| p.party_id.as_str()).collect();
                    return Err(Error::ManyResearchers(n, ids.join(", ")));
                }
            }
        }
    };
    let Some((_, der)) = reg.get(&peer.party_id)? else {
        return Err(Error::UnknownResearcher(peer.party_id));
    };
    let cert = PeerCertificate::from_der(&der).map_err(|e| Error::Protocol {
        peer: peer.party_id.to_string(),
        what: format!("registered certificate is unusable: {e}"),
    })?;
    let addr = match peer.ip.ip() {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", peer.port),
        _ => format!("{}:{}", peer.ip.as_str(), peer.port),
    };
    Ok((peer.party_id, addr, cert))
}

/// Connects, retrying while the researcher is not listening yet.
fn connect(id: &PartyId, addr: &str, deadline: Instant) -> Result<TcpStream> {
    let unreachable = |reason: String| Error::Unreachable {
        id: id.clone(),
        addr: addr.to_string(),
        reason,
    };
    loop {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .collect();
        let mut last = String::from("no address");
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(10)) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() + Duration::from_secs(1) >= deadline {
            return Err(unreachable(last));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Takes part in one round.
pub fn join(
    me: &Identity,
    reg: &mut Registry,
    p: &JoinParams,
    mut events: impl FnMut(Event<'_>),
) -> Result<Joined> {
    if me.config.role != Role::Node {
        return Err(Error::WrongRole(
            me.config.role,
            "'round join' is for nodes",
        ));
    }
    let (rid, addr, cert) = researcher(reg, p.researcher.as_ref())?;
    let layout = tensor::read_layout(&p.input)?;
    if layout.elements() == 0 || layout.elements() > MAX_ELEMENTS {
        return Err(Error::Protocol {
            peer: "this node".into(),
            what: format!(
                "the update has {} values (limit {MAX_ELEMENTS})",
                layout.elements()
            ),
        });
    }
    let mut pins = Pins::default();
    pins.insert(rid.clone(), &cert);
    let config = crate::net::tls::client_config(me, pins)?;
    events(Event::Connecting {
        researcher: &rid,
        addr: &addr,
    });
    let sock = connect(&rid, &addr, Instant::now() + p.timeout)?;
    let host = addr
        .rsplit_once(':')
        .map_or(addr.as_str(), |(h, _)| h)
        .trim_matches(['[', ']']);
    let mut ch = Channel::connect(sock, config, host, format!("researcher {rid}"), p.timeout)?;
    let hello = match ch.recv_within(p.timeout) {
        Ok(Message::Hello(h)) => h,
        Ok(other) => return Err(protocol(&rid, format!("opened with {}", other.name()))),
        Err(e) => return Err(refused_or(e, &rid)),
    };
    if hello.researcher != rid || ch.round() != Some(RoundId::new(&hello.federation, hello.round)) {
        return Err(protocol(
            &rid,
            "sent a hello that does not match its identity or round".into(),
        ));
    }
    events(Event::Connected {
        federation: &hello.federation,
        round: hello.round,
    });
    ch.send(&Message::Join(Join {
        layout: layout.clone(),
    }))?;
    let mut session = Session {
        me,
        p,
        rid,
        federation: hello.federation,
        round: hello.round,
        layout,
        last: None,
    };
    loop {
        match ch.recv_within(p.timeout)? {
            Message::Start(s) => {
                if let Err(e) = session.attempt(reg, &mut ch, s, &mut events) {
                    if let Error::Refused { reason, .. } = &e {
                        let _ = ch.send(&Message::Abort(Abort {
                            reason: reason.clone(),
                        }));
                    }
                    return Err(e);
                }
            }
            Message::Outcome(o) => {
                let mean = session.outcome(&mut ch, &o, &mut events)?;
                ch.close();
                return Ok(Joined {
                    federation: session.federation,
                    round: session.round,
                    attempt: o.attempt,
                    participants: o.participants,
                    layout: session.layout,
                    total_weight: o.total_weight,
                    mean,
                });
            }
            Message::Abort(a) => return Err(Error::Aborted(a.reason)),
            other => {
                return Err(protocol(
                    &session.rid,
                    format!("sent an unexpected {}", other.name()),
                ));
            }
        }
    }
}

fn protocol(rid: &PartyId, what: String) -> Error {
    Error::Protocol {
        peer: format!("researcher {rid}"),
        what,
    }
}

/// A TLS alert right after the handshake means the researcher refused our certificate.
fn refused_or(e: transport::Error, rid: &PartyId) -> Error {
    match e.tls() {
        Some(rustls::Error::AlertReceived(alert)) => Error::CertificateRefused {
            id: rid.clone(),
            alert: format!("{alert:?}"),
        },
        _ => e.into(),
    }
}

struct Session<'a> {
    me: &'a Identity,
    p: &'a JoinParams,
    rid: PartyId,
    federation: String,
    round: u64,
    layout: Layout,
    /// The attempt we last masked for, and its participants.
    last: Option<(u32, Vec<PartyId>, Plan)>,
}

impl Session<'_> {
    /// Checks an announced attempt against this node's policy; the reason if refused.
    fn check(&self, reg: &Registry, s: &Start) -> std::result::Result<Plan, String> {
        if let Some((prev, ..)) = &self.last {
            if s.attempt <= *prev {
                return Err(format!(
                    "attempt {} does not follow attempt {prev}",
                    s.attempt
                ));
            }
        }
        if !s.participants.contains(&self.me.config.party_id) {
            return Err("this node is not among the participants".into());
        }
        if s.participants.len() < self.p.min_nodes {
            return Err(format!(
                "{} participant(s), fewer than this node's --min-nodes {}",
                s.participants.len(),
                self.p.min_nodes
            ));
        }
        let joined = reg
            .journal_attempts(&self.federation, self.round)
            .map_err(|e| e.to_string())?;
        if joined >= self.p.max_attempts {
            return Err(format!(
                "this node already masked {joined} attempt(s) of this round (--max-attempts {})",
                self.p.max_attempts
            ));
        }
        if s.layout != self.layout || s.label != LABEL {
            return Err("the announced update layout differs from this node's update".into());
        }
        let plan = Plan::new(s.quant, s.participants.len()).map_err(|e| e.to_string())?;
        if plan.modulus != s.modulus || plan.wire_bytes() != s.word_bytes {
            return Err("the announced modulus does not fit the announced parameters".into());
        }
        Ok(plan)
    }

    fn attempt(
        &mut self,
        reg: &mut Registry,
        ch: &mut Channel,
        s: Start,
        events: &mut impl FnMut(Event<'_>),
    ) -> Result<()> {
        let refused = |reason: String| Error::Refused {
            round: self.round,
            attempt: s.attempt,
            reason,
        };
        let plan = self.check(reg, &s).map_err(refused)?;
        events(Event::Attempt {
            attempt: s.attempt,
            participants: &s.participants,
        });
        let spec = RoundSpec {
            federation: self.federation.clone(),
            round: self.round,
            attempt: s.attempt,
            label: s.label.clone(),
            participants: s.participants.clone(),
            quant: s.quant,
        };
        let t = Instant::now();
        let width = plan.wire_bytes();
        let total = (self.layout.elements() + 1) * width as u64;
        // Checks registrations and the journal, journals, then reads, masks and sends
        // one chunk at a time.
        let (me, p) = (self.me, self.p);
        let streamed = match plan.modulus {
            Modulus::M32 => stream::<u32>(me, p, reg, ch, &spec, width, total, events),
            Modulus::M64 => stream::<u64>(me, p, reg, ch, &spec, width, total, events),
        };
        let streamed = match streamed {
            Ok(done) => done,
            Err(Stopped::Masking(e)) => {
                return Err(match e {
                    masked::Error::Registry(_) | masked::Error::UnknownParticipant { .. } => {
                        refused(e.to_string())
                    }
                    other => other.into(),
                });
            }
            Err(Stopped::Emit(e)) => {
                // The researcher may have ended the round while we were sending: its
                // abort, if it arrived, says why better than the broken connection does.
                return Err(match ch.recv(Duration::from_millis(500)) {
                    Ok(Some(Message::Abort(a))) => Error::Aborted(a.reason),
                    _ => e.into(),
                });
            }
        };
        if streamed.layout != self.layout {
            return Err(Error::Protocol {
                peer: "this node".into(),
                what: format!("{} changed during the round", self.p.input.display()),
            });
        }
        events(Event::Masked {
            values: self.layout.elements(),
            clipped: streamed.clipped,
            clip: s.quant.clip,
            secs: t.elapsed().as_secs_f64(),
        });
        ch.send(&Message::Done { attempt: s.attempt })?;
        self.last = Some((s.attempt, s.participants, plan));
        Ok(())
    }

    fn outcome(
        &self,
        ch: &mut Channel,
        o: &Outcome,
        events: &mut impl FnMut(Event<'_>),
    ) -> Result<Vec<u8>> {
        let Some((attempt, participants, plan)) = &self.last else {
            return Err(protocol(
                &self.rid,
                "sent a result before any attempt".into(),
            ));
        };
        check_outcome(o, *attempt, participants, plan, &self.layout, self.p.weight)
            .map_err(|what| protocol(&self.rid, what))?;
        let total = o.bytes;
        let mut mean = Vec::with_capacity(total as usize);
        loop {
            match ch.recv_within(self.p.timeout)? {
                Message::Chunk(c) if c.attempt == o.attempt && c.offset == mean.len() as u64 => {
                    if c.data.is_empty() || (mean.len() + c.data.len()) as u64 > total {
                        return Err(protocol(&self.rid, "sent a malformed result chunk".into()));
                    }
                    mean.extend_from_slice(&c.data);
                    ch.recycle(c.data);
                    events(Event::Receiving {
                        bytes: mean.len() as u64,
                        total,
                    });
                }
                Message::Done { attempt } if attempt == o.attempt && mean.len() as u64 == total => {
                    break;
                }
                Message::Abort(a) => return Err(Error::Aborted(a.reason)),
                other => {
                    return Err(protocol(
                        &self.rid,
                        format!("sent an unexpected {} in the result", other.name()),
                    ));
                }
            }
        }
        check_mean(&self.layout, plan, &mean).map_err(|what| protocol(&self.rid, what))?;
        Ok(mean)
    }
}

/// Masks this node's update for `spec` and sends it as it is produced (see
/// [`crate::files::job::stream_update`]), with progress events and the test-only stall.
#[allow(clippy::too_many_arguments)]
fn stream<W: Word>(
    me: &Identity,
    p: &JoinParams,
    reg: &mut Registry,
    ch: &mut Channel,
    spec: &RoundSpec,
    width: usize,
    total: u64,
    events: &mut impl FnMut(Event<'_>),
) -> std::result::Result<Streamed, Stopped<transport::Error>> {
    let now = unix_secs(SystemTime::now());
    let mut sent = 0u64;
    let mut stalled = false;
    let block = wire::CHUNK_BYTES / width;
    crate::files::job::stream_update::<W, transport::Error>(
        me,
        reg,
        spec,
        &p.input,
        p.weight,
        p.threads,
        now,
        block,
        |offset, words| {
            if let Some(st) = p.stall.filter(|st| !stalled && sent >= st.after_bytes) {
                stalled = true;
                events(Event::Stalling(st.secs));
                std::thread::sleep(Duration::from_secs(st.secs));
            }
            ch.send_words(spec.attempt, offset, words, width)?;
            sent += (words.len() * width) as u64;
            events(Event::Sending { sent, total });
            Ok(())
        },
    )
}

/// Checks a result announcement against what this node masked for; the fault if any.
fn check_outcome(
    o: &Outcome,
    attempt: u32,
    participants: &[PartyId],
    plan: &Plan,
    layout: &Layout,
    own_weight: u64,
) -> std::result::Result<(), String> {
    if o.attempt != attempt || o.participants != participants {
        return Err(format!(
            "sent the result of attempt {} but this node masked for attempt {attempt}",
            o.attempt
        ));
    }
    let total = layout.encoded_len();
    if o.bytes != total {
        return Err(format!(
            "announced a mean of {} bytes, not {total}",
            o.bytes
        ));
    }
    let max_weight = participants.len() as u128 * u128::from(plan.params.max_weight);
    if o.total_weight < own_weight || u128::from(o.total_weight) > max_weight {
        return Err(format!(
            "announced an impossible total weight {}",
            o.total_weight
        ));
    }
    Ok(())
}

/// A weighted mean of values clipped to [-c, c] lies in [-c, c] up to half a step of
/// rounding, and the f32 encoding may round it up by 2^-24 relative (more than a step
/// when `--bits` is 32); anything else (or NaN) is not the mean of this round.
fn check_mean(layout: &Layout, plan: &Plan, mean: &[u8]) -> std::result::Result<(), String> {
    let bound = (plan.params.clip + plan.step()) * (1.0 + 1e-6);
    match crate::layout::decode_values(layout, mean).position(|v| v.is_nan() || v.abs() > bound) {
        Some(bad) => Err(format!(
            "sent a mean whose value #{bad} lies outside the clip range ±{bound}"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Container, DType, TensorSpec};
    use crate::secagg::quantize::QuantParams;

    fn layout() -> Layout {
        Layout {
            container: Container::Safetensors,
            tensors: vec![
                TensorSpec {
                    name: "a".into(),
                    shape: vec![3],
                    dtype: DType::F64,
                },
                TensorSpec {
                    name: "b".into(),
                    shape: vec![2, 2],
                    dtype: DType::F32,
                },
            ],
        }
    }

    fn ids(names: &[&str]) -> Vec<PartyId> {
        names.iter().map(|n| n.parse().expect("id")).collect()
    }

    #[test]
    fn result_announcements_are_checked() {
        let plan = Plan::new(QuantParams::default(), 3).expect("plan");
        let p = ids(&["a", "b", "c"]);
        let good = Outcome {
            attempt: 2,
            participants: p.clone(),
            total_weight: 30,
            bytes: 3 * 8 + 4 * 4,
        };
        assert_eq!(check_outcome(&good, 2, &p, &plan, &layout(), 10), Ok(()));
        let bad = |o: Outcome| check_outcome(&o, 2, &p, &plan, &layout(), 10).expect_err("bad");
        assert!(
            bad(Outcome {
                attempt: 1,
                ..good.clone()
            })
            .contains("attempt 1")
        );
        assert!(
            bad(Outcome {
                participants: ids(&["a", "b"]),
                ..good.clone()
            })
            .contains("attempt")
        );
        assert!(
            bad(Outcome {
                bytes: 39,
                ..good.clone()
            })
            .contains("39 bytes, not 40")
        );
        // Less than our own weight, or more than 3 nodes can carry.
        assert!(
            bad(Outcome {
                total_weight: 9,
                ..good.clone()
            })
            .contains("impossible total weight 9")
        );
        assert!(
            bad(Outcome {
                total_weight: 3_000_001,
                ..good
            })
            .contains("impossible")
        );
    }

    #[test]
    fn a_mean_outside_the_clip_range_is_refused() {
        let plan = Plan::new(QuantParams::default(), 3).expect("plan");
        let edge = 1.0 + plan.step() / 2.0;
        let ok = crate::layout::encode_values(
            &layout(),
            [0.0, -1.0, edge, 0.5, -edge, 1.0, 0.25].into_iter(),
        );
        assert_eq!(check_mean(&layout(), &plan, &ok), Ok(()));
        // With 32 bits a step is far below f32 precision: a mean of exactly the clip
        // bound, stored as f32, rounds above clip + step and must still pass.
        let fine = Plan::new(
            QuantParams {
                clip: 0.1,
                bits: 32,
                max_weight: 10,
            },
            3,
        )
        .expect("plan");
        let at_clip = crate::layout::encode_values(&layout(), [0.1; 7].into_iter());
        assert!(f64::from(0.1f32) > 0.1 + fine.step());
        assert_eq!(check_mean(&layout(), &fine, &at_clip), Ok(()));
        for (at, v) in [(1, 1.5), (5, -7.0), (6, f64::NAN), (0, f64::INFINITY)] {
            let mut vals = vec![0.0; 7];
            vals[at] = v;
            let bytes = crate::layout::encode_values(&layout(), vals.into_iter());
            let err = check_mean(&layout(), &plan, &bytes).expect_err("out of range");
            assert!(err.contains(&format!("value #{at} ")), "{err}");
        }
    }
}
