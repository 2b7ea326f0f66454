//! Misbehaving nodes: each fault is refused, named, and the round goes on or fails.

use super::*;

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
