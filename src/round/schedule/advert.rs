//! Per-round secrets and the signed adverts of their public keys.

use std::fmt;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::rand_core::TryCryptoRng;
use p256::{NonZeroScalar, PublicKey, Scalar};
use zeroize::Zeroize;

use crate::party::Fingerprint;
use crate::pki::identity::PartyKey;
use crate::secagg::shamir::{self, Commitments, Share, point_to_bytes};

use super::ctx::Ctx;
use super::encoding::{fp_from_bytes, put_str};
use super::{ADVERTISE_LABEL, Error, FP_LEN, Result};

/// A node's ephemeral secrets for one round: `c` (share sealing), `s` (pairwise masks),
/// `b` (self-mask seed), and both Shamir dealings, made once so that a resend is
/// byte-identical. Zeroized on drop; never persisted; `Debug` hides everything.
pub struct RoundSecrets {
    c: NonZeroScalar,
    s: NonZeroScalar,
    b: NonZeroScalar,
    s_shares: Vec<Share>,
    b_shares: Vec<Share>,
    s_commitments: Commitments,
    b_commitments: Commitments,
}

impl RoundSecrets {
    /// Fresh `c`, `s`, `b` from `rng`, and a t-of-n dealing of `s` and of `b`
    /// (x = 1..=n, n = number of invitees).
    pub fn generate<R: TryCryptoRng + ?Sized>(ctx: &Ctx, rng: &mut R) -> Result<RoundSecrets> {
        let mut scalar = || NonZeroScalar::try_generate_from_rng(rng).map_err(|_| Error::Rng);
        let (c, s, b) = (scalar()?, scalar()?, scalar()?);
        let (t, n) = (ctx.threshold(), ctx.invitees().len());
        let (s_shares, s_commitments) = shamir::deal(s.as_ref(), t, n, rng)?;
        let (b_shares, b_commitments) = shamir::deal(b.as_ref(), t, n, rng)?;
        Ok(RoundSecrets {
            c,
            s,
            b,
            s_shares,
            b_shares,
            s_commitments,
            b_commitments,
        })
    }

    /// The advert for this node (its public keys and commitments).
    pub fn advert(&self, fp: Fingerprint) -> Advert {
        Advert {
            fp,
            c_pub: PublicKey::from_secret_scalar(&self.c),
            s_pub: *self.s_commitments.constant(),
            b_pub: *self.b_commitments.constant(),
            s_commitments: self.s_commitments.clone(),
            b_commitments: self.b_commitments.clone(),
        }
    }

    /// The share-sealing secret `c`.
    pub fn c(&self) -> &NonZeroScalar {
        &self.c
    }

    /// The pairwise secret `s`.
    pub fn s(&self) -> &NonZeroScalar {
        &self.s
    }

    /// The self-mask seed `b`.
    pub fn b(&self) -> &Scalar {
        self.b.as_ref()
    }

    /// The (s-share, b-share) dealt to the holder at `x` (1..=n).
    pub fn shares_for(&self, x: u32) -> Option<(&Share, &Share)> {
        let i = (x as usize).checked_sub(1)?;
        Some((self.s_shares.get(i)?, self.b_shares.get(i)?))
    }
}

impl Drop for RoundSecrets {
    fn drop(&mut self) {
        self.c.zeroize();
        self.s.zeroize();
        self.b.zeroize();
    }
}

impl fmt::Debug for RoundSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoundSecrets(<secret>)")
    }
}

/// A node's advertised keys for one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// The node's certificate fingerprint.
    pub fp: Fingerprint,
    /// `C_u`: share-sealing public key.
    pub c_pub: PublicKey,
    /// `S_u`: pairwise public key.
    pub s_pub: PublicKey,
    /// `B_u = b·G`.
    pub b_pub: PublicKey,
    /// Feldman commitments of the `s` dealing (`A_0 = S_u`).
    pub s_commitments: Commitments,
    /// Feldman commitments of the `b` dealing (`A_0 = B_u`).
    pub b_commitments: Commitments,
}

impl Advert {
    /// Appends `fp ‖ C ‖ S ‖ B ‖ com(s) ‖ com(b)` (the wire form, and the tail of the
    /// signed message).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.fp.as_bytes());
        out.extend_from_slice(&point_to_bytes(&self.c_pub));
        out.extend_from_slice(&point_to_bytes(&self.s_pub));
        out.extend_from_slice(&point_to_bytes(&self.b_pub));
        self.s_commitments.encode(out);
        self.b_commitments.encode(out);
    }

    /// Decodes an advert from the front of `bytes`; returns it and the rest.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Advert, &[u8])> {
        const HEAD: usize = FP_LEN + 3 * shamir::POINT_LEN;
        if bytes.len() < HEAD {
            return Err(Error::Truncated("advert"));
        }
        let (head, rest) = bytes.split_at(HEAD);
        let mut fp = [0u8; FP_LEN];
        fp.copy_from_slice(&head[..FP_LEN]);
        let point = |i: usize, what| {
            let at = FP_LEN + i * shamir::POINT_LEN;
            shamir::point_from_bytes(&head[at..at + shamir::POINT_LEN]).ok_or(Error::BadPoint(what))
        };
        let (c_pub, s_pub, b_pub) = (point(0, "C")?, point(1, "S")?, point(2, "B")?);
        let (s_commitments, rest) = Commitments::decode_prefix(rest)?;
        let (b_commitments, rest) = Commitments::decode_prefix(rest)?;
        let advert = Advert {
            fp: fp_from_bytes(&fp),
            c_pub,
            s_pub,
            b_pub,
            s_commitments,
            b_commitments,
        };
        Ok((advert, rest))
    }

    /// `str("secagg/2 advertise") ‖ ctx ‖ fp_u ‖ C_u ‖ S_u ‖ B_u ‖ com(s) ‖ com(b)`.
    pub fn signed_message(&self, ctx: &Ctx) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, ADVERTISE_LABEL);
        out.extend_from_slice(ctx.encoded());
        self.encode(&mut out);
        out
    }

    /// Checks the commitments against the round: t points each, `A_0` = the public key.
    pub fn check_commitments(&self, ctx: &Ctx) -> Result<()> {
        let t = ctx.threshold();
        for (which, com, key) in [
            ("s", &self.s_commitments, &self.s_pub),
            ("b", &self.b_commitments, &self.b_pub),
        ] {
            if com.threshold() != t {
                return Err(Error::CommitmentCount {
                    which,
                    got: com.threshold(),
                    expected: t,
                });
            }
            if com.constant() != key {
                return Err(Error::CommitmentConstant(which));
            }
        }
        Ok(())
    }
}

/// Signs an advert with the node's certified key (RFC 6979).
pub fn sign_advert(key: &PartyKey, ctx: &Ctx, advert: &Advert) -> Signature {
    key.signing_key().sign(&advert.signed_message(ctx))
}

/// Checks an advert's commitments against ctx, then its signature under the certified key
/// of the node it names (the caller looks `advert.fp` up in its own registry).
pub fn verify_advert(
    cert_pub: &PublicKey,
    ctx: &Ctx,
    advert: &Advert,
    sig: &Signature,
) -> Result<()> {
    advert.check_commitments(ctx)?;
    verify(cert_pub, &advert.signed_message(ctx), sig)
}

pub(super) fn verify(cert_pub: &PublicKey, msg: &[u8], sig: &Signature) -> Result<()> {
    VerifyingKey::from(*cert_pub)
        .verify(msg, sig)
        .map_err(|_| Error::BadSignature)
}
