//! The key schedule: from registered certificates to per-use mask keys.
//!
//! ```text
//! shared   = x-coordinate of ECDH(own P-256 key, peer's certified P-256 key)   (32 bytes)
//! lo, hi   = the two certificate fingerprints (SHA-256 of DER), sorted bytewise
//! pairwise = HKDF-SHA256(salt = lo || hi, ikm = shared, info = "secagg v1 pairwise", L = 32)
//! context  = str(federation) || u64be(round) || fp_researcher (32 bytes)
//!            || u32be(count) || str(id_1) || ... || str(id_count)   (ids sorted, unique)
//!            || str(label)                 where str(s) = u32be(len(s)) || utf8(s)
//! mask_key = HKDF-SHA256(salt = empty, ikm = pairwise, info = "secagg v1.1 mask" || context, L = 16)
//! mask     = AES-128-CTR keystream under mask_key, IV = 0, 64-bit big-endian block counter;
//!            element i uses keystream bytes [i*w, (i+1)*w) as a little-endian w-byte word.
//! sign     = +mask for the party whose fingerprint sorts first, -mask for the other.
//! ```
//! File mode has no attempts: a node masks once per (federation, round, label), and the
//! context binds the researcher the file is for. (Rounds use protocol 2's own schedule,
//! `round::schedule`.) Raw ECDH output is never used as a key. See `docs/protocol.md` for the rationale and
//! `tests/data/kat.json` for known-answer vectors.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::party::Fingerprint;
use crate::party::PartyId;
use crate::pki::identity::PartyKey;

/// Version label bound into every derivation.
pub const PAIRWISE_INFO: &[u8] = b"secagg v1 pairwise";
/// Label for file-mode mask keys (v1.1: the researcher's fingerprint is bound, no attempt).
pub const MASK_INFO: &[u8] = b"secagg v1.1 mask";

/// The long-term secret two parties share, derived from their certified keys.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PairwiseSecret([u8; 32]);

impl fmt::Debug for PairwiseSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairwiseSecret(<secret>)")
    }
}

impl PairwiseSecret {
    /// ECDH + HKDF between our key and a peer's certified public key.
    pub fn derive(
        own: &PartyKey,
        own_fp: &Fingerprint,
        peer: &p256::PublicKey,
        peer_fp: &Fingerprint,
    ) -> PairwiseSecret {
        let shared = p256::ecdh::diffie_hellman(own.secret_scalar(), peer.as_affine());
        Self::from_shared(shared.raw_secret_bytes().as_slice(), own_fp, peer_fp)
    }

    /// HKDF step alone, from the raw ECDH x-coordinate (exposed for known-answer tests).
    pub fn from_shared(shared: &[u8], a: &Fingerprint, b: &Fingerprint) -> PairwiseSecret {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(lo.as_bytes());
        salt[32..].copy_from_slice(hi.as_bytes());
        let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 255*32 limit.
        if hk.expand(PAIRWISE_INFO, &mut out).is_err() {
            unreachable!("HKDF output length is fixed and valid");
        }
        PairwiseSecret(out)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_ids(out: &mut Vec<u8>, ids: &[PartyId]) {
    out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for p in ids {
        put_str(out, p.as_str());
    }
}

/// What a file-mode mask is bound to. Two uses differ in at least one field, so a pair
/// never reuses a mask stream across federations, rounds, researchers, participant sets
/// or labels; the journal refuses a second use of the same (federation, round, label).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskContext {
    /// Federation id.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// Certificate fingerprint of the researcher the masked file is for (in a header:
    /// 64 lowercase hex digits).
    #[serde(with = "crate::party::fingerprint_hex")]
    pub researcher: Fingerprint,
    /// Participants, sorted and unique.
    pub participants: Vec<PartyId>,
    /// Which vector of the round ("update").
    pub label: String,
}

impl MaskContext {
    /// The context's canonical encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, &self.federation);
        out.extend_from_slice(&self.round.to_be_bytes());
        out.extend_from_slice(self.researcher.as_bytes());
        put_ids(&mut out, &self.participants);
        put_str(&mut out, &self.label);
        out
    }
}

/// A per-use AES-128 key for one pair and one [`MaskContext`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MaskKey(pub(crate) [u8; 16]);

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskKey(<secret>)")
    }
}

impl MaskKey {
    /// A key from raw bytes (known-answer tests and benches; protocols derive theirs).
    pub fn from_bytes(bytes: [u8; 16]) -> MaskKey {
        MaskKey(bytes)
    }

    /// Derives the per-use key for a masked file.
    pub fn derive(pairwise: &PairwiseSecret, ctx: &MaskContext) -> MaskKey {
        Self::expand(pairwise, MASK_INFO, &ctx.encode())
    }

    fn expand(pairwise: &PairwiseSecret, label: &[u8], context: &[u8]) -> MaskKey {
        let hk = Hkdf::<Sha256>::new(None, &pairwise.0);
        let mut info = label.to_vec();
        info.extend_from_slice(context);
        let mut out = [0u8; 16];
        if hk.expand(&info, &mut out).is_err() {
            unreachable!("HKDF output length is fixed and valid");
        }
        MaskKey(out)
    }

    /// The key bytes (for known-answer tests).
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }
}

/// Whether we add or subtract a pair's mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// Our fingerprint sorts first.
    Add,
    /// The peer's fingerprint sorts first.
    Sub,
}

impl Sign {
    /// The sign for our side of a pair.
    pub fn for_pair(own: &Fingerprint, peer: &Fingerprint) -> Sign {
        if own < peer { Sign::Add } else { Sign::Sub }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_secret() {
        let a = PartyKey::generate().expect("rng");
        let b = PartyKey::generate().expect("rng");
        let fa = Fingerprint::of_der(b"a");
        let fb = Fingerprint::of_der(b"b");
        let pa = p256::PublicKey::from(a.signing_key().verifying_key());
        let pb = p256::PublicKey::from(b.signing_key().verifying_key());
        let ab = PairwiseSecret::derive(&a, &fa, &pb, &fb);
        let ba = PairwiseSecret::derive(&b, &fb, &pa, &fa);
        assert_eq!(ab.0, ba.0);
        assert_ne!(Sign::for_pair(&fa, &fb), Sign::for_pair(&fb, &fa));
        assert_eq!(format!("{ab:?}"), "PairwiseSecret(<secret>)");
        let ctx = MaskContext {
            federation: "f".into(),
            round: 1,
            researcher: Fingerprint::of_der(b"r"),
            participants: vec!["a".parse().expect("id"), "b".parse().expect("id")],
            label: "update".into(),
        };
        let k1 = MaskKey::derive(&ab, &ctx);
        let k2 = MaskKey::derive(
            &ab,
            &MaskContext {
                researcher: Fingerprint::of_der(b"another researcher"),
                ..ctx.clone()
            },
        );
        let k3 = MaskKey::derive(
            &ab,
            &MaskContext {
                round: 2,
                ..ctx.clone()
            },
        );
        assert_ne!(k1.0, k2.0);
        assert_ne!(k1.0, k3.0);
        assert_eq!(format!("{k1:?}"), "MaskKey(<secret>)");
    }
}
