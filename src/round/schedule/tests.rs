use super::*;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, Nonce};
use p256::ecdsa::Signature;
use p256::elliptic_curve::Generate;
use p256::{NonZeroScalar, PublicKey, Scalar};

use crate::layout::TensorSpec;
use crate::layout::{Container, DType, Layout};
use crate::party::Fingerprint;
use crate::pki::identity::PartyKey;
use crate::secagg::keys::Sign;
use crate::secagg::prg::PeerMask;
use crate::secagg::shamir;
use crate::secagg::test_rng::TestRng;

pub(crate) fn fp(i: u8) -> Fingerprint {
    Fingerprint::of_der(&[i])
}

pub(crate) fn layout() -> Layout {
    Layout {
        container: Container::Safetensors,
        tensors: vec![
            TensorSpec {
                name: "a".into(),
                shape: vec![2, 3],
                dtype: DType::F32,
            },
            TensorSpec {
                name: "b".into(),
                shape: vec![4],
                dtype: DType::F64,
            },
        ],
    }
}

pub(crate) fn params(n: u8, t: u32) -> CtxParams {
    let mut invitees: Vec<Fingerprint> = (1..=n).map(fp).collect();
    invitees.sort();
    CtxParams {
        federation: "fed".into(),
        round: 9,
        researcher: fp(0),
        invitees,
        clip: 1.0,
        bits: 16,
        modulus_bits: 32,
        word_bytes: 4,
        max_weight: 1000,
        threshold: t,
        length: 10,
        layout_digest: layout_digest(&layout()),
        model_digest: None,
        label: "update".into(),
    }
}

fn key(seed: u64) -> PartyKey {
    let s = NonZeroScalar::generate_from_rng(&mut TestRng::new(seed));
    PartyKey::from_scalar_bytes(&s.to_bytes()).expect("scalar")
}

fn cert_pub(k: &PartyKey) -> PublicKey {
    PublicKey::from(k.signing_key().verifying_key())
}

#[test]
fn ctx_checks_and_binds_every_field() {
    let base = Ctx::new(params(3, 2)).expect("ctx");
    assert_eq!(
        &base.encoded()[..12],
        b"\0\0\0\x08secagg/2\0\0\0\x03fed".get(..12).expect("12")
    );
    let mut variants = Vec::new();
    macro_rules! vary {
        ($($f:ident = $v:expr),*) => {$({
            let mut p = params(3, 2);
            p.$f = $v;
            variants.push(Ctx::new(p).expect(stringify!($f)).encoded().to_vec());
        })*};
    }
    vary!(
        federation = "feD".into(),
        round = 10,
        researcher = fp(9),
        clip = 1.5,
        bits = 15,
        max_weight = 999,
        threshold = 3,
        length = 11,
        layout_digest = [7; 32],
        model_digest = Some([0; 32]),
        label = "other".into()
    );
    // The ring's width: modulus bits and wire bytes move together.
    let mut p = params(3, 2);
    (p.modulus_bits, p.word_bytes) = (24, 3);
    variants.push(Ctx::new(p).expect("2^24").encoded().to_vec());
    let mut p = params(3, 2);
    (p.modulus_bits, p.word_bytes) = (40, 5);
    variants.push(Ctx::new(p).expect("2^40").encoded().to_vec());
    let mut p = params(3, 2);
    p.invitees.pop();
    variants.push(Ctx::new(p).expect("fewer").encoded().to_vec());
    for v in &variants {
        assert_ne!(v, base.encoded());
    }
    let refuse = |f: fn(&mut CtxParams)| {
        let mut p = params(3, 2);
        f(&mut p);
        Ctx::new(p).is_err()
    };
    assert!(refuse(|p| p.invitees.reverse()));
    assert!(refuse(|p| p.invitees.push(p.invitees[2])));
    assert!(refuse(|p| p.invitees.clear()));
    assert!(refuse(|p| p.threshold = 0));
    assert!(refuse(|p| p.threshold = 4));
    assert!(refuse(|p| p.clip = f64::NAN));
    assert!(refuse(|p| p.clip = -1.0));
    assert!(refuse(|p| p.modulus_bits = 48));
    assert!(refuse(|p| p.modulus_bits = 36));
    assert!(refuse(|p| p.modulus_bits = 72));
    assert!(refuse(|p| p.modulus_bits = 0));
    assert!(refuse(|p| p.word_bytes = 5));
    assert!(refuse(|p| p.word_bytes = 3));
    assert!(refuse(|p| p.word_bytes = 0));
    assert!(refuse(|p| p.bits = 33));
    assert!(refuse(|p| p.max_weight = 0));
    assert!(refuse(|p| p.length = 0));
    assert!(refuse(|p| p.federation.clear()));
    assert!(refuse(|p| p.label = "x".repeat(MAX_NAME + 1)));
    assert!(refuse(|p| p.researcher = p.invitees[1]));
    let ctx = Ctx::new(params(3, 2)).expect("ctx");
    let sorted = ctx.invitees().to_vec();
    assert_eq!(ctx.x_of(&sorted[0]), Some(1));
    assert_eq!(ctx.x_of(&sorted[2]), Some(3));
    assert_eq!(ctx.x_of(&fp(0)), None);
}

#[test]
fn set_encoder_refuses_unsorted_and_duplicates() {
    let mut fps = vec![fp(1), fp(2), fp(3)];
    fps.sort();
    let mut out = Vec::new();
    put_set(&mut out, "x", &fps).expect("sorted");
    assert_eq!(out.len(), 4 + 96);
    assert_eq!(&out[..4], &[0, 0, 0, 3]);
    let dup = vec![fps[0], fps[0]];
    assert_eq!(put_set(&mut out, "x", &dup), Err(Error::Unsorted("x")));
    let rev: Vec<_> = fps.iter().rev().copied().collect();
    assert_eq!(put_set(&mut out, "x", &rev), Err(Error::Unsorted("x")));
}

#[test]
fn layout_digest_and_values() {
    let l = layout();
    assert_eq!(layout_values(&l), Some(10));
    let mut other = l.clone();
    other.tensors[0].shape = vec![3, 2];
    assert_ne!(layout_digest(&l), layout_digest(&other));
    other.tensors[0].shape = vec![u64::MAX, 2];
    assert_eq!(layout_values(&other), None);
}

/// Three nodes go through adverts, sealed shares and masks as the protocol does.
#[test]
fn adverts_shares_and_masks_fit_together() {
    let ctx = Ctx::new(params(3, 2)).expect("ctx");
    let fps = ctx.invitees().to_vec();
    let keys: Vec<PartyKey> = (0..3).map(|i| key(100 + i)).collect();
    let secrets: Vec<RoundSecrets> = (0..3)
        .map(|i| RoundSecrets::generate(&ctx, &mut TestRng::new(i)).expect("secrets"))
        .collect();
    assert_eq!(format!("{:?}", secrets[0]), "RoundSecrets(<secret>)");
    let adverts: Vec<Advert> = (0..3).map(|i| secrets[i].advert(fps[i])).collect();
    let sigs: Vec<Signature> = (0..3)
        .map(|i| sign_advert(&keys[i], &ctx, &adverts[i]))
        .collect();
    for i in 0..3 {
        verify_advert(&cert_pub(&keys[i]), &ctx, &adverts[i], &sigs[i]).expect("valid");
        let other = (i + 1) % 3;
        assert_eq!(
            verify_advert(&cert_pub(&keys[other]), &ctx, &adverts[i], &sigs[i]),
            Err(Error::BadSignature)
        );
        // Deterministic signatures: a resend is byte-identical.
        assert_eq!(sigs[i], sign_advert(&keys[i], &ctx, &adverts[i]));
        // Wire form round-trips.
        let mut enc = Vec::new();
        adverts[i].encode(&mut enc);
        let (dec, rest) = Advert::decode_prefix(&enc).expect("decode");
        assert!(rest.is_empty());
        assert_eq!(dec, adverts[i]);
    }
    // A tampered advert fails: swapped keys, another ctx, wrong commitments.
    let mut swapped = adverts[0].clone();
    std::mem::swap(&mut swapped.c_pub, &mut swapped.s_pub);
    assert!(verify_advert(&cert_pub(&keys[0]), &ctx, &swapped, &sigs[0]).is_err());
    let ctx2 = Ctx::new(CtxParams {
        round: 10,
        ..params(3, 2)
    })
    .expect("ctx");
    assert_eq!(
        verify_advert(&cert_pub(&keys[0]), &ctx2, &adverts[0], &sigs[0]),
        Err(Error::BadSignature)
    );
    let mut bad = adverts[0].clone();
    bad.b_commitments = adverts[1].b_commitments.clone();
    assert_eq!(
        verify_advert(&cert_pub(&keys[0]), &ctx, &bad, &sigs[0]),
        Err(Error::CommitmentConstant("b"))
    );
    let ctx3 = Ctx::new(params(3, 3)).expect("ctx");
    assert!(matches!(
        verify_advert(&cert_pub(&keys[0]), &ctx3, &adverts[0], &sigs[0]),
        Err(Error::CommitmentCount {
            which: "s",
            got: 2,
            expected: 3
        })
    ));

    // Shares: u → v sealed with K_{u→v}, opened by v, checked against u's commitments.
    let (u, v) = (0usize, 2usize);
    let xv = ctx.x_of(&fps[v]).expect("x");
    let (ss, bs) = secrets[u].shares_for(xv).expect("share");
    let pair = SharePair {
        s: *ss.y(),
        b: *bs.y(),
    };
    let k_send = ShareKey::derive(secrets[u].c(), &adverts[v].c_pub, &ctx, &fps[u], &fps[v]);
    let k_recv = ShareKey::derive(secrets[v].c(), &adverts[u].c_pub, &ctx, &fps[u], &fps[v]);
    assert_eq!(k_send.expose(), k_recv.expose());
    assert_eq!(format!("{k_send:?}"), "ShareKey(<secret>)");
    let sealed = k_send.seal(&ctx, &fps[u], &fps[v], &pair).expect("seal");
    let opened = k_recv.open(&ctx, &fps[u], &fps[v], &sealed).expect("open");
    assert_eq!(format!("{opened:?}"), "SharePair(<secret>)");
    opened.verify(&adverts[u], xv).expect("commitments");
    assert_eq!(
        opened.verify(&adverts[u], xv + 1),
        Err(Error::ShareCommitment("s"))
    );
    assert_eq!(
        opened.verify(&adverts[1], xv),
        Err(Error::ShareCommitment("s"))
    );
    // The other direction uses another key: u→v does not open as v→u.
    let k_rev = ShareKey::derive(secrets[v].c(), &adverts[u].c_pub, &ctx, &fps[v], &fps[u]);
    assert_ne!(k_rev.expose(), k_recv.expose());
    assert_eq!(
        k_rev.open(&ctx, &fps[v], &fps[u], &sealed).err(),
        Some(Error::SealedTag)
    );
    // Tampering, truncation, another ctx.
    let mut t = sealed;
    t[70] ^= 1;
    assert_eq!(
        k_recv.open(&ctx, &fps[u], &fps[v], &t).err(),
        Some(Error::SealedTag)
    );
    assert_eq!(
        k_recv.open(&ctx, &fps[u], &fps[v], &sealed[..143]).err(),
        Some(Error::SealedLength(143))
    );
    let k_other_ctx = ShareKey::derive(secrets[v].c(), &adverts[u].c_pub, &ctx2, &fps[u], &fps[v]);
    assert_eq!(
        k_other_ctx.open(&ctx2, &fps[u], &fps[v], &sealed).err(),
        Some(Error::SealedTag)
    );
    // Right key and AAD but other parties inside: refused after the tag.
    let mut plain = [0u8; SEALED_LEN];
    plain[..32].copy_from_slice(fps[v].as_bytes());
    plain[32..64].copy_from_slice(fps[u].as_bytes());
    let aad = share_info(&ctx, &fps[u], &fps[v]);
    let tag = k_send
        .cipher()
        .encrypt_inout_detached(
            &Nonce::<Aes256Gcm>::default(),
            &aad,
            (&mut plain[..SHARE_PLAIN_LEN]).into(),
        )
        .expect("seal");
    plain[SHARE_PLAIN_LEN..].copy_from_slice(&tag);
    assert_eq!(
        k_recv.open(&ctx, &fps[u], &fps[v], &plain).err(),
        Some(Error::SealedParties)
    );

    // Pairwise masks: both sides derive the same key, with opposite signs.
    let m_uv = pairwise_mask(
        secrets[u].s(),
        &fps[u],
        &adverts[u].s_pub,
        &fps[v],
        &adverts[v].s_pub,
        &ctx,
    );
    let m_vu = pairwise_mask(
        secrets[v].s(),
        &fps[v],
        &adverts[v].s_pub,
        &fps[u],
        &adverts[u].s_pub,
        &ctx,
    );
    assert_eq!(m_uv.key.expose(), m_vu.key.expose());
    assert_ne!(m_uv.sign, m_vu.sign);
    assert_eq!(m_uv.sign == Sign::Add, fps[u] < fps[v]);
    // The researcher rebuilds s_u from t shares and gets the same key.
    let pts: Vec<(u32, Scalar)> = [1u32, 3]
        .iter()
        .map(|&x| (x, *secrets[u].shares_for(x).expect("s").0.y()))
        .collect();
    let s_u = shamir::interpolate(&pts).expect("interp");
    let s_u = Option::<NonZeroScalar>::from(NonZeroScalar::new(s_u)).expect("nonzero");
    assert_eq!(PublicKey::from_secret_scalar(&s_u), adverts[u].s_pub);
    let m_r = pairwise_mask(
        &s_u,
        &fps[u],
        &adverts[u].s_pub,
        &fps[v],
        &adverts[v].s_pub,
        &ctx,
    );
    assert_eq!(m_r.key.expose(), m_uv.key.expose());
    // Self mask: from b, and from the rebuilt b.
    let k_self = self_mask_key(secrets[u].b(), &ctx, &fps[u]);
    let b_pts: Vec<(u32, Scalar)> = [2u32, 3]
        .iter()
        .map(|&x| (x, *secrets[u].shares_for(x).expect("b").1.y()))
        .collect();
    let b_u = shamir::interpolate(&b_pts).expect("interp");
    assert_eq!(self_mask_key(&b_u, &ctx, &fps[u]).expose(), k_self.expose());
    assert_ne!(self_mask_key(&b_u, &ctx, &fps[v]).expose(), k_self.expose());
}

/// The keys drive the existing PRG machinery: pairwise masks cancel in the sum, and
/// removing the self masks leaves the plain sum.
#[test]
fn masks_cancel_with_the_existing_prg() {
    use crate::secagg::prg::apply_masks;
    let ctx = Ctx::new(params(3, 2)).expect("ctx");
    let fps = ctx.invitees().to_vec();
    let secrets: Vec<RoundSecrets> = (0..3)
        .map(|i| RoundSecrets::generate(&ctx, &mut TestRng::new(20 + i)).expect("secrets"))
        .collect();
    let adverts: Vec<Advert> = (0..3).map(|i| secrets[i].advert(fps[i])).collect();
    let self_mask = |u: usize, sign| PeerMask {
        key: self_mask_key(secrets[u].b(), &ctx, &fps[u]),
        sign,
    };
    let mut sum = vec![0u32; 11];
    for u in 0..3 {
        let mut masks = vec![self_mask(u, Sign::Add)];
        for v in (0..3).filter(|v| *v != u) {
            let (a, b) = (&adverts[u], &adverts[v]);
            masks.push(pairwise_mask(
                secrets[u].s(),
                &a.fp,
                &a.s_pub,
                &b.fp,
                &b.s_pub,
                &ctx,
            ));
        }
        let mut y = vec![u as u32 + 1; 11];
        apply_masks(&mut y, &masks, 4, 1);
        assert_ne!(y, vec![u as u32 + 1; 11]);
        sum.iter_mut()
            .zip(&y)
            .for_each(|(s, x)| *s = s.wrapping_add(*x));
    }
    let unmask: Vec<PeerMask> = (0..3).map(|u| self_mask(u, Sign::Sub)).collect();
    apply_masks(&mut sum, &unmask, 4, 1);
    assert_eq!(sum, vec![6u32; 11]);
}

#[test]
fn consistency_message_binds_sets_and_adverts() {
    let ctx = Ctx::new(params(3, 2)).expect("ctx");
    let fps = ctx.invitees().to_vec();
    let secrets: Vec<RoundSecrets> = (0..3)
        .map(|i| RoundSecrets::generate(&ctx, &mut TestRng::new(10 + i)).expect("secrets"))
        .collect();
    let adverts: Vec<Advert> = (0..3).map(|i| secrets[i].advert(fps[i])).collect();
    let all: Vec<&Advert> = adverts.iter().collect();
    let m = ConsistencyMessage::new(&ctx, &all, &fps[..2]).expect("msg");
    let k = key(7);
    let sig = sign_consistency(&k, &m);
    verify_consistency(&cert_pub(&k), &m, &sig).expect("valid");
    let m2 = ConsistencyMessage::new(&ctx, &all, &fps[1..]).expect("msg");
    assert_eq!(
        verify_consistency(&cert_pub(&k), &m2, &sig),
        Err(Error::BadSignature)
    );
    let mut other = adverts[2].clone();
    other.c_pub = adverts[1].c_pub;
    let m3 =
        ConsistencyMessage::new(&ctx, &[&adverts[0], &adverts[1], &other], &fps[..2]).expect("msg");
    assert_ne!(m3, m);
    assert_eq!(
        ConsistencyMessage::new(&ctx, &[&adverts[1], &adverts[0]], &[]),
        Err(Error::Unsorted("U2"))
    );
    assert_eq!(
        ConsistencyMessage::new(&ctx, &all[..2], &fps[1..]),
        Err(Error::NotSubset("U3", "U2"))
    );
    // Signature encoding round-trips and rejects bad lengths.
    assert_eq!(sig_from_bytes(&sig_to_bytes(&sig)), Some(sig));
    assert_eq!(sig_from_bytes(&[0u8; 64]), None);
    assert_eq!(sig_from_bytes(&[1u8; 63]), None);
}

#[test]
fn same_x_catches_equal_and_negated_keys() {
    let a = PublicKey::from_secret_scalar(&NonZeroScalar::generate_from_rng(&mut TestRng::new(1)));
    let b = PublicKey::from_secret_scalar(&NonZeroScalar::generate_from_rng(&mut TestRng::new(2)));
    let neg = PublicKey::from_affine((-a.to_projective()).to_affine()).expect("point");
    assert!(same_x(&a, &neg));
    assert!(!same_x(&a, &b));
    assert_eq!(find_same_x(&[a, b]), None);
    assert_eq!(find_same_x(&[b, a, neg]), Some((1, 2)));
    assert_eq!(find_same_x(&[a, b, a]), Some((0, 2)));
}
