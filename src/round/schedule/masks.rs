//! Mask keys: the pairwise keys `k_uv` and the self-mask key.

use p256::{NonZeroScalar, PublicKey, Scalar};
use zeroize::{Zeroize, Zeroizing};

use crate::party::Fingerprint;
use crate::secagg::keys::{MaskKey, Sign};
use crate::secagg::prg::PeerMask;
use crate::secagg::shamir::{self, point_to_bytes};

use super::ctx::Ctx;
use super::encoding::{ecdh_x, hkdf, put_str};
use super::{PAIRWISE_SALT, SELF_LABEL};

/// `ctx ‖ fp_lo ‖ fp_hi ‖ S_lo ‖ S_hi`: the pairwise HKDF info.
pub(super) fn pairwise_info(
    ctx: &Ctx,
    fp_a: &Fingerprint,
    s_a: &PublicKey,
    fp_b: &Fingerprint,
    s_b: &PublicKey,
) -> Vec<u8> {
    let ((fp_lo, s_lo), (fp_hi, s_hi)) = if fp_a <= fp_b {
        ((fp_a, s_a), (fp_b, s_b))
    } else {
        ((fp_b, s_b), (fp_a, s_a))
    };
    let mut info = ctx.encoded().to_vec();
    info.extend_from_slice(fp_lo.as_bytes());
    info.extend_from_slice(fp_hi.as_bytes());
    info.extend_from_slice(&point_to_bytes(s_lo));
    info.extend_from_slice(&point_to_bytes(s_hi));
    info
}

/// `k_uv` from the ECDH x-coordinate of the pair's `s` keys (known-answer tests); the
/// argument order of the two parties does not matter.
pub fn pairwise_key_from_shared(
    x: &[u8],
    ctx: &Ctx,
    fp_a: &Fingerprint,
    s_a: &PublicKey,
    fp_b: &Fingerprint,
    s_b: &PublicKey,
) -> MaskKey {
    let mut out = [0u8; 16];
    hkdf(
        Some(PAIRWISE_SALT),
        x,
        &pairwise_info(ctx, fp_a, s_a, fp_b, s_b),
        &mut out,
    );
    let key = MaskKey(out);
    out.zeroize();
    key
}

/// Our side of the pair (u, v): `k_uv` and δ(u, v) (+ when our fingerprint sorts first).
/// The researcher calls it with a rebuilt `s_u` of a dropped node, after checking
/// `s_u·G = S_u`.
pub fn pairwise_mask(
    own_s: &NonZeroScalar,
    own_fp: &Fingerprint,
    own_s_pub: &PublicKey,
    peer_fp: &Fingerprint,
    peer_s_pub: &PublicKey,
    ctx: &Ctx,
) -> PeerMask {
    let x = ecdh_x(own_s, peer_s_pub);
    PeerMask {
        key: pairwise_key_from_shared(&x[..], ctx, own_fp, own_s_pub, peer_fp, peer_s_pub),
        sign: Sign::for_pair(own_fp, peer_fp),
    }
}

/// `HKDF-SHA256(salt = none, ikm = be32(b), info = str("secagg/2 self") ‖ ctx ‖ fp_u, 16)`.
pub fn self_mask_key(b: &Scalar, ctx: &Ctx, fp: &Fingerprint) -> MaskKey {
    let ikm = Zeroizing::new(shamir::scalar_to_bytes(b));
    let mut info = Vec::with_capacity(ctx.encoded().len() + 64);
    put_str(&mut info, SELF_LABEL);
    info.extend_from_slice(ctx.encoded());
    info.extend_from_slice(fp.as_bytes());
    let mut out = [0u8; 16];
    hkdf(None, &ikm[..], &info, &mut out);
    let key = MaskKey(out);
    out.zeroize();
    key
}
