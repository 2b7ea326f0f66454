//! The researcher machine against honest nodes built from the library pieces, with an
//! in-memory accumulator standing in for the driver.

mod faults;
mod rounds;

use super::*;
use crate::layout::{Container, DType, TensorSpec};
use crate::pki::identity::PartyKey;
use crate::round::messages::ConsistencySig;
use crate::round::messages::{ResultHeader, SealedShare, ShareKind, Unmask};
use crate::round::schedule::{Advert, ConsistencyMessage, pairwise_mask, self_mask_key};
use crate::round::schedule::{RoundSecrets, ShareKey, SharePair, sign_advert, sign_consistency};
use crate::secagg::keys::Sign;
use crate::secagg::prg::PeerMask;
use crate::secagg::prg::apply_masks;
use crate::secagg::test_rng::TestRng;
use p256::elliptic_curve::Generate;
use p256::{NonZeroScalar, PublicKey, Scalar};

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
                apply_masks(&mut self.acc, corrections, wb, 1);
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
                let k =
                    ShareKey::derive(secrets.c(), &a.advert.c_pub, &ctx, &node.fp, &a.advert.fp);
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
        apply_masks(&mut y, &masks, wb, 1);
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
