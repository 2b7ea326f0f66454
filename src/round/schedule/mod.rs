//! Protocol 2's key schedule and signed messages: pure functions over bytes and keys.
//!
//! Everything here is specified byte for byte in `docs/protocol.md` and checked against
//! an independent implementation in `tests/kat2.rs`. In short (`‖` concatenates):
//!
//! ```text
//! str(s)   = u32be(len) ‖ utf8          bytes(b) = u32be(len) ‖ b
//! set(F)   = u32be(count) ‖ fp…          (raw 32-byte fingerprints, strictly increasing)
//! ctx      = str("secagg/2") ‖ str(federation) ‖ u64be(round) ‖ fp_researcher ‖ set(invitees)
//!            ‖ u64be(bits of clip as f64) ‖ u32be(bits) ‖ u32be(modulus bits) ‖ u32be(wire bytes)
//!            ‖ u64be(max weight) ‖ u32be(t) ‖ u64be(d) ‖ layout digest[32]
//!            ‖ (u8 0 | u8 1 ‖ model digest[32]) ‖ str(label)
//! advert   = str("secagg/2 advertise") ‖ ctx ‖ fp_u ‖ C_u ‖ S_u ‖ B_u ‖ com(s) ‖ com(b)
//! K_{s→r}  = HKDF-SHA256(salt = none, x(ECDH(c_s, C_r)), str("secagg/2 share") ‖ ctx ‖ fp_s ‖ fp_r, 32)
//! k_uv     = HKDF-SHA256(salt = "secagg/2 pairwise", x(ECDH(s_u, S_v)), ctx ‖ fp_lo ‖ fp_hi ‖ S_lo ‖ S_hi, 16)
//! self key = HKDF-SHA256(salt = none, be32(b), str("secagg/2 self") ‖ ctx ‖ fp_u, 16)
//! consist. = str("secagg/2 consistency") ‖ ctx ‖ SHA-256(bytes(advert_v) for v in U2) ‖ set(U2) ‖ set(U3)
//! ```
//!
//! Signatures are ECDSA P-256/SHA-256, RFC 6979, 64 bytes `r ‖ s`. Points are compressed
//! SEC1 (33 bytes), scalars 32 bytes big-endian. This module holds no round state: the
//! node and researcher state machines call it.

mod advert;
mod consistency;
mod ctx;
mod encoding;
mod masks;
mod seal;

pub use advert::{Advert, RoundSecrets, sign_advert, verify_advert};
pub use consistency::{ConsistencyMessage, sign_consistency, verify_consistency};
pub use ctx::{
    Ctx, CtxParams, container_from_name, container_name, dtype_from_name, dtype_name,
    layout_digest, layout_values, put_layout,
};
pub use encoding::{
    find_same_x, fp_from_bytes, is_set, is_subset, put_bytes, put_set, put_str, same_x,
    sig_from_bytes, sig_to_bytes,
};
pub use masks::{pairwise_key_from_shared, pairwise_mask, self_mask_key};
pub use seal::{ShareKey, SharePair, share_info};

use crate::secagg::shamir;

/// Version label, the first field of `ctx`.
pub const CTX_LABEL: &str = "secagg/2";
/// Domain label of the advert signature.
pub const ADVERTISE_LABEL: &str = "secagg/2 advertise";
/// Domain label of the share-sealing key.
pub const SHARE_LABEL: &str = "secagg/2 share";
/// HKDF salt of pairwise mask keys (raw ASCII, no length prefix).
pub const PAIRWISE_SALT: &[u8] = b"secagg/2 pairwise";
/// Domain label of the self-mask key.
pub const SELF_LABEL: &str = "secagg/2 self";
/// Domain label of the consistency signature.
pub const CONSISTENCY_LABEL: &str = "secagg/2 consistency";
/// Domain label of the layout digest.
pub const LAYOUT_LABEL: &str = "secagg/2 layout";
/// Most invitees a round may have.
pub const MAX_INVITEES: usize = 10_000;
/// Longest federation name or label, in bytes.
pub const MAX_NAME: usize = 1024;
/// Bytes of a fingerprint.
pub const FP_LEN: usize = 32;
/// Bytes of a signature (`r ‖ s`).
pub const SIG_LEN: usize = 64;
/// Bytes of a share plaintext: `fp_s ‖ fp_r ‖ s-share ‖ b-share`.
pub const SHARE_PLAIN_LEN: usize = 2 * FP_LEN + 2 * shamir::SCALAR_LEN;
/// Bytes of a sealed share: plaintext plus the 16-byte GCM tag.
pub const SEALED_LEN: usize = SHARE_PLAIN_LEN + 16;

/// Why a key-schedule step or a check failed. The caller knows which party sent the
/// input and names it; these variants say what was wrong with it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A ctx parameter is out of range (our caller's bug, or a hostile announcement).
    #[error("invalid round context: {field} {reason}")]
    Ctx {
        /// The parameter.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A fingerprint set is not strictly increasing (unsorted or with a duplicate).
    #[error("the {0} set is not sorted by fingerprint or has a duplicate")]
    Unsorted(&'static str),
    /// A set is not a subset of another one.
    #[error("{0} is not a subset of {1}")]
    NotSubset(&'static str, &'static str),
    /// An advert's commitment vector does not have t points.
    #[error("advert has {got} {which} commitments, the round's threshold is {expected}")]
    CommitmentCount {
        /// `s` or `b`.
        which: &'static str,
        /// Points present.
        got: usize,
        /// t.
        expected: usize,
    },
    /// An advert's `A_0` is not its announced public key.
    #[error("advert's first {0} commitment is not its {0} public key")]
    CommitmentConstant(&'static str),
    /// A signature does not verify under the signer's certified key.
    #[error("signature does not verify under the signer's certified key")]
    BadSignature,
    /// A sealed share has the wrong length.
    #[error("sealed share has {0} bytes, expected {SEALED_LEN}")]
    SealedLength(usize),
    /// A sealed share failed authentication (wrong key, wrong ctx or tampered).
    #[error("sealed share does not authenticate")]
    SealedTag,
    /// A sealed share names other parties than the ones it travelled between.
    #[error("sealed share names other parties than its sender and receiver")]
    SealedParties,
    /// A share inside a sealed share is not a canonical scalar.
    #[error("sealed share holds a non-canonical scalar")]
    SealedScalar,
    /// A share does not match its dealer's commitments.
    #[error("{0} share does not match the dealer's commitments")]
    ShareCommitment(&'static str),
    /// Sealing failed inside AES-GCM (cannot happen for a 128-byte plaintext).
    #[error("AES-GCM refused to seal a share")]
    Seal,
    /// Encoded data ends early.
    #[error("{0} is truncated")]
    Truncated(&'static str),
    /// A point is not a compressed, non-identity P-256 point.
    #[error("{0} is not a valid compressed P-256 point")]
    BadPoint(&'static str),
    /// The random source failed.
    #[error("the random number generator failed")]
    Rng,
    /// Secret sharing failed.
    #[error(transparent)]
    Shamir(#[from] shamir::Error),
}

type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
pub(crate) mod tests;
