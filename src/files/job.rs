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

/// Like [`registered_node`], and refuses a certificate that expired before `now`
/// (unix seconds), as rounds do: file mode must not keep trusting a key its owner may
/// have retired.
pub fn registered_node_at(reg: &Registry, id: &PartyId, now: i64) -> Result<PeerCertificate> {
    let cert = registered_node(reg, id)?;
    if cert.not_after_unix() < now {
        return Err(Error::PeerExpired {
            id: id.clone(),
            not_after: crate::clock::format_time(cert.not_after_unix()),
        });
    }
    Ok(cert)
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
    for id in ctx
        .participants
        .iter()
        .filter(|id| **id != me.config.party_id)
    {
        registered_node_at(reg, id, now)?;
    }
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
    mut emit: impl FnMut(u64, &[W]) -> std::result::Result<(), E>,
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
    let block = block.max(1);
    let w = weight as i64; // weight <= max_weight, and the plan bounds weight * L < 2^63
    let mut buf: Vec<W> = Vec::with_capacity(block);
    let mut offset = 0u64;
    let mut clipped = 0u64;
    let mut flush = |buf: &mut Vec<W>, offset: &mut u64| {
        prg::apply_masks_at(buf, *offset, &masks, threads);
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
