//! A malicious researcher (and colluding nodes), built from the library's own pieces,
//! against honest `node::Node`s. Each test states what the attacker can no longer do.

#[path = "common/p2.rs"]
mod p2;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use p2::*;
use p256::{NonZeroScalar, PublicKey, Scalar};
use secagg::party::{Fingerprint, Role};
use secagg::pki::registry::Registry;
use secagg::round::messages::{
    Advertise, ForwardedShares, Message2, ResultHeader, SealedShare, ShareKind,
};
use secagg::round::node::{Action, Culprit, Error, Event, Node, Phase};
use secagg::round::schedule::{
    Advert, RoundSecrets, ShareKey, SharePair, pairwise_mask, self_mask_key, sign_advert,
};
use secagg::secagg::keys::Sign;
use secagg::secagg::prg::PeerMask;
use secagg::secagg::shamir::{self, Commitments};

const D: u64 = 64;

#[test]
fn honest_round_gives_the_exact_weighted_sum() {
    let fed = Fed::new(5, D, 1);
    let all = fed.fps();
    let mut c = Cluster::new(&fed, fed.announce(1));
    // One node drops after sharing: it is in U2, not in U3.
    let dropped = all[2];
    let u3: Vec<_> = all.iter().copied().filter(|f| *f != dropped).collect();
    c.cut.insert(dropped, 0);
    c.run_to_unmask(&all, &u3);
    assert_eq!(c.inbox.unmasks.len(), u3.len(), "every survivor answers");
    let (sum, weight) = c.inbox.unmask(&c.ctx, &c.plan, &all, &u3).expect("unmask");
    let (want, want_w) = fed.plain_sum(&u3);
    assert_eq!(weight, want_w);
    assert_eq!(sum, want);
    // The result goes back; every survivor accepts it and finishes.
    for f in &u3 {
        let n = c.send(
            f,
            Message2::Result(ResultHeader {
                total_weight: weight,
                survivors: u3.len() as u32,
                bytes: D * 4,
            }),
        );
        assert_eq!(names(c.last(f, n)), ["ReceiveMean", "Finish"]);
    }
    c.deliver(&dropped, Event::Stopped("connection lost".into()));
    assert!(matches!(
        c.log[&dropped].last(),
        Some(Action::Fail(secagg::round::node::Error::Stopped { .. }))
    ));
}

/// Fresh cluster where every node advertised and the researcher holds every advert.
fn advertised(fed: &Fed) -> Cluster<'_> {
    let all = fed.fps();
    let mut c = Cluster::new(fed, fed.announce(1));
    c.announce_to(&all);
    c
}

/// Fresh cluster where every node shared its keys (bundles held by the researcher).
fn shared(fed: &Fed) -> Cluster<'_> {
    let all = fed.fps();
    let mut c = advertised(fed);
    c.adverts_to(&all, &all);
    c
}

/// Fresh cluster where every node streamed its whole input.
fn streamed(fed: &Fed) -> Cluster<'_> {
    let all = fed.fps();
    let mut c = shared(fed);
    c.shares_to(&all, &all);
    c
}

/// Fresh cluster where every node signed U2 = U3 = everyone.
fn all_signed(fed: &Fed) -> Cluster<'_> {
    let all = fed.fps();
    let mut c = streamed(fed);
    c.survivors_to(&all, &all, &all);
    c
}

fn except(all: &[Fingerprint], out: &[Fingerprint]) -> Vec<Fingerprint> {
    all.iter().copied().filter(|f| !out.contains(f)).collect()
}

fn is_phase_fault(e: Option<&Error>, phase: Phase, who: &Culprit, says: &str) -> bool {
    matches!(e, Some(Error::Misbehaviour { culprit, phase: p, what })
        if culprit == who && *p == phase && what.contains(says))
}

fn node_culprit(fed: &Fed, fp: &Fingerprint) -> Culprit {
    Culprit::Node(fed.member(fp).id.clone(), *fp)
}

#[test]
fn prefix_of_dropped_node_stays_masked() {
    const LEN: u64 = 10_000;
    let fed = Fed::new(5, LEN, 2);
    let all = fed.fps();
    let x = all[1];
    let half = (LEN / 2) as usize;
    let u3 = except(&all, &[x]);
    let mut c = Cluster::new(&fed, fed.announce(1));
    c.cut.insert(x, half);
    c.run_to_unmask(&all, &u3);
    let (ctx, plan) = (c.ctx.clone(), c.plan);
    // Everything the researcher can rebuild from every Unmask it received: X's s (the
    // survivors reveal it, X having dropped) and, were any revealed, X's b.
    let s_x = c
        .inbox
        .rebuild(&ctx, &x, ShareKind::S)
        .expect("s_X rebuilt");
    let s_x = Option::<NonZeroScalar>::from(NonZeroScalar::new(s_x)).expect("s");
    let s_pub = c.inbox.adverts[&x].advert.s_pub;
    let mut masks: Vec<PeerMask> = u3
        .iter()
        .map(|v| pairwise_mask(&s_x, &x, &s_pub, v, &c.inbox.adverts[v].advert.s_pub, &ctx))
        .collect();
    if let Some(b_x) = c.inbox.rebuild(&ctx, &x, ShareKind::B) {
        masks.push(PeerMask {
            key: self_mask_key(&b_x, &ctx, &x),
            sign: Sign::Add,
        });
    }
    // Strip every mask it can from X's prefix: what is left is p_X + PRG(b_X).
    let mut est = c.inbox.streams[&x].clone();
    assert_eq!(est.len(), half);
    let known = mask_words(&plan, LEN as usize + 1, &masks);
    sub_words(&plan, &mut est, &known[..half]);
    let m = fed.member(&x);
    let truth: Vec<f64> = m.values[..half]
        .iter()
        .map(|v| (plan.quantize(*v).0 * m.weight as i64) as f64)
        .collect();
    let guess: Vec<f64> = est.iter().map(|w| signed(&plan, *w) as f64).collect();
    let r = correlation(&guess, &truth);
    assert!(r.abs() < 0.05, "the prefix leaks: correlation {r}");
    // Nor does the low byte (a mask is uniform in every bit).
    let low: Vec<f64> = est.iter().map(|w| (w & 0xff) as f64).collect();
    let truth_low: Vec<f64> = truth.iter().map(|t| ((*t as i64) & 0xff) as f64).collect();
    let r = correlation(&low, &truth_low);
    assert!(r.abs() < 0.05, "the low byte leaks: correlation {r}");
    // Why: the survivors revealed X's s-shares, never a b-share.
    assert_eq!(c.kinds_revealed(&x), BTreeSet::from(["s"]));
    assert!(c.inbox.revealed(&ctx, &x, ShareKind::B).is_empty());
    // And the honest sum still comes out exact, the prefix left aside.
    let (sum, w) = c.inbox.unmask(&ctx, &plan, &all, &u3).expect("unmask");
    assert_eq!((sum, w), fed.plain_sum(&u3));
}

#[test]
fn lying_dropout_gets_no_second_share() {
    let fed = Fed::new(5, D, 3);
    let all = fed.fps();
    let x = all[4];
    let mut c = streamed(&fed);
    // X "dropped" for {A, B}; X survived for {C, D, X}.
    let told_dropped = [all[0], all[1]];
    let told_survived = [all[2], all[3], x];
    c.survivors_to(&told_dropped, &all, &except(&all, &[x]));
    c.survivors_to(&told_survived, &all, &all);
    assert_eq!(
        c.inbox.sigs.len(),
        5,
        "each honest node signs its own view once"
    );
    // The researcher hands every node every signature it holds.
    c.signatures_to(&all, &all);
    for f in &all {
        match c.failure(f) {
            Some(Error::BelowThreshold {
                phase: Phase::Unmask,
                have,
                need: 4,
            }) => assert!(*have < 4),
            other => panic!("{f}: expected fewer than t matching signatures, got {other:?}"),
        }
    }
    assert!(c.unmasks_sent().is_empty(), "no share left any node");
    assert!(c.kinds_revealed(&x).len() <= 1);
}

#[test]
fn replayed_or_foreign_round_refused() {
    let fed = Fed::new(5, D, 4);
    let me = fed.fp(0);
    let last = 7;
    let mut cases = Vec::new();
    for round in [last, last - 4, 0, last + 1_000_001, u64::MAX] {
        cases.push((fed.announce(round), "round"));
    }
    let mut foreign = fed.announce(last + 1);
    foreign.federation = "fed-cardiology".into();
    cases.push((foreign, "federation"));
    for (a, parameter) in cases {
        let round = a.round;
        let mut node = Node::new(fed.setup(&me, last));
        let actions = node.handle(Event::Message(Message2::Announce(a)), &mut TestRng::new(1));
        assert!(silent(&actions), "{round}: {:?}", names(&actions));
        match failure(&actions) {
            Some(Error::Refused { round: r, refusal }) => {
                assert_eq!(*r, round);
                assert_eq!(refusal.parameter, parameter);
            }
            other => panic!("round {round}: expected a refusal, got {other:?}"),
        }
        assert!(node.is_over());
    }
    // The next round is accepted: the refusals above are about the round, not the node.
    let mut node = Node::new(fed.setup(&me, last));
    let actions = node.handle(
        Event::Message(Message2::Announce(fed.announce(last + 1))),
        &mut TestRng::new(1),
    );
    assert_eq!(
        names(&actions),
        ["Progress", "JournalAdvertise", "Send(advertise)"]
    );
}

#[test]
fn forged_or_unregistered_keys_refused() {
    let fed = Fed::new(5, D, 5);
    let all = fed.fps();
    let (a, b) = (all[0], all[1]);
    let mut rng = TestRng::new(77);
    let stranger = party_key(&mut rng);
    let stranger_fp = Fingerprint::of_der(b"a certificate nobody registered");
    let ctx = fed.announce(1).ctx(&fed.researcher).expect("ctx");
    let other_round = fed.announce(2).ctx(&fed.researcher).expect("ctx");
    type Forge<'a> = Box<dyn Fn(&mut Advertise) + 'a>;
    let forgeries: Vec<(&str, Forge<'_>, Culprit, &str)> = vec![
        (
            "signature over another round (replay)",
            Box::new(|adv: &mut Advertise| {
                adv.sig = sign_advert(&fed.member(&b).key, &other_round, &adv.advert)
            }),
            node_culprit(&fed, &b),
            "not signed by its registered certificate",
        ),
        (
            "C key swapped after signing",
            Box::new(|adv: &mut Advertise| adv.advert.c_pub = public(&stranger)),
            node_culprit(&fed, &b),
            "not signed by its registered certificate",
        ),
        (
            "signed by a certificate not in the registry",
            Box::new(|adv: &mut Advertise| adv.sig = sign_advert(&stranger, &ctx, &adv.advert)),
            node_culprit(&fed, &b),
            "not signed by its registered certificate",
        ),
        (
            "advert of an unregistered party",
            Box::new(|adv: &mut Advertise| {
                adv.advert.fp = stranger_fp;
                adv.sig = sign_advert(&stranger, &ctx, &adv.advert)
            }),
            Culprit::Researcher,
            "not registered here",
        ),
    ];
    for (what, forge, culprit, says) in forgeries {
        let mut c = advertised(&fed);
        forge(c.inbox.adverts.get_mut(&b).expect("advert"));
        let m = c.inbox.advert_list(&all);
        let Message2::AdvertList(mut list) = m else {
            unreachable!()
        };
        list.adverts.sort_by_key(|x| x.advert.fp);
        let n = c.send(&a, Message2::AdvertList(list));
        let acts = c.last(&a, n);
        assert!(
            is_phase_fault(failure(acts), Phase::Advertise, &culprit, says),
            "{what}: {:?}",
            failure(acts)
        );
        assert!(silent(acts), "{what}: {:?}", names(acts));
    }
    // An invitee this node never registered: refused at the announcement.
    let mut setup = fed.setup(&a, 0);
    setup.peers.remove(&b);
    let mut node = Node::new(setup);
    let acts = node.handle(
        Event::Message(Message2::Announce(fed.announce(1))),
        &mut TestRng::new(1),
    );
    assert!(silent(&acts));
    assert!(
        matches!(failure(&acts), Some(Error::Refused { refusal, .. }) if refusal.parameter == "invitees")
    );
}

#[test]
fn below_threshold_reveals_nothing() {
    let fed = Fed::new(5, D, 6);
    let all = fed.fps();
    let v = all[0];
    let few = &all[..3]; // t - 1 = 3, v included
    // Phase 2: U1 below t.
    let mut c = advertised(&fed);
    let n = c.send(&v, c.inbox.advert_list(few));
    let acts = c.last(&v, n);
    assert!(matches!(
        failure(acts),
        Some(Error::BelowThreshold {
            phase: Phase::Advertise,
            have: 3,
            need: 4
        })
    ));
    assert!(silent(acts));
    // Phase 3: U2 below t.
    let mut c = shared(&fed);
    let n = c.send(&v, c.inbox.forwarded(&v, few));
    let acts = c.last(&v, n);
    assert!(matches!(
        failure(acts),
        Some(Error::BelowThreshold {
            phase: Phase::ShareKeys,
            have: 3,
            need: 4
        })
    ));
    assert!(
        silent(acts),
        "no release, no masked word: {:?}",
        names(acts)
    );
    // Phase 4: U3 below t.
    let mut c = streamed(&fed);
    c.survivors_to(&[v], &all, few);
    let acts = &c.log[&v][..];
    assert!(matches!(
        failure(acts),
        Some(Error::BelowThreshold {
            phase: Phase::Consistency,
            have: 3,
            need: 4
        })
    ));
    assert!(!sent_any(acts, "JournalSigned") && !sent_any(acts, "Send(consistency signature)"));
    // Phase 5: fewer than t signatures.
    let mut c = all_signed(&fed);
    let n = c.send(&v, c.inbox.signature_list(few));
    let acts = c.last(&v, n);
    assert!(matches!(
        failure(acts),
        Some(Error::BelowThreshold {
            phase: Phase::Unmask,
            have: 3,
            need: 4
        })
    ));
    assert!(silent(acts));
    // Phase 6: only t - 1 nodes answer; their shares rebuild no secret.
    let mut c = all_signed(&fed);
    c.signatures_to(few, &all);
    assert_eq!(c.inbox.unmasks.len(), 3);
    let ctx = c.ctx.clone();
    for dealer in &all {
        assert!(c.inbox.rebuild(&ctx, dealer, ShareKind::B).is_none());
        let points = c.inbox.revealed(&ctx, dealer, ShareKind::B);
        assert_eq!(points.len(), 3, "every share is genuine");
        let guess = shamir::interpolate(&points).expect("interpolate");
        let b_pub = c.inbox.adverts[dealer].advert.b_pub;
        assert_ne!(
            p256::ProjectivePoint::GENERATOR * guess,
            b_pub.to_projective()
        );
    }
    assert!(c.inbox.unmask(&ctx, &c.plan, &all, &all).is_err());
}

#[test]
fn tampered_share_detected() {
    let fed = Fed::new(5, D, 7);
    let all = fed.fps();
    let (v, b, e) = (all[0], all[1], all[2]);
    type Tamper = Box<dyn Fn(&Inbox, &mut SealedShare)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        ("one bit of a share", Box::new(|_, s| s.sealed[100] ^= 1)),
        (
            "one bit of the fingerprints",
            Box::new(|_, s| s.sealed[3] ^= 0x80),
        ),
        ("the tag", Box::new(|_, s| s.sealed[143] ^= 1)),
        (
            "another node's share under this sender's name",
            Box::new(move |inbox, s| s.sealed = inbox.sealed(&e, &v).sealed),
        ),
        (
            "the sender's share to another node",
            Box::new(move |inbox, s| s.sealed = inbox.sealed(&b, &e).sealed),
        ),
    ];
    for (what, tamper) in tampers {
        let mut c = shared(&fed);
        let mut shares = c.inbox.shares_for(&v, &all);
        let i = shares.iter().position(|s| s.peer == b).expect("b's share");
        tamper(&c.inbox, &mut shares[i]);
        let n = c.send(
            &v,
            Message2::ForwardedShares(ForwardedShares {
                u2: all.clone(),
                shares,
            }),
        );
        let acts = c.last(&v, n);
        assert!(
            is_phase_fault(
                failure(acts),
                Phase::ShareKeys,
                &node_culprit(&fed, &b),
                "does not open"
            ),
            "{what}: {:?}",
            failure(acts)
        );
        assert!(silent(acts), "{what}: {:?}", names(acts));
    }
}

#[test]
fn researcher_cannot_shrink_survivor_set() {
    let fed = Fed::new(5, D, 8);
    let all = fed.fps();
    let u = all[0];
    let d = all[4];
    let without_d = except(&all, &[d]);
    // U3 = {u}.
    let mut c = streamed(&fed);
    c.survivors_to(&[u], &all, &[u]);
    assert!(matches!(
        c.failure(&u),
        Some(Error::BelowThreshold {
            phase: Phase::Consistency,
            have: 1,
            ..
        })
    ));
    assert!(!c.sent_any(&u, "Send(consistency signature)"));
    // Only some peers' shares forwarded, under the full U2.
    let mut c = shared(&fed);
    let n = c.send(
        &u,
        Message2::ForwardedShares(ForwardedShares {
            u2: all.clone(),
            shares: c.inbox.shares_for(&u, &without_d),
        }),
    );
    assert!(is_phase_fault(
        c.failure(&u),
        Phase::ShareKeys,
        &Culprit::Researcher,
        "forwarded shares from"
    ));
    assert!(silent(c.last(&u, n)), "{:?}", names(c.last(&u, n)));
    // Only some peers' shares, with a matching U2(u) ≥ t: u masks with those peers only,
    // so the researcher needs every other node to sign a U2 they did not see.
    let mut c = shared(&fed);
    c.shares_to(&[u], &without_d);
    c.shares_to(&except(&all, &[u]), &all);
    // U3 not inside the U2 it gave u.
    c.survivors_to(&[u], &without_d, &all);
    assert!(is_phase_fault(
        c.failure(&u),
        Phase::Consistency,
        &Culprit::Researcher,
        "not inside U2"
    ));
    assert!(!c.sent_any(&u, "Send(consistency signature)"));
    // The same with a consistent U3 for u; the others are told U2(u) too, or their own.
    let mut c = shared(&fed);
    c.shares_to(&[u], &without_d);
    c.shares_to(&except(&all, &[u]), &all);
    c.survivors_to(&[u], &without_d, &without_d);
    assert!(
        c.inbox.sigs.contains_key(&u),
        "u's view is consistent: it signs it"
    );
    c.survivors_to(&all[1..2], &without_d, &without_d);
    assert!(is_phase_fault(
        c.failure(&all[1]),
        Phase::Consistency,
        &Culprit::Researcher,
        "differs"
    ));
    c.survivors_to(&all[2..], &all, &without_d);
    c.signatures_to(&[u], &all);
    assert!(matches!(
        c.failure(&u),
        Some(Error::BelowThreshold {
            phase: Phase::Unmask,
            have: 1,
            need: 4
        })
    ));
    // What the researcher holds leaves u's values masked: no share of anyone left.
    assert!(c.unmasks_sent().is_empty());
    assert!(c.inbox.rebuild(&c.ctx, &u, ShareKind::B).is_none());
}

fn negate(p: &PublicKey) -> PublicKey {
    PublicKey::from_affine((-p.to_projective()).to_affine()).expect("not the identity")
}

/// A colluding node's honest-looking advert (secrets made by the test, signed by its
/// own certificate).
fn colluder_secrets(c: &Cluster<'_>, seed: u64) -> RoundSecrets {
    RoundSecrets::generate(&c.ctx, &mut TestRng::new(seed)).expect("secrets")
}

fn honest_cluster<'f>(fed: &'f Fed, honest: &[Fingerprint]) -> Cluster<'f> {
    let nodes = honest.iter().map(|f| (*f, fed.node(f))).collect();
    let mut c = Cluster::with_nodes(fed, nodes, fed.announce(1));
    c.announce_to(honest);
    c
}

#[test]
fn colluding_node_cannot_mirror_a_key() {
    let fed = Fed::new(5, D, 9);
    let all = fed.fps();
    let m = all[2];
    let honest = except(&all, &[m]);
    let victim = all[3];
    type Mirror = Box<dyn Fn(&Advert, &mut Advert)>;
    let mirrors: Vec<(&str, Mirror)> = vec![
        (
            "S = the victim's S",
            Box::new(|v, a| {
                a.s_pub = v.s_pub;
                a.s_commitments = v.s_commitments.clone();
            }),
        ),
        (
            "S = -(the victim's S)",
            Box::new(|v, a| {
                let neg = v.s_commitments.points().iter().map(negate).collect();
                a.s_commitments = Commitments::from_points(neg).expect("points");
                a.s_pub = *a.s_commitments.constant();
            }),
        ),
        ("C = the victim's C", Box::new(|v, a| a.c_pub = v.c_pub)),
        (
            "C = -(the victim's S)",
            Box::new(|v, a| a.c_pub = negate(&v.s_pub)),
        ),
    ];
    for (what, mirror) in mirrors {
        let mut c = honest_cluster(&fed, &honest);
        let secrets = colluder_secrets(&c, 99);
        let mut advert = secrets.advert(m);
        mirror(&c.inbox.adverts[&victim].advert, &mut advert);
        let sig = sign_advert(&fed.member(&m).key, &c.ctx, &advert);
        c.inbox.adverts.insert(m, Advertise { advert, sig });
        c.adverts_to(&honest, &all);
        // The victim knows its own key: it names the colluder.
        assert!(
            is_phase_fault(
                c.failure(&victim),
                Phase::Advertise,
                &node_culprit(&fed, &m),
                "same x-coordinate"
            ),
            "{what}: {:?}",
            c.failure(&victim)
        );
        // Every other node aborts too, naming the two parties whose keys collide.
        for f in &honest {
            let e = c
                .failure(f)
                .unwrap_or_else(|| panic!("{what}: {f} went on"));
            let text = e.to_string();
            assert!(matches!(
                e,
                Error::Misbehaviour {
                    phase: Phase::Advertise,
                    ..
                }
            ));
            assert!(text.contains("same x-coordinate"), "{what}: {text}");
            let m_id = fed.member(&m).id.to_string();
            assert!(text.contains(&m_id), "{what}: {text}");
            assert!(!c.sent_any(f, "Send(share bundle)"), "{what}");
        }
    }
    // Pairwise keys of different pairs never coincide: both sides of a pair agree, no two
    // pairs share a key, and a mirrored S under another fingerprint gives another key.
    let mut c = streamed(&fed);
    let _ = &mut c;
    let mut keys: BTreeMap<(Fingerprint, Fingerprint), [u8; 16]> = BTreeMap::new();
    let mut own = Vec::new();
    for u in &all {
        let masks = c.log[u]
            .iter()
            .find_map(|a| match a {
                Action::StreamMasked { masks, .. } => Some(masks),
                _ => None,
            })
            .expect("masked");
        own.push(*masks[0].key.expose());
        for (v, mask) in except(&all, &[*u]).iter().zip(&masks[1..]) {
            keys.insert((*u, *v), *mask.key.expose());
        }
    }
    for ((u, v), k) in &keys {
        assert_eq!(keys[&(*v, *u)], *k, "both sides of a pair agree");
    }
    let distinct: BTreeSet<[u8; 16]> = keys.values().copied().chain(own).collect();
    assert_eq!(distinct.len(), all.len() * (all.len() - 1) / 2 + all.len());
    let secrets = colluder_secrets(&c, 5);
    let me = Fingerprint::of_der(b"tester");
    let a = &c.inbox.adverts[&victim].advert;
    let k = |fp: &Fingerprint, s: &PublicKey| {
        *pairwise_mask(secrets.s(), &me, &secrets.advert(me).s_pub, fp, s, &c.ctx)
            .key
            .expose()
    };
    let real = k(&victim, &a.s_pub);
    assert_ne!(real, k(&m, &a.s_pub));
    assert_ne!(real, k(&m, &negate(&a.s_pub)));
    assert_ne!(k(&m, &a.s_pub), k(&m, &negate(&a.s_pub)));
}

#[test]
fn share_keys_differ_per_direction() {
    let fed = Fed::new(5, D, 10);
    let all = fed.fps();
    let x = all[3];
    let honest = except(&all, &[x]);
    let v = all[0];
    // Reflection: v is handed its own sealed share for X, labelled as X's share to v.
    let mut c = shared(&fed);
    let mut shares = c.inbox.shares_for(&v, &all);
    let i = shares.iter().position(|s| s.peer == x).expect("x");
    shares[i].sealed = c.inbox.sealed(&v, &x).sealed;
    let n = c.send(
        &v,
        Message2::ForwardedShares(ForwardedShares {
            u2: all.clone(),
            shares,
        }),
    );
    assert!(is_phase_fault(
        failure(c.last(&v, n)),
        Phase::ShareKeys,
        &node_culprit(&fed, &x),
        "does not open"
    ));
    assert!(silent(c.last(&v, n)));
    // X drops after sharing. The researcher holds both directions of every pair of X.
    let mut c = Cluster::new(&fed, fed.announce(1));
    c.cut.insert(x, 0);
    c.run_to_unmask(&all, &honest);
    for v in &honest {
        let to = c.inbox.sealed(&x, v).sealed;
        let back = c.inbox.sealed(v, &x).sealed;
        assert_ne!(to, back);
        // With one key per pair (and the zero nonce) the two ciphertexts would XOR to
        // the two plaintexts' XOR, and the known fingerprints would show it.
        let mut known = [0u8; 64];
        for i in 0..32 {
            known[i] = x.as_bytes()[i] ^ v.as_bytes()[i];
            known[32 + i] = v.as_bytes()[i] ^ x.as_bytes()[i];
        }
        let xor: Vec<u8> = to[..64]
            .iter()
            .zip(&back[..64])
            .map(|(a, b)| a ^ b)
            .collect();
        assert_ne!(xor, known.to_vec(), "the two directions share a keystream");
    }
    // And the survivors' answers give X's s, never a share of its self-mask seed.
    let ctx = c.ctx.clone();
    assert_eq!(c.kinds_revealed(&x), BTreeSet::from(["s"]));
    assert!(c.inbox.revealed(&ctx, &x, ShareKind::B).is_empty());
    assert!(c.inbox.rebuild(&ctx, &x, ShareKind::S).is_some());
}

#[test]
fn inconsistent_sets_abort_before_reveal() {
    let fed = Fed::new(5, D, 11);
    let all = fed.fps();
    let d = all[4];
    let without_d = except(&all, &[d]);
    let (g1, g2) = ([all[0], all[1], d], [all[2], all[3]]);
    // Different U2: D's shares reach g1 only.
    let mut c = shared(&fed);
    c.shares_to(&g1, &all);
    c.shares_to(&g2, &without_d);
    c.survivors_to(&g1, &all, &all);
    c.survivors_to(&g2, &without_d, &without_d);
    assert_eq!(c.inbox.sigs.len(), 5);
    c.signatures_to(&all, &all);
    // Different U3, same U2.
    let mut c2 = streamed(&fed);
    c2.survivors_to(&g1, &all, &all);
    c2.survivors_to(&g2, &all, &without_d);
    c2.signatures_to(&all, &all);
    for c in [&c, &c2] {
        for f in &all {
            assert!(
                matches!(
                    c.failure(f),
                    Some(Error::BelowThreshold { phase: Phase::Unmask, have, need: 4 }) if *have < 4
                ),
                "{:?}",
                c.failure(f)
            );
            assert!(!c.sent_any(f, "JournalReveal"));
        }
        assert!(c.unmasks_sent().is_empty());
    }
}

#[test]
fn bad_share_names_its_dealer() {
    let fed = Fed::new(5, D, 12);
    let all = fed.fps();
    let m = all[4];
    let honest = except(&all, &[m]);
    let v = all[1];
    for bad in ["s", "b"] {
        let mut c = honest_cluster(&fed, &honest);
        let secrets = colluder_secrets(&c, 7);
        let advert = secrets.advert(m);
        let sig = sign_advert(&fed.member(&m).key, &c.ctx, &advert);
        c.inbox.adverts.insert(m, Advertise { advert, sig });
        c.adverts_to(&honest, &all);
        let mut bundle = Vec::new();
        for w in &honest {
            let x = c.ctx.x_of(w).expect("x");
            let (s, b) = secrets.shares_for(x).expect("share");
            let mut pair = SharePair {
                s: *s.y(),
                b: *b.y(),
            };
            if *w == v {
                match bad {
                    "s" => pair.s += Scalar::ONE,
                    _ => pair.b += Scalar::ONE,
                }
            }
            let c_w = c.inbox.adverts[w].advert.c_pub;
            let key = ShareKey::derive(secrets.c(), &c_w, &c.ctx, &m, w);
            let sealed = key.seal(&c.ctx, &m, w, &pair).expect("seal");
            bundle.push(SealedShare { peer: *w, sealed });
        }
        c.inbox.bundles.insert(m, bundle);
        c.shares_to(&honest, &all);
        assert!(
            is_phase_fault(
                c.failure(&v),
                Phase::ShareKeys,
                &node_culprit(&fed, &m),
                "dealt a bad share"
            ),
            "{bad}: {:?}",
            c.failure(&v)
        );
        assert!(!c.sent_any(&v, "JournalRelease") && !c.sent_any(&v, "StreamMasked"));
        for w in except(&honest, &[v]) {
            assert!(c.failure(&w).is_none(), "a good share is accepted");
            assert!(c.sent_any(&w, "StreamMasked"));
        }
    }
}

#[test]
fn threshold_at_or_below_half_refused() {
    for n in 3..=7usize {
        let fed = Fed::new(n, D, 20 + n as u64);
        for t in 1..=n as u32 {
            let mut a = fed.announce(1);
            a.threshold = t;
            for f in fed.fps() {
                let mut setup = fed.setup(&f, 0);
                setup.policy.min_threshold = Some(1);
                setup.policy.min_nodes = 1;
                let mut node = Node::new(setup);
                let acts = node.handle(
                    Event::Message(Message2::Announce(a.clone())),
                    &mut TestRng::new(1),
                );
                if 2 * t as usize <= n {
                    assert!(silent(&acts), "n={n} t={t}");
                    assert!(
                        matches!(failure(&acts), Some(Error::Refused { refusal, .. }) if refusal.parameter == "threshold"),
                        "n={n} t={t}: {:?}",
                        failure(&acts)
                    );
                } else {
                    assert!(
                        sent_any(&acts, "Send(advertise)"),
                        "n={n} t={t}: {:?}",
                        failure(&acts)
                    );
                }
            }
        }
    }
}

#[test]
fn different_models_abort() {
    let fed = Fed::new(5, D, 13);
    let all = fed.fps();
    let (m1, m2) = ([1u8; 32], [2u8; 32]);
    // A node given the model refuses another digest, or none.
    for announced in [Some(m2), None] {
        let mut a = fed.announce(1);
        a.model_digest = announced;
        let mut setup = fed.setup(&all[0], 0);
        setup.model = Some(m1);
        let acts =
            Node::new(setup).handle(Event::Message(Message2::Announce(a)), &mut TestRng::new(1));
        assert!(silent(&acts));
        assert!(
            matches!(failure(&acts), Some(Error::Refused { refusal, .. }) if refusal.parameter == "model digest")
        );
    }
    // Nodes without --model, shown two models: the digest is in ctx, so the groups'
    // adverts do not verify for each other, and neither group reaches t alone.
    let mut a1 = fed.announce(1);
    a1.model_digest = Some(m1);
    let mut a2 = a1.clone();
    a2.model_digest = Some(m2);
    let (g1, g2) = (&all[..2], &all[2..]);
    for split_lists in [false, true] {
        let mut c = Cluster::new(&fed, a1.clone());
        c.announce_to(g1);
        for f in g2 {
            c.send(f, Message2::Announce(a2.clone()));
        }
        if split_lists {
            c.adverts_to(g1, g1);
            c.adverts_to(g2, g2);
        } else {
            c.adverts_to(&all, &all);
        }
        for f in &all {
            let e = c.failure(f);
            let ok = if split_lists {
                matches!(
                    e,
                    Some(Error::BelowThreshold {
                        phase: Phase::Advertise,
                        ..
                    })
                )
            } else {
                let other = if g1.contains(f) { g2 } else { g1 };
                matches!(e, Some(Error::Misbehaviour { culprit: Culprit::Node(_, fp), phase: Phase::Advertise, .. }) if other.contains(fp))
            };
            assert!(ok, "{e:?}");
            assert!(!c.sent_any(f, "Send(share bundle)"));
        }
        assert!(c.unmasks_sent().is_empty());
    }
}

#[test]
fn out_of_range_mean_refused() {
    let fed = Fed::new(7, D, 14);
    let all = fed.fps();
    let mut c = Cluster::new(&fed, fed.announce(1));
    c.run_to_unmask(&all, &all);
    let (_, w) = c.inbox.unmask(&c.ctx, &c.plan, &all, &all).expect("unmask");
    let n3 = all.len() as u64;
    let max = fed.params.max_weight;
    let heavy = all
        .iter()
        .copied()
        .find(|f| fed.member(f).weight > n3 + 1)
        .expect("a node with weight above |U3|");
    let header = |total_weight, survivors, bytes| ResultHeader {
        total_weight,
        survivors,
        bytes,
    };
    let bytes = D * 4;
    let o = except(&all, &[heavy]);
    let cases = [
        (o[0], header(0, n3 as u32, bytes)),
        (o[1], header(n3 - 1, n3 as u32, bytes)),
        (
            heavy,
            header(fed.member(&heavy).weight - 1, n3 as u32, bytes),
        ),
        (o[2], header(n3 * max + 1, n3 as u32, bytes)),
        (o[3], header(u64::MAX, n3 as u32, bytes)),
        (o[4], header(w, n3 as u32 - 1, bytes)),
        (o[5], header(w, n3 as u32, bytes + 4)),
    ];
    let mut seen = BTreeSet::new();
    for (f, h) in cases {
        assert!(seen.insert(f), "one case per node");
        let n = c.send(&f, Message2::Result(h.clone()));
        let acts = c.last(&f, n);
        assert!(
            is_phase_fault(
                failure(acts),
                Phase::Result,
                &Culprit::Researcher,
                "reported"
            ) || is_phase_fault(
                failure(acts),
                Phase::Result,
                &Culprit::Researcher,
                "announced a mean"
            ),
            "{h:?}: {:?}",
            failure(acts)
        );
        assert!(!sent_any(acts, "ReceiveMean") && !sent_any(acts, "Finish"));
    }
}

fn home_registry(dir: &tempfile::TempDir) -> Rc<RefCell<Registry>> {
    Rc::new(RefCell::new(
        Registry::open(&dir.path().join("registry.db")).expect("registry"),
    ))
}

#[test]
fn restart_cannot_sign_twice() {
    let fed = Fed::new(5, D, 15);
    let all = fed.fps();
    let v = all[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = home_registry(&dir);
    // Round 1: v signs U2 = U3 = everyone, journaled before the signature leaves.
    let mut c = Cluster::new(&fed, fed.announce(1));
    to_release(&mut c, &reg, v, &all);
    c.survivors_to(&all, &all, &all);
    assert!(c.inbox.sigs.contains_key(&v));
    assert!(c.journal_refused.is_empty());
    drop(c); // killed: its secrets are gone, its journal is not.
    // Started again on the same home: last_round comes from the journal.
    let last = reg
        .borrow()
        .last_round(FED, Role::Node)
        .expect("last round");
    assert_eq!(last, 1);
    let mut node = Node::new(fed.setup(&v, last));
    let acts = node.handle(
        Event::Message(Message2::Announce(fed.announce(1))),
        &mut TestRng::new(2),
    );
    assert!(silent(&acts), "{:?}", names(&acts));
    assert!(
        matches!(failure(&acts), Some(Error::Refused { refusal, .. }) if refusal.parameter == "round")
    );
    // Even with a stale last_round, the journal refuses the round before a new advert
    // leaves, so no second set of keys, no second signature.
    let nodes = all
        .iter()
        .map(|f| (*f, Node::new(fed.setup(f, 0))))
        .collect();
    let mut c = Cluster::with_nodes(&fed, nodes, fed.announce(1));
    c.journal = Some(journal_hook(reg.clone(), v, all.len()));
    c.announce_to(&all);
    assert!(
        c.journal_refused[&v].contains("round"),
        "{:?}",
        c.journal_refused
    );
    assert!(!c.inbox.adverts.contains_key(&v), "the advert never left");
    // And the journal holds one signed message per round.
    let err = reg
        .borrow_mut()
        .record_signed(FED, 1, &[9u8; 32])
        .expect_err("a second signature");
    assert!(err.to_string().contains("sign"), "{err}");
}

/// A release row as a secagg before input digest version 2 wrote it (a version-1
/// digest, with the statement that secagg ran), in the registry at `dir`.
fn legacy_release(dir: &tempfile::TempDir, v1: &[u8; 32]) {
    let conn = rusqlite::Connection::open(dir.path().join("registry.db")).expect("open");
    let hex: String = v1.iter().map(|b| format!("{b:02x}")).collect();
    conn.execute(
        "INSERT INTO releases (digest, mode, federation, round, released_at)
         VALUES (?1, 'file', 'old', 4, 0)",
        [hex],
    )
    .expect("legacy row");
}

#[test]
fn an_input_released_under_digest_version_1_is_refused_at_release() {
    let fed = Fed::new(5, D, 17);
    let all = fed.fps();
    let v = all[1];
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = home_registry(&dir);
    let old = [0x5a; 32];
    legacy_release(&dir, &old);
    // v's update, digested both ways (as the driver does while the registry holds a
    // version-1 row): its version-1 digest is that row's, its version-2 digest is new.
    let mut setup = fed.setup(&v, 0);
    setup.input.digest.v1 = Some(old);
    let mut nodes: BTreeMap<_, _> = all.iter().map(|f| (*f, fed.node(f))).collect();
    nodes.insert(v, Node::new(setup));
    let mut c = Cluster::with_nodes(&fed, nodes, fed.announce(1));
    to_release(&mut c, &reg, v, &all);
    let why = &c.journal_refused[&v];
    assert!(
        why.contains("already released (file mode, federation 'old', round 4)"),
        "{why}"
    );
    assert!(!c.inbox.streams.contains_key(&v), "no masked word left");
    assert_eq!(release_rows(&dir), 1, "nothing journaled");
    // Without its version-1 digest the release is refused too (it cannot be checked).
    let mut nodes: BTreeMap<_, _> = all.iter().map(|f| (*f, fed.node(f))).collect();
    let last = reg.borrow().last_round(FED, Role::Node).expect("last");
    nodes.insert(v, Node::new(fed.setup(&v, last)));
    let mut c = Cluster::with_nodes(&fed, nodes, fed.announce(2));
    to_release(&mut c, &reg, v, &all);
    let why = &c.journal_refused[&v];
    assert!(why.contains("version-1 input digest"), "{why}");
    assert!(!c.inbox.streams.contains_key(&v));
    assert_eq!(release_rows(&dir), 1, "nothing journaled");
}

/// Runs `c` through the shares phase (where a node journals the release of its input),
/// with `v`'s journal actions executed against `reg`.
fn to_release(
    c: &mut Cluster<'_>,
    reg: &Rc<RefCell<Registry>>,
    v: Fingerprint,
    all: &[Fingerprint],
) {
    c.journal = Some(journal_hook(reg.clone(), v, all.len()));
    c.announce_to(all);
    c.adverts_to(all, all);
    c.shares_to(all, all);
}

fn release_rows(dir: &tempfile::TempDir) -> i64 {
    let conn = rusqlite::Connection::open(dir.path().join("registry.db")).expect("open");
    conn.query_row("SELECT COUNT(*) FROM releases", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn same_input_twice_refused() {
    let fed = Fed::new(5, D, 16);
    let all = fed.fps();
    let v = all[2];
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = home_registry(&dir);
    // Round 1 releases v's input.
    let mut c = Cluster::new(&fed, fed.announce(1));
    to_release(&mut c, &reg, v, &all);
    assert!(c.journal_refused.is_empty());
    assert!(c.inbox.streams.contains_key(&v));
    drop(c);
    // Round 2 with the same update: the release is refused before the first word.
    let last = reg.borrow().last_round(FED, Role::Node).expect("last");
    let mut nodes: BTreeMap<_, _> = all.iter().map(|f| (*f, fed.node(f))).collect();
    nodes.insert(v, Node::new(fed.setup(&v, last)));
    let mut c = Cluster::with_nodes(&fed, nodes, fed.announce(2));
    to_release(&mut c, &reg, v, &all);
    let why = &c.journal_refused[&v];
    assert!(why.contains("released"), "{why}");
    assert!(!c.inbox.streams.contains_key(&v), "no masked word left");
    assert!(sent_any(&c.log[&v], "JournalRelease"));
    // The same update masked in file mode first, then offered to a round.
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = home_registry(&dir);
    let digest = fed.input(&v).digest;
    reg.borrow_mut()
        .release_input(&digest, "file", FED, 1, 0)
        .expect("file mode release");
    let mut c = Cluster::new(&fed, fed.announce(1));
    to_release(&mut c, &reg, v, &all);
    let why = &c.journal_refused[&v];
    assert!(why.contains("released") && why.contains("file"), "{why}");
    assert!(!c.inbox.streams.contains_key(&v));
}
