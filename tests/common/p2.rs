//! Protocol-2 harness: real `node::Node`s driven in memory, an honest researcher written
//! from the messages and the key schedule alone, and the driver's masking step.
//!
//! Everything is deterministic: party keys, round secrets and inputs come from a
//! SHA-256 counter-mode generator over a seed. Fingerprints are `Fingerprint::of_der` of
//! distinct bytes; each node's registry is a fingerprint → key map, which is all the
//! node reads.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use p256::ecdsa::Signature;
use p256::elliptic_curve::rand_core::{TryCryptoRng, TryRng};
use p256::{NonZeroScalar, PublicKey, Scalar};
use sha2::{Digest, Sha256};

use secagg::layout::{Container, DType, Layout, TensorSpec};
use secagg::party::{Fingerprint, PartyId};
use secagg::pki::identity::PartyKey;
use secagg::round::messages::{
    AdvertList, Advertise, Announce, ForwardedShares, Message2, SealedShare, ShareKind,
    SignatureList, Survivors, Unmask,
};
use secagg::round::node::{Action, Error, Event, Input, Node, NodeSetup, Peer};
use secagg::round::policy::{Policy, default_threshold};
use secagg::round::schedule::{Ctx, pairwise_mask, self_mask_key};
use secagg::secagg::keys::Sign;
use secagg::secagg::prg::{PeerMask, apply_masks};
use secagg::secagg::quantize::{Plan, QuantParams};
use secagg::secagg::ring::{Machine, Word};
use secagg::secagg::shamir;

/// The federation every test node pins.
pub const FED: &str = "fed-oncology";

/// SHA-256(seed ‖ u64be(counter)) blocks: reproducible, never for production.
pub struct TestRng {
    seed: u64,
    counter: u64,
}

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng { seed, counter: 0 }
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// Uniform in [lo, hi).
    pub fn f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fill(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(32) {
            let mut h = Sha256::new();
            h.update(self.seed.to_be_bytes());
            h.update(self.counter.to_be_bytes());
            self.counter += 1;
            chunk.copy_from_slice(&h.finalize()[..chunk.len()]);
        }
    }
}

impl TryRng for TestRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

impl TryCryptoRng for TestRng {}

/// A deterministic certified key.
pub fn party_key(rng: &mut TestRng) -> PartyKey {
    loop {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        if let Some(k) = PartyKey::from_scalar_bytes(&b) {
            return k;
        }
    }
}

pub fn public(key: &PartyKey) -> PublicKey {
    PublicKey::from(key.signing_key().verifying_key())
}

/// A one-tensor `.npy` layout of `d` f32 values.
pub fn layout(d: u64) -> Layout {
    Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![d],
            dtype: DType::F32,
        }],
    }
}

/// One hospital: its certificate fingerprint and key, and its update.
pub struct Member {
    pub id: PartyId,
    pub fp: Fingerprint,
    pub key: PartyKey,
    pub values: Vec<f64>,
    pub weight: u64,
}

/// A federation of registered nodes (every node registers every other one) and a
/// researcher.
pub struct Fed {
    pub researcher: Fingerprint,
    /// Sorted by fingerprint.
    pub members: Vec<Member>,
    pub d: u64,
    pub params: QuantParams,
}

impl Fed {
    /// `n` nodes with `d` values each.
    pub fn new(n: usize, d: u64, seed: u64) -> Fed {
        let mut rng = TestRng::new(seed);
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: format!("node{i}").parse().expect("id"),
                fp: Fingerprint::of_der(format!("cert of node {i}, seed {seed}").as_bytes()),
                key: party_key(&mut rng),
                values: (0..d).map(|_| rng.f64(-1.2, 1.2)).collect(),
                weight: 1 + rng.u64() % 100,
            })
            .collect();
        members.sort_by_key(|m| m.fp);
        Fed {
            researcher: Fingerprint::of_der(format!("researcher {seed}").as_bytes()),
            members,
            d,
            params: QuantParams {
                clip: 1.0,
                bits: 16,
                max_weight: 1000,
            },
        }
    }

    pub fn fps(&self) -> Vec<Fingerprint> {
        self.members.iter().map(|m| m.fp).collect()
    }

    pub fn fp(&self, i: usize) -> Fingerprint {
        self.members[i].fp
    }

    pub fn member(&self, fp: &Fingerprint) -> &Member {
        self.members
            .iter()
            .find(|m| m.fp == *fp)
            .expect("a member of the federation")
    }

    pub fn index(&self, fp: &Fingerprint) -> usize {
        self.members
            .iter()
            .position(|m| m.fp == *fp)
            .expect("a member of the federation")
    }

    /// Every node, as each node's registry knows it.
    pub fn peers(&self) -> BTreeMap<Fingerprint, Peer> {
        self.members
            .iter()
            .map(|m| {
                (
                    m.fp,
                    Peer {
                        id: m.id.clone(),
                        key: public(&m.key),
                    },
                )
            })
            .collect()
    }

    pub fn policy() -> Policy {
        Policy {
            federation: Some(FED.into()),
            ..Policy::default()
        }
    }

    pub fn input(&self, fp: &Fingerprint) -> Input {
        let m = self.member(fp);
        Input {
            layout: layout(self.d),
            digest: secagg::pki::journal::InputDigests {
                v2: digest_of(&m.values),
                v1: None,
            },
            weight: m.weight,
        }
    }

    pub fn setup(&self, fp: &Fingerprint, last_round: u64) -> NodeSetup<'_> {
        NodeSetup {
            me: *fp,
            key: &self.member(fp).key,
            researcher: self.researcher,
            peers: self.peers(),
            policy: Fed::policy(),
            last_round,
            input: self.input(fp),
            model: None,
        }
    }

    pub fn node(&self, fp: &Fingerprint) -> Node<'_> {
        Node::new(self.setup(fp, 0))
    }

    pub fn nodes(&self) -> BTreeMap<Fingerprint, Node<'_>> {
        self.fps().iter().map(|fp| (*fp, self.node(fp))).collect()
    }

    pub fn plan(&self) -> Plan {
        Plan::new(self.params, self.members.len()).expect("plan")
    }

    /// The honest announcement of `round` to every member, with the default threshold.
    pub fn announce(&self, round: u64) -> Announce {
        let plan = self.plan();
        let n = self.members.len();
        Announce {
            federation: FED.into(),
            round,
            researcher: self.researcher,
            invitees: self.fps(),
            clip: self.params.clip,
            bits: self.params.bits,
            modulus_bits: plan.modulus.bits(),
            word_bytes: plan.wire_bytes() as u32,
            max_weight: self.params.max_weight,
            threshold: default_threshold(n) as u32,
            layout: layout(self.d),
            model_digest: None,
            label: "update".into(),
            deadline_secs: 60,
        }
    }

    /// Σ w·q(x) per coordinate and Σ w over `who`: what the researcher may learn.
    pub fn plain_sum(&self, who: &[Fingerprint]) -> (Vec<i64>, u64) {
        let plan = self.plan();
        let mut sum = vec![0i64; self.d as usize];
        let mut w = 0;
        for fp in who {
            let m = self.member(fp);
            for (s, x) in sum.iter_mut().zip(&m.values) {
                *s += plan.quantize(*x).0 * m.weight as i64;
            }
            w += m.weight;
        }
        (sum, w)
    }
}

pub fn digest_of(values: &[f64]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_bits().to_be_bytes());
    }
    h.finalize().into()
}

// ---------------------------------------------------------------------------------------
// The driver's masking step and the ring arithmetic the researcher uses.

/// 2^(8·wire bytes) - 1.
pub fn wire_mask(plan: &Plan) -> u64 {
    match plan.wire_bytes() {
        8 => u64::MAX,
        w => (1u64 << (8 * w)) - 1,
    }
}

fn masked_in<W: Word>(plan: &Plan, weight: u64, values: &[f64], masks: &[PeerMask]) -> Vec<u64> {
    let mut words: Vec<W> = values
        .iter()
        .map(|x| W::from_i64(plan.quantize(*x).0.wrapping_mul(weight as i64)))
        .chain(std::iter::once(W::from_u64(weight)))
        .collect();
    apply_masks(&mut words, masks, plan.wire_bytes(), 1);
    let keep = wire_mask(plan);
    words.into_iter().map(|w| w.to_u64() & keep).collect()
}

/// What `Action::StreamMasked` sends: words_i = w·q(x_i) mod 2^k for i < d, word_d = w,
/// plus every mask, reduced modulo 2^(8·wire bytes).
pub fn masked_words(plan: &Plan, weight: u64, values: &[f64], masks: &[PeerMask]) -> Vec<u64> {
    match plan.modulus.machine() {
        Machine::U32 => masked_in::<u32>(plan, weight, values, masks),
        Machine::U64 => masked_in::<u64>(plan, weight, values, masks),
    }
}

/// Σ ±PRG over `len` words, reduced like the wire words.
pub fn mask_words(plan: &Plan, len: usize, masks: &[PeerMask]) -> Vec<u64> {
    masked_words(plan, 0, &vec![0.0; len - 1], masks)
        .into_iter()
        .collect()
}

pub fn add_words(plan: &Plan, a: &mut [u64], b: &[u64]) {
    let keep = wire_mask(plan);
    a.iter_mut()
        .zip(b)
        .for_each(|(x, y)| *x = x.wrapping_add(*y) & keep);
}

pub fn sub_words(plan: &Plan, a: &mut [u64], b: &[u64]) {
    let keep = wire_mask(plan);
    a.iter_mut()
        .zip(b)
        .for_each(|(x, y)| *x = x.wrapping_sub(*y) & keep);
}

/// A wire word as a signed integer.
pub fn signed(plan: &Plan, w: u64) -> i64 {
    let bits = 8 * plan.wire_bytes() as u32;
    if bits == 64 {
        return w as i64;
    }
    let half = 1u64 << (bits - 1);
    if w >= half {
        w as i64 - (1i64 << bits)
    } else {
        w as i64
    }
}

/// Pearson correlation.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

// ---------------------------------------------------------------------------------------
// The researcher: what it received, and honest messages built from it.

#[derive(Default)]
pub struct Inbox {
    pub adverts: BTreeMap<Fingerprint, Advertise>,
    /// Sealed shares by sender.
    pub bundles: BTreeMap<Fingerprint, Vec<SealedShare>>,
    /// Masked words received (possibly a prefix).
    pub streams: BTreeMap<Fingerprint, Vec<u64>>,
    pub sigs: BTreeMap<Fingerprint, Signature>,
    pub unmasks: BTreeMap<Fingerprint, Unmask>,
}

impl Inbox {
    pub fn advert_list(&self, who: &[Fingerprint]) -> Message2 {
        Message2::AdvertList(AdvertList {
            adverts: who.iter().map(|f| self.adverts[f].clone()).collect(),
        })
    }

    /// The shares addressed to `to` from every sender in `u2` but `to`.
    pub fn shares_for(&self, to: &Fingerprint, senders: &[Fingerprint]) -> Vec<SealedShare> {
        senders
            .iter()
            .filter(|s| *s != to)
            .map(|s| self.sealed(s, to))
            .collect()
    }

    pub fn forwarded(&self, to: &Fingerprint, u2: &[Fingerprint]) -> Message2 {
        Message2::ForwardedShares(ForwardedShares {
            u2: u2.to_vec(),
            shares: self.shares_for(to, u2),
        })
    }

    /// The sealed share `from` → `to`, as the researcher received it.
    pub fn sealed(&self, from: &Fingerprint, to: &Fingerprint) -> SealedShare {
        let mut s = self.bundles[from]
            .iter()
            .find(|x| x.peer == *to)
            .expect("a share")
            .clone();
        s.peer = *from;
        s
    }

    pub fn signature_list(&self, who: &[Fingerprint]) -> Message2 {
        Message2::SignatureList(SignatureList {
            sigs: who
                .iter()
                .filter_map(|f| self.sigs.get(f).map(|s| (*f, *s)))
                .collect(),
        })
    }

    /// Every share of `dealer`'s secret of `kind` revealed so far, checked against the
    /// dealer's commitments, as (holder x, value).
    pub fn revealed(&self, ctx: &Ctx, dealer: &Fingerprint, kind: ShareKind) -> Vec<(u32, Scalar)> {
        let advert = &self.adverts[dealer].advert;
        let com = match kind {
            ShareKind::B => &advert.b_commitments,
            ShareKind::S => &advert.s_commitments,
        };
        self.unmasks
            .iter()
            .flat_map(|(holder, u)| {
                let x = ctx.x_of(holder).expect("holder invited");
                u.shares
                    .iter()
                    .filter(move |s| s.peer == *dealer && s.kind == kind)
                    .map(move |s| (x, s.value))
            })
            .filter(|(x, v)| com.verify(*x, v))
            .collect()
    }

    /// Rebuilds `dealer`'s secret of `kind` from t revealed shares, if it can.
    pub fn rebuild(&self, ctx: &Ctx, dealer: &Fingerprint, kind: ShareKind) -> Option<Scalar> {
        let points = self.revealed(ctx, dealer, kind);
        if points.len() < ctx.threshold() {
            return None;
        }
        let secret = shamir::interpolate(&points[..ctx.threshold()]).ok()?;
        let advert = &self.adverts[dealer].advert;
        let public = match kind {
            ShareKind::B => advert.b_pub,
            ShareKind::S => advert.s_pub,
        };
        let g = p256::ProjectivePoint::GENERATOR * secret;
        (g == public.to_projective()).then_some(secret)
    }

    /// Protocol 2's unmasking: Σ_{U3} y − Σ_{U3} PRG(b) − Σ_{U3×(U2\U3)} δ·PRG(k), as
    /// (signed coordinate sums, total weight).
    pub fn unmask(
        &self,
        ctx: &Ctx,
        plan: &Plan,
        u2: &[Fingerprint],
        u3: &[Fingerprint],
    ) -> Result<(Vec<i64>, u64), String> {
        let len = ctx.params().length as usize + 1;
        let mut z = vec![0u64; len];
        for v in u3 {
            let y = self.streams.get(v).ok_or("a U3 stream is missing")?;
            if y.len() != len {
                return Err("a U3 stream is incomplete".into());
            }
            add_words(plan, &mut z, y);
            let b = self
                .rebuild(ctx, v, ShareKind::B)
                .ok_or("fewer than t good b-shares")?;
            let own = [PeerMask {
                key: self_mask_key(&b, ctx, v),
                sign: Sign::Add,
            }];
            sub_words(plan, &mut z, &mask_words(plan, len, &own));
        }
        for u in u2.iter().filter(|u| !u3.contains(u)) {
            let s = self
                .rebuild(ctx, u, ShareKind::S)
                .ok_or("fewer than t good s-shares")?;
            let s = Option::<NonZeroScalar>::from(NonZeroScalar::new(s)).ok_or("s = 0")?;
            let s_u = self.adverts[u].advert.s_pub;
            // u's own side of each pair cancels the survivors' side.
            let masks: Vec<PeerMask> = u3
                .iter()
                .map(|v| pairwise_mask(&s, u, &s_u, v, &self.adverts[v].advert.s_pub, ctx))
                .collect();
            add_words(plan, &mut z, &mask_words(plan, len, &masks));
        }
        let weight = z[len - 1];
        Ok((
            z[..len - 1].iter().map(|w| signed(plan, *w)).collect(),
            weight,
        ))
    }
}

// ---------------------------------------------------------------------------------------
// The driver: delivers events, executes actions in order, and records everything.

/// A journal step the test executes for real (or `None`: treated as durable).
pub type JournalHook<'f> = Box<dyn FnMut(&Fingerprint, &Action) -> Result<(), String> + 'f>;

pub struct Cluster<'f> {
    pub fed: &'f Fed,
    pub nodes: BTreeMap<Fingerprint, Node<'f>>,
    /// Every action each node emitted, in order.
    pub log: BTreeMap<Fingerprint, Vec<Action>>,
    /// What the researcher received.
    pub inbox: Inbox,
    /// Nodes that drop mid-stream: the researcher gets this many words, and the node
    /// never sees `StreamSent`.
    pub cut: BTreeMap<Fingerprint, usize>,
    /// Executes journal actions; a failure stops the driver for that node.
    pub journal: Option<JournalHook<'f>>,
    /// Journal failures, by node.
    pub journal_refused: BTreeMap<Fingerprint, String>,
    pub rng: TestRng,
    pub announce: Announce,
    pub ctx: Ctx,
    pub plan: Plan,
}

impl<'f> Cluster<'f> {
    pub fn new(fed: &'f Fed, announce: Announce) -> Cluster<'f> {
        Cluster::with_nodes(fed, fed.nodes(), announce)
    }

    pub fn with_nodes(
        fed: &'f Fed,
        nodes: BTreeMap<Fingerprint, Node<'f>>,
        announce: Announce,
    ) -> Cluster<'f> {
        let ctx = announce.ctx(&fed.researcher).expect("ctx");
        let plan = fed.plan();
        Cluster {
            fed,
            log: nodes.keys().map(|f| (*f, Vec::new())).collect(),
            nodes,
            inbox: Inbox::default(),
            cut: BTreeMap::new(),
            journal: None,
            journal_refused: BTreeMap::new(),
            rng: TestRng::new(0x5e_ca66),
            announce,
            ctx,
            plan,
        }
    }

    /// Delivers one event to `to` and executes the actions; returns how many actions
    /// it emitted (see [`Cluster::last`]).
    pub fn deliver(&mut self, to: &Fingerprint, event: Event) -> usize {
        let node = self.nodes.get_mut(to).expect("a node");
        let actions = node.handle(event, &mut self.rng);
        check_order(&actions);
        let n = actions.len();
        let mut stream_done = false;
        let mut stopped = false;
        for a in &actions {
            if stopped {
                break;
            }
            match a {
                Action::JournalAdvertise { .. }
                | Action::JournalRelease { .. }
                | Action::JournalSigned { .. }
                | Action::JournalReveal { .. } => {
                    if let Some(j) = self.journal.as_mut()
                        && let Err(e) = j(to, a)
                    {
                        self.journal_refused.insert(*to, e);
                        stopped = true;
                    }
                }
                Action::Send(m) => self.receive(to, m.clone()),
                Action::StreamMasked {
                    plan,
                    weight,
                    masks,
                } => {
                    let m = self.fed.member(to);
                    let words = masked_words(plan, *weight, &m.values, masks);
                    match self.cut.get(to) {
                        Some(k) => {
                            self.inbox.streams.insert(*to, words[..*k].to_vec());
                        }
                        None => {
                            self.inbox.streams.insert(*to, words);
                            stream_done = true;
                        }
                    }
                }
                _ => {}
            }
        }
        self.log.get_mut(to).expect("log").extend(actions);
        if stream_done && !stopped {
            let more = self.deliver(to, Event::StreamSent);
            assert_eq!(more, 0, "StreamSent emits nothing");
        }
        n
    }

    fn receive(&mut self, from: &Fingerprint, m: Message2) {
        match m {
            Message2::Advertise(a) => {
                self.inbox.adverts.insert(*from, a);
            }
            Message2::ShareBundle(b) => {
                self.inbox.bundles.insert(*from, b.shares);
            }
            Message2::ConsistencySig(s) => {
                self.inbox.sigs.insert(*from, s.sig);
            }
            Message2::Unmask(u) => {
                self.inbox.unmasks.insert(*from, u);
            }
            other => panic!("a node sent a researcher's message: {}", other.name()),
        }
    }

    pub fn send(&mut self, to: &Fingerprint, m: Message2) -> usize {
        self.deliver(to, Event::Message(m))
    }

    /// The last `n` actions of `who`.
    pub fn last(&self, who: &Fingerprint, n: usize) -> &[Action] {
        let log = &self.log[who];
        &log[log.len() - n..]
    }

    // Honest researcher steps, to `who`.

    pub fn announce_to(&mut self, who: &[Fingerprint]) {
        for f in who {
            self.send(f, Message2::Announce(self.announce.clone()));
        }
    }

    pub fn adverts_to(&mut self, who: &[Fingerprint], u1: &[Fingerprint]) {
        for f in who {
            let m = self.inbox.advert_list(u1);
            self.send(f, m);
        }
    }

    pub fn shares_to(&mut self, who: &[Fingerprint], u2: &[Fingerprint]) {
        for f in who {
            let m = self.inbox.forwarded(f, u2);
            self.send(f, m);
        }
    }

    pub fn survivors_to(&mut self, who: &[Fingerprint], u2: &[Fingerprint], u3: &[Fingerprint]) {
        for f in who {
            self.send(
                f,
                Message2::Survivors(Survivors {
                    u2: u2.to_vec(),
                    u3: u3.to_vec(),
                }),
            );
        }
    }

    pub fn signatures_to(&mut self, who: &[Fingerprint], signers: &[Fingerprint]) {
        for f in who {
            let m = self.inbox.signature_list(signers);
            self.send(f, m);
        }
    }

    /// Runs an honest round through the reveal: `u2` share (the others drop after
    /// advertising), `u3` send all their words (the rest of `u2` drop after sharing).
    pub fn run_to_unmask(&mut self, u2: &[Fingerprint], u3: &[Fingerprint]) {
        let all = self.fed.fps();
        self.announce_to(&all);
        self.adverts_to(u2, &all);
        self.shares_to(u2, u2);
        for f in u2.iter().filter(|f| !u3.contains(f)) {
            self.cut.entry(*f).or_insert(0);
        }
        // The dropped nodes were already cut; nothing more reaches them.
        self.survivors_to(u3, u2, u3);
        self.signatures_to(u3, u3);
    }

    /// Every `Unmask` any node sent, by sender.
    pub fn unmasks_sent(&self) -> Vec<(Fingerprint, &Unmask)> {
        self.log
            .iter()
            .flat_map(|(f, log)| {
                log.iter().filter_map(move |a| match a {
                    Action::Send(Message2::Unmask(u)) => Some((*f, u)),
                    _ => None,
                })
            })
            .collect()
    }

    /// The kinds of `dealer`'s shares anyone revealed.
    pub fn kinds_revealed(&self, dealer: &Fingerprint) -> BTreeSet<&'static str> {
        self.unmasks_sent()
            .iter()
            .flat_map(|(_, u)| u.shares.iter())
            .filter(|s| s.peer == *dealer)
            .map(|s| match s.kind {
                ShareKind::B => "b",
                ShareKind::S => "s",
            })
            .collect()
    }

    pub fn failure(&self, who: &Fingerprint) -> Option<&Error> {
        failure(&self.log[who])
    }

    pub fn sent_any(&self, who: &Fingerprint, kind: &str) -> bool {
        sent_any(&self.log[who], kind)
    }
}

/// The error of a `Fail` action, if any.
pub fn failure(actions: &[Action]) -> Option<&Error> {
    actions.iter().find_map(|a| match a {
        Action::Fail(e) => Some(e),
        _ => None,
    })
}

/// Whether `actions` hold an action of this kind: a message name (`advertise`,
/// `share bundle`, ...) for sends, or `JournalRelease`, `StreamMasked`, ...
pub fn sent_any(actions: &[Action], kind: &str) -> bool {
    actions.iter().any(|a| action_name(a) == kind)
}

pub fn action_name(a: &Action) -> String {
    match a {
        Action::JournalAdvertise { .. } => "JournalAdvertise".into(),
        Action::Send(m) => format!("Send({})", m.name()),
        Action::JournalRelease { .. } => "JournalRelease".into(),
        Action::StreamMasked { .. } => "StreamMasked".into(),
        Action::JournalSigned { .. } => "JournalSigned".into(),
        Action::JournalReveal { .. } => "JournalReveal".into(),
        Action::Progress(_) => "Progress".into(),
        Action::ReceiveMean { .. } => "ReceiveMean".into(),
        Action::Finish(_) => "Finish".into(),
        Action::Fail(_) => "Fail".into(),
    }
}

pub fn names(actions: &[Action]) -> Vec<String> {
    actions.iter().map(action_name).collect()
}

/// Every journal action comes before the send it protects, and nothing follows a Fail.
pub fn check_order(actions: &[Action]) {
    let names = names(actions);
    let before = |journal: &str, send: &str| {
        if let Some(s) = names.iter().position(|n| n == send) {
            let j = names.iter().position(|n| n == journal);
            assert!(
                j.is_some_and(|j| j < s),
                "{journal} must precede {send}: {names:?}"
            );
        }
    };
    before("JournalAdvertise", "Send(advertise)");
    before("JournalRelease", "StreamMasked");
    before("JournalSigned", "Send(consistency signature)");
    before("JournalReveal", "Send(unmask)");
    if let Some(f) = names.iter().position(|n| n == "Fail") {
        assert_eq!(f, names.len() - 1, "nothing may follow a Fail: {names:?}");
    }
}

/// Whether the node sent nothing to the researcher and journaled nothing.
pub fn silent(actions: &[Action]) -> bool {
    actions
        .iter()
        .all(|a| matches!(a, Action::Progress(_) | Action::Fail(_)))
}

// ---------------------------------------------------------------------------------------
// The journal, executed for real against a registry in a temporary home.

/// Runs `who`'s journal actions against `reg`, as the node's driver does; other nodes'
/// journal actions are treated as durable.
pub fn journal_hook<'f>(
    reg: std::rc::Rc<std::cell::RefCell<secagg::pki::registry::Registry>>,
    who: Fingerprint,
    invitees: usize,
) -> JournalHook<'f> {
    use secagg::party::Role;
    use secagg::pki::journal::Revealed;
    Box::new(move |fp, a| {
        if *fp != who {
            return Ok(());
        }
        let mut reg = reg.borrow_mut();
        let res = match a {
            Action::JournalAdvertise {
                federation,
                round,
                researcher,
            } => reg.begin_round(federation, *round, Role::Node, researcher, invitees, 0),
            Action::JournalRelease {
                digest,
                federation,
                round,
            } => reg.release_input(digest, "round", federation, *round, 0),
            Action::JournalSigned {
                federation,
                round,
                hash,
            } => reg.record_signed(federation, *round, hash),
            Action::JournalReveal {
                federation,
                round,
                reveals,
            } => {
                let r: Vec<(Fingerprint, Revealed)> = reveals
                    .iter()
                    .map(|(f, k)| {
                        (
                            *f,
                            match k {
                                ShareKind::B => Revealed::B,
                                ShareKind::S => Revealed::S,
                            },
                        )
                    })
                    .collect();
                reg.record_reveals(federation, *round, &r, 0)
            }
            _ => Ok(()),
        };
        res.map_err(|e| e.to_string())
    })
}
