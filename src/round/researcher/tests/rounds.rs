//! Whole rounds: the sum, dropouts, thresholds, and the setup.

use super::*;

#[test]
fn a_full_round_gives_the_exact_weighted_sum() {
    let mut h = H::new(5, 3);
    assert_eq!(h.wb(), 2, "the test exercises narrow wire words");
    assert_eq!(h.r.phase(), Phase::Advertise);
    h.advertise(&ALL);
    assert_eq!(h.r.phase(), Phase::ShareKeys, "closes once all advertised");
    h.share(&ALL);
    assert_eq!(h.r.phase(), Phase::MaskedInput);
    h.input(&ALL);
    assert_eq!(h.r.phase(), Phase::Consistency);
    h.sign(&ALL);
    assert_eq!(h.r.phase(), Phase::Unmask);
    h.unmask(&ALL);
    assert!(h.r.is_over());
    assert_eq!(h.result, Some(h.expected(&ALL)));
    let o = h.outcome();
    let all = h.sorted(&ALL);
    for set in [&o.u1, &o.u2, &o.u3, &o.u4, &o.u5] {
        assert_eq!(set, &all);
    }
    assert_eq!(o.total_weight, 15);
    assert!(o.dropouts.is_empty() && o.misbehaviours.is_empty());
    assert!(h.spills.is_empty(), "every spill was completed");
    // The result goes to U5 with the header the nodes check.
    let sent = h.log.iter().find_map(|a| match a {
        Action::SendResult { to, header } => Some((to.clone(), header.clone())),
        _ => None,
    });
    assert_eq!(
        sent,
        Some((
            all,
            ResultHeader {
                total_weight: 15,
                survivors: 5,
                bytes: 4 * D as u64
            }
        ))
    );
    // One progress line per phase.
    let lines = h
        .log
        .iter()
        .filter(|a| matches!(a, Action::Progress(_)))
        .count();
    assert_eq!(lines, 6);
    // Nothing happens after the end.
    assert!(h.r.handle(Event::Deadline).is_empty());
}

#[test]
fn dropouts_before_advertising_and_after_sharing_leave_the_exact_sum_of_u3() {
    let mut h = H::new(5, 3);
    h.advertise(&[1, 2, 3, 4]);
    assert_eq!(h.r.phase(), Phase::Advertise);
    let at = h.feed(Event::Deadline);
    assert_eq!(h.drops(at), vec![(h.fp(0), DropReason::MissedDeadline)]);
    assert!(!h.r.expects(&h.fp(0)) && h.r.expects(&h.fp(1)));
    // A late advert from the dropped node is ignored.
    let late = h.advert_msg(0);
    let at = h.msg(0, Message2::Advertise(late));
    assert_eq!(h.log.len(), at);
    h.share(&[1, 2, 3, 4]);
    // Node 1 sends a prefix of its input, then its connection breaks.
    h.stream(1, Some(3));
    assert!(h.spills.contains_key(&h.fp(1)));
    let at = h.feed(Event::Lost {
        from: h.fp(1),
        reason: "connection reset".into(),
    });
    assert!(matches!(&h.log[at], Action::DiscardStream { from } if *from == h.fp(1)));
    assert!(!h.spills.contains_key(&h.fp(1)));
    h.input(&[2, 3, 4]);
    assert_eq!(h.r.phase(), Phase::Consistency);
    h.sign(&[2, 3, 4]);
    // Each survivor reveals s of node 1 (in U2 \ U3) and b of the others.
    let u = h.unmask_msg(2);
    let kinds: Vec<(Fingerprint, ShareKind)> = u.shares.iter().map(|s| (s.peer, s.kind)).collect();
    assert!(kinds.contains(&(h.fp(1), ShareKind::S)));
    assert!(kinds.contains(&(h.fp(3), ShareKind::B)));
    h.msg(2, Message2::Unmask(u));
    h.unmask(&[3, 4]);
    assert_eq!(h.result, Some(h.expected(&[2, 3, 4])));
    let o = h.outcome();
    assert_eq!(o.u1, h.sorted(&[1, 2, 3, 4]));
    assert_eq!(o.u2, h.sorted(&[1, 2, 3, 4]));
    assert_eq!(o.u3, h.sorted(&[2, 3, 4]));
    let d: Vec<(Culprit, Phase)> = o
        .dropouts
        .iter()
        .map(|d| (d.who.clone(), d.phase))
        .collect();
    assert_eq!(
        d,
        vec![
            (h.culprit(0), Phase::Advertise),
            (h.culprit(1), Phase::MaskedInput)
        ]
    );
}

/// Below t at each phase: the round fails, no Unmask and no message after the Fail.
#[test]
fn below_threshold_at_each_phase_fails_before_unmasking() {
    let two = [0, 1];
    let mut runs: Vec<(Phase, H)> = Vec::new();
    for phase in [
        Phase::Advertise,
        Phase::ShareKeys,
        Phase::MaskedInput,
        Phase::Consistency,
        Phase::Unmask,
    ] {
        let mut h = H::new(5, 3);
        let who = |p: Phase| if p == phase { &two[..] } else { &ALL[..] };
        h.advertise(who(Phase::Advertise));
        if phase > Phase::Advertise {
            h.share(who(Phase::ShareKeys));
        }
        if phase > Phase::ShareKeys {
            h.input(who(Phase::MaskedInput));
        }
        if phase == Phase::MaskedInput {
            h.stream(2, Some(3));
        }
        if phase > Phase::MaskedInput {
            h.sign(who(Phase::Consistency));
        }
        if phase > Phase::Consistency {
            h.unmask(who(Phase::Unmask));
        }
        assert_eq!(h.r.phase(), phase);
        h.feed(Event::Deadline);
        runs.push((phase, h));
    }
    for (phase, h) in &runs {
        assert!(
            matches!(h.failure(), Error::BelowThreshold { phase: p, have: 2, need: 3 } if p == phase),
            "{phase}: {}",
            h.failure()
        );
        assert!(h.no_unmask(), "{phase}");
        assert!(h.r.is_over());
        let fail = h.log.len() - 1;
        let last_send = h.log.iter().rposition(|a| matches!(a, Action::Send { .. }));
        assert!(last_send.is_none_or(|s| s < fail));
    }
    // The late nodes of the input phase had their partial spills discarded.
    // Completed streams keep their spills (the driver drops the store on Fail).
    let (_, h) = &runs[2];
    let kept: Vec<Fingerprint> = h.spills.keys().copied().collect();
    assert_eq!(kept, h.sorted(&[0, 1]));
    let discarded = h
        .log
        .iter()
        .filter(|a| matches!(a, Action::DiscardStream { .. }))
        .count();
    assert_eq!(discarded, 3);
}

#[test]
fn messages_out_of_phase_and_lost_nodes() {
    let mut h = H::new(5, 3);
    // A chunk before any shares: misbehaviour.
    let at = h.feed(Event::Chunk {
        from: h.fp(0),
        offset: 0,
        data: vec![0; 2],
    });
    assert_eq!(misbehaved(&h.drops(at)[0].1), &Fault::Unexpected("chunk"));
    // A bundle during the advert phase.
    let at = h.msg(1, Message2::ShareBundle(ShareBundle { shares: vec![] }));
    assert_eq!(
        misbehaved(&h.drops(at)[0].1),
        &Fault::Unexpected("share bundle")
    );
    // A lost node leaves without a Drop action; the phase closes when the rest answered.
    let at = h.feed(Event::Lost {
        from: h.fp(2),
        reason: "closed".into(),
    });
    assert!(h.drops(at).is_empty());
    h.advertise(&[3]);
    assert_eq!(h.r.phase(), Phase::Advertise);
    h.advertise(&[4]);
    assert!(matches!(
        h.failure(),
        Error::BelowThreshold {
            phase: Phase::Advertise,
            have: 2,
            ..
        }
    ));
}

#[test]
fn the_setup_refuses_impossible_thresholds() {
    for t in [0, 2, 6] {
        let (s, _) = setup(5, t);
        assert!(
            matches!(Researcher::new(s), Err(Error::Threshold { .. })),
            "t = {t}"
        );
    }
    let (s, _) = setup(4, 3);
    assert!(Researcher::new(s).is_ok());
    let (mut s, _) = setup(5, 3);
    s.quant.bits = 40;
    assert!(matches!(Researcher::new(s), Err(Error::Plan(_))));
}

#[test]
fn debug_output_hides_secrets() {
    let h = H::new(5, 3);
    assert!(format!("{:?}", h.r).starts_with("Researcher(round 3, advertise phase"));
}
