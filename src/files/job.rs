//! The node-side masking job (file mode and the streaming used by rounds): check the
//! round against the registry and the journal, read and quantize the update, fold in
//! the masks, and hand the words to a writer or a sender.
//!
//! File mode ([`mask_update`]) masks once per (federation, round, label) for one named
//! researcher, and releases an input (by its [`input_digest`]) once: both are journaled
//! in one transaction before the masked file exists.

use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::files::masked::{self, Error, Header};
use crate::files::tensor;
use crate::layout::Layout;
use crate::party::{Fingerprint, PartyId, Role};
use crate::pki::certificate::PeerCertificate;
use crate::pki::identity::Identity;
use crate::pki::journal::FileMask;
use crate::pki::registry::{self, NoResearcher, Registry};
use crate::secagg::keys::{MaskContext, MaskKey, PairwiseSecret, Sign};
use crate::secagg::prg::{self, PeerMask};
use crate::secagg::quantize::{self, Plan, QuantParams};
use crate::secagg::ring::Machine;
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

/// Per-peer file-mode mask keys for our side of every pair in `ctx`.
pub fn peer_masks(me: &Identity, reg: &Registry, ctx: &MaskContext) -> Result<Vec<PeerMask>> {
    masks_with(me, reg, &ctx.participants, |pw| MaskKey::derive(pw, ctx))
}

/// Per-peer mask keys for our side of every pair among `participants`, each derived
/// from the pair's secret by `derive`.
fn masks_with(
    me: &Identity,
    reg: &Registry,
    participants: &[PartyId],
    derive: impl Fn(&PairwiseSecret) -> MaskKey,
) -> Result<Vec<PeerMask>> {
    let own_fp = me.certificate.fingerprint();
    participants
        .iter()
        .filter(|id| **id != me.config.party_id)
        .map(|id| {
            let cert = registered_node(reg, id)?;
            let peer_fp: Fingerprint = cert.fingerprint();
            let pw = PairwiseSecret::derive(&me.key, &own_fp, cert.public_key(), &peer_fp);
            Ok(PeerMask {
                key: derive(&pw),
                sign: Sign::for_pair(&own_fp, &peer_fp),
            })
        })
        .collect()
}

/// The researcher a masked file is for: `chosen` if given, else the only researcher
/// registered here. Returns its id and certificate fingerprint.
pub fn researcher(reg: &Registry, chosen: Option<&PartyId>) -> Result<(PartyId, Fingerprint)> {
    let peer = reg.researcher(chosen)?.map_err(|e| match e {
        NoResearcher::None => Error::NoResearcher,
        NoResearcher::Many(ids) => {
            let ids: Vec<&str> = ids.iter().map(PartyId::as_str).collect();
            Error::ManyResearchers(ids.len(), ids.join(", "))
        }
        NoResearcher::Unknown(id) => Error::UnknownResearcher(id),
    })?;
    Ok((peer.party_id, peer.fingerprint))
}

/// A file-mode round as the node sees it.
#[derive(Clone, Debug)]
pub struct MaskSpec {
    /// Federation id.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// Vector label.
    pub label: String,
    /// Participants (any order; sorted here).
    pub participants: Vec<PartyId>,
    /// The researcher the file is for; `None`: the only researcher registered here.
    pub researcher: Option<PartyId>,
    /// Quantization knobs.
    pub quant: QuantParams,
}

/// The checks every masking makes before any heavy work: role, membership, plan,
/// weight, registrations. Returns the plan and the sorted participants.
fn check_round(
    me: &Identity,
    reg: &Registry,
    participants: &[PartyId],
    quant: QuantParams,
    weight: u64,
) -> Result<(Plan, Vec<PartyId>)> {
    if me.config.role != Role::Node {
        return Err(Error::NotANode(me.config.role));
    }
    let ids = self::participants(participants)?;
    if !ids.contains(&me.config.party_id) {
        return Err(Error::NotParticipant(me.config.party_id.clone()));
    }
    let plan = Plan::new(quant, ids.len())?;
    if weight == 0 || weight > quant.max_weight {
        return Err(Error::BadWeight {
            weight,
            max: quant.max_weight,
        });
    }
    for id in ids.iter().filter(|id| **id != me.config.party_id) {
        registered_node(reg, id)?;
    }
    Ok((plan, ids))
}

/// Checks a file-mode round before any heavy work: role, membership, plan, weight,
/// registrations, the researcher, and the journal (a mask key already used is refused
/// here, before the input is read). Returns the plan and the context.
pub fn prepare(
    me: &Identity,
    reg: &Registry,
    spec: &MaskSpec,
    weight: u64,
) -> Result<(Plan, MaskContext)> {
    let (plan, ids) = check_round(me, reg, &spec.participants, spec.quant, weight)?;
    let (_, researcher) = researcher(reg, spec.researcher.as_ref())?;
    if reg.file_mask_used(&spec.federation, spec.round, &spec.label)? {
        return Err(registry::Error::MaskReuse {
            federation: spec.federation.clone(),
            round: spec.round,
            label: spec.label.clone(),
        }
        .into());
    }
    let ctx = MaskContext {
        federation: spec.federation.clone(),
        round: spec.round,
        researcher,
        participants: ids,
        label: spec.label.clone(),
    };
    Ok((plan, ctx))
}

/// What [`mask_update`] wrote.
#[derive(Debug)]
pub struct MaskedFile {
    /// The file's header.
    pub header: Header,
    /// Values that were outside [-clip, clip] and were clipped.
    pub clipped: u64,
}

/// Masks an update for a file-mode round and writes the signed masked file at `out`,
/// using at most about 1.25 times the update's size in memory.
///
/// No masked byte of the input exists anywhere, in memory or on disk, before the mask
/// key and the input's release are journaled (one transaction,
/// [`Registry::journal_file_mask`]): a key already used or an input already released is
/// refused first, and a masking refused or interrupted leaves nothing a later masking
/// under the same key could be subtracted from. An input that fails to read (a NaN, a
/// damaged file) journals nothing, so the fixed file can be masked for the same round.
///
/// When the residues (w bytes per element) fit in 1.25 times the update's data bytes,
/// one pass reads, digests, quantizes and masks into memory; the journal follows; then
/// the file is written. Otherwise ([`mask_update_with`] with a smaller budget) a first
/// pass digests the input, the journal follows, and a second pass masks block by block
/// into the file, checking with a BLAKE3 of the values that it read what the digest
/// covers. A failure after the journal (disk full, the input changed between the
/// passes) leaves the key and the input used: mask again for a new round. Nothing is
/// ever left at `out` on failure.
#[allow(clippy::too_many_arguments)]
pub fn mask_update(
    me: &Identity,
    reg: &mut Registry,
    spec: &MaskSpec,
    input: &Path,
    weight: u64,
    out: &Path,
    threads: usize,
    now: i64,
) -> Result<MaskedFile> {
    mask_update_with(me, reg, spec, input, weight, out, threads, now, None)
}

/// [`mask_update`] holding the masked residues in memory only if they take at most
/// `memory` bytes (else two passes over the input, streaming into the file); `None`:
/// 1.25 times the update's data and 1 MiB for the weight and small updates, within the
/// node's memory target (docs/performance.md: peak RSS at most 1.5 × update + 30 MB).
#[allow(clippy::too_many_arguments)]
pub fn mask_update_with(
    me: &Identity,
    reg: &mut Registry,
    spec: &MaskSpec,
    input: &Path,
    weight: u64,
    out: &Path,
    threads: usize,
    now: i64,
    memory: Option<u64>,
) -> Result<MaskedFile> {
    let (plan, ctx) = prepare(me, reg, spec, weight)?;
    for id in ctx
        .participants
        .iter()
        .filter(|id| **id != me.config.party_id)
    {
        registered_node_at(reg, id, now)?;
    }
    let masks = peer_masks(me, reg, &ctx)?;
    let layout = tensor::read_layout(input)?;
    let memory = memory.unwrap_or_else(|| {
        layout
            .checked_encoded_len()
            .map_or(0, |b| b.saturating_add(b / 4).saturating_add(1 << 20))
    });
    let width = plan.wire_bytes();
    let residues = layout
        .checked_elements()
        .ok()
        .and_then(|e| e.checked_add(1))
        .and_then(|e| e.checked_mul(width as u64));
    let header = |layout: Layout, values: u64| Header {
        format_version: masked::FORMAT_VERSION,
        context: ctx.clone(),
        quant: plan.params,
        modulus: plan.modulus,
        elements: values + 1,
        layout,
        sender: me.config.party_id.clone(),
    };
    let ids: Vec<&str> = ctx.participants.iter().map(PartyId::as_str).collect();
    let journal = |reg: &mut Registry, digest: &[u8; 32]| {
        reg.journal_file_mask(
            &FileMask {
                federation: &ctx.federation,
                round: ctx.round,
                label: &ctx.label,
                researcher: &ctx.researcher,
                participants: &ids.join(","),
                digest,
            },
            now,
        )
    };
    let job = Job {
        plan: &plan,
        masks: &masks,
        input,
        weight,
        threads,
    };
    if let Some(bytes) = residues.filter(|b| *b <= memory) {
        // One pass into memory, then the journal, then the file.
        let mut payload = Residues {
            width,
            bytes: Vec::with_capacity(bytes as usize),
        };
        let (streamed, (digest, _)) = job.run(Digests::Journal, &mut payload)?;
        let digest = digest.ok_or_else(|| our_bug(input))?;
        let values = streamed.layout.elements();
        let header = header(streamed.layout, values);
        journal(reg, &digest)?;
        let mut writer = masked::Writer::create(out, &header, me)?;
        writer.write_residues(&payload.bytes)?;
        writer.finish(me)?.commit()?;
        return Ok(MaskedFile {
            header,
            clipped: streamed.clipped,
        });
    }
    // Two passes: digest, journal, then mask into the file.
    let summary = inspect(input, true)?;
    journal(reg, &summary.digest)?;
    let header = header(summary.layout.clone(), summary.values);
    let mut writer = masked::Writer::create(out, &header, me)?;
    let (streamed, (_, check)) = job.run(Digests::Check, &mut writer)?;
    if streamed.layout != header.layout || check.is_none() || check != summary.check {
        return Err(Error::Malformed {
            path: input.to_owned(),
            reason: format!(
                "the file changed while it was masked; round {} is used up, mask the update again for a new round",
                ctx.round
            ),
        });
    }
    writer.finish(me)?.commit()?;
    Ok(MaskedFile {
        header,
        clipped: streamed.clipped,
    })
}

/// What file mode masks: the plan, the masks, the input and its weight.
struct Job<'a> {
    plan: &'a Plan,
    masks: &'a [PeerMask],
    input: &'a Path,
    weight: u64,
    threads: usize,
}

/// Where masked words go, whatever the machine word.
trait Sink {
    fn put<W: Word>(&mut self, words: &[W]) -> Result<()>;
}

/// Residues held in memory, `width` bytes each.
struct Residues {
    width: usize,
    bytes: Vec<u8>,
}

impl Sink for Residues {
    fn put<W: Word>(&mut self, words: &[W]) -> Result<()> {
        crate::secagg::sum::encode_words(words, self.width, &mut self.bytes);
        Ok(())
    }
}

impl Sink for masked::Writer {
    fn put<W: Word>(&mut self, words: &[W]) -> Result<()> {
        self.write_words(words)
    }
}

impl Job<'_> {
    /// Reads, quantizes, weights and masks the input block by block into `sink`, with
    /// the machine word the plan needs, computing `digests` of the input on the way.
    fn run(&self, digests: Digests, sink: &mut impl Sink) -> Result<(Streamed, DigestsOut)> {
        let (p, m, i, w, t) = (self.plan, self.masks, self.input, self.weight, self.threads);
        let block = masked::SEGMENT_ELEMENTS;
        let done = match p.modulus.machine() {
            Machine::U32 => stream::<u32, _>(p, m, i, w, t, block, digests, |_, x| sink.put(x)),
            Machine::U64 => stream::<u64, _>(p, m, i, w, t, block, digests, |_, x| sink.put(x)),
        };
        done.map_err(Stopped::into_error)
    }
}

fn our_bug(input: &Path) -> Error {
    Error::Malformed {
        path: input.to_owned(),
        reason: "no layout was read (our bug)".into(),
    }
}

impl Stopped<Error> {
    fn into_error(self) -> Error {
        match self {
            Stopped::Masking(e) | Stopped::Emit(e) => e,
        }
    }
}

/// The journaled digest and the check, as [`stream`] computed them.
type DigestsOut = (Option<[u8; 32]>, Option<[u8; 32]>);

/// Which digests of the input [`stream`] computes as it reads.
#[derive(Clone, Copy, PartialEq)]
enum Digests {
    /// None.
    None,
    /// The journaled SHA-256 digest.
    Journal,
    /// The BLAKE3 check of the same bytes.
    Check,
}

/// Domain separation of the input digest.
pub const INPUT_DIGEST_LABEL: &[u8] = b"secagg input v1";

/// The content digest of an update: SHA-256 over `"secagg input v1"`, then per tensor
/// `u32be(len(name)) || name || dtype (one byte: 4 for f32, 8 for f64) || u32be(ndim) ||
/// u64be(dim)...`, then every value as f64 little-endian, in layout order. The same
/// update is recognised in both modes, whatever the file is called.
pub fn input_digest(input: &Path) -> Result<[u8; 32]> {
    let mut digest = None;
    let read = tensor::read_value_blocks(input, |layout| {
        let d = digest.insert(InputDigest::new(layout, true, false));
        |xs: &[f64]| {
            d.values(xs);
            Ok::<(), std::convert::Infallible>(())
        }
    })?;
    if let Err(never) = read {
        match never {}
    }
    // read_value_blocks calls make_visit before returning Ok.
    digest
        .and_then(|d| d.finish().0)
        .ok_or_else(|| Error::Malformed {
            path: input.to_owned(),
            reason: "no layout was read (our bug)".into(),
        })
}

/// The running hashes behind [`input_digest`]: the journaled SHA-256 digest (when
/// wanted) and a BLAKE3 of the same bytes, the cheap check that a second pass read the
/// same content.
struct InputDigest {
    hash: Option<Sha256>,
    check: Option<blake3::Hasher>,
    bytes: Vec<u8>,
}

impl InputDigest {
    fn new(layout: &Layout, journaled: bool, checked: bool) -> InputDigest {
        let mut head = INPUT_DIGEST_LABEL.to_vec();
        for t in &layout.tensors {
            head.extend_from_slice(&(t.name.len() as u32).to_be_bytes());
            head.extend_from_slice(t.name.as_bytes());
            head.push(t.dtype.bytes() as u8);
            head.extend_from_slice(&(t.shape.len() as u32).to_be_bytes());
            for d in &t.shape {
                head.extend_from_slice(&d.to_be_bytes());
            }
        }
        let hash = journaled.then(|| {
            let mut h = Sha256::new();
            h.update(&head);
            h
        });
        let check = checked.then(|| {
            let mut h = blake3::Hasher::new();
            h.update(&head);
            h
        });
        InputDigest {
            hash,
            check,
            bytes: vec![0u8; 8 * 4096],
        }
    }

    fn values(&mut self, xs: &[f64]) {
        for chunk in xs.chunks(4096) {
            let bytes = &mut self.bytes[..chunk.len() * 8];
            for (x, b) in chunk.iter().zip(bytes.chunks_exact_mut(8)) {
                b.copy_from_slice(&x.to_le_bytes());
            }
            if let Some(h) = self.hash.as_mut() {
                h.update(&*bytes);
            }
            if let Some(h) = self.check.as_mut() {
                h.update(bytes);
            }
        }
    }

    /// The journaled digest (if computed) and the check.
    fn finish(self) -> (Option<[u8; 32]>, Option<[u8; 32]>) {
        (
            self.hash.map(|h| h.finalize().into()),
            self.check.map(|h| *h.finalize().as_bytes()),
        )
    }
}

/// Why [`stream_masked`] stopped early.
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

/// What [`stream_masked`] streamed.
#[derive(Debug)]
pub struct Streamed {
    /// The update's layout as read.
    pub layout: Layout,
    /// Values that were outside [-clip, clip] and were clipped.
    pub clipped: u64,
}

/// Reads, quantizes, weights and masks `input` `block` words at a time, handing each
/// block to `emit` with its offset (in words); the weight is the last word. No check
/// and no journal: the caller (a round, after its own checks and journal entries) has
/// done both. Memory is one block, whatever the update's size. `W` must be the plan's
/// machine word; each word holds its residue in its low `plan.wire_bytes()` bytes.
pub fn stream_masked<W: Word, E>(
    plan: &Plan,
    masks: &[PeerMask],
    input: &Path,
    weight: u64,
    threads: usize,
    block: usize,
    emit: impl FnMut(u64, &[W]) -> std::result::Result<(), E>,
) -> std::result::Result<Streamed, Stopped<E>> {
    stream(
        plan,
        masks,
        input,
        weight,
        threads,
        block,
        Digests::None,
        emit,
    )
    .map(|(s, _)| s)
}

/// [`stream_masked`], and the input's `digests` in the same pass (the journaled SHA-256
/// digest and the BLAKE3 check, when asked for).
#[allow(clippy::too_many_arguments)]
fn stream<W: Word, E>(
    plan: &Plan,
    masks: &[PeerMask],
    input: &Path,
    weight: u64,
    threads: usize,
    block: usize,
    digests: Digests,
    mut emit: impl FnMut(u64, &[W]) -> std::result::Result<(), E>,
) -> std::result::Result<(Streamed, DigestsOut), Stopped<E>> {
    let machine = match plan.modulus.machine() {
        Machine::U32 => 4,
        Machine::U64 => 8,
    };
    if machine != W::BYTES {
        return Err(wrong_word::<W>(plan, input).into());
    }
    let block = block.max(1);
    let width = plan.wire_bytes();
    let w = weight as i64; // weight <= max_weight, and the plan bounds weight * L < 2^63
    let mut buf: Vec<W> = Vec::with_capacity(block);
    let mut offset = 0u64;
    let mut clipped = 0u64;
    let mut hash: Option<InputDigest> = None;
    let mut flush = |buf: &mut Vec<W>, offset: &mut u64| {
        prg::apply_masks_at(buf, *offset, masks, width, threads);
        emit(*offset, buf)?;
        *offset += buf.len() as u64;
        buf.clear();
        Ok(())
    };
    let (b, off, clip, fl) = (&mut buf, &mut offset, &mut clipped, &mut flush);
    let layout = tensor::read_value_blocks(input, |layout| {
        let mut hash = (digests != Digests::None).then(|| {
            hash.insert(InputDigest::new(
                layout,
                digests == Digests::Journal,
                digests == Digests::Check,
            ))
        });
        move |mut xs: &[f64]| -> std::result::Result<(), Stopped<E>> {
            if let Some(h) = hash.as_mut() {
                h.values(xs);
            }
            while !xs.is_empty() {
                let (head, rest) = xs.split_at(xs.len().min(block - b.len()));
                let at = *off + b.len() as u64;
                *clip += plan.quantize_into(head, w, b).map_err(|i| {
                    Stopped::Masking(quantize::Error::NonFinite(at + i as u64).into())
                })?;
                if b.len() == block {
                    fl(b, off).map_err(Stopped::Emit)?;
                }
                xs = rest;
            }
            Ok(())
        }
    })
    .map_err(|e| Stopped::Masking(e.into()))??;
    buf.push(W::from_u64(weight));
    flush(&mut buf, &mut offset).map_err(Stopped::Emit)?;
    Ok((
        Streamed { layout, clipped },
        hash.map_or((None, None), InputDigest::finish),
    ))
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
    /// BLAKE3 over the same bytes as `digest` (only when asked for, by file mode's
    /// two-pass masking): a cheap way for a second pass to check that it read the same
    /// content.
    pub check: Option<[u8; 32]>,
}

/// Reads a whole update before a round: parses it, refuses NaN and infinities (naming
/// the index), and computes its content digest. Nothing is allocated per value.
pub fn inspect_input(input: &Path) -> Result<InputSummary> {
    inspect(input, false)
}

/// [`inspect_input`], with the BLAKE3 check when `check`.
fn inspect(input: &Path, check: bool) -> Result<InputSummary> {
    let mut digest = None;
    let mut at = 0u64;
    let mut bad: Option<u64> = None;
    let read = tensor::read_value_blocks(input, |layout| {
        let d = digest.insert(InputDigest::new(layout, true, check));
        |xs: &[f64]| {
            if bad.is_none() {
                bad = xs
                    .iter()
                    .position(|x| !x.is_finite())
                    .map(|i| at + i as u64);
            }
            d.values(xs);
            at += xs.len() as u64;
            Ok::<(), std::convert::Infallible>(())
        }
    })?;
    let layout = match read {
        Ok(l) => l,
        Err(never) => match never {},
    };
    if let Some(i) = bad {
        return Err(quantize::Error::NonFinite(i).into());
    }
    let (digest, check) = match digest.map(InputDigest::finish) {
        Some((Some(digest), check)) => (digest, check),
        _ => {
            return Err(Error::Malformed {
                path: input.to_owned(),
                reason: "no layout was read (our bug)".into(),
            });
        }
    };
    Ok(InputSummary {
        layout,
        digest,
        values: at,
        check,
    })
}

fn wrong_word<W: Word>(plan: &Plan, input: &Path) -> Error {
    Error::Malformed {
        path: input.to_owned(),
        reason: format!(
            "{}-byte words for modulus {} (our bug)",
            W::BYTES,
            plan.modulus
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Container, DType, TensorSpec};

    #[test]
    fn input_digest_hashes_names_types_shapes_and_f64_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("u.safetensors");
        let layout = Layout {
            container: Container::Safetensors,
            tensors: vec![
                TensorSpec {
                    name: "a".into(),
                    shape: vec![2],
                    dtype: DType::F32,
                },
                TensorSpec {
                    name: "bb".into(),
                    shape: vec![1, 1],
                    dtype: DType::F64,
                },
            ],
        };
        tensor::write_values(&path, &layout, [0.5, -1.0, 0.1].into_iter()).expect("write");
        // The bytes spelled out, as docs/protocol.md gives them.
        let mut m = b"secagg input v1".to_vec();
        m.extend_from_slice(&[0, 0, 0, 1, b'a', 4, 0, 0, 0, 1]);
        m.extend_from_slice(&2u64.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 2, b'b', b'b', 8, 0, 0, 0, 2]);
        m.extend_from_slice(&1u64.to_be_bytes());
        m.extend_from_slice(&1u64.to_be_bytes());
        for x in [0.5f64, -1.0, 0.1] {
            m.extend_from_slice(&x.to_le_bytes());
        }
        let expected: [u8; 32] = Sha256::digest(&m).into();
        assert_eq!(input_digest(&path).expect("digest"), expected);
    }
}
