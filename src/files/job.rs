//! The node-side masking job (file mode and the streaming used by rounds): check the
//! round against the registry and the journal, read and quantize the update, fold in
//! the masks, and hand the words to a writer or a sender.

use std::collections::BTreeSet;
use std::path::Path;

use crate::files::masked::{self, AnyMasked, Error, Header, Masked};
use crate::files::tensor;
use crate::layout::Layout;
use crate::party::{Fingerprint, PartyId, Role};
use crate::pki::certificate::PeerCertificate;
use crate::pki::identity::Identity;
use crate::pki::registry::{self, Registry};
use crate::secagg::keys::{MaskContext, MaskKey, PairwiseSecret, Sign};
use crate::secagg::prg::{self, PeerMask};
use crate::secagg::quantize::{self, Plan, QuantParams};
use crate::secagg::ring::Modulus;
use crate::secagg::ring::Word;

type Result<T> = std::result::Result<T, Error>;

/// Parses and sorts a participant list, refusing duplicates.
pub fn participants(ids: &[PartyId]) -> Result<Vec<PartyId>> {
    let mut set = BTreeSet::new();
    for id in ids {
        if !set.insert(id.clone()) {
            return Err(Error::DuplicateParticipant(id.clone()));
        }
    }
    Ok(set.into_iter().collect())
}

/// The certificate of a registered node, or why it can't be used.
pub fn registered_node(reg: &Registry, id: &PartyId) -> Result<PeerCertificate> {
    match reg.get(id)? {
        None => Err(Error::UnknownParticipant {
            id: id.clone(),
            why: "not registered",
        }),
        Some((peer, _)) if peer.role != Role::Node => Err(Error::UnknownParticipant {
            id: id.clone(),
            why: "registered as a researcher, not a node,",
        }),
        Some((_, der)) => PeerCertificate::from_der(&der).map_err(|source| Error::Certificate {
            id: id.clone(),
            source,
        }),
    }
}

/// Per-peer mask keys for our side of every pair in `ctx`.
pub fn peer_masks(me: &Identity, reg: &Registry, ctx: &MaskContext) -> Result<Vec<PeerMask>> {
    let own_fp = me.certificate.fingerprint();
    ctx.participants
        .iter()
        .filter(|id| **id != me.config.party_id)
        .map(|id| {
            let cert = registered_node(reg, id)?;
            let peer_fp: Fingerprint = cert.fingerprint();
            let pw = PairwiseSecret::derive(&me.key, &own_fp, cert.public_key(), &peer_fp);
            Ok(PeerMask {
                key: MaskKey::derive(&pw, ctx),
                sign: Sign::for_pair(&own_fp, &peer_fp),
            })
        })
        .collect()
}

/// A round as the node sees it.
#[derive(Clone, Debug)]
pub struct RoundSpec {
    /// Federation id.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// Attempt number.
    pub attempt: u32,
    /// Vector label.
    pub label: String,
    /// Participants (any order; sorted here).
    pub participants: Vec<PartyId>,
    /// Quantization knobs.
    pub quant: QuantParams,
}

/// Checks a round before any heavy work: role, membership, plan, weight, registrations,
/// and the journal. Returns the plan and the sorted context.
pub fn prepare(
    me: &Identity,
    reg: &Registry,
    spec: &RoundSpec,
    weight: u64,
) -> Result<(Plan, MaskContext)> {
    if me.config.role != Role::Node {
        return Err(Error::NotANode(me.config.role));
    }
    let ids = participants(&spec.participants)?;
    if !ids.contains(&me.config.party_id) {
        return Err(Error::NotParticipant(me.config.party_id.clone()));
    }
    let plan = Plan::new(spec.quant, ids.len())?;
    if weight == 0 || weight > spec.quant.max_weight {
        return Err(Error::BadWeight {
            weight,
            max: spec.quant.max_weight,
        });
    }
    for id in ids.iter().filter(|id| **id != me.config.party_id) {
        registered_node(reg, id)?;
    }
    if reg.journal_has(&spec.federation, spec.round, spec.attempt, &spec.label)? {
        return Err(registry::Error::MaskReuse {
            federation: spec.federation.clone(),
            round: spec.round,
            attempt: spec.attempt,
            label: spec.label.clone(),
        }
        .into());
    }
    let ctx = MaskContext {
        federation: spec.federation.clone(),
        round: spec.round,
        attempt: spec.attempt,
        participants: ids,
        label: spec.label.clone(),
    };
    Ok((plan, ctx))
}

/// Reads, quantizes, weights and masks an update; records the mask in the journal.
/// The journal entry is written before the result is returned, so a second call for
/// the same (federation, round, attempt, label) fails whatever the input.
pub fn mask_update(
    me: &Identity,
    reg: &mut Registry,
    spec: &RoundSpec,
    input: &Path,
    weight: u64,
    threads: usize,
    now: i64,
) -> Result<AnyMasked> {
    let (plan, ctx) = prepare(me, reg, spec, weight)?;
    let masks = peer_masks(me, reg, &ctx)?;
    let result = match plan.modulus {
        Modulus::M32 => AnyMasked::M32(quantize_and_mask::<u32>(
            me, &plan, &ctx, &masks, input, weight, threads,
        )?),
        Modulus::M64 => AnyMasked::M64(quantize_and_mask::<u64>(
            me, &plan, &ctx, &masks, input, weight, threads,
        )?),
    };
    journal(reg, &ctx, now)?;
    Ok(result)
}

/// Records in the journal that this node masked under `ctx`.
fn journal(reg: &mut Registry, ctx: &MaskContext, now: i64) -> Result<()> {
    let ids: Vec<&str> = ctx.participants.iter().map(PartyId::as_str).collect();
    reg.journal_mask(
        &ctx.federation,
        ctx.round,
        ctx.attempt,
        &ctx.label,
        &ids.join(","),
        now,
    )?;
    Ok(())
}

/// Why [`stream_update`] stopped early.
#[derive(Debug)]
pub enum Stopped<E> {
    /// Reading, quantizing, the registry or the journal failed.
    Masking(Error),
    /// `emit` failed.
    Emit(E),
}

impl<E> From<Error> for Stopped<E> {
    fn from(e: Error) -> Self {
        Stopped::Masking(e)
    }
}

/// What [`stream_update`] streamed.
#[derive(Debug)]
pub struct Streamed {
    /// The update's layout as read.
    pub layout: Layout,
    /// Values that were outside [-clip, clip] and were clipped.
    pub clipped: u64,
}

/// The network round's form of [`mask_update`]: the same checks, then the journal entry
/// (before any masked word exists), then the update read, quantized, weighted and
/// masked `block` words at a time, each block handed to `emit` with its offset. Memory
/// is one block, whatever the update's size. `W` must be the plan's word.
#[allow(clippy::too_many_arguments)]
pub fn stream_update<W: Word, E>(
    me: &Identity,
    reg: &mut Registry,
    spec: &RoundSpec,
    input: &Path,
    weight: u64,
    threads: usize,
    now: i64,
    block: usize,
    emit: impl FnMut(u64, &[W]) -> std::result::Result<(), E>,
) -> std::result::Result<Streamed, Stopped<E>> {
    let (plan, ctx) = prepare(me, reg, spec, weight)?;
    if plan.modulus.word_bytes() != W::BYTES {
        return Err(Error::Malformed {
            path: input.to_owned(),
            reason: format!(
                "{}-byte words for modulus 2^{} (our bug)",
                W::BYTES,
                plan.modulus.bits()
            ),
        }
        .into());
    }
    let masks = peer_masks(me, reg, &ctx)?;
    journal(reg, &ctx, now)?;
    stream_masked(&plan, &masks, input, weight, threads, block, emit)
}

/// Reads, quantizes, weights and masks `input` `block` words at a time, handing each
/// block to `emit` with its offset (in words); the weight is the last word. No check
/// and no journal: the caller (a round, after its own checks and journal entries) has
/// done both. Memory is one block, whatever the update's size. `W` must be the plan's
/// word.
pub fn stream_masked<W: Word, E>(
    plan: &Plan,
    masks: &[PeerMask],
    input: &Path,
    weight: u64,
    threads: usize,
    block: usize,
    mut emit: impl FnMut(u64, &[W]) -> std::result::Result<(), E>,
) -> std::result::Result<Streamed, Stopped<E>> {
    let block = block.max(1);
    let w = weight as i64; // weight <= max_weight, and the plan bounds weight * L < 2^63
    let mut buf: Vec<W> = Vec::with_capacity(block);
    let mut offset = 0u64;
    let mut clipped = 0u64;
    let mut flush = |buf: &mut Vec<W>, offset: &mut u64| {
        prg::apply_masks_at(buf, *offset, masks, threads);
        emit(*offset, buf)?;
        *offset += buf.len() as u64;
        buf.clear();
        Ok(())
    };
    let layout = tensor::read_value_blocks(input, |_| {
        |mut xs: &[f64]| -> std::result::Result<(), Stopped<E>> {
            while !xs.is_empty() {
                let (head, rest) = xs.split_at(xs.len().min(block - buf.len()));
                let at = offset + buf.len() as u64;
                clipped += plan.quantize_into(head, w, &mut buf).map_err(|i| {
                    Stopped::Masking(quantize::Error::NonFinite(at + i as u64).into())
                })?;
                if buf.len() == block {
                    flush(&mut buf, &mut offset).map_err(Stopped::Emit)?;
                }
                xs = rest;
            }
            Ok(())
        }
    })
    .map_err(|e| Stopped::Masking(e.into()))??;
    buf.push(W::from_u64(weight));
    flush(&mut buf, &mut offset).map_err(Stopped::Emit)?;
    Ok(Streamed { layout, clipped })
}

/// What [`inspect_input`] found: the update's layout, its content digest, and how many
/// values lie outside a clip bound.
#[derive(Clone, Debug)]
pub struct InputSummary {
    /// Tensor names, shapes and types.
    pub layout: Layout,
    /// SHA-256 over `"secagg input v1"`, the layout (names, shapes, types) and every value
    /// as f64 little-endian: re-encoding the file (f32 → f64, npy → safetensors with the
    /// same names) does not change it.
    pub digest: [u8; 32],
    /// Values.
    pub values: u64,
}

/// Reads a whole update before a round: parses it, refuses NaN and infinities (naming
/// the index), and computes its content digest. Nothing is allocated per value.
pub fn inspect_input(input: &Path) -> Result<InputSummary> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"secagg input v1");
    let mut at = 0u64;
    let mut bad: Option<u64> = None;
    let mut bytes = Vec::with_capacity(8 * 4096);
    let layout = tensor::read_value_blocks(input, |layout| {
        for t in &layout.tensors {
            h.update((t.name.len() as u32).to_be_bytes());
            h.update(t.name.as_bytes());
            h.update([match t.dtype {
                crate::layout::DType::F32 => 4u8,
                crate::layout::DType::F64 => 8u8,
            }]);
            h.update((t.shape.len() as u32).to_be_bytes());
            for d in &t.shape {
                h.update(d.to_be_bytes());
            }
        }
        |xs: &[f64]| {
            for chunk in xs.chunks(4096) {
                bytes.clear();
                for (i, x) in chunk.iter().enumerate() {
                    if !x.is_finite() && bad.is_none() {
                        bad = Some(at + i as u64);
                    }
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                h.update(&bytes);
                at += chunk.len() as u64;
            }
            Ok::<(), std::convert::Infallible>(())
        }
    })?;
    let _ = layout.as_ref();
    let layout = match layout {
        Ok(l) => l,
        Err(never) => match never {},
    };
    if let Some(i) = bad {
        return Err(quantize::Error::NonFinite(i).into());
    }
    Ok(InputSummary {
        layout,
        digest: h.finalize().into(),
        values: at,
    })
}

fn quantize_and_mask<W: Word>(
    me: &Identity,
    plan: &Plan,
    ctx: &MaskContext,
    masks: &[PeerMask],
    input: &Path,
    weight: u64,
    threads: usize,
) -> Result<Masked<W>> {
    let mut words: Vec<W> = Vec::new();
    let mut clipped = 0u64;
    let w = weight as i64; // weight <= max_weight, and the plan bounds weight * L < 2^63
    let layout = tensor::read_value_blocks(input, |layout| {
        words.reserve_exact(layout.elements() as usize + 1);
        |xs: &[f64]| {
            let at = words.len();
            clipped += plan
                .quantize_into(xs, w, &mut words)
                .map_err(|i| quantize::Error::NonFinite((at + i) as u64))?;
            Ok::<(), quantize::Error>(())
        }
    })??;
    words.push(W::from_u64(weight));
    prg::apply_masks(&mut words, masks, threads);
    let header = Header {
        format_version: masked::FORMAT_VERSION,
        federation: ctx.federation.clone(),
        round: ctx.round,
        attempt: ctx.attempt,
        label: ctx.label.clone(),
        participants: ctx.participants.clone(),
        quant: plan.params,
        modulus: plan.modulus,
        elements: layout.elements() + 1,
        layout,
        sender: me.config.party_id.clone(),
    };
    Ok(Masked {
        header,
        words,
        clipped,
    })
}
