//! Protocol 2's message payloads: binary, each encoder beside its decoder.
//!
//! Frames, headers and chunks stay in [`crate::net::frame`]; this module turns each protocol-2
//! message into payload bytes and a kind number (16..=31, so they never collide with
//! protocol 1's 1..=7), and back. `docs/protocol.md` gives every layout.
//!
//! Decoding is strict: every count is capped and checked against the bytes that remain
//! before anything is allocated, sets and fingerprint-keyed lists must be strictly
//! increasing (so a duplicate is a decoding error), points must be compressed,
//! on-curve and not the identity, scalars canonical, and no byte may follow the last
//! field. Semantic checks (is this advert's signer invited, is U2 what I saw) belong to the
//! round state machines, which run them on what decodes here.

use std::fmt;

use p256::Scalar;
use p256::ecdsa::Signature;
use zeroize::Zeroize;

use crate::layout::{Layout, TensorSpec};
use crate::party::Fingerprint;
use crate::round::schedule::{
    self, Advert, Ctx, CtxParams, FP_LEN, MAX_INVITEES, MAX_NAME, SEALED_LEN, SIG_LEN,
    container_from_name, dtype_from_name, fp_from_bytes, is_set, put_set, put_str, sig_from_bytes,
    sig_to_bytes,
};
use crate::secagg::shamir::{self, POINT_LEN, SCALAR_LEN};

/// Kind of [`Announce`].
pub const KIND_ANNOUNCE: u8 = 16;
/// Kind of [`Advertise`].
pub const KIND_ADVERTISE: u8 = 17;
/// Kind of [`AdvertList`].
pub const KIND_ADVERT_LIST: u8 = 18;
/// Kind of [`ShareBundle`].
pub const KIND_SHARE_BUNDLE: u8 = 19;
/// Kind of [`ForwardedShares`].
pub const KIND_FORWARDED_SHARES: u8 = 20;
/// Kind of [`Survivors`].
pub const KIND_SURVIVORS: u8 = 21;
/// Kind of [`ConsistencySig`].
pub const KIND_CONSISTENCY_SIG: u8 = 22;
/// Kind of [`SignatureList`].
pub const KIND_SIGNATURE_LIST: u8 = 23;
/// Kind of [`Unmask`].
pub const KIND_UNMASK: u8 = 24;
/// Kind of [`ResultHeader`].
pub const KIND_RESULT: u8 = 25;

/// Most tensors in an announced layout.
pub const MAX_TENSORS: usize = 100_000;
/// Most dimensions of one tensor.
pub const MAX_DIMS: usize = 32;

/// Why a payload did not decode, or a message could not be encoded. In every decoding
/// case the sender is at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A kind outside protocol 2's messages.
    #[error("unknown protocol-2 message kind {0}")]
    Kind(u8),
    /// The payload ends inside a field.
    #[error("{message} message is truncated in {field}")]
    Truncated {
        /// Message name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// Bytes follow the last field.
    #[error("{message} message has {extra} byte(s) after its last field")]
    Trailing {
        /// Message name.
        message: &'static str,
        /// Extra bytes.
        extra: usize,
    },
    /// A count or length above its cap (or below its floor).
    #[error("{message} message: {field} is {count}, allowed {min}..={max}")]
    Count {
        /// Message name.
        message: &'static str,
        /// Field.
        field: &'static str,
        /// Announced.
        count: u64,
        /// Floor.
        min: u64,
        /// Cap.
        max: u64,
    },
    /// A set or fingerprint-keyed list is unsorted or has a duplicate.
    #[error("{message} message: {field} is not strictly increasing by fingerprint")]
    Order {
        /// Message name.
        message: &'static str,
        /// Field.
        field: &'static str,
    },
    /// A field has a value no encoder produces (bad UTF-8, point, scalar, signature, tag).
    #[error("{message} message: invalid {field}: {reason}")]
    Invalid {
        /// Message name.
        message: &'static str,
        /// Field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The announcement names another researcher than the one TLS pinned.
    #[error("announcement names researcher {announced}, but the connection is with {pinned}")]
    Researcher {
        /// In the message.
        announced: Fingerprint,
        /// From TLS.
        pinned: Fingerprint,
    },
    /// The announcement does not make a valid round context.
    #[error("announcement: {0}")]
    Ctx(#[source] schedule::Error),
}

type Result<T> = std::result::Result<T, Error>;

// ---------------------------------------------------------------------------------------
// Reading

/// A cursor over one payload, naming the message in its errors.
struct Reader<'a> {
    message: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(message: &'static str, buf: &'a [u8]) -> Self {
        Reader { message, buf }
    }

    fn truncated(&self, field: &'static str) -> Error {
        Error::Truncated {
            message: self.message,
            field,
        }
    }

    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            message: self.message,
            field,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.truncated(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn fp(&mut self, field: &'static str) -> Result<Fingerprint> {
        Ok(fp_from_bytes(&self.array(field)?))
    }

    /// A `u32be` count in `min..=max` whose entries (each at least `entry` bytes) fit in
    /// what remains: checked before the caller allocates.
    fn count(
        &mut self,
        field: &'static str,
        min: usize,
        max: usize,
        entry: usize,
    ) -> Result<usize> {
        let count = self.u32(field)? as usize;
        if count < min || count > max {
            return Err(Error::Count {
                message: self.message,
                field,
                count: count as u64,
                min: min as u64,
                max: max as u64,
            });
        }
        if count.saturating_mul(entry) > self.buf.len() {
            return Err(self.truncated(field));
        }
        Ok(count)
    }

    fn str(&mut self, field: &'static str, min: usize, max: usize) -> Result<String> {
        let len = self.count(field, min, max, 1)?;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.invalid(field, "not UTF-8"))
    }

    fn set(&mut self, field: &'static str, min: usize) -> Result<Vec<Fingerprint>> {
        let n = self.count(field, min, MAX_INVITEES, FP_LEN)?;
        let fps = (0..n).map(|_| self.fp(field)).collect::<Result<Vec<_>>>()?;
        self.ordered(field, &fps)?;
        Ok(fps)
    }

    fn ordered(&self, field: &'static str, fps: &[Fingerprint]) -> Result<()> {
        if is_set(fps) {
            Ok(())
        } else {
            Err(Error::Order {
                message: self.message,
                field,
            })
        }
    }

    fn sig(&mut self, field: &'static str) -> Result<Signature> {
        let bytes = self.take(SIG_LEN, field)?;
        sig_from_bytes(bytes).ok_or_else(|| self.invalid(field, "r or s is not in 1..n"))
    }

    fn scalar(&mut self, field: &'static str) -> Result<Scalar> {
        let bytes = self.take(SCALAR_LEN, field)?;
        shamir::scalar_from_bytes(bytes)
            .ok_or_else(|| self.invalid(field, "not below the group order"))
    }

    fn sealed(&mut self, field: &'static str) -> Result<[u8; SEALED_LEN]> {
        self.array(field)
    }

    fn advert(&mut self) -> Result<Advert> {
        let (advert, rest) = Advert::decode_prefix(self.buf).map_err(|e| match e {
            schedule::Error::Truncated(_) | schedule::Error::Shamir(shamir::Error::Truncated) => {
                self.truncated("advert")
            }
            e => self.invalid("advert", e.to_string()),
        })?;
        self.buf = rest;
        Ok(advert)
    }

    fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Trailing {
                message: self.message,
                extra: self.buf.len(),
            })
        }
    }
}

fn check_order(message: &'static str, field: &'static str, fps: &[Fingerprint]) -> Result<()> {
    if is_set(fps) {
        Ok(())
    } else {
        Err(Error::Order { message, field })
    }
}

fn put_u32_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn put_set_checked(
    out: &mut Vec<u8>,
    message: &'static str,
    field: &'static str,
    fps: &[Fingerprint],
) -> Result<()> {
    if fps.len() > MAX_INVITEES {
        return Err(Error::Count {
            message,
            field,
            count: fps.len() as u64,
            min: 0,
            max: MAX_INVITEES as u64,
        });
    }
    put_set(out, field, fps).map_err(|_| Error::Order { message, field })
}

fn check_list_len(message: &'static str, field: &'static str, n: usize) -> Result<()> {
    if n > MAX_INVITEES {
        return Err(Error::Count {
            message,
            field,
            count: n as u64,
            min: 0,
            max: MAX_INVITEES as u64,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Announce (R → N)

/// R → N: the round, its parameters and its deadline. A node checks it against its own
/// policy, then builds [`Ctx`] with [`Announce::ctx`].
#[derive(Clone, Debug, PartialEq)]
pub struct Announce {
    /// Roster fingerprint (hex) or federation name.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// The researcher's fingerprint (the node compares it with the TLS peer).
    pub researcher: Fingerprint,
    /// Invited nodes, strictly increasing.
    pub invitees: Vec<Fingerprint>,
    /// Clip bound.
    pub clip: f64,
    /// Quantization bits.
    pub bits: u32,
    /// Modulus bits (32 or 64).
    pub modulus_bits: u32,
    /// Bytes per word on the wire.
    pub word_bytes: u32,
    /// Largest weight.
    pub max_weight: u64,
    /// Threshold t.
    pub threshold: u32,
    /// Tensors of the update.
    pub layout: Layout,
    /// Digest of the global model, if announced.
    pub model_digest: Option<[u8; 32]>,
    /// Vector label.
    pub label: String,
    /// Seconds each phase may take.
    pub deadline_secs: u32,
}

const ANNOUNCE: &str = "announce";

impl Announce {
    /// `str(federation) ‖ u64be(round) ‖ fp_R ‖ set(invitees) ‖ u64be(clip bits) ‖
    /// u32be(bits) ‖ u32be(modulus bits) ‖ u32be(wire bytes) ‖ u64be(max weight) ‖
    /// u32be(t) ‖ layout ‖ (u8 0 | u8 1 ‖ digest) ‖ str(label) ‖ u32be(deadline)`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_str(out, &self.federation);
        out.extend_from_slice(&self.round.to_be_bytes());
        out.extend_from_slice(self.researcher.as_bytes());
        put_set_checked(out, ANNOUNCE, "invitees", &self.invitees)?;
        out.extend_from_slice(&self.clip.to_bits().to_be_bytes());
        out.extend_from_slice(&self.bits.to_be_bytes());
        out.extend_from_slice(&self.modulus_bits.to_be_bytes());
        out.extend_from_slice(&self.word_bytes.to_be_bytes());
        out.extend_from_slice(&self.max_weight.to_be_bytes());
        out.extend_from_slice(&self.threshold.to_be_bytes());
        schedule::put_layout(out, &self.layout);
        match &self.model_digest {
            None => out.push(0),
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
        }
        put_str(out, &self.label);
        out.extend_from_slice(&self.deadline_secs.to_be_bytes());
        Ok(())
    }

    /// The inverse of [`Announce::encode`].
    pub fn decode(payload: &[u8]) -> Result<Announce> {
        let mut r = Reader::new(ANNOUNCE, payload);
        let federation = r.str("federation", 1, MAX_NAME)?;
        let round = r.u64("round")?;
        let researcher = r.fp("researcher")?;
        let invitees = r.set("invitees", 1)?;
        let clip = f64::from_bits(r.u64("clip")?);
        let bits = r.u32("bits")?;
        let modulus_bits = r.u32("modulus bits")?;
        let word_bytes = r.u32("wire bytes")?;
        let max_weight = r.u64("max weight")?;
        let threshold = r.u32("threshold")?;
        if threshold == 0 || threshold as usize > invitees.len() {
            return Err(Error::Count {
                message: ANNOUNCE,
                field: "threshold",
                count: threshold.into(),
                min: 1,
                max: invitees.len() as u64,
            });
        }
        let layout = decode_layout(&mut r)?;
        let model_digest = match r.u8("model digest")? {
            0 => None,
            1 => Some(r.array("model digest")?),
            b => return Err(r.invalid("model digest", format!("option tag {b}"))),
        };
        let label = r.str("label", 1, MAX_NAME)?;
        let deadline_secs = r.u32("deadline")?;
        r.finish()?;
        Ok(Announce {
            federation,
            round,
            researcher,
            invitees,
            clip,
            bits,
            modulus_bits,
            word_bytes,
            max_weight,
            threshold,
            layout,
            model_digest,
            label,
            deadline_secs,
        })
    }

    /// The round context, with the researcher fingerprint that TLS pinned (refused if
    /// the announcement names another one).
    pub fn ctx(&self, pinned_researcher: &Fingerprint) -> Result<Ctx> {
        if &self.researcher != pinned_researcher {
            return Err(Error::Researcher {
                announced: self.researcher,
                pinned: *pinned_researcher,
            });
        }
        let length =
            schedule::layout_values(&self.layout).ok_or(Error::Ctx(schedule::Error::Ctx {
                field: "layout",
                reason: "holds more than 2^64 values".into(),
            }))?;
        Ctx::new(CtxParams {
            federation: self.federation.clone(),
            round: self.round,
            researcher: self.researcher,
            invitees: self.invitees.clone(),
            clip: self.clip,
            bits: self.bits,
            modulus_bits: self.modulus_bits,
            word_bytes: self.word_bytes,
            max_weight: self.max_weight,
            threshold: self.threshold,
            length,
            layout_digest: schedule::layout_digest(&self.layout),
            model_digest: self.model_digest,
            label: self.label.clone(),
        })
        .map_err(Error::Ctx)
    }
}

fn decode_layout(r: &mut Reader<'_>) -> Result<Layout> {
    let container = r.str("container", 1, 32)?;
    let container =
        container_from_name(&container).ok_or_else(|| r.invalid("container", container))?;
    // A tensor takes at least str("") + str("f32") + u32 = 4 + 7 + 4 bytes.
    let n = r.count("tensors", 1, MAX_TENSORS, 15)?;
    let mut tensors = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str("tensor name", 0, MAX_NAME)?;
        let dtype = r.str("dtype", 1, 32)?;
        let dtype = dtype_from_name(&dtype).ok_or_else(|| r.invalid("dtype", dtype))?;
        let ndim = r.count("dimensions", 0, MAX_DIMS, 8)?;
        let shape = (0..ndim)
            .map(|_| r.u64("dimension"))
            .collect::<Result<Vec<_>>>()?;
        tensors.push(TensorSpec { name, shape, dtype });
    }
    Ok(Layout { container, tensors })
}

// ---------------------------------------------------------------------------------------
// Advertise (N → R) and AdvertList (R → N)

/// N → R: this node's advert and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertise {
    /// Keys and commitments.
    pub advert: Advert,
    /// σ_u over [`Advert::signed_message`].
    pub sig: Signature,
}

const ADVERTISE: &str = "advertise";
/// Smallest advert plus signature: fp, three points, two commitment vectors of one point.
const MIN_SIGNED_ADVERT: usize = FP_LEN + 3 * POINT_LEN + 2 * (4 + POINT_LEN) + SIG_LEN;

impl Advertise {
    /// `advert ‖ sig(64)`, advert = `fp ‖ C ‖ S ‖ B ‖ com(s) ‖ com(b)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.advert.encode(out);
        out.extend_from_slice(&sig_to_bytes(&self.sig));
    }

    fn read(r: &mut Reader<'_>) -> Result<Advertise> {
        let advert = r.advert()?;
        let sig = r.sig("signature")?;
        Ok(Advertise { advert, sig })
    }

    /// The inverse of [`Advertise::encode`].
    pub fn decode(payload: &[u8]) -> Result<Advertise> {
        let mut r = Reader::new(ADVERTISE, payload);
        let m = Advertise::read(&mut r)?;
        r.finish()?;
        Ok(m)
    }
}

/// R → N: U1, every valid advert the researcher received, by fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertList {
    /// Strictly increasing by `advert.fp`.
    pub adverts: Vec<Advertise>,
}

const ADVERT_LIST: &str = "advert list";

impl AdvertList {
    /// `u32be(count) ‖ (advert ‖ sig)…`; refuses an unsorted or duplicated list.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        check_list_len(ADVERT_LIST, "adverts", self.adverts.len())?;
        let fps: Vec<Fingerprint> = self.adverts.iter().map(|a| a.advert.fp).collect();
        check_order(ADVERT_LIST, "adverts", &fps)?;
        put_u32_len(out, self.adverts.len());
        self.adverts.iter().for_each(|a| a.encode(out));
        Ok(())
    }

    /// The inverse of [`AdvertList::encode`].
    pub fn decode(payload: &[u8]) -> Result<AdvertList> {
        let mut r = Reader::new(ADVERT_LIST, payload);
        let n = r.count("adverts", 0, MAX_INVITEES, MIN_SIGNED_ADVERT)?;
        let adverts = (0..n)
            .map(|_| Advertise::read(&mut r))
            .collect::<Result<Vec<_>>>()?;
        let fps: Vec<Fingerprint> = adverts.iter().map(|a| a.advert.fp).collect();
        r.ordered("adverts", &fps)?;
        r.finish()?;
        Ok(AdvertList { adverts })
    }
}

// ---------------------------------------------------------------------------------------
// ShareBundle (N → R) and ForwardedShares (R → N)

/// One sealed share and the party at the other end.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedShare {
    /// The receiver (in a bundle) or the sender (when forwarded).
    pub peer: Fingerprint,
    /// `ciphertext(128) ‖ tag(16)`.
    pub sealed: [u8; SEALED_LEN],
}

impl fmt::Debug for SealedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedShare {{ peer: {:?}, sealed: <{SEALED_LEN} bytes> }}",
            self.peer
        )
    }
}

fn put_sealed(out: &mut Vec<u8>, message: &'static str, shares: &[SealedShare]) -> Result<()> {
    check_list_len(message, "shares", shares.len())?;
    let fps: Vec<Fingerprint> = shares.iter().map(|s| s.peer).collect();
    check_order(message, "shares", &fps)?;
    put_u32_len(out, shares.len());
    for s in shares {
        out.extend_from_slice(s.peer.as_bytes());
        out.extend_from_slice(&s.sealed);
    }
    Ok(())
}

fn read_sealed(r: &mut Reader<'_>) -> Result<Vec<SealedShare>> {
    let n = r.count("shares", 0, MAX_INVITEES, FP_LEN + SEALED_LEN)?;
    let shares = (0..n)
        .map(|_| {
            Ok(SealedShare {
                peer: r.fp("share peer")?,
                sealed: r.sealed("sealed share")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fps: Vec<Fingerprint> = shares.iter().map(|s| s.peer).collect();
    r.ordered("shares", &fps)?;
    Ok(shares)
}

/// N → R: this node's sealed shares, one per other member of U1, keyed by receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareBundle {
    /// Strictly increasing by receiver.
    pub shares: Vec<SealedShare>,
}

const SHARE_BUNDLE: &str = "share bundle";

impl ShareBundle {
    /// `u32be(count) ‖ (fp_receiver ‖ sealed(144))…`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_sealed(out, SHARE_BUNDLE, &self.shares)
    }

    /// The inverse of [`ShareBundle::encode`].
    pub fn decode(payload: &[u8]) -> Result<ShareBundle> {
        let mut r = Reader::new(SHARE_BUNDLE, payload);
        let shares = read_sealed(&mut r)?;
        r.finish()?;
        Ok(ShareBundle { shares })
    }
}

/// R → N: U2 and the shares sealed to this node, keyed by sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedShares {
    /// U2 as the researcher closed it.
    pub u2: Vec<Fingerprint>,
    /// Strictly increasing by sender.
    pub shares: Vec<SealedShare>,
}

const FORWARDED_SHARES: &str = "forwarded shares";

impl ForwardedShares {
    /// `set(U2) ‖ u32be(count) ‖ (fp_sender ‖ sealed(144))…`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_set_checked(out, FORWARDED_SHARES, "U2", &self.u2)?;
        put_sealed(out, FORWARDED_SHARES, &self.shares)
    }

    /// The inverse of [`ForwardedShares::encode`].
    pub fn decode(payload: &[u8]) -> Result<ForwardedShares> {
        let mut r = Reader::new(FORWARDED_SHARES, payload);
        let u2 = r.set("U2", 0)?;
        let shares = read_sealed(&mut r)?;
        r.finish()?;
        Ok(ForwardedShares { u2, shares })
    }
}

// ---------------------------------------------------------------------------------------
// Survivors, ConsistencySig, SignatureList

/// R → N: U2 and U3, for the consistency check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Survivors {
    /// Nodes whose shares were forwarded.
    pub u2: Vec<Fingerprint>,
    /// Nodes whose whole input arrived.
    pub u3: Vec<Fingerprint>,
}

const SURVIVORS: &str = "survivors";

impl Survivors {
    /// `set(U2) ‖ set(U3)`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        put_set_checked(out, SURVIVORS, "U2", &self.u2)?;
        put_set_checked(out, SURVIVORS, "U3", &self.u3)
    }

    /// The inverse of [`Survivors::encode`].
    pub fn decode(payload: &[u8]) -> Result<Survivors> {
        let mut r = Reader::new(SURVIVORS, payload);
        let u2 = r.set("U2", 0)?;
        let u3 = r.set("U3", 0)?;
        r.finish()?;
        Ok(Survivors { u2, u3 })
    }
}

/// N → R: this node's signature of the consistency message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencySig {
    /// Over [`schedule::ConsistencyMessage`].
    pub sig: Signature,
}

const CONSISTENCY_SIG: &str = "consistency signature";

impl ConsistencySig {
    /// `sig(64)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&sig_to_bytes(&self.sig));
    }

    /// The inverse of [`ConsistencySig::encode`].
    pub fn decode(payload: &[u8]) -> Result<ConsistencySig> {
        let mut r = Reader::new(CONSISTENCY_SIG, payload);
        let sig = r.sig("signature")?;
        r.finish()?;
        Ok(ConsistencySig { sig })
    }
}

/// R → N: the consistency signatures the researcher collected, by signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureList {
    /// Strictly increasing by signer.
    pub sigs: Vec<(Fingerprint, Signature)>,
}

const SIGNATURE_LIST: &str = "signature list";

impl SignatureList {
    /// `u32be(count) ‖ (fp ‖ sig(64))…`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        check_list_len(SIGNATURE_LIST, "signatures", self.sigs.len())?;
        let fps: Vec<Fingerprint> = self.sigs.iter().map(|(fp, _)| *fp).collect();
        check_order(SIGNATURE_LIST, "signatures", &fps)?;
        put_u32_len(out, self.sigs.len());
        for (fp, sig) in &self.sigs {
            out.extend_from_slice(fp.as_bytes());
            out.extend_from_slice(&sig_to_bytes(sig));
        }
        Ok(())
    }

    /// The inverse of [`SignatureList::encode`].
    pub fn decode(payload: &[u8]) -> Result<SignatureList> {
        let mut r = Reader::new(SIGNATURE_LIST, payload);
        let n = r.count("signatures", 0, MAX_INVITEES, FP_LEN + SIG_LEN)?;
        let sigs = (0..n)
            .map(|_| Ok((r.fp("signer")?, r.sig("signature")?)))
            .collect::<Result<Vec<_>>>()?;
        let fps: Vec<Fingerprint> = sigs.iter().map(|(fp, _)| *fp).collect();
        r.ordered("signatures", &fps)?;
        r.finish()?;
        Ok(SignatureList { sigs })
    }
}

// ---------------------------------------------------------------------------------------
// Unmask (N → R) and the result header (R → N)

/// Which share of a peer an unmask entry reveals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareKind {
    /// The peer's `b` (it is in U3): wire value 0.
    B,
    /// The peer's `s` (it is in U2 \ U3): wire value 1.
    S,
}

/// One revealed share. The value is zeroized on drop and hidden from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RevealedShare {
    /// The dealer of the share.
    pub peer: Fingerprint,
    /// `b` or `s`.
    pub kind: ShareKind,
    /// The share value at the sender's x.
    pub value: Scalar,
}

impl Drop for RevealedShare {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl fmt::Debug for RevealedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RevealedShare {{ peer: {:?}, kind: {:?}, value: <secret> }}",
            self.peer, self.kind
        )
    }
}

/// N → R: one share per peer of U2(u), never both kinds for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmask {
    /// Strictly increasing by peer (so one entry per peer).
    pub shares: Vec<RevealedShare>,
}

const UNMASK: &str = "unmask";

impl Unmask {
    /// `u32be(count) ‖ (fp_peer ‖ u8 kind ‖ scalar(32))…`. Zeroize `out` after sending.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        check_list_len(UNMASK, "shares", self.shares.len())?;
        let fps: Vec<Fingerprint> = self.shares.iter().map(|s| s.peer).collect();
        check_order(UNMASK, "shares", &fps)?;
        put_u32_len(out, self.shares.len());
        for s in &self.shares {
            out.extend_from_slice(s.peer.as_bytes());
            out.push(match s.kind {
                ShareKind::B => 0,
                ShareKind::S => 1,
            });
            let mut v = shamir::scalar_to_bytes(&s.value);
            out.extend_from_slice(&v);
            v.zeroize();
        }
        Ok(())
    }

    /// The inverse of [`Unmask::encode`].
    pub fn decode(payload: &[u8]) -> Result<Unmask> {
        let mut r = Reader::new(UNMASK, payload);
        let n = r.count("shares", 0, MAX_INVITEES, FP_LEN + 1 + SCALAR_LEN)?;
        let shares = (0..n)
            .map(|_| {
                let peer = r.fp("share peer")?;
                let kind = match r.u8("share kind")? {
                    0 => ShareKind::B,
                    1 => ShareKind::S,
                    k => return Err(r.invalid("share kind", format!("{k} (expected 0 or 1)"))),
                };
                let value = r.scalar("share value")?;
                Ok(RevealedShare { peer, kind, value })
            })
            .collect::<Result<Vec<_>>>()?;
        let fps: Vec<Fingerprint> = shares.iter().map(|s| s.peer).collect();
        r.ordered("shares", &fps)?;
        r.finish()?;
        Ok(Unmask { shares })
    }
}

/// R → N: the round's outcome; the mean follows as chunks of `bytes` bytes in total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultHeader {
    /// Sum of the weights W.
    pub total_weight: u64,
    /// |U3|.
    pub survivors: u32,
    /// Bytes of the mean that follow (values in layout order, each in its tensor's type).
    pub bytes: u64,
}

const RESULT: &str = "result";

impl ResultHeader {
    /// `u64be(W) ‖ u32be(|U3|) ‖ u64be(bytes)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.total_weight.to_be_bytes());
        out.extend_from_slice(&self.survivors.to_be_bytes());
        out.extend_from_slice(&self.bytes.to_be_bytes());
    }

    /// The inverse of [`ResultHeader::encode`].
    pub fn decode(payload: &[u8]) -> Result<ResultHeader> {
        let mut r = Reader::new(RESULT, payload);
        let m = ResultHeader {
            total_weight: r.u64("total weight")?,
            survivors: r.u32("survivors")?,
            bytes: r.u64("bytes")?,
        };
        r.finish()?;
        Ok(m)
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch

/// Any protocol-2 payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Message2 {
    /// See [`Announce`].
    Announce(Announce),
    /// See [`Advertise`].
    Advertise(Advertise),
    /// See [`AdvertList`].
    AdvertList(AdvertList),
    /// See [`ShareBundle`].
    ShareBundle(ShareBundle),
    /// See [`ForwardedShares`].
    ForwardedShares(ForwardedShares),
    /// See [`Survivors`].
    Survivors(Survivors),
    /// See [`ConsistencySig`].
    ConsistencySig(ConsistencySig),
    /// See [`SignatureList`].
    SignatureList(SignatureList),
    /// See [`Unmask`].
    Unmask(Unmask),
    /// See [`ResultHeader`].
    Result(ResultHeader),
}

impl Message2 {
    /// The frame kind (16..=25).
    pub fn kind(&self) -> u8 {
        match self {
            Message2::Announce(_) => KIND_ANNOUNCE,
            Message2::Advertise(_) => KIND_ADVERTISE,
            Message2::AdvertList(_) => KIND_ADVERT_LIST,
            Message2::ShareBundle(_) => KIND_SHARE_BUNDLE,
            Message2::ForwardedShares(_) => KIND_FORWARDED_SHARES,
            Message2::Survivors(_) => KIND_SURVIVORS,
            Message2::ConsistencySig(_) => KIND_CONSISTENCY_SIG,
            Message2::SignatureList(_) => KIND_SIGNATURE_LIST,
            Message2::Unmask(_) => KIND_UNMASK,
            Message2::Result(_) => KIND_RESULT,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message2::Announce(_) => ANNOUNCE,
            Message2::Advertise(_) => ADVERTISE,
            Message2::AdvertList(_) => ADVERT_LIST,
            Message2::ShareBundle(_) => SHARE_BUNDLE,
            Message2::ForwardedShares(_) => FORWARDED_SHARES,
            Message2::Survivors(_) => SURVIVORS,
            Message2::ConsistencySig(_) => CONSISTENCY_SIG,
            Message2::SignatureList(_) => SIGNATURE_LIST,
            Message2::Unmask(_) => UNMASK,
            Message2::Result(_) => RESULT,
        }
    }

    /// The payload bytes (the frame header is [`crate::net::frame`]'s).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Message2::Announce(m) => m.encode(&mut out)?,
            Message2::Advertise(m) => m.encode(&mut out),
            Message2::AdvertList(m) => m.encode(&mut out)?,
            Message2::ShareBundle(m) => m.encode(&mut out)?,
            Message2::ForwardedShares(m) => m.encode(&mut out)?,
            Message2::Survivors(m) => m.encode(&mut out)?,
            Message2::ConsistencySig(m) => m.encode(&mut out),
            Message2::SignatureList(m) => m.encode(&mut out)?,
            Message2::Unmask(m) => m.encode(&mut out)?,
            Message2::Result(m) => m.encode(&mut out),
        }
        Ok(out)
    }
}

/// Decodes one protocol-2 payload of frame kind `kind`.
pub fn decode(kind: u8, payload: &[u8]) -> Result<Message2> {
    Ok(match kind {
        KIND_ANNOUNCE => Message2::Announce(Announce::decode(payload)?),
        KIND_ADVERTISE => Message2::Advertise(Advertise::decode(payload)?),
        KIND_ADVERT_LIST => Message2::AdvertList(AdvertList::decode(payload)?),
        KIND_SHARE_BUNDLE => Message2::ShareBundle(ShareBundle::decode(payload)?),
        KIND_FORWARDED_SHARES => Message2::ForwardedShares(ForwardedShares::decode(payload)?),
        KIND_SURVIVORS => Message2::Survivors(Survivors::decode(payload)?),
        KIND_CONSISTENCY_SIG => Message2::ConsistencySig(ConsistencySig::decode(payload)?),
        KIND_SIGNATURE_LIST => Message2::SignatureList(SignatureList::decode(payload)?),
        KIND_UNMASK => Message2::Unmask(Unmask::decode(payload)?),
        KIND_RESULT => Message2::Result(ResultHeader::decode(payload)?),
        k => return Err(Error::Kind(k)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::identity::PartyKey;
    use crate::round::schedule::tests::{fp, layout, params};
    use crate::round::schedule::{RoundSecrets, sign_advert};
    use crate::secagg::test_rng::TestRng;
    use p256::NonZeroScalar;
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
}
