use super::*;
use crate::pki::identity::PartyKey;
use crate::round::schedule::tests::{fp, layout, params};
use crate::round::schedule::{Ctx, FP_LEN, SEALED_LEN, sig_to_bytes};
use crate::round::schedule::{RoundSecrets, sign_advert};
use crate::secagg::test_rng::TestRng;
use p256::NonZeroScalar;
use p256::Scalar;
use p256::ecdsa::Signature;
use p256::elliptic_curve::Generate;

fn sorted_fps(n: u8) -> Vec<Fingerprint> {
    let mut v: Vec<Fingerprint> = (1..=n).map(fp).collect();
    v.sort();
    v
}

fn sig(seed: u64) -> Signature {
    let s = NonZeroScalar::generate_from_rng(&mut TestRng::new(seed));
    let k = PartyKey::from_scalar_bytes(&s.to_bytes()).expect("key");
    p256::ecdsa::signature::Signer::sign(k.signing_key(), b"m")
}

fn announce() -> Announce {
    Announce {
        federation: "fed".into(),
        round: 9,
        researcher: fp(0),
        invitees: sorted_fps(3),
        clip: 1.0,
        bits: 16,
        modulus_bits: 32,
        word_bytes: 4,
        max_weight: 1000,
        threshold: 2,
        layout: layout(),
        model_digest: Some([5; 32]),
        label: "update".into(),
        deadline_secs: 60,
    }
}

fn signed_adverts() -> Vec<Advertise> {
    let ctx = Ctx::new(params(3, 2)).expect("ctx");
    ctx.invitees()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let sec = RoundSecrets::generate(&ctx, &mut TestRng::new(i as u64)).expect("rs");
            let s = NonZeroScalar::generate_from_rng(&mut TestRng::new(50 + i as u64));
            let k = PartyKey::from_scalar_bytes(&s.to_bytes()).expect("key");
            let advert = sec.advert(*f);
            let sig = sign_advert(&k, &ctx, &advert);
            Advertise { advert, sig }
        })
        .collect()
}

fn revealed(peer: Fingerprint, kind: ShareKind, v: u64) -> RevealedShare {
    RevealedShare {
        peer,
        kind,
        value: Scalar::from(v),
    }
}

fn samples() -> Vec<Message2> {
    let fps = sorted_fps(3);
    let sealed = |p: Fingerprint, b: u8| SealedShare {
        peer: p,
        sealed: [b; SEALED_LEN],
    };
    vec![
        Message2::Announce(announce()),
        Message2::Announce(Announce {
            model_digest: None,
            ..announce()
        }),
        Message2::Advertise(signed_adverts().remove(1)),
        Message2::AdvertList(AdvertList {
            adverts: signed_adverts(),
        }),
        Message2::AdvertList(AdvertList { adverts: vec![] }),
        Message2::ShareBundle(ShareBundle {
            shares: vec![sealed(fps[0], 1), sealed(fps[2], 2)],
        }),
        Message2::ForwardedShares(ForwardedShares {
            u2: fps.clone(),
            shares: vec![sealed(fps[1], 3)],
        }),
        Message2::Survivors(Survivors {
            u2: fps.clone(),
            u3: fps[1..].to_vec(),
        }),
        Message2::ConsistencySig(ConsistencySig { sig: sig(1) }),
        Message2::SignatureList(SignatureList {
            sigs: vec![(fps[0], sig(2)), (fps[1], sig(3))],
        }),
        Message2::Unmask(Unmask {
            shares: vec![
                revealed(fps[0], ShareKind::B, 7),
                revealed(fps[2], ShareKind::S, 8),
            ],
        }),
        Message2::Result(ResultHeader {
            total_weight: 12,
            survivors: 3,
            bytes: 40,
        }),
    ]
}

#[test]
fn every_message_round_trips() {
    for m in samples() {
        let bytes = m.encode().expect("encode");
        assert!((16..=31).contains(&m.kind()));
        assert_eq!(decode(m.kind(), &bytes).expect("decode"), m, "{}", m.name());
    }
    assert_eq!(decode(7, &[]), Err(Error::Kind(7)));
    assert_eq!(decode(26, &[]), Err(Error::Kind(26)));
}

#[test]
fn truncation_and_trailing_bytes_are_refused() {
    for m in samples() {
        let bytes = m.encode().expect("encode");
        for cut in 0..bytes.len() {
            assert!(
                decode(m.kind(), &bytes[..cut]).is_err(),
                "{} cut at {cut}",
                m.name()
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode(m.kind(), &long)
                .err()
                .map(|e| matches!(e, Error::Trailing { extra: 1, .. })),
            Some(true),
            "{}",
            m.name()
        );
    }
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // Each list-bearing message with a count of u32::MAX, then of the cap with too
    // few bytes behind it.
    for kind in [
        KIND_ADVERT_LIST,
        KIND_SHARE_BUNDLE,
        KIND_SIGNATURE_LIST,
        KIND_UNMASK,
    ] {
        let e = decode(kind, &[0xff, 0xff, 0xff, 0xff]).expect_err("huge");
        assert!(
            matches!(
                e,
                Error::Count {
                    count: 0xffff_ffff,
                    ..
                }
            ),
            "{e}"
        );
        let e = decode(kind, &[0, 0, 0x27, 0x10, 1, 2, 3]).expect_err("short");
        assert!(matches!(e, Error::Truncated { .. }), "{e}");
    }
    for kind in [KIND_FORWARDED_SHARES, KIND_SURVIVORS] {
        assert!(matches!(
            decode(kind, &[0, 0, 0x27, 0x11]),
            Err(Error::Count { count: 10_001, .. })
        ));
    }
    // Announce: a federation length of 4 GiB.
    assert!(matches!(
        decode(KIND_ANNOUNCE, &[0xff, 0xff, 0xff, 0xff]),
        Err(Error::Count {
            field: "federation",
            ..
        })
    ));
}

#[test]
fn duplicates_and_disorder_are_refused() {
    let fps = sorted_fps(3);
    let mut bytes = Vec::new();
    Survivors {
        u2: fps.clone(),
        u3: vec![],
    }
    .encode(&mut bytes)
    .expect("enc");
    // Swap the first two fingerprints of U2.
    let (a, b) = (bytes[4..36].to_vec(), bytes[36..68].to_vec());
    bytes[4..36].copy_from_slice(&b);
    bytes[36..68].copy_from_slice(&a);
    assert_eq!(
        Survivors::decode(&bytes),
        Err(Error::Order {
            message: SURVIVORS,
            field: "U2"
        })
    );
    // Encoders refuse too.
    let dup = Survivors {
        u2: vec![fps[0], fps[0]],
        u3: vec![],
    };
    assert_eq!(
        dup.encode(&mut Vec::new()),
        Err(Error::Order {
            message: SURVIVORS,
            field: "U2"
        })
    );
    let unmask = Unmask {
        shares: vec![
            revealed(fps[1], ShareKind::B, 1),
            revealed(fps[1], ShareKind::S, 2),
        ],
    };
    assert!(matches!(
        unmask.encode(&mut Vec::new()),
        Err(Error::Order { .. })
    ));
    let mut list = signed_adverts();
    list.swap(0, 1);
    assert!(matches!(
        AdvertList { adverts: list }.encode(&mut Vec::new()),
        Err(Error::Order { .. })
    ));
    // A duplicated signer, hand-encoded, is refused by the decoder.
    let s = sig(4);
    let mut raw = vec![0, 0, 0, 2];
    for _ in 0..2 {
        raw.extend_from_slice(fps[0].as_bytes());
        raw.extend_from_slice(&sig_to_bytes(&s));
    }
    assert!(matches!(
        SignatureList::decode(&raw),
        Err(Error::Order { .. })
    ));
}

#[test]
fn bad_field_values_are_refused() {
    let fps = sorted_fps(2);
    // Unmask: unknown kind, non-canonical scalar.
    let mut raw = vec![0, 0, 0, 1];
    raw.extend_from_slice(fps[0].as_bytes());
    raw.push(2);
    raw.extend_from_slice(&[0; 32]);
    assert!(matches!(
        Unmask::decode(&raw),
        Err(Error::Invalid {
            field: "share kind",
            ..
        })
    ));
    raw[36] = 1;
    raw[37..].copy_from_slice(&[0xff; 32]);
    assert!(matches!(
        Unmask::decode(&raw),
        Err(Error::Invalid {
            field: "share value",
            ..
        })
    ));
    // A zero signature.
    assert!(matches!(
        ConsistencySig::decode(&[0; 64]),
        Err(Error::Invalid { .. })
    ));
    // Advert with an uncompressed-tag point.
    let mut adv = Vec::new();
    signed_adverts()[0].encode(&mut adv);
    adv[FP_LEN] = 0x04;
    assert!(matches!(
        Advertise::decode(&adv),
        Err(Error::Invalid {
            field: "advert",
            ..
        })
    ));
    // Announce: threshold above n, unknown container, bad option tag, bad UTF-8.
    let enc = |a: &Announce| {
        let mut out = Vec::new();
        a.encode(&mut out).expect("enc");
        out
    };
    let high_t = enc(&Announce {
        threshold: 4,
        ..announce()
    });
    assert!(matches!(
        Announce::decode(&high_t),
        Err(Error::Count {
            field: "threshold",
            ..
        })
    ));
    let zero_t = enc(&Announce {
        threshold: 0,
        ..announce()
    });
    assert!(matches!(
        Announce::decode(&zero_t),
        Err(Error::Count {
            field: "threshold",
            ..
        })
    ));
    let good = enc(&announce());
    let at = good
        .windows(11)
        .position(|w| w == b"safetensors")
        .expect("container");
    let mut bad = good.clone();
    bad[at] = b'S';
    assert!(matches!(
        Announce::decode(&bad),
        Err(Error::Invalid {
            field: "container",
            ..
        })
    ));
    let mut bad = good.clone();
    bad[4] = 0xff; // inside "fed"
    assert!(matches!(
        Announce::decode(&bad),
        Err(Error::Invalid {
            field: "federation",
            ..
        })
    ));
    let no_digest = enc(&Announce {
        model_digest: None,
        ..announce()
    });
    let tag_at = no_digest.len() - 4 - (4 + 6) - 1;
    let mut bad = no_digest.clone();
    bad[tag_at] = 2;
    assert!(matches!(
        Announce::decode(&bad),
        Err(Error::Invalid {
            field: "model digest",
            ..
        })
    ));
}

#[test]
fn announce_builds_the_ctx_only_for_the_pinned_researcher() {
    let a = Announce {
        model_digest: None,
        ..announce()
    };
    let ctx = a.ctx(&fp(0)).expect("ctx");
    assert_eq!(
        ctx.encoded(),
        Ctx::new(params(3, 2)).expect("ctx").encoded()
    );
    assert!(matches!(a.ctx(&fp(9)), Err(Error::Researcher { .. })));
    let bad = Announce {
        modulus_bits: 48,
        ..announce()
    };
    assert!(matches!(bad.ctx(&fp(0)), Err(Error::Ctx(_))));
}

#[test]
fn revealed_shares_do_not_print() {
    let r = revealed(fp(1), ShareKind::S, 5);
    assert!(format!("{r:?}").ends_with("kind: S, value: <secret> }"));
}
