//! `node::Node`, one state at a time, fed hostile researcher messages (the fcp/secagg
//! client test style): every transition's happy path and every check's refusal.

#[path = "common/p2.rs"]
mod p2;

use p2::*;
use p256::ecdsa::Signature;
use secagg::party::Fingerprint;
use secagg::round::messages::{
    AdvertList, Advertise, ForwardedShares, Message2, ResultHeader, SignatureList, Survivors,
};
use secagg::round::node::{Culprit, Error, Event, Phase};
use secagg::round::schedule::{
    Advert, ConsistencyMessage, RoundSecrets, sign_advert, sign_consistency, verify_consistency,
};

const D: u64 = 16;

/// The states of the node, reached with an honest researcher and honest peers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum At {
    Announce,
    Adverts,
    Shares,
    Survivors,
    Signatures,
    Result,
    Done,
}

const STATES: [At; 7] = [
    At::Announce,
    At::Adverts,
    At::Shares,
    At::Survivors,
    At::Signatures,
    At::Result,
    At::Done,
];

fn reach(fed: &Fed, at: At) -> Cluster<'_> {
    let all = fed.fps();
    let mut c = Cluster::new(fed, fed.announce(1));
    let steps = STATES.iter().position(|s| *s == at).expect("state");
    if steps >= 1 {
        c.announce_to(&all);
    }
    if steps >= 2 {
        c.adverts_to(&all, &all);
    }
    if steps >= 3 {
        c.shares_to(&all, &all);
    }
    if steps >= 4 {
        c.survivors_to(&all, &all, &all);
    }
    if steps >= 5 {
        c.signatures_to(&all, &all);
    }
    if steps >= 6 {
        let w = fed.plain_sum(&all).1;
        for f in &all {
            c.send(f, result(w, all.len(), fed));
        }
    }
    c
}

fn result(w: u64, n: usize, fed: &Fed) -> Message2 {
    Message2::Result(ResultHeader {
        total_weight: w,
        survivors: n as u32,
        bytes: fed.d * 4,
    })
}

fn researcher_fault(e: Option<&Error>, phase: Phase, says: &str) -> bool {
    matches!(e, Some(Error::Misbehaviour { culprit: Culprit::Researcher, phase: p, what })
        if *p == phase && what.contains(says))
}

/// Sends `m` to `v` and returns the error; asserts nothing was sent or journaled.
fn refused(c: &mut Cluster<'_>, v: &Fingerprint, m: Message2) -> Error {
    let n = c.send(v, m);
    let acts = c.last(v, n);
    assert!(silent(acts), "{:?}", names(acts));
    failure(acts).cloned().expect("a failure")
}

#[test]
fn happy_path_action_sequence() {
    let fed = Fed::new(5, D, 30);
    let all = fed.fps();
    let v = all[1];
    let mut c = Cluster::new(&fed, fed.announce(1));
    let step = |c: &mut Cluster<'_>, m: Message2, want: &[&str]| {
        for f in &all {
            let n = c.send(f, m_for(c, f, &m));
            if *f == v {
                assert_eq!(names(c.last(f, n)), want);
            }
        }
    };
    fn m_for(c: &Cluster<'_>, f: &Fingerprint, m: &Message2) -> Message2 {
        match m {
            Message2::ForwardedShares(s) => c.inbox.forwarded(f, &s.u2),
            other => other.clone(),
        }
    }
    step(
        &mut c,
        Message2::Announce(fed.announce(1)),
        &["Progress", "JournalAdvertise", "Send(advertise)"],
    );
    let list = c.inbox.advert_list(&all);
    step(&mut c, list, &["Progress", "Send(share bundle)"]);
    // (StreamSent, fed by the driver after StreamMasked, emits nothing.)
    let fwd = Message2::ForwardedShares(ForwardedShares {
        u2: all.clone(),
        shares: Vec::new(),
    });
    step(&mut c, fwd, &["Progress", "JournalRelease", "StreamMasked"]);
    let sv = Message2::Survivors(Survivors {
        u2: all.clone(),
        u3: all.clone(),
    });
    step(
        &mut c,
        sv,
        &["Progress", "JournalSigned", "Send(consistency signature)"],
    );
    let sigs = c.inbox.signature_list(&all);
    step(&mut c, sigs, &["JournalReveal", "Send(unmask)"]);
    let w = fed.plain_sum(&all).1;
    step(
        &mut c,
        result(w, all.len(), &fed),
        &["ReceiveMean", "Finish"],
    );
    // After the round, nothing more happens.
    let n = c.send(&v, Message2::Announce(fed.announce(2)));
    assert_eq!(n, 0);
}

#[test]
fn unexpected_message_in_each_phase() {
    let fed = Fed::new(5, D, 31);
    let all = fed.fps();
    let v = all[0];
    let samples = |c: &Cluster<'_>| {
        vec![
            Message2::Announce(fed.announce(1)),
            c.inbox.advert_list(&all),
            Message2::ForwardedShares(ForwardedShares {
                u2: all.clone(),
                shares: Vec::new(),
            }),
            Message2::Survivors(Survivors {
                u2: all.clone(),
                u3: all.clone(),
            }),
            Message2::SignatureList(SignatureList { sigs: Vec::new() }),
            result(1, 5, &fed),
            // A node's message, reflected back.
            Message2::Advertise(c.inbox.adverts[&all[1]].clone()),
        ]
    };
    let base = reach(&fed, At::Adverts);
    let kinds = samples(&base);
    for (i, at) in STATES.iter().enumerate().take(6) {
        for (j, _) in kinds.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut c = reach(&fed, *at);
            let m = samples(&base)[j].clone();
            let name = m.name();
            let e = refused(&mut c, &v, m);
            assert!(
                matches!(&e, Error::Misbehaviour { culprit: Culprit::Researcher, what, .. } if what.contains("unexpected")),
                "{at:?} fed {name}: {e:?}"
            );
        }
    }
    // StreamSent outside the masked-input phase is our own bug, and says so.
    let mut c = reach(&fed, At::Adverts);
    let n = c.deliver(&v, Event::StreamSent);
    assert!(matches!(
        failure(c.last(&v, n)),
        Some(Error::Internal { .. })
    ));
    // A stop in any phase ends the round quietly.
    for at in &STATES[..6] {
        let mut c = reach(&fed, *at);
        let n = c.deliver(&v, Event::Stopped("deadline".into()));
        assert!(
            matches!(failure(c.last(&v, n)), Some(Error::Stopped { .. })),
            "{at:?}"
        );
    }
}

fn list_of(adverts: Vec<Advertise>) -> Message2 {
    Message2::AdvertList(AdvertList { adverts })
}

#[test]
fn hostile_advert_lists() {
    // Six registered nodes, five invited: the sixth is registered but uninvited.
    let fed = Fed::new(6, D, 32);
    let everyone = fed.fps();
    let outsider = everyone[5];
    let all = everyone[..5].to_vec();
    let v = all[0];
    let mut a = fed.announce(1);
    a.invitees = all.clone();
    a.threshold = 4;
    let fresh = || {
        let nodes = all.iter().map(|f| (*f, fed.node(f))).collect();
        let mut c = Cluster::with_nodes(&fed, nodes, a.clone());
        c.announce_to(&all);
        c
    };
    let adverts = |c: &Cluster<'_>, who: &[Fingerprint]| -> Vec<Advertise> {
        who.iter().map(|f| c.inbox.adverts[f].clone()).collect()
    };
    // Our own advert missing.
    let mut c = fresh();
    let l = list_of(adverts(&c, &all[1..]));
    let e = refused(&mut c, &v, l);
    assert!(
        researcher_fault(Some(&e), Phase::Advertise, "left this node's advert out"),
        "{e:?}"
    );
    // Our own advert altered (another key; the signature cannot follow): the researcher
    // is at fault, not this node.
    let mut c = fresh();
    let mut l = adverts(&c, &all);
    l[0].advert.c_pub = l[1].advert.c_pub;
    let e = refused(&mut c, &v, list_of(l));
    assert!(
        researcher_fault(Some(&e), Phase::Advertise, "altered this node's own advert"),
        "{e:?}"
    );
    // Our own advert from another round, validly signed by us.
    let mut c = fresh();
    let other = fed.announce(7).ctx(&fed.researcher).expect("ctx");
    let mut l = adverts(&c, &all);
    let mine = RoundSecrets::generate(&other, &mut TestRng::new(3)).expect("s");
    let old = mine.advert(v);
    l[0] = Advertise {
        sig: sign_advert(&fed.member(&v).key, &c.ctx, &old),
        advert: old,
    };
    let _ = &mine;
    let e = refused(&mut c, &v, list_of(l));
    assert!(
        researcher_fault(Some(&e), Phase::Advertise, "altered this node's own advert"),
        "{e:?}"
    );
    // A duplicate.
    let mut c = fresh();
    let mut l = adverts(&c, &all);
    l.push(l[2].clone());
    let e = refused(&mut c, &v, list_of(l));
    assert!(
        researcher_fault(Some(&e), Phase::Advertise, "twice"),
        "{e:?}"
    );
    // An uninvited (but registered, validly signed) party.
    let mut c = fresh();
    let mut l = adverts(&c, &all);
    let s = RoundSecrets::generate(&c.ctx, &mut TestRng::new(4)).expect("s");
    let adv: Advert = s.advert(outsider);
    l.push(Advertise {
        sig: sign_advert(&fed.member(&outsider).key, &c.ctx, &adv),
        advert: adv,
    });
    let e = refused(&mut c, &v, list_of(l));
    assert!(
        researcher_fault(Some(&e), Phase::Advertise, "not invited"),
        "{e:?}"
    );
    // Fewer than t.
    let mut c = fresh();
    let l = list_of(adverts(&c, &all[..3]));
    let e = refused(&mut c, &v, l);
    assert!(matches!(
        e,
        Error::BelowThreshold {
            phase: Phase::Advertise,
            have: 3,
            need: 4
        }
    ));
    // Exactly t: accepted.
    let mut c = fresh();
    let l = list_of(adverts(&c, &all[..4]));
    let n = c.send(&v, l);
    assert_eq!(names(c.last(&v, n)), ["Progress", "Send(share bundle)"]);
}

#[test]
fn hostile_forwarded_shares() {
    let fed = Fed::new(5, D, 33);
    let all = fed.fps();
    let v = all[0];
    let x = all[4];
    let fwd = |u2: &[Fingerprint], shares| {
        Message2::ForwardedShares(ForwardedShares {
            u2: u2.to_vec(),
            shares,
        })
    };
    // A share from ourselves.
    let mut c = reach(&fed, At::Shares);
    let mut shares = c.inbox.shares_for(&v, &all);
    let mut own = shares[0].clone();
    own.peer = v;
    shares.insert(0, own);
    let e = refused(&mut c, &v, fwd(&all, shares));
    assert!(
        researcher_fault(Some(&e), Phase::ShareKeys, "to itself"),
        "{e:?}"
    );
    // Two from one sender.
    let mut c = reach(&fed, At::Shares);
    let mut shares = c.inbox.shares_for(&v, &all);
    shares.push(shares[1].clone());
    let e = refused(&mut c, &v, fwd(&all, shares));
    assert!(
        researcher_fault(Some(&e), Phase::ShareKeys, "two from one sender"),
        "{e:?}"
    );
    // U2 ≠ senders ∪ {me}: one more, one fewer.
    let mut c = reach(&fed, At::Shares);
    let shares = c.inbox.shares_for(&v, &all[..4]);
    let e = refused(&mut c, &v, fwd(&all, shares));
    assert!(
        researcher_fault(Some(&e), Phase::ShareKeys, "but forwarded shares from"),
        "{e:?}"
    );
    let mut c = reach(&fed, At::Shares);
    let shares = c.inbox.shares_for(&v, &all);
    let e = refused(&mut c, &v, fwd(&all[..4], shares));
    assert!(
        researcher_fault(Some(&e), Phase::ShareKeys, "but forwarded shares from"),
        "{e:?}"
    );
    // U2 without us.
    let mut c = reach(&fed, At::Shares);
    let shares = c.inbox.shares_for(&v, &all);
    let e = refused(&mut c, &v, fwd(&all[1..], shares));
    assert!(
        researcher_fault(Some(&e), Phase::ShareKeys, "out of U2"),
        "{e:?}"
    );
    // A sender outside U1: U1 had four adverts, the researcher adds the fifth's share.
    let mut c = Cluster::new(&fed, fed.announce(1));
    c.announce_to(&all);
    c.adverts_to(&all[..4], &all[..4]);
    c.adverts_to(&[x], &all);
    let shares = c.inbox.shares_for(&v, &all);
    let e = refused(&mut c, &v, fwd(&all, shares));
    assert!(
        researcher_fault(Some(&e), Phase::ShareKeys, "not inside U1"),
        "{e:?}"
    );
}

#[test]
fn hostile_survivors() {
    let fed = Fed::new(5, D, 34);
    let all = fed.fps();
    let v = all[0];
    let sv = |u2: &[Fingerprint], u3: &[Fingerprint]| {
        Message2::Survivors(Survivors {
            u2: u2.to_vec(),
            u3: u3.to_vec(),
        })
    };
    // Our own exclusion: no signature, and the error says so.
    let mut c = reach(&fed, At::Survivors);
    let e = refused(&mut c, &v, sv(&all, &all[1..]));
    assert_eq!(e, Error::Excluded);
    // U2 other than ours.
    let mut c = reach(&fed, At::Survivors);
    let e = refused(&mut c, &v, sv(&all[..4], &all[..4]));
    assert!(
        researcher_fault(Some(&e), Phase::Consistency, "differs"),
        "{e:?}"
    );
    // U3 outside U2, and an unsorted U3.
    let mut c = reach(&fed, At::Survivors);
    let stranger = Fingerprint::of_der(b"nobody");
    let mut u3 = all.clone();
    u3.push(stranger);
    u3.sort();
    let e = refused(&mut c, &v, sv(&all, &u3));
    assert!(
        researcher_fault(Some(&e), Phase::Consistency, "not inside U2"),
        "{e:?}"
    );
    let mut c = reach(&fed, At::Survivors);
    let mut u3 = all.clone();
    u3.swap(1, 2);
    let e = refused(&mut c, &v, sv(&all, &u3));
    assert!(
        matches!(
            e,
            Error::Misbehaviour {
                culprit: Culprit::Researcher,
                phase: Phase::Consistency,
                ..
            }
        ),
        "{e:?}"
    );
    // Below t.
    let mut c = reach(&fed, At::Survivors);
    let e = refused(&mut c, &v, sv(&all, &all[..3]));
    assert!(matches!(
        e,
        Error::BelowThreshold {
            phase: Phase::Consistency,
            have: 3,
            need: 4
        }
    ));
}

/// (r, -s): also a valid ECDSA signature.
fn malleate(sig: &Signature) -> Signature {
    let (r, s) = (sig.r(), sig.s());
    let neg = -*s.as_ref();
    Signature::from_scalars(r.to_bytes(), neg.to_bytes()).expect("valid scalars")
}

#[test]
fn hostile_signature_lists() {
    let fed = Fed::new(5, D, 35);
    let all = fed.fps();
    let v = all[0];
    let d = all[4];
    let u3 = all[..4].to_vec();
    let at_sigs = || {
        let mut c = reach(&fed, At::Survivors);
        c.survivors_to(&u3, &all, &u3);
        c
    };
    let list =
        |sigs: Vec<(Fingerprint, Signature)>| Message2::SignatureList(SignatureList { sigs });
    // The message U3 signed, rebuilt by the test, so outsiders can sign it too.
    let c = at_sigs();
    let adverts: Vec<&Advert> = all.iter().map(|f| &c.inbox.adverts[f].advert).collect();
    let msg = ConsistencyMessage::new(&c.ctx, &adverts, &u3).expect("msg");
    for f in &u3 {
        let key = public(&fed.member(f).key);
        assert!(verify_consistency(&key, &msg, &c.inbox.sigs[f]).is_ok());
    }
    let sig = |f: &Fingerprint| c.inbox.sigs[f];
    // t - 1 from U3, plus a valid signature from D (outside U3).
    let mut k = at_sigs();
    let d_sig = sign_consistency(&fed.member(&d).key, &msg);
    let mut sigs: Vec<_> = u3[..3].iter().map(|f| (*f, sig(f))).collect();
    sigs.push((d, d_sig));
    let e = refused(&mut k, &v, list(sigs));
    assert!(
        matches!(
            e,
            Error::BelowThreshold {
                phase: Phase::Unmask,
                have: 3,
                need: 4
            }
        ),
        "{e:?}"
    );
    // t - 1 signers, one of them twice through (r, -s) malleability.
    let mut k = at_sigs();
    let twin = malleate(&sig(&u3[1]));
    assert_ne!(twin, sig(&u3[1]));
    assert!(verify_consistency(&public(&fed.member(&u3[1]).key), &msg, &twin).is_ok());
    let mut sigs: Vec<_> = u3[..3].iter().map(|f| (*f, sig(f))).collect();
    sigs.insert(2, (u3[1], twin));
    let e = refused(&mut k, &v, list(sigs));
    assert!(
        matches!(
            e,
            Error::BelowThreshold {
                phase: Phase::Unmask,
                have: 3,
                need: 4
            }
        ),
        "{e:?}"
    );
    // An unregistered signer, and a signature over another message.
    let mut k = at_sigs();
    let stranger = party_key(&mut TestRng::new(8));
    let mut sigs: Vec<_> = u3[..3].iter().map(|f| (*f, sig(f))).collect();
    sigs.push((
        Fingerprint::of_der(b"stranger"),
        sign_consistency(&stranger, &msg),
    ));
    let other = ConsistencyMessage::new(&c.ctx, &adverts, &all).expect("msg");
    sigs.push((u3[3], sign_consistency(&fed.member(&u3[3]).key, &other)));
    let e = refused(&mut k, &v, list(sigs));
    assert!(
        matches!(
            e,
            Error::BelowThreshold {
                phase: Phase::Unmask,
                have: 3,
                need: 4
            }
        ),
        "{e:?}"
    );
    // Exactly t: one share per peer of U2, b for U3, s for D.
    let mut k = at_sigs();
    let n = k.send(&v, list(u3.iter().map(|f| (*f, sig(f))).collect()));
    assert_eq!(names(k.last(&v, n)), ["JournalReveal", "Send(unmask)"]);
    let (_, u) = k
        .unmasks_sent()
        .into_iter()
        .find(|(f, _)| *f == v)
        .expect("unmask");
    let peers: Vec<Fingerprint> = u.shares.iter().map(|s| s.peer).collect();
    assert_eq!(peers, all);
    for s in &u.shares {
        let want = if s.peer == d { "S" } else { "B" };
        assert_eq!(format!("{:?}", s.kind), want);
    }
}

#[test]
fn hostile_result_headers() {
    let fed = Fed::new(5, D, 36);
    let all = fed.fps();
    let w = fed.plain_sum(&all).1;
    let bad = [
        (w, 4, fed.d * 4, "survivors"),
        (0, 5, fed.d * 4, "total weight"),
        (5 * fed.params.max_weight + 1, 5, fed.d * 4, "total weight"),
        (w, 5, fed.d * 8, "bytes"),
    ];
    for (i, (tw, n3, bytes, what)) in bad.into_iter().enumerate() {
        let mut c = reach(&fed, At::Result);
        let e = refused(
            &mut c,
            &all[i],
            Message2::Result(ResultHeader {
                total_weight: tw,
                survivors: n3,
                bytes,
            }),
        );
        assert!(
            matches!(
                e,
                Error::Misbehaviour {
                    culprit: Culprit::Researcher,
                    phase: Phase::Result,
                    ..
                }
            ),
            "{what}: {e:?}"
        );
    }
}
