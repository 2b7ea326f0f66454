//! The layout digest and the round context `ctx`.

use sha2::{Digest, Sha256};

use crate::layout::{Container, DType, Layout};
use crate::party::Fingerprint;

use super::encoding::{is_set, put_set, put_str};
use super::{CTX_LABEL, Error, FP_LEN, LAYOUT_LABEL, MAX_INVITEES, MAX_NAME, Result};

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
    /// k of the modulus 2^k: a multiple of 8 from 8 to 64 (k = 8 × wire bytes).
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
        if !(8..=64).contains(&p.modulus_bits) || !p.modulus_bits.is_multiple_of(8) {
            return bad(
                "modulus bits",
                format!("{} is not one of 8, 16, ..., 64", p.modulus_bits),
            );
        }
        if p.word_bytes != p.modulus_bits / 8 {
            return bad(
                "wire bytes",
                format!("{} is not k/8 = {}", p.word_bytes, p.modulus_bits / 8),
            );
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

pub(super) fn encode_ctx(p: &CtxParams) -> Result<Vec<u8>> {
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
