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

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::{Aes256Gcm, Key};
use hkdf::Hkdf;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::rand_core::TryCryptoRng;
use p256::{NonZeroScalar, PublicKey, Scalar};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::layout::{Container, DType, Layout};
use crate::party::Fingerprint;
use crate::pki::identity::PartyKey;
use crate::secagg::keys::{MaskKey, Sign};
use crate::secagg::prg::PeerMask;
use crate::secagg::shamir::{self, Commitments, Share, point_to_bytes};

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

// ---------------------------------------------------------------------------------------
// Primitive encodings

/// Appends `str(s) = u32be(len) ‖ utf8`.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends `bytes(b) = u32be(len) ‖ b`.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A fingerprint from its raw 32 bytes. `certificate` has no byte constructor yet, so
/// this goes through its hex parser.
pub fn fp_from_bytes(bytes: &[u8; FP_LEN]) -> Fingerprint {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match hex.parse() {
        Ok(fp) => fp,
        // invariant: 64 hex digits always parse as a fingerprint.
        Err(_) => unreachable!("64 hex digits parse as a fingerprint"),
    }
}

/// Whether fingerprints are strictly increasing by raw bytes (sorted, no duplicate).
pub fn is_set(fps: &[Fingerprint]) -> bool {
    fps.windows(2).all(|w| w[0] < w[1])
}

/// Appends `set(F) = u32be(count) ‖ fp…`; refuses an unsorted or duplicated input.
pub fn put_set(out: &mut Vec<u8>, what: &'static str, fps: &[Fingerprint]) -> Result<()> {
    if !is_set(fps) {
        return Err(Error::Unsorted(what));
    }
    out.extend_from_slice(&(fps.len() as u32).to_be_bytes());
    for fp in fps {
        out.extend_from_slice(fp.as_bytes());
    }
    Ok(())
}

/// Whether every element of the set `a` is in the set `b` (both strictly increasing).
pub fn is_subset(a: &[Fingerprint], b: &[Fingerprint]) -> bool {
    a.iter().all(|x| b.binary_search(x).is_ok())
}

/// A signature as 64 bytes `r ‖ s`.
pub fn sig_to_bytes(sig: &Signature) -> [u8; SIG_LEN] {
    sig.to_bytes().into()
}

/// A signature from 64 bytes `r ‖ s` (r and s in 1..n).
pub fn sig_from_bytes(bytes: &[u8]) -> Option<Signature> {
    if bytes.len() != SIG_LEN {
        return None;
    }
    Signature::from_slice(bytes).ok()
}

/// Whether two points share an x-coordinate (equal, or negatives of each other).
pub fn same_x(a: &PublicKey, b: &PublicKey) -> bool {
    point_to_bytes(a)[1..] == point_to_bytes(b)[1..]
}

/// The first two indices whose points share an x-coordinate, if any. A node runs this over
/// every C and S key of U1 together: equal or opposite keys let a party steer another's
/// shared secrets.
pub fn find_same_x(points: &[PublicKey]) -> Option<(usize, usize)> {
    let mut xs: Vec<([u8; 32], usize)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut x = [0u8; 32];
            x.copy_from_slice(&point_to_bytes(p)[1..]);
            (x, i)
        })
        .collect();
    xs.sort_unstable();
    xs.windows(2)
        .find(|w| w[0].0 == w[1].0)
        .map(|w| (w[0].1.min(w[1].1), w[0].1.max(w[1].1)))
}

fn hkdf(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    // invariant: outputs are 16 or 32 bytes, far below HKDF-SHA256's 255·32 limit.
    if hk.expand(info, out).is_err() {
        unreachable!("HKDF output length is fixed and valid");
    }
}

fn ecdh_x(own: &NonZeroScalar, peer: &PublicKey) -> Zeroizing<[u8; 32]> {
    let shared = p256::ecdh::diffie_hellman(own, peer.as_affine());
    let mut x = Zeroizing::new([0u8; 32]);
    x.copy_from_slice(shared.raw_secret_bytes().as_slice());
    x
}

// ---------------------------------------------------------------------------------------
// Layout digest and ctx

/// The name a container has in the layout digest and on the wire.
pub fn container_name(c: Container) -> &'static str {
    match c {
        Container::Npy => "npy",
        Container::Safetensors => "safetensors",
    }
}

/// The inverse of [`container_name`].
pub fn container_from_name(s: &str) -> Option<Container> {
    match s {
        "npy" => Some(Container::Npy),
        "safetensors" => Some(Container::Safetensors),
        _ => None,
    }
}

/// The name a dtype has in the layout digest and on the wire.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
    }
}

/// The inverse of [`dtype_name`].
pub fn dtype_from_name(s: &str) -> Option<DType> {
    match s {
        "f32" => Some(DType::F32),
        "f64" => Some(DType::F64),
        _ => None,
    }
}

/// Appends the layout's canonical bytes: `str(container) ‖ u32be(#tensors) ‖ per tensor
/// str(name) ‖ str(dtype) ‖ u32be(ndim) ‖ u64be(dim)…`.
pub fn put_layout(out: &mut Vec<u8>, layout: &Layout) {
    put_str(out, container_name(layout.container));
    out.extend_from_slice(&(layout.tensors.len() as u32).to_be_bytes());
    for t in &layout.tensors {
        put_str(out, &t.name);
        put_str(out, dtype_name(t.dtype));
        out.extend_from_slice(&(t.shape.len() as u32).to_be_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_be_bytes());
        }
    }
}

/// SHA-256(`str("secagg/2 layout")` ‖ the layout's canonical bytes).
pub fn layout_digest(layout: &Layout) -> [u8; 32] {
    let mut buf = Vec::new();
    put_str(&mut buf, LAYOUT_LABEL);
    put_layout(&mut buf, layout);
    Sha256::digest(&buf).into()
}

/// The number of values a layout holds (d, without the weight word), or `None` on overflow.
pub fn layout_values(layout: &Layout) -> Option<u64> {
    layout.tensors.iter().try_fold(0u64, |acc, t| {
        let n = t.shape.iter().try_fold(1u64, |p, d| p.checked_mul(*d))?;
        acc.checked_add(n)
    })
}

/// Everything a round binds, as a plain struct; [`Ctx::new`] checks it.
#[derive(Clone, Debug, PartialEq)]
pub struct CtxParams {
    /// The roster fingerprint (hex) when the federation came from a roster, else its name.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// The researcher's fingerprint, as pinned by TLS.
    pub researcher: Fingerprint,
    /// Invited nodes, strictly increasing.
    pub invitees: Vec<Fingerprint>,
    /// Clip bound c (finite, > 0).
    pub clip: f64,
    /// Quantization bits b.
    pub bits: u32,
    /// k of the modulus 2^k: 32 or 64.
    pub modulus_bits: u32,
    /// Bytes per word on the wire (1..=k/8).
    pub word_bytes: u32,
    /// Largest weight a node may use (≥ 1).
    pub max_weight: u64,
    /// Threshold t (1..=n).
    pub threshold: u32,
    /// d: values per input, without the weight word (≥ 1).
    pub length: u64,
    /// [`layout_digest`] of the tensors.
    pub layout_digest: [u8; 32],
    /// Digest of the global model the round is about, when announced.
    pub model_digest: Option<[u8; 32]>,
    /// The vector label ("update").
    pub label: String,
}

/// A checked round context with its encoding computed once.
#[derive(Clone, Debug, PartialEq)]
pub struct Ctx {
    params: CtxParams,
    encoded: Vec<u8>,
}

impl Ctx {
    /// Checks the parameters (structure only: a node's policy is checked elsewhere) and
    /// encodes them.
    pub fn new(params: CtxParams) -> Result<Ctx> {
        let bad = |field, reason: String| Err(Error::Ctx { field, reason });
        let p = &params;
        if p.federation.is_empty() || p.federation.len() > MAX_NAME {
            return bad("federation", format!("must have 1..={MAX_NAME} bytes"));
        }
        if p.label.is_empty() || p.label.len() > MAX_NAME {
            return bad("label", format!("must have 1..={MAX_NAME} bytes"));
        }
        if p.invitees.is_empty() || p.invitees.len() > MAX_INVITEES {
            return bad("invitees", format!("must number 1..={MAX_INVITEES}"));
        }
        if !is_set(&p.invitees) {
            return Err(Error::Unsorted("invitees"));
        }
        if p.invitees.binary_search(&p.researcher).is_ok() {
            return bad("invitees", "include the researcher".into());
        }
        if p.threshold == 0 || p.threshold as usize > p.invitees.len() {
            return bad("threshold", format!("{} is not in 1..=n", p.threshold));
        }
        if !(p.clip.is_finite() && p.clip > 0.0) {
            return bad(
                "clip",
                format!("{} is not a positive finite number", p.clip),
            );
        }
        if p.modulus_bits != 32 && p.modulus_bits != 64 {
            return bad(
                "modulus bits",
                format!("{} is not 32 or 64", p.modulus_bits),
            );
        }
        if p.word_bytes == 0 || p.word_bytes > p.modulus_bits / 8 {
            return bad("wire bytes", format!("{} is not in 1..=k/8", p.word_bytes));
        }
        if p.bits < 2 || p.bits > p.modulus_bits {
            return bad("bits", format!("{} is not in 2..=k", p.bits));
        }
        if p.max_weight == 0 {
            return bad("max weight", "is zero".into());
        }
        if p.length == 0 {
            return bad("vector length", "is zero".into());
        }
        let encoded = encode_ctx(p)?;
        Ok(Ctx { params, encoded })
    }

    /// The parameters.
    pub fn params(&self) -> &CtxParams {
        &self.params
    }

    /// The canonical encoding (see the module docs).
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The invitees, strictly increasing.
    pub fn invitees(&self) -> &[Fingerprint] {
        &self.params.invitees
    }

    /// t.
    pub fn threshold(&self) -> usize {
        self.params.threshold as usize
    }

    /// A holder's Shamir x-coordinate: 1 + its index among the sorted invitees.
    pub fn x_of(&self, fp: &Fingerprint) -> Option<u32> {
        self.params
            .invitees
            .binary_search(fp)
            .ok()
            .map(|i| i as u32 + 1)
    }
}

fn encode_ctx(p: &CtxParams) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256 + FP_LEN * p.invitees.len());
    put_str(&mut out, CTX_LABEL);
    put_str(&mut out, &p.federation);
    out.extend_from_slice(&p.round.to_be_bytes());
    out.extend_from_slice(p.researcher.as_bytes());
    put_set(&mut out, "invitees", &p.invitees)?;
    out.extend_from_slice(&p.clip.to_bits().to_be_bytes());
    out.extend_from_slice(&p.bits.to_be_bytes());
    out.extend_from_slice(&p.modulus_bits.to_be_bytes());
    out.extend_from_slice(&p.word_bytes.to_be_bytes());
    out.extend_from_slice(&p.max_weight.to_be_bytes());
    out.extend_from_slice(&p.threshold.to_be_bytes());
    out.extend_from_slice(&p.length.to_be_bytes());
    out.extend_from_slice(&p.layout_digest);
    match &p.model_digest {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            out.extend_from_slice(d);
        }
    }
    put_str(&mut out, &p.label);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Per-round secrets and adverts

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

fn verify(cert_pub: &PublicKey, msg: &[u8], sig: &Signature) -> Result<()> {
    VerifyingKey::from(*cert_pub)
        .verify(msg, sig)
        .map_err(|_| Error::BadSignature)
}

// ---------------------------------------------------------------------------------------
// Share sealing

/// `str("secagg/2 share") ‖ ctx ‖ fp_sender ‖ fp_receiver`: the HKDF info and the AAD.
pub fn share_info(ctx: &Ctx, sender: &Fingerprint, receiver: &Fingerprint) -> Vec<u8> {
    let mut out = Vec::with_capacity(ctx.encoded().len() + 96);
    put_str(&mut out, SHARE_LABEL);
    out.extend_from_slice(ctx.encoded());
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(receiver.as_bytes());
    out
}

/// The AES-256-GCM key for shares from `sender` to `receiver` (one direction of a pair).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ShareKey([u8; 32]);

impl fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShareKey(<secret>)")
    }
}

/// A decrypted pair of shares for one holder: `(s-share, b-share)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SharePair {
    /// The share of the dealer's `s`.
    pub s: Scalar,
    /// The share of the dealer's `b`.
    pub b: Scalar,
}

impl fmt::Debug for SharePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharePair(<secret>)")
    }
}

impl SharePair {
    /// Checks both shares against the dealer's advert, at the holder's x.
    pub fn verify(&self, dealer: &Advert, x: u32) -> Result<()> {
        if !dealer.s_commitments.verify(x, &self.s) {
            return Err(Error::ShareCommitment("s"));
        }
        if !dealer.b_commitments.verify(x, &self.b) {
            return Err(Error::ShareCommitment("b"));
        }
        Ok(())
    }
}

impl ShareKey {
    /// The key from our `c` and the peer's `C`. The sender calls it with its own `c` and
    /// the receiver's `C`; the receiver with its own `c` and the sender's `C`; both pass
    /// (sender, receiver) in that order.
    pub fn derive(
        own_c: &NonZeroScalar,
        peer_c: &PublicKey,
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
    ) -> ShareKey {
        ShareKey::from_shared(&ecdh_x(own_c, peer_c)[..], ctx, sender, receiver)
    }

    /// The HKDF step alone, from the ECDH x-coordinate (known-answer tests).
    pub fn from_shared(
        x: &[u8],
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
    ) -> ShareKey {
        let mut out = [0u8; 32];
        hkdf(None, x, &share_info(ctx, sender, receiver), &mut out);
        ShareKey(out)
    }

    /// The key bytes (known-answer tests).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Seals `fp_s ‖ fp_r ‖ s-share ‖ b-share` into 144 bytes `ciphertext ‖ tag`.
    pub fn seal(
        &self,
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
        shares: &SharePair,
    ) -> Result<[u8; SEALED_LEN]> {
        let mut buf = [0u8; SEALED_LEN];
        buf[..32].copy_from_slice(sender.as_bytes());
        buf[32..64].copy_from_slice(receiver.as_bytes());
        buf[64..96].copy_from_slice(&shamir::scalar_to_bytes(&shares.s));
        buf[96..128].copy_from_slice(&shamir::scalar_to_bytes(&shares.b));
        let aad = share_info(ctx, sender, receiver);
        let tag = self.cipher().encrypt_inout_detached(
            &Nonce::<Aes256Gcm>::default(),
            &aad,
            (&mut buf[..SHARE_PLAIN_LEN]).into(),
        );
        match tag {
            Ok(tag) => {
                buf[SHARE_PLAIN_LEN..].copy_from_slice(&tag);
                Ok(buf)
            }
            Err(_) => {
                buf.zeroize();
                Err(Error::Seal)
            }
        }
    }

    /// Opens a sealed share: length, tag, then the two fingerprints inside, then the
    /// scalars' encodings. The caller still checks them against the commitments
    /// ([`SharePair::verify`]).
    pub fn open(
        &self,
        ctx: &Ctx,
        sender: &Fingerprint,
        receiver: &Fingerprint,
        sealed: &[u8],
    ) -> Result<SharePair> {
        if sealed.len() != SEALED_LEN {
            return Err(Error::SealedLength(sealed.len()));
        }
        let mut buf = Zeroizing::new([0u8; SHARE_PLAIN_LEN]);
        buf.copy_from_slice(&sealed[..SHARE_PLAIN_LEN]);
        let tag = Tag::<Aes256Gcm>::try_from(&sealed[SHARE_PLAIN_LEN..])
            .map_err(|_| Error::SealedLength(sealed.len()))?;
        let aad = share_info(ctx, sender, receiver);
        self.cipher()
            .decrypt_inout_detached(
                &Nonce::<Aes256Gcm>::default(),
                &aad,
                (&mut buf[..]).into(),
                &tag,
            )
            .map_err(|_| Error::SealedTag)?;
        if buf[..32] != sender.as_bytes()[..] || buf[32..64] != receiver.as_bytes()[..] {
            return Err(Error::SealedParties);
        }
        let s = shamir::scalar_from_bytes(&buf[64..96]).ok_or(Error::SealedScalar)?;
        let b = shamir::scalar_from_bytes(&buf[96..128]).ok_or(Error::SealedScalar)?;
        Ok(SharePair { s, b })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0))
    }
}

// ---------------------------------------------------------------------------------------
// Mask keys

/// `ctx ‖ fp_lo ‖ fp_hi ‖ S_lo ‖ S_hi`: the pairwise HKDF info.
fn pairwise_info(
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

// ---------------------------------------------------------------------------------------
// Consistency check

/// The message every node in U3 signs: `str("secagg/2 consistency") ‖ ctx ‖ H ‖ set(U2) ‖
/// set(U3)`, with H = SHA-256 over `bytes(advert signed message)` of each node in U2 in
/// fingerprint order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyMessage(Vec<u8>);

impl ConsistencyMessage {
    /// Builds the message from the adverts of U2 (strictly increasing by fingerprint; U2 is
    /// their fingerprints) and U3 (strictly increasing, a subset of U2).
    pub fn new(ctx: &Ctx, u2_adverts: &[&Advert], u3: &[Fingerprint]) -> Result<Self> {
        let u2: Vec<Fingerprint> = u2_adverts.iter().map(|a| a.fp).collect();
        if !is_set(&u2) {
            return Err(Error::Unsorted("U2"));
        }
        if !is_set(u3) {
            return Err(Error::Unsorted("U3"));
        }
        if !is_subset(u3, &u2) {
            return Err(Error::NotSubset("U3", "U2"));
        }
        let mut h = Sha256::new();
        for a in u2_adverts {
            let mut m = Vec::new();
            put_bytes(&mut m, &a.signed_message(ctx));
            h.update(&m);
        }
        let mut out = Vec::new();
        put_str(&mut out, CONSISTENCY_LABEL);
        out.extend_from_slice(ctx.encoded());
        out.extend_from_slice(&h.finalize());
        put_set(&mut out, "U2", &u2)?;
        put_set(&mut out, "U3", u3)?;
        Ok(ConsistencyMessage(out))
    }

    /// The bytes that are signed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Signs the consistency message with the node's certified key (RFC 6979).
pub fn sign_consistency(key: &PartyKey, msg: &ConsistencyMessage) -> Signature {
    key.signing_key().sign(msg.as_bytes())
}

/// Checks a consistency signature under a node's certified key.
pub fn verify_consistency(
    cert_pub: &PublicKey,
    msg: &ConsistencyMessage,
    sig: &Signature,
) -> Result<()> {
    verify(cert_pub, msg.as_bytes(), sig)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layout::TensorSpec;
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
            modulus_bits = 64,
            word_bytes = 3,
            max_weight = 999,
            threshold = 3,
            length = 11,
            layout_digest = [7; 32],
            model_digest = Some([0; 32]),
            label = "other".into()
        );
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
        assert!(refuse(|p| p.word_bytes = 5));
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
        let k_other_ctx =
            ShareKey::derive(secrets[v].c(), &adverts[u].c_pub, &ctx2, &fps[u], &fps[v]);
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
            apply_masks(&mut y, &masks, 1);
            assert_ne!(y, vec![u as u32 + 1; 11]);
            sum.iter_mut()
                .zip(&y)
                .for_each(|(s, x)| *s = s.wrapping_add(*x));
        }
        let unmask: Vec<PeerMask> = (0..3).map(|u| self_mask(u, Sign::Sub)).collect();
        apply_masks(&mut sum, &unmask, 1);
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
        let m3 = ConsistencyMessage::new(&ctx, &[&adverts[0], &adverts[1], &other], &fps[..2])
            .expect("msg");
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
        let a =
            PublicKey::from_secret_scalar(&NonZeroScalar::generate_from_rng(&mut TestRng::new(1)));
        let b =
            PublicKey::from_secret_scalar(&NonZeroScalar::generate_from_rng(&mut TestRng::new(2)));
        let neg = PublicKey::from_affine((-a.to_projective()).to_affine()).expect("point");
        assert!(same_x(&a, &neg));
        assert!(!same_x(&a, &b));
        assert_eq!(find_same_x(&[a, b]), None);
        assert_eq!(find_same_x(&[b, a, neg]), Some((1, 2)));
        assert_eq!(find_same_x(&[a, b, a]), Some((0, 2)));
    }
}
