//! Announce (R → N): the round, its parameters and its deadline.

use crate::layout::{Layout, TensorSpec};
use crate::party::Fingerprint;
use crate::round::schedule::{
    self, Ctx, CtxParams, MAX_NAME, container_from_name, dtype_from_name, put_str,
};

use super::reader::{Reader, put_set_checked};
use super::{Error, MAX_DIMS, MAX_TENSORS, Result};

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
    /// Modulus bits k (8 × wire bytes).
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

pub(super) const ANNOUNCE: &str = "announce";

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
