//! `round serve`'s driver: listen, authenticate each node by its pinned certificate,
//! and feed the researcher state machine ([`super::researcher`]); run its actions:
//! messages out, chunks into the spill store, unmasking and decoding, the mean out.
//!
//! One thread accepts connections and one thread per connection does TLS and framing.
//! They report to the coordinator (the caller's thread) over a bounded channel, so at
//! most a few chunks are in flight whatever the number of nodes: memory stays O(d).
//! Unauthenticated connections are capped and expire with the handshake deadline; an
//! authenticated node holds at most one connection.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use super::conn::{Inbound, Link, Outbound, accept_loop};
use super::researcher::{self, Action, Event, Invitee, Researcher, ResearcherSetup};
use super::spill::Store;
use super::{Error, LABEL, MAX_ELEMENTS, Result};
use crate::clock::unix_secs;
use crate::layout::Layout;
use crate::net::frame::{Message, RoundId, Spares};
use crate::net::tls::Pins;
use crate::party::{Fingerprint, PartyId, Role};
use crate::pki::certificate::PeerCertificate;
use crate::pki::identity::Identity;
use crate::pki::journal::RoundEnd;
use crate::pki::registry::Registry;
use crate::round::messages::{self, Message2};
use crate::secagg::quantize::{Plan, QuantParams};
use crate::text::sanitize;

/// The longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What `round serve` needs.
#[derive(Clone, Debug)]
pub struct ServeParams {
    /// The ctx federation string.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// The nodes invited (registered here as nodes).
    pub nodes: Vec<PartyId>,
    /// Threshold t.
    pub threshold: usize,
    /// How long the invitees have to connect and advertise.
    pub join_timeout: Duration,
    /// Each later phase's deadline, and the handshake deadline.
    pub timeout: Duration,
    /// Quantization knobs.
    pub quant: QuantParams,
    /// The tensors every node must bring.
    pub layout: Layout,
    /// Digest of the global model, announced to the nodes.
    pub model: Option<[u8; 32]>,
    /// Where spills go (a private directory).
    pub spill_dir: PathBuf,
    /// Threads for unmasking.
    pub threads: usize,
}

/// What the researcher sees happen, for progress lines.
#[derive(Debug)]
pub enum ServeEvent<'a> {
    /// Listening.
    Listening(&'a str),
    /// A connection failed before it was identified (handshake refused, timeout).
    Refused {
        /// Remote address.
        addr: &'a str,
        /// Why (sanitised).
        reason: &'a str,
    },
    /// A pinned node connected.
    Connected(&'a PartyId),
    /// A phase line from the protocol.
    Phase(&'a str),
    /// A node was dropped.
    Dropped {
        /// Who.
        party: &'a str,
        /// Why.
        reason: &'a str,
    },
}

/// The result of a served round.
#[derive(Debug)]
pub struct Served {
    /// The round's outcome as the state machine saw it.
    pub outcome: researcher::Outcome,
    /// The weighted mean, encoded as the mean file's data section.
    pub mean: Vec<u8>,
    /// The total weight.
    pub total_weight: u64,
    /// Local ids by fingerprint (for printing).
    pub names: BTreeMap<Fingerprint, PartyId>,
}

struct Member {
    conn: u64,
    tx: Sender<Outbound>,
}

/// Runs a round: listens, runs the protocol, answers the nodes that unmasked.
pub fn serve(
    me: &Identity,
    reg: &mut Registry,
    params: &ServeParams,
    listen: &str,
    mut events: impl FnMut(ServeEvent<'_>),
) -> Result<Served> {
    if me.config.role != Role::Researcher {
        return Err(Error::WrongRole(
            me.config.role,
            "'round serve' is for the researcher",
        ));
    }
    let nodes = crate::files::job::participants(&params.nodes)?;
    let values = params.layout.elements();
    if values == 0 || values > MAX_ELEMENTS {
        return Err(Error::Setup(format!(
            "the layout has {values} values (allowed 1..={MAX_ELEMENTS})"
        )));
    }
    let plan = Plan::new(params.quant, nodes.len())?;
    let (pins, invitees, names) = invited(reg, &nodes)?;
    let (machine, announce) = Researcher::new(ResearcherSetup {
        me: me.certificate.fingerprint(),
        federation: params.federation.clone(),
        round: params.round,
        invitees,
        quant: params.quant,
        threshold: u32::try_from(params.threshold).unwrap_or(u32::MAX),
        layout: params.layout.clone(),
        model_digest: params.model,
        label: LABEL.into(),
        deadline_secs: u32::try_from(params.timeout.as_secs()).unwrap_or(u32::MAX),
    })?;
    let announce_payload = Message2::Announce(announce)
        .encode()
        .map_err(|e| Error::Setup(format!("cannot encode the announcement: {e}")))?;
    let store = Store::new(
        &params.spill_dir,
        &plan,
        values as usize + 1,
        plan.wire_bytes(),
        nodes.len(),
        params.threads,
    )
    .map_err(|e| Error::Setup(e.to_string()))?;
    let pins = Arc::new(pins);
    let config = crate::net::tls::server_config(me, (*pins).clone())?;
    let listener = TcpListener::bind(listen).map_err(|source| Error::Listen {
        addr: listen.to_string(),
        source,
    })?;
    let bound = listener
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    reg.begin_round(
        &params.federation,
        params.round,
        Role::Researcher,
        &me.certificate.fingerprint(),
        nodes.len(),
        unix_secs(SystemTime::now()),
    )?;
    events(ServeEvent::Listening(&bound));
    let round_id = RoundId::new(&params.federation, params.round);
    // A few chunks in flight at most, whatever the number of nodes.
    let (tx, rx) = mpsc::sync_channel::<Inbound>(8);
    let stop = Arc::new(AtomicBool::new(false));
    let spares = Spares::default();
    let acceptor = {
        let stop = stop.clone();
        let template = Link {
            conn: 0,
            config,
            round: round_id,
            timeout: params.timeout.min(HANDSHAKE),
            pins: pins.clone(),
            announce: Arc::new(announce_payload),
            events: tx,
            spares: spares.clone(),
        };
        // Authenticated nodes hold one connection each; unauthenticated ones share the
        // rest of the cap and expire with the handshake deadline, so idle sockets can
        // only delay a node (which retries), never lock it out.
        let cap = 5 * nodes.len() + 32;
        std::thread::spawn(move || accept_loop(listener, template, &stop, cap))
    };
    let mut c = Coordinator {
        params,
        plan,
        machine,
        store: Some(store),
        members: BTreeMap::new(),
        owners: HashMap::new(),
        names: names.clone(),
        spares,
        mean: None,
    };
    let result = c.run(&rx, &mut events);
    stop.store(true, Ordering::Relaxed);
    let why = result.as_ref().err().map(|e| e.to_string());
    c.close_all(why.clone());
    drop(rx);
    let _ = acceptor.join();
    record_end(reg, params, &result);
    result.map(|mut s| {
        s.names = names;
        s
    })
}

/// The invited nodes: each registered here as a node with a certificate valid now; their
/// TLS pins, the state machine's view of them, and their local ids for printing.
#[allow(clippy::type_complexity)]
fn invited(
    reg: &Registry,
    nodes: &[PartyId],
) -> Result<(
    Pins,
    BTreeMap<Fingerprint, Invitee>,
    BTreeMap<Fingerprint, PartyId>,
)> {
    let mut pins = Pins::default();
    let mut invitees = BTreeMap::new();
    let mut names = BTreeMap::new();
    let now = SystemTime::now();
    for id in nodes {
        let cert: PeerCertificate = crate::files::job::registered_node(reg, id)?;
        cert.check_validity(now).map_err(|e| {
            Error::Setup(format!(
                "the registered certificate of node '{id}' is unusable: {e}"
            ))
        })?;
        pins.insert(id.clone(), &cert);
        invitees.insert(
            cert.fingerprint(),
            Invitee {
                id: id.clone(),
                key: *cert.public_key(),
            },
        );
        names.insert(cert.fingerprint(), id.clone());
    }
    Ok((pins, invitees, names))
}

/// Journals how the round ended (best effort: the outcome is already decided).
fn record_end(reg: &mut Registry, params: &ServeParams, result: &Result<Served>) {
    let (outcome, detail) = match result {
        Ok(s) => (
            "completed".to_string(),
            serde_json::json!({
                "u1": s.outcome.u1.len(),
                "u2": s.outcome.u2.len(),
                "u3": s.outcome.u3.len(),
                "u5": s.outcome.u5.len(),
                "total_weight": s.total_weight,
                "dropouts": s.outcome.dropouts.iter().map(|d| serde_json::json!({
                    "node": sanitize(&d.who.to_string()),
                    "phase": d.phase.to_string(),
                    "why": sanitize(&d.why.to_string()),
                })).collect::<Vec<_>>(),
            })
            .to_string(),
        ),
        Err(e) => (
            format!("failed: {}", sanitize(&e.to_string())),
            "{}".to_string(),
        ),
    };
    let _ = reg.finish_round(
        &RoundEnd {
            federation: &params.federation,
            round: params.round,
            role: Role::Researcher,
            outcome: &outcome,
            detail: &detail,
            result_path: None,
        },
        unix_secs(SystemTime::now()),
    );
}

struct Coordinator<'a> {
    params: &'a ServeParams,
    plan: Plan,
    machine: Researcher,
    store: Option<Store>,
    members: BTreeMap<Fingerprint, Member>,
    owners: HashMap<u64, Fingerprint>,
    names: BTreeMap<Fingerprint, PartyId>,
    spares: Spares,
    mean: Option<(u64, Vec<u8>)>,
}

impl Coordinator<'_> {
    fn run(
        &mut self,
        rx: &Receiver<Inbound>,
        events: &mut impl FnMut(ServeEvent<'_>),
    ) -> Result<Served> {
        let mut phase = self.machine.phase();
        let mut deadline = Instant::now() + self.params.join_timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let event = match rx.recv_timeout(wait) {
                Ok(Inbound::Refused { addr, reason }) => {
                    events(ServeEvent::Refused {
                        addr: &addr,
                        reason: &sanitize(&reason),
                    });
                    continue;
                }
                Ok(Inbound::Connected {
                    conn,
                    party,
                    fp,
                    tx,
                }) => {
                    let refuse = if self.members.contains_key(&fp) {
                        Some("this node is already connected")
                    } else if !self.machine.expects(&fp) {
                        Some("this round has moved past the phase where nodes join")
                    } else {
                        None
                    };
                    if let Some(why) = refuse {
                        let _ = tx.send(Outbound::Close(Some(why.into())));
                        events(ServeEvent::Refused {
                            addr: party.as_str(),
                            reason: why,
                        });
                        continue;
                    }
                    events(ServeEvent::Connected(&party));
                    self.owners.insert(conn, fp);
                    self.members.insert(fp, Member { conn, tx });
                    continue;
                }
                Ok(Inbound::Message { conn, msg }) => {
                    let Some(from) = self.owners.get(&conn).copied() else {
                        continue;
                    };
                    match Self::event_of(from, msg) {
                        Some(ev) => ev,
                        None => continue,
                    }
                }
                Ok(Inbound::Lost { conn, reason }) => {
                    let Some(from) = self.owners.remove(&conn) else {
                        continue;
                    };
                    self.members.remove(&from);
                    Event::Lost {
                        from,
                        reason: sanitize(&reason).into_owned(),
                    }
                }
                Err(RecvTimeoutError::Timeout) => Event::Deadline,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Setup(
                        "the listener stopped unexpectedly (our bug)".into(),
                    ));
                }
            };
            let mut pending = vec![event];
            while let Some(ev) = pending.pop() {
                let actions = self.machine.handle(ev);
                if let Some(done) = self.execute(actions, events, &mut pending)? {
                    return Ok(done);
                }
            }
            let now_phase = self.machine.phase();
            if now_phase != phase {
                phase = now_phase;
                deadline = Instant::now() + self.params.timeout;
            }
        }
    }

    /// A frame from an authenticated node, as a machine event (`None`: recycled chunk
    /// buffer of a node we dropped, or nothing to say).
    fn event_of(from: Fingerprint, msg: Message) -> Option<Event> {
        Some(match msg {
            Message::Chunk(c) => Event::Chunk {
                from,
                offset: c.offset,
                data: c.data,
            },
            Message::End => Event::StreamEnd { from },
            Message::Abort(a) => Event::Lost {
                from,
                reason: format!("refused: {}", sanitize(&a.reason)),
            },
            Message::Protocol { kind, payload } => match messages::decode(kind, &payload) {
                Ok(msg) => Event::Message { from, msg },
                Err(e) => Event::Lost {
                    from,
                    reason: format!("sent a malformed message: {e}"),
                },
            },
        })
    }

    /// Runs actions in order. `Some` when the round is over with a result.
    fn execute(
        &mut self,
        actions: Vec<Action>,
        events: &mut impl FnMut(ServeEvent<'_>),
        pending: &mut Vec<Event>,
    ) -> Result<Option<Served>> {
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    let payload = msg.encode().map_err(|e| {
                        Error::Setup(format!("cannot encode a {} message: {e}", msg.name()))
                    })?;
                    self.tell(
                        &to,
                        Outbound::Send(Message::Protocol {
                            kind: msg.kind(),
                            payload,
                        }),
                    );
                }
                Action::Absorb { from, offset, data } => {
                    if let Some(store) = self.store.as_mut() {
                        store
                            .absorb(&from, offset, &data)
                            .map_err(|e| Error::Setup(e.to_string()))?;
                    }
                    self.spares.give(data);
                }
                Action::StreamComplete { from } => {
                    if let Some(store) = self.store.as_mut() {
                        store.complete(&from);
                    }
                }
                Action::DiscardStream { from } => {
                    if let Some(store) = self.store.as_mut() {
                        store
                            .discard(&from)
                            .map_err(|e| Error::Setup(e.to_string()))?;
                    }
                }
                Action::Drop { who, why } => {
                    let why = sanitize(&why.to_string()).into_owned();
                    let name = self.name(&who);
                    events(ServeEvent::Dropped {
                        party: &name,
                        reason: &why,
                    });
                    self.tell(&who, Outbound::Close(Some(why)));
                    if let Some(m) = self.members.remove(&who) {
                        self.owners.remove(&m.conn);
                    }
                }
                Action::Progress(line) => events(ServeEvent::Phase(&line)),
                Action::Unmask { corrections } => {
                    let store = self
                        .store
                        .take()
                        .ok_or_else(|| Error::Setup("unmasked twice (our bug)".into()))?;
                    let result = store.unmask(&corrections, &self.plan, &self.params.layout);
                    let fed = match result {
                        Ok((w, mean)) => {
                            self.mean = Some((w, mean));
                            Ok(researcher::Summary { total_weight: w })
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    pending.push(Event::Unmasked(fed));
                }
                Action::SendResult { to, header } => {
                    let (_, mean) = self
                        .mean
                        .clone()
                        .ok_or_else(|| Error::Setup("a result without a mean (our bug)".into()))?;
                    let shared = Arc::new((header, mean));
                    for fp in &to {
                        self.tell(fp, Outbound::Result(shared.clone()));
                    }
                }
                Action::Finish(outcome) => {
                    let (total_weight, mean) = self
                        .mean
                        .take()
                        .ok_or_else(|| Error::Setup("finished without a mean (our bug)".into()))?;
                    return Ok(Some(Served {
                        outcome,
                        mean,
                        total_weight,
                        names: BTreeMap::new(),
                    }));
                }
                Action::Fail(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    fn name(&self, fp: &Fingerprint) -> String {
        self.names
            .get(fp)
            .map_or_else(|| fp.short(), |id| id.to_string())
    }

    fn tell(&self, to: &Fingerprint, o: Outbound) {
        if let Some(m) = self.members.get(to) {
            let _ = m.tx.send(o);
        }
    }

    fn close_all(&mut self, reason: Option<String>) {
        for m in self.members.values() {
            let _ = m.tx.send(Outbound::Close(reason.clone()));
        }
        self.members.clear();
    }
}
