//! The researcher's side: accept pinned nodes, run attempts, sum as chunks arrive.
//!
//! One thread accepts connections and one thread per connection does TLS and framing.
//! They report to the coordinator (the caller's thread) over a bounded channel, so at
//! most a few chunks are in flight whatever the number of nodes: memory stays O(d).
//!
//! The coordinator's states are types: [`Gathering`] → [`Collecting`] (one per attempt)
//! → [`Complete`]. A transition consumes the old state. The weighted mean can only be
//! read from a [`Complete`], which only [`Collecting::complete`] makes, after every
//! participant of the attempt delivered every word over its authenticated connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use super::{Error, LABEL, MAX_ELEMENTS, POLL, Result};
use crate::layout::{Container, Layout};
use crate::net::channel::Channel;
use crate::net::error::{self as transport};
use crate::net::frame::{Abort, Chunk, Hello, Message, Outcome, RoundId, Spares, Start};
use crate::net::tls::Pins;
use crate::party::{PartyId, Role};
use crate::pki::identity::Identity;
use crate::pki::registry::Registry;
use crate::secagg::quantize::{Plan, QuantParams};
use crate::secagg::sum::AnyAccumulator;

/// What `round serve` needs.
#[derive(Clone, Debug)]
pub struct ServeParams {
    /// Federation id.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// The nodes invited.
    pub nodes: Vec<PartyId>,
    /// Fewest participants an attempt may have.
    pub min_nodes: usize,
    /// Most attempts before giving up.
    pub max_attempts: u32,
    /// How long nodes have to connect and join.
    pub join_timeout: Duration,
    /// How long each attempt may take, and the limit on handshakes and sends.
    pub timeout: Duration,
    /// Quantization knobs.
    pub quant: QuantParams,
    /// The container the researcher will write; nodes bringing another are dropped.
    pub container: Option<Container>,
}

/// What the researcher sees happen, for the progress display and the log.
#[derive(Debug)]
pub enum Event<'a> {
    /// Listening.
    Listening(&'a str),
    /// A connection failed before it was identified (handshake refused, timeout).
    Refused {
        /// Remote address.
        addr: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// A pinned node connected.
    Connected(&'a PartyId),
    /// A node joined with its layout.
    Joined {
        /// Who.
        party: &'a PartyId,
        /// Joined so far.
        joined: usize,
        /// Invited.
        expected: usize,
    },
    /// An attempt started.
    Attempt {
        /// Its number.
        attempt: u32,
        /// Who takes part.
        participants: &'a [PartyId],
        /// Words per participant.
        words: u64,
    },
    /// Words received from a participant in this attempt.
    Progress {
        /// Who.
        party: &'a PartyId,
        /// Words so far.
        words: u64,
        /// Words expected.
        total: u64,
    },
    /// A participant delivered its whole update.
    Delivered(&'a PartyId),
    /// A node was dropped.
    Dropped {
        /// Who.
        party: &'a PartyId,
        /// Why.
        reason: &'a str,
    },
    /// The sum was sent to a participant.
    ResultSent(&'a PartyId),
}

/// The result of a served round.
#[derive(Debug)]
pub struct Served {
    /// The attempt that completed.
    pub attempt: u32,
    /// Its participants.
    pub participants: Vec<PartyId>,
    /// The update layout.
    pub layout: Layout,
    /// The sum of the participants' weights.
    pub total_weight: u64,
    /// The weighted mean as sent to every participant: every value in layout order,
    /// little-endian in its tensor's type (see [`crate::layout::encode_values`]).
    pub mean: Vec<u8>,
    /// Nodes dropped along the way, and why.
    pub dropped: Vec<(PartyId, String)>,
}

/// Connection thread → coordinator.
enum Inbound {
    Refused {
        addr: String,
        reason: String,
    },
    Connected {
        conn: u64,
        party: PartyId,
        tx: Sender<Outbound>,
    },
    Message {
        conn: u64,
        msg: Message,
    },
    Lost {
        conn: u64,
        reason: String,
    },
    ResultSent {
        conn: u64,
    },
}

/// Coordinator → connection thread.
enum Outbound {
    Send(Message),
    Result(Arc<Summed>),
    Close(Option<String>),
}

/// The mean, encoded once and shared by every connection thread.
struct Summed {
    outcome: Outcome,
    bytes: Vec<u8>,
}

struct Member {
    conn: u64,
    tx: Sender<Outbound>,
    layout: Option<Layout>,
}

/// Waiting for the invited nodes to connect and join.
pub struct Gathering {
    deadline: Instant,
}

/// One attempt in progress.
pub struct Collecting {
    attempt: u32,
    participants: Vec<PartyId>,
    plan: Plan,
    words: u64,
    word_bytes: usize,
    acc: AnyAccumulator,
    received: BTreeMap<PartyId, u64>,
    delivered: BTreeSet<PartyId>,
    deadline: Instant,
}

/// An attempt lost a participant before it delivered. Its partial sum is gone; the
/// researcher waits `SETTLE` (0.5 s) for other losses before restarting, so nodes that die
/// together (a site going offline) cost one attempt, not one each.
pub struct Settling {
    attempt: u32,
    participants: Vec<PartyId>,
    deadline: Instant,
}

/// How long a broken attempt waits for further losses before restarting.
const SETTLE: Duration = Duration::from_millis(500);

/// Every participant of the attempt delivered every word.
pub struct Complete {
    attempt: u32,
    participants: Vec<PartyId>,
    plan: Plan,
    acc: AnyAccumulator,
}

enum Phase {
    Gathering(Gathering),
    Collecting(Collecting),
    Settling(Settling),
    Complete(Complete),
}

impl Collecting {
    /// Adds one chunk; an error names what the sender did wrong.
    fn absorb(&mut self, party: &PartyId, c: &Chunk) -> std::result::Result<u64, String> {
        if !self.participants.contains(party) {
            return Err("sent data without being a participant".into());
        }
        if self.delivered.contains(party) {
            return Err("sent data after done".into());
        }
        if c.attempt > self.attempt {
            return Err(format!(
                "sent data for attempt {} during attempt {}",
                c.attempt, self.attempt
            ));
        }
        let have = self.received.get(party).copied().unwrap_or(0);
        let n = (c.data.len() / self.word_bytes) as u64;
        if c.data.len() % self.word_bytes != 0 || n == 0 {
            return Err(format!("sent a chunk of {} bytes", c.data.len()));
        }
        if c.offset != have || have + n > self.words {
            return Err(format!(
                "sent words {}..{} where {}..{} was expected",
                c.offset,
                c.offset.saturating_add(n),
                have,
                self.words
            ));
        }
        self.acc.absorb(c.offset, &c.data);
        self.received.insert(party.clone(), have + n);
        Ok(have + n)
    }

    /// Marks a participant done; an error names what it did wrong.
    fn done(&mut self, party: &PartyId) -> std::result::Result<(), String> {
        let have = self.received.get(party).copied().unwrap_or(0);
        if !self.participants.contains(party) || have != self.words {
            return Err(format!("said done after {have} of {} words", self.words));
        }
        self.delivered.insert(party.clone());
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.delivered.len() == self.participants.len()
    }

    /// Gives up this attempt: frees its partial sum, keeps who took part.
    fn abandon(self) -> (u32, Vec<PartyId>) {
        (self.attempt, self.participants)
    }

    /// Moves to [`Complete`], the proof that every input is in, once it is.
    fn complete(self) -> Phase {
        if !self.is_complete() {
            return Phase::Collecting(self);
        }
        Phase::Complete(Complete {
            attempt: self.attempt,
            participants: self.participants,
            plan: self.plan,
            acc: self.acc,
        })
    }
}

struct Coordinator<'p, F> {
    params: &'p ServeParams,
    invited: Vec<PartyId>,
    members: BTreeMap<PartyId, Member>,
    owners: HashMap<u64, PartyId>,
    dropped: Vec<(PartyId, String)>,
    layout: Option<Layout>,
    /// Absorbed chunks' buffers go back here for the connections to reuse.
    spares: Spares,
    events: F,
}

/// Runs a round: listens, collects, aggregates, answers every participant.
pub fn serve(
    me: &Identity,
    reg: &Registry,
    params: &ServeParams,
    listen: &str,
    mut events: impl FnMut(Event<'_>),
) -> Result<Served> {
    if me.config.role != Role::Researcher {
        return Err(Error::WrongRole(
            me.config.role,
            "'round serve' is for the researcher",
        ));
    }
    let nodes = crate::files::job::participants(&params.nodes)?;
    if params.min_nodes < 2 || params.min_nodes > nodes.len() {
        return Err(Error::MinNodes {
            min: params.min_nodes,
            nodes: nodes.len(),
        });
    }
    Plan::new(params.quant, nodes.len())?;
    let mut pins = Pins::default();
    for id in &nodes {
        pins.insert(id.clone(), &crate::files::job::registered_node(reg, id)?);
    }
    let pins = Arc::new(pins);
    let config = crate::net::tls::server_config(me, (*pins).clone())?;
    let listener = TcpListener::bind(listen).map_err(|source| Error::Listen {
        addr: listen.to_string(),
        source,
    })?;
    let bound = listener
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    events(Event::Listening(&bound));
    let round_id = RoundId::new(&params.federation, params.round);
    let hello = Hello {
        researcher: me.config.party_id.clone(),
        federation: params.federation.clone(),
        round: params.round,
    };
    // A few chunks in flight at most, whatever the number of nodes.
    let (tx, rx) = mpsc::sync_channel::<Inbound>(8);
    let stop = Arc::new(AtomicBool::new(false));
    let spares = Spares::default();
    let acceptor = {
        let stop = stop.clone();
        let cap = 4 * nodes.len() + 8;
        let template = Link {
            conn: 0,
            config,
            round: round_id,
            timeout: params.timeout,
            pins: pins.clone(),
            hello,
            events: tx,
            spares: spares.clone(),
        };
        std::thread::spawn(move || accept_loop(listener, template, &stop, cap))
    };
    let mut c = Coordinator {
        params,
        spares,
        invited: nodes.clone(),
        members: BTreeMap::new(),
        owners: HashMap::new(),
        dropped: Vec::new(),
        layout: None,
        events,
    };
    let result = c.run(&rx);
    stop.store(true, Ordering::Relaxed);
    c.close_all(result.as_ref().err().map(|e| e.to_string()));
    drop(rx);
    let _ = acceptor.join();
    result
}

impl<F: FnMut(Event<'_>)> Coordinator<'_, F> {
    fn run(&mut self, rx: &Receiver<Inbound>) -> Result<Served> {
        let mut phase = Phase::Gathering(Gathering {
            deadline: Instant::now() + self.params.join_timeout,
        });
        loop {
            let deadline = match &phase {
                Phase::Gathering(g) => g.deadline,
                Phase::Collecting(c) => c.deadline,
                Phase::Settling(s) => s.deadline,
                Phase::Complete(_) => break,
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            phase = match rx.recv_timeout(wait) {
                Ok(ev) => self.handle(phase, ev)?,
                Err(RecvTimeoutError::Timeout) => self.on_deadline(phase)?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Protocol {
                        peer: "the listener".into(),
                        what: "stopped unexpectedly (our bug)".into(),
                    });
                }
            };
        }
        let Phase::Complete(done) = phase else {
            unreachable!("the loop above only exits on Complete")
        };
        self.finish(done, rx)
    }

    fn handle(&mut self, phase: Phase, ev: Inbound) -> Result<Phase> {
        match ev {
            Inbound::Refused { addr, reason } => {
                (self.events)(Event::Refused {
                    addr: &addr,
                    reason: &reason,
                });
                Ok(phase)
            }
            Inbound::Connected { conn, party, tx } => {
                let refuse = if self.members.contains_key(&party) {
                    Some("this node is already connected")
                } else if self.dropped.iter().any(|(id, _)| *id == party) {
                    Some("this node was dropped from this round")
                } else if !matches!(phase, Phase::Gathering(_)) {
                    Some("the round has already started")
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    let _ = tx.send(Outbound::Close(Some(reason.into())));
                    (self.events)(Event::Refused {
                        addr: party.as_str(),
                        reason,
                    });
                    return Ok(phase);
                }
                (self.events)(Event::Connected(&party));
                self.owners.insert(conn, party.clone());
                self.members.insert(
                    party,
                    Member {
                        conn,
                        tx,
                        layout: None,
                    },
                );
                Ok(phase)
            }
            Inbound::Message { conn, msg } => {
                let Some(party) = self.owners.get(&conn).cloned() else {
                    return Ok(phase); // a connection we already dropped
                };
                self.on_message(phase, party, msg)
            }
            Inbound::Lost { conn, reason } => {
                let Some(party) = self.owners.remove(&conn) else {
                    return Ok(phase);
                };
                self.drop_member(phase, &party, &reason)
            }
            Inbound::ResultSent { .. } => Ok(phase),
        }
    }

    fn on_message(&mut self, phase: Phase, party: PartyId, msg: Message) -> Result<Phase> {
        match (phase, msg) {
            (Phase::Gathering(g), Message::Join(j)) => self.on_join(g, party, j.layout),
            (Phase::Collecting(mut c), Message::Chunk(chunk)) => {
                if chunk.attempt < c.attempt {
                    return Ok(Phase::Collecting(c)); // in flight before the restart
                }
                let absorbed = c.absorb(&party, &chunk);
                self.spares.give(chunk.data);
                match absorbed {
                    Ok(words) => {
                        (self.events)(Event::Progress {
                            party: &party,
                            words,
                            total: c.words,
                        });
                        Ok(Phase::Collecting(c))
                    }
                    Err(what) => self.drop_member(Phase::Collecting(c), &party, &what),
                }
            }
            (Phase::Settling(s), Message::Chunk(chunk)) if chunk.attempt <= s.attempt => {
                self.spares.give(chunk.data); // for the broken attempt: discarded
                Ok(Phase::Settling(s))
            }
            (Phase::Settling(s), Message::Done { attempt }) if attempt <= s.attempt => {
                Ok(Phase::Settling(s))
            }
            (Phase::Collecting(mut c), Message::Done { attempt }) => {
                if attempt < c.attempt {
                    return Ok(Phase::Collecting(c));
                }
                if attempt > c.attempt {
                    let what = format!("said done for attempt {attempt} during {}", c.attempt);
                    return self.drop_member(Phase::Collecting(c), &party, &what);
                }
                if let Err(what) = c.done(&party) {
                    return self.drop_member(Phase::Collecting(c), &party, &what);
                }
                (self.events)(Event::Delivered(&party));
                Ok(c.complete())
            }
            (phase, Message::Abort(a)) => {
                self.drop_member(phase, &party, &format!("refused: {}", a.reason))
            }
            (phase, msg) => {
                let what = format!("sent an unexpected {} message", msg.name());
                self.drop_member(phase, &party, &what)
            }
        }
    }

    fn on_join(&mut self, g: Gathering, party: PartyId, layout: Layout) -> Result<Phase> {
        let phase = Phase::Gathering(g);
        if layout.elements() == 0 || layout.elements() > MAX_ELEMENTS {
            let what = format!(
                "brought {} values (limit {MAX_ELEMENTS})",
                layout.elements()
            );
            return self.drop_member(phase, &party, &what);
        }
        if self.params.container.is_some_and(|c| c != layout.container) {
            let what = format!(
                "brought a {:?} update; this round writes another format",
                layout.container
            );
            return self.drop_member(phase, &party, &what);
        }
        if let Some(first) = &self.layout {
            if *first != layout {
                return self.drop_member(phase, &party, "brought an update of another shape");
            }
        }
        let Some(m) = self.members.get_mut(&party) else {
            return Ok(phase);
        };
        if m.layout.is_some() {
            return self.drop_member(phase, &party, "joined twice");
        }
        m.layout = Some(layout.clone());
        self.layout.get_or_insert(layout);
        let joined = self.joined().len();
        (self.events)(Event::Joined {
            party: &party,
            joined,
            expected: self.invited.len(),
        });
        self.start_if_settled(phase)
    }

    /// Starts attempt 1 once every invited node has joined or been dropped.
    fn start_if_settled(&mut self, phase: Phase) -> Result<Phase> {
        let joined = self.joined();
        let gone = self
            .invited
            .iter()
            .filter(|id| self.dropped.iter().any(|(d, _)| d == *id))
            .count();
        if joined.is_empty() || joined.len() + gone < self.invited.len() {
            return Ok(phase);
        }
        self.check_enough(joined.len())?;
        self.start(1, joined).map(Phase::Collecting)
    }

    fn joined(&self) -> Vec<PartyId> {
        self.members
            .iter()
            .filter(|(_, m)| m.layout.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn on_deadline(&mut self, phase: Phase) -> Result<Phase> {
        match phase {
            Phase::Gathering(_) => {
                let late: Vec<PartyId> = self
                    .members
                    .iter()
                    .filter(|(_, m)| m.layout.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in late {
                    self.remove(&id, "did not join in time");
                }
                let ids = self.joined();
                self.check_enough(ids.len())?;
                self.start(1, ids).map(Phase::Collecting)
            }
            Phase::Collecting(c) => {
                let secs = self.params.timeout.as_secs();
                let slow: Vec<PartyId> = c
                    .participants
                    .iter()
                    .filter(|p| !c.delivered.contains(*p))
                    .cloned()
                    .collect();
                for id in &slow {
                    self.remove(id, &format!("did not deliver within {secs} s"));
                }
                let (attempt, participants) = c.abandon();
                self.restart(attempt, &participants)
            }
            Phase::Settling(s) => self.restart(s.attempt, &s.participants),
            Phase::Complete(done) => Ok(Phase::Complete(done)),
        }
    }

    /// Drops a node (for cause, or because its connection ended) and moves the round on.
    fn drop_member(&mut self, phase: Phase, party: &PartyId, reason: &str) -> Result<Phase> {
        self.remove(party, reason);
        match phase {
            Phase::Collecting(c)
                if c.participants.contains(party) && !c.delivered.contains(party) =>
            {
                let (attempt, participants) = c.abandon();
                self.check_enough(self.survivors(&participants).len())?;
                Ok(Phase::Settling(Settling {
                    attempt,
                    participants,
                    deadline: Instant::now() + SETTLE,
                }))
            }
            Phase::Settling(s) => {
                self.check_enough(self.survivors(&s.participants).len())?;
                Ok(Phase::Settling(s))
            }
            Phase::Gathering(g) => self.start_if_settled(Phase::Gathering(g)),
            other => Ok(other),
        }
    }

    /// The participants still connected.
    fn survivors(&self, participants: &[PartyId]) -> Vec<PartyId> {
        participants
            .iter()
            .filter(|p| self.members.contains_key(*p))
            .cloned()
            .collect()
    }

    fn remove(&mut self, party: &PartyId, reason: &str) {
        if let Some(m) = self.members.remove(party) {
            self.owners.remove(&m.conn);
            let _ = m.tx.send(Outbound::Close(Some(reason.to_string())));
            (self.events)(Event::Dropped { party, reason });
            self.dropped.push((party.clone(), reason.to_string()));
        }
    }

    fn check_enough(&self, have: usize) -> Result<()> {
        if have < self.params.min_nodes {
            return Err(Error::TooFew {
                have,
                min: self.params.min_nodes,
                dropped: self.dropped.clone(),
            });
        }
        Ok(())
    }

    /// The sum of `attempt` is discarded; the survivors re-mask under attempt+1.
    fn restart(&mut self, attempt: u32, participants: &[PartyId]) -> Result<Phase> {
        let survivors = self.survivors(participants);
        self.check_enough(survivors.len())?;
        let attempt = attempt + 1;
        if attempt > self.params.max_attempts {
            return Err(Error::AttemptCap {
                attempt,
                max: self.params.max_attempts,
            });
        }
        self.start(attempt, survivors).map(Phase::Collecting)
    }

    fn start(&mut self, attempt: u32, participants: Vec<PartyId>) -> Result<Collecting> {
        let layout = self.layout.clone().ok_or(Error::TooFew {
            have: 0,
            min: self.params.min_nodes,
            dropped: self.dropped.clone(),
        })?;
        let plan = Plan::new(self.params.quant, participants.len())?;
        let words = layout.elements() + 1;
        let start = Start {
            attempt,
            participants: participants.clone(),
            label: LABEL.into(),
            quant: self.params.quant,
            modulus: plan.modulus,
            word_bytes: plan.wire_bytes(),
            layout,
        };
        for id in &participants {
            if let Some(m) = self.members.get(id) {
                let _ = m.tx.send(Outbound::Send(Message::Start(start.clone())));
            }
        }
        (self.events)(Event::Attempt {
            attempt,
            participants: &participants,
            words,
        });
        Ok(Collecting {
            attempt,
            word_bytes: plan.wire_bytes(),
            acc: AnyAccumulator::with_width(plan.modulus, words as usize, plan.wire_bytes()),
            plan,
            words,
            received: BTreeMap::new(),
            delivered: BTreeSet::new(),
            participants,
            deadline: Instant::now() + self.params.timeout,
        })
    }

    /// Decodes the mean, sends it to every participant, waits until it is out.
    fn finish(&mut self, done: Complete, rx: &Receiver<Inbound>) -> Result<Served> {
        let layout = self.layout.clone().ok_or(Error::Protocol {
            peer: "the researcher".into(),
            what: "completed without a layout (our bug)".into(),
        })?;
        let (total_weight, encoded) = done.acc.finish_encoded(&done.plan, &layout)?;
        let summed = Arc::new(Summed {
            outcome: Outcome {
                attempt: done.attempt,
                participants: done.participants.clone(),
                total_weight,
                bytes: encoded.len() as u64,
            },
            bytes: encoded,
        });
        let mut waiting = BTreeSet::new();
        for id in &done.participants {
            if let Some(m) = self.members.get(id) {
                if m.tx.send(Outbound::Result(summed.clone())).is_ok() {
                    waiting.insert(m.conn);
                }
            }
        }
        let deadline = Instant::now() + self.params.timeout;
        while !waiting.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Inbound::ResultSent { conn }) => {
                    waiting.remove(&conn);
                    if let Some(id) = self.owners.get(&conn) {
                        (self.events)(Event::ResultSent(id));
                    }
                }
                Ok(Inbound::Lost { conn, reason }) => {
                    if waiting.remove(&conn) {
                        if let Some(id) = self.owners.get(&conn).cloned() {
                            (self.events)(Event::Dropped {
                                party: &id,
                                reason: &format!("result not delivered: {reason}"),
                            });
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // The connection threads are done with the bytes once every result was sent
        // or lost; a thread still lingering on close keeps a reference for up to a
        // second, and then we copy rather than wait.
        let mean = Arc::try_unwrap(summed).map_or_else(|s| s.bytes.clone(), |s| s.bytes);
        Ok(Served {
            attempt: done.attempt,
            participants: done.participants,
            layout,
            total_weight,
            mean,
            dropped: std::mem::take(&mut self.dropped),
        })
    }

    fn close_all(&mut self, reason: Option<String>) {
        for (_, m) in std::mem::take(&mut self.members) {
            let _ = m.tx.send(Outbound::Close(reason.clone()));
        }
    }
}

/// Accepts connections until `stop`, each on its own thread running a copy of
/// `template` with a fresh connection number.
fn accept_loop(listener: TcpListener, template: Link, stop: &AtomicBool, cap: usize) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let active = Arc::new(AtomicUsize::new(0));
    let mut next_conn = 0u64;
    let mut threads = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, addr)) => {
                if active.load(Ordering::Relaxed) >= cap || sock.set_nonblocking(false).is_err() {
                    let _ = template.events.send(Inbound::Refused {
                        addr: addr.to_string(),
                        reason: "too many connections".into(),
                    });
                    continue;
                }
                next_conn += 1;
                active.fetch_add(1, Ordering::Relaxed);
                let link = Link {
                    conn: next_conn,
                    ..template.clone()
                };
                let active = active.clone();
                threads.push(std::thread::spawn(move || {
                    link.run(sock);
                    active.fetch_sub(1, Ordering::Relaxed);
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
        threads.retain(|t| !t.is_finished());
    }
    drop(template);
    for t in threads {
        let _ = t.join();
    }
}

/// One connection's thread: TLS, framing, and the link to the coordinator.
#[derive(Clone)]
struct Link {
    conn: u64,
    config: Arc<ServerConfig>,
    round: RoundId,
    timeout: Duration,
    pins: Arc<Pins>,
    hello: Hello,
    events: SyncSender<Inbound>,
    spares: Spares,
}

impl Link {
    fn run(self, sock: TcpStream) {
        let addr = sock
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        let (mut ch, der) =
            match Channel::accept(sock, self.config.clone(), self.round, self.timeout) {
                Ok(x) => x,
                Err(e) => {
                    let _ = self.events.send(Inbound::Refused {
                        addr,
                        reason: e.to_string(),
                    });
                    return;
                }
            };
        // The verifier accepted only pinned certificates.
        let Some(party) = self.pins.party_of(&der).cloned() else {
            return;
        };
        ch.set_peer(format!("{party} ({addr})"));
        ch.share_spares(self.spares.clone());
        let (tx, rx) = mpsc::channel();
        let conn = self.conn;
        if self
            .events
            .send(Inbound::Connected { conn, party, tx })
            .is_err()
        {
            return;
        }
        if let Err(e) = ch.send(&Message::Hello(self.hello.clone())) {
            let _ = self.events.send(Inbound::Lost {
                conn,
                reason: e.to_string(),
            });
            return;
        }
        self.pump(ch, &rx);
    }

    fn pump(&self, mut ch: Channel, rx: &Receiver<Outbound>) {
        let conn = self.conn;
        let lost = |e: transport::Error| {
            let _ = self.events.send(Inbound::Lost {
                conn,
                reason: e.to_string(),
            });
        };
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Outbound::Send(m)) => {
                        if let Err(e) = ch.send(&m) {
                            return lost(e);
                        }
                    }
                    Ok(Outbound::Result(s)) => {
                        let sent = ch
                            .send(&Message::Outcome(s.outcome.clone()))
                            .and_then(|()| ch.send_bytes(s.outcome.attempt, &s.bytes));
                        // Let go of the shared bytes before saying so: the
                        // coordinator takes them back once every result is out.
                        drop(s);
                        match sent {
                            Ok(()) => {
                                let _ = self.events.send(Inbound::ResultSent { conn });
                                ch.close();
                                return;
                            }
                            Err(e) => return lost(e),
                        }
                    }
                    Ok(Outbound::Close(reason)) => {
                        if let Some(reason) = reason {
                            let _ = ch.send(&Message::Abort(Abort { reason }));
                        }
                        ch.close();
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ch.close();
                        return;
                    }
                }
            }
            match ch.recv(POLL) {
                Ok(Some(msg)) => {
                    if self.events.send(Inbound::Message { conn, msg }).is_err() {
                        // The coordinator is gone; its last word may be queued for us.
                        let reason = rx.try_iter().find_map(|o| match o {
                            Outbound::Close(r) => r,
                            _ => None,
                        });
                        if let Some(reason) = reason {
                            let _ = ch.send(&Message::Abort(Abort { reason }));
                        }
                        ch.close();
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if let transport::Error::Wire { source, .. } = &e {
                        let _ = ch.send(&Message::Abort(Abort {
                            reason: format!("bad frame: {source}"),
                        }));
                    }
                    return lost(e);
                }
            }
        }
    }
}
