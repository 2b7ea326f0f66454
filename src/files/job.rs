//! The node-side masking job (file mode and the streaming used by rounds): check the
//! round against the registry and the journal, read and quantize the update, fold in
//! the masks, and hand the words to a writer or a sender.
//!
//! File mode ([`mask_update`]) masks once per (federation, round, label) for one named
//! researcher, and releases an input (by its [`input_digests`]) once: both are journaled
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
use crate::pki::journal::{FileMask, InputDigests};
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
        Some((peer, der)) => {
            PeerCertificate::from_registered_der(&der, &peer.fingerprint).map_err(|source| {
                Error::Certificate {
                    id: id.clone(),
                    source,
                }
            })
        }
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
    let certs = peer_certs(me, participants, |id| registered_node(reg, id))?;
    Ok(masks_for(me, &certs, derive))
}

/// The certificate of every participant but us, each from `cert` (which checks it).
fn peer_certs(
    me: &Identity,
    participants: &[PartyId],
    cert: impl Fn(&PartyId) -> Result<PeerCertificate>,
) -> Result<Vec<PeerCertificate>> {
    participants
        .iter()
        .filter(|id| **id != me.config.party_id)
        .map(cert)
        .collect()
}

/// Our mask key with each peer whose (already checked) certificate is in `certs`.
fn masks_for(
    me: &Identity,
    certs: &[PeerCertificate],
    derive: impl Fn(&PairwiseSecret) -> MaskKey,
) -> Vec<PeerMask> {
    let own_fp = me.certificate.fingerprint();
    certs
        .iter()
        .map(|cert| {
            let peer_fp: Fingerprint = cert.fingerprint();
            let pw = PairwiseSecret::derive(&me.key, &own_fp, cert.public_key(), &peer_fp);
            PeerMask {
                key: derive(&pw),
                sign: Sign::for_pair(&own_fp, &peer_fp),
            }
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
/// weight, registrations (each peer's certificate from `cert`, which checks it).
/// Returns the plan, the sorted participants and the peers' certificates.
fn check_round(
    me: &Identity,
    participants: &[PartyId],
    quant: QuantParams,
    weight: u64,
    cert: impl Fn(&PartyId) -> Result<PeerCertificate>,
) -> Result<(Plan, Vec<PartyId>, Vec<PeerCertificate>)> {
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
    let certs = peer_certs(me, &ids, cert)?;
    Ok((plan, ids, certs))
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
    prepare_with(me, reg, spec, weight, |id| registered_node(reg, id)).map(|(p, c, _)| (p, c))
}

/// [`prepare`] with each peer's certificate from `cert`; also returns them.
fn prepare_with(
    me: &Identity,
    reg: &Registry,
    spec: &MaskSpec,
    weight: u64,
    cert: impl Fn(&PartyId) -> Result<PeerCertificate>,
) -> Result<(Plan, MaskContext, Vec<PeerCertificate>)> {
    let (plan, ids, certs) = check_round(me, &spec.participants, spec.quant, weight, cert)?;
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
    Ok((plan, ctx, certs))
}

/// What [`mask_update`] wrote.
#[derive(Debug)]
pub struct MaskedFile {
    /// The file's header.
    pub header: Header,
    /// Values that were outside [-clip, clip] and were clipped.
    pub clipped: u64,
    /// Where the masked residues were until the journal entry.
    pub staging: Staging,
}

/// Where [`mask_update`] kept the masked residues until the journal entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staging {
    /// In an unnamed file beside the output ([`masked::Writer::create_unnamed`]).
    Unnamed,
    /// In memory.
    Memory,
    /// Nowhere: the input was digested first, then masked in a second pass.
    TwoPasses,
}

/// Masks an update for a file-mode round and writes the signed masked file at `out`.
///
/// No masked byte of the input exists under any name, or anywhere that outlives this
/// process, before the mask key and the input's release are journaled (one transaction,
/// [`Registry::journal_file_mask`]): a key already used or an input already released is
/// refused first, and a masking refused or interrupted leaves nothing a later masking
/// under the same key could be subtracted from. An input that fails to read (a NaN, a
/// damaged file) journals nothing, so the fixed file can be masked for the same round.
///
/// The input is digested with version 2, and with version 1 as well in the same pass
/// while the registry holds version-1 releases ([`Registry::legacy_releases`]); it is
/// refused if either digest was released, and its version-2 digest is journaled.
///
/// One pass reads, digests, quantizes and masks the input into an unnamed file beside
/// `out` ([`masked::Writer::create_unnamed`]: no name, gone when the process ends); the
/// journal follows; then the file gets its name. Where the filesystem has no unnamed
/// files, the residues (w bytes per element) are held in memory instead if they fit in
/// 1.25 times the update's data bytes, else ([`mask_update_with`] with a smaller budget)
/// a first pass digests the input, the journal follows, and a second pass masks block
/// by block into the file, checking with the version-2 digest of what it read that it
/// masked what was journaled. A failure after the journal (disk full, the input changed
/// between the passes) leaves the key and the input used: mask again for a new round.
/// Nothing is ever left at `out` on failure.
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

/// [`mask_update`] with a choice of path. `None`: an unnamed file where the filesystem
/// has them, else as `Some` with 1.25 times the update's data and 1 MiB for the weight
/// and small updates, within the node's memory target (docs/performance.md: peak RSS at
/// most 1.5 × update + 30 MB). `Some(memory)`: no unnamed file; the masked residues are
/// held in memory if they take at most `memory` bytes, else two passes over the input
/// stream into the file.
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
    // Refused here, before the journal: found when the file is written or renamed, they
    // would use up the round and the update.
    let cannot_write = |source| Error::Io {
        action: "write the masked file at",
        path: out.to_owned(),
        source,
    };
    if out.is_dir() {
        return Err(cannot_write(std::io::ErrorKind::IsADirectory.into()));
    }
    crate::atomic::check_dir_writable(out).map_err(cannot_write)?;
    // Each peer's certificate is parsed and checked once (expiry too), then used for
    // its key.
    let (plan, ctx, certs) =
        prepare_with(me, reg, spec, weight, |id| registered_node_at(reg, id, now))?;
    let masks = masks_for(me, &certs, |pw| MaskKey::derive(pw, &ctx));
    // Version-1 releases in the registry: digest both ways (docs/protocol.md, gap 18).
    let legacy = reg.legacy_releases()?;
    let layout = tensor::read_layout(input)?;
    let unnamed = memory.is_none();
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
    let journal = |reg: &mut Registry, digest: &InputDigests| {
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
    let round = ctx.round;
    let after_journal = |e: Error| Error::AfterJournal {
        round,
        source: Box::new(e),
    };
    let job = Job {
        plan: &plan,
        masks: &masks,
        input,
        weight,
        threads,
    };
    if unnamed {
        // One pass into an unnamed file, then the journal, then the file's name.
        let header = header(layout.clone(), layout.elements());
        if let Some(mut writer) = masked::Writer::create_unnamed(out, &header, me)? {
            let expect = Expect::Layout(&layout);
            let (streamed, digest) = job.run(Digests::journal(legacy), expect, &mut writer)?;
            let digest = digest.ok_or_else(|| our_bug(input))?;
            let signed = writer.finish(me)?;
            journal(reg, &digest)?;
            signed.commit().map_err(after_journal)?;
            return Ok(MaskedFile {
                header,
                clipped: streamed.clipped,
                staging: Staging::Unnamed,
            });
        }
    }
    if let Some(bytes) = residues.filter(|b| *b <= memory) {
        // One pass into memory, then the journal, then the file.
        let mut payload = Residues {
            width,
            bytes: crate::hugepages::vec_with_capacity(bytes as usize),
        };
        let (streamed, digest) = job.run(Digests::journal(legacy), Expect::Any, &mut payload)?;
        let digest = digest.ok_or_else(|| our_bug(input))?;
        let values = streamed.layout.elements();
        let header = header(streamed.layout, values);
        journal(reg, &digest)?;
        let write = || {
            let mut writer = masked::Writer::create(out, &header, me)?;
            writer.write_residues(&payload.bytes)?;
            writer.finish(me)?.commit()
        };
        write().map_err(after_journal)?;
        return Ok(MaskedFile {
            header,
            clipped: streamed.clipped,
            staging: Staging::Memory,
        });
    }
    // Two passes: digest, journal, then mask into the file.
    let summary = inspect_input(input, legacy)?;
    journal(reg, &summary.digest)?;
    let header = header(summary.layout.clone(), summary.values);
    let mut writer = masked::Writer::create(out, &header, me).map_err(after_journal)?;
    // The second pass digests again (version 2 only): the same digest is the same
    // layout and the same bytes, so what is masked is what was journaled.
    let (streamed, check) = job
        .run(Digests::V2, Expect::Any, &mut writer)
        .map_err(after_journal)?;
    if streamed.layout != header.layout || check.map(|d| d.v2) != Some(summary.digest.v2) {
        return Err(Error::Malformed {
            path: input.to_owned(),
            reason: format!(
                "the file changed while it was masked; round {} is used up, mask the update again for a new round",
                ctx.round
            ),
        });
    }
    writer
        .finish(me)
        .and_then(masked::Finished::commit)
        .map_err(after_journal)?;
    Ok(MaskedFile {
        header,
        clipped: streamed.clipped,
        staging: Staging::TwoPasses,
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
    fn run(
        &self,
        digests: Digests,
        expect: Expect<'_>,
        sink: &mut impl Sink,
    ) -> Result<(Streamed, Option<InputDigests>)> {
        let (p, m, i, w, t) = (self.plan, self.masks, self.input, self.weight, self.threads);
        let block = masked::SEGMENT_ELEMENTS;
        let e = expect;
        let done = match p.modulus.machine() {
            Machine::U32 => stream::<u32, _>(p, m, i, w, t, block, digests, e, |_, x| sink.put(x)),
            Machine::U64 => stream::<u64, _>(p, m, i, w, t, block, digests, e, |_, x| sink.put(x)),
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

/// Which digests of the input [`stream`] computes as it reads.
#[derive(Clone, Copy, PartialEq)]
enum Digests {
    /// None.
    None,
    /// Version 2: the journaled digest, or the check that a second pass read the same
    /// content as the first.
    V2,
    /// Versions 2 and 1 (the registry holds version-1 releases).
    Both,
}

impl Digests {
    /// The digests to journal a release with: version 1 too when `legacy`.
    fn journal(legacy: bool) -> Digests {
        if legacy { Digests::Both } else { Digests::V2 }
    }
}

/// Domain separation of the version-1 input digest.
pub const INPUT_DIGEST_LABEL_V1: &[u8] = b"secagg input v1";
/// Domain separation of the version-2 input digest.
pub const INPUT_DIGEST_LABEL_V2: &[u8] = b"secagg input v2";

/// The content digests of an update (docs/protocol.md, "Mask-reuse journal"); the
/// version-1 digest only when `v1`. Both start with the same head after their label:
/// per tensor, in layout order, `u32be(len(name)) || name || dtype (one byte: 4 for f32,
/// 8 for f64) || u32be(ndim) || u64be(dim)...`. Then:
///
/// - version 2: BLAKE3 over `"secagg input v2" || head || data`, where data is every
///   value little-endian in its own type (4 bytes for f32, 8 for f64), in layout order:
///   the tensors' data sections as the file holds them, whatever the container;
/// - version 1: SHA-256 over `"secagg input v1" || head ||` every value widened to f64,
///   little-endian, in layout order.
///
/// The same update is recognised in both modes, whatever the file is called. NaN and
/// infinities are not refused here ([`inspect_input`] and masking refuse them).
pub fn input_digests(input: &Path, v1: bool) -> Result<InputDigests> {
    let mut digest = None;
    let read = tensor::read_raw_blocks(input, |layout| {
        let d = digest.insert(InputDigest::new(layout, v1));
        |xs: &[f64], bytes: &[u8]| {
            d.block(xs, bytes);
            Ok::<(), std::convert::Infallible>(())
        }
    })?;
    if let Err(never) = read {
        match never {}
    }
    // read_raw_blocks calls make_visit before returning Ok.
    digest
        .map(InputDigest::finish)
        .ok_or_else(|| our_bug(input))
}

/// The head both digest versions share after their label: each tensor's name, type and
/// shape, in layout order.
fn digest_head(label: &[u8], layout: &Layout) -> Vec<u8> {
    let mut head = label.to_vec();
    for t in &layout.tensors {
        head.extend_from_slice(&(t.name.len() as u32).to_be_bytes());
        head.extend_from_slice(t.name.as_bytes());
        head.push(t.dtype.bytes() as u8);
        head.extend_from_slice(&(t.shape.len() as u32).to_be_bytes());
        for d in &t.shape {
            head.extend_from_slice(&d.to_be_bytes());
        }
    }
    head
}

/// The running hashes behind [`input_digests`]: version 2 always, version 1 when asked.
struct InputDigest {
    v2: blake3::Hasher,
    /// The SHA-256 and a buffer for the f64 bytes it hashes.
    v1: Option<(Sha256, Vec<u8>)>,
}

impl InputDigest {
    fn new(layout: &Layout, v1: bool) -> InputDigest {
        let mut v2 = blake3::Hasher::new();
        v2.update(&digest_head(INPUT_DIGEST_LABEL_V2, layout));
        let v1 = v1.then(|| {
            let mut h = Sha256::new();
            h.update(digest_head(INPUT_DIGEST_LABEL_V1, layout));
            (h, vec![0u8; 8 * 4096])
        });
        InputDigest { v2, v1 }
    }

    /// One block as [`tensor::read_raw_blocks`] reads it: the values and their bytes.
    fn block(&mut self, xs: &[f64], bytes: &[u8]) {
        self.v2.update(bytes);
        if let Some((h, buf)) = self.v1.as_mut() {
            for chunk in xs.chunks(4096) {
                let buf = &mut buf[..chunk.len() * 8];
                for (x, b) in chunk.iter().zip(buf.chunks_exact_mut(8)) {
                    b.copy_from_slice(&x.to_le_bytes());
                }
                h.update(&*buf);
            }
        }
    }

    fn finish(self) -> InputDigests {
        InputDigests {
            v2: *self.v2.finalize().as_bytes(),
            v1: self.v1.map(|(h, _)| h.finalize().into()),
        }
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
        Expect::Any,
        emit,
    )
    .map(|(s, _)| s)
}

/// What a round node checked before its round: the input's layout and the BLAKE3 digest
/// of each block of its data as read (both from [`inspect_input_blocks`], the read that
/// journaled the release).
#[derive(Clone, Copy, Debug)]
pub struct Checked<'a> {
    /// The layout that was checked.
    pub layout: &'a Layout,
    /// The digests of the data's blocks, in order.
    pub blocks: &'a [[u8; 32]],
}

/// [`stream_masked`] that masks only what was checked: the file's layout, parsed again,
/// must be `checked.layout` before any value is read, each block of its data, as it is
/// read and before any of it is masked, must have the digest at its place in
/// `checked.blocks`, and there must be exactly as many blocks. A round node masks its
/// input with this, so the input it releases is the one whose release it journaled,
/// even if the file changes during the round: the first change stops the stream
/// (docs/protocol.md, "A round node's second read").
#[allow(clippy::too_many_arguments)]
pub fn stream_checked<W: Word, E>(
    plan: &Plan,
    masks: &[PeerMask],
    input: &Path,
    weight: u64,
    threads: usize,
    block: usize,
    checked: Checked<'_>,
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
        Expect::Checked(checked),
        emit,
    )
    .map(|(s, _)| s)
}

/// What a stream holds the input to besides being a readable update.
#[derive(Clone, Copy)]
enum Expect<'a> {
    /// Nothing more.
    Any,
    /// This layout (read before the stream, for a header already written): compared
    /// before any value is read.
    Layout(&'a Layout),
    /// What a round node checked ([`stream_checked`]).
    Checked(Checked<'a>),
}

/// The error for an input whose layout changed between two reads in one masking, before
/// any of it was masked or journaled.
fn changed_while_read(input: &Path) -> Error {
    Error::Malformed {
        path: input.to_owned(),
        reason: "the file changed while it was being read (its header differs from a moment ago); nothing was masked or journaled: mask it again once nothing writes to it".into(),
    }
}

/// The error for an input whose data differs from what was checked.
fn changed_since_checked(input: &Path) -> Error {
    Error::Malformed {
        path: input.to_owned(),
        reason: "the file changed after it was checked before the round; nothing of the change was masked or sent, and this update is still counted as released".into(),
    }
}

/// [`stream_masked`], and the input's `digests` in the same pass.
#[allow(clippy::too_many_arguments)]
fn stream<W: Word, E>(
    plan: &Plan,
    masks: &[PeerMask],
    input: &Path,
    weight: u64,
    threads: usize,
    block: usize,
    digests: Digests,
    expect: Expect<'_>,
    mut emit: impl FnMut(u64, &[W]) -> std::result::Result<(), E>,
) -> std::result::Result<(Streamed, Option<InputDigests>), Stopped<E>> {
    let checked = match expect {
        Expect::Checked(c) => Some(c),
        _ => None,
    };
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
    let mut blocks = 0usize;
    let (b, off, clip, fl) = (&mut buf, &mut offset, &mut clipped, &mut flush);
    let seen = &mut blocks;
    // The values are converted from their bytes inside the quantizing loop; they are
    // decoded to f64 on their own only for the version-1 digest.
    let mut decoded: Vec<f64> = Vec::new();
    let layout = tensor::read_data_blocks(input, |layout| {
        let mut hash = (digests != Digests::None)
            .then(|| hash.insert(InputDigest::new(layout, digests == Digests::Both)));
        // The same data bytes under another header (f64 read as f32, other shapes) would
        // pass every block digest: the layout is compared before any value is used.
        let changed = match expect {
            Expect::Any => None,
            Expect::Layout(l) => (l != layout).then(|| changed_while_read(input)),
            Expect::Checked(c) => (c.layout != layout).then(|| changed_since_checked(input)),
        };
        let mut changed = changed.map(Stopped::from);
        move |dtype: crate::layout::DType,
              mut bytes: &[u8]|
              -> std::result::Result<(), Stopped<E>> {
            if let Some(e) = changed.take() {
                return Err(e);
            }
            if let Some(checked) = checked {
                if checked.blocks.get(*seen) != Some(blake3::hash(bytes).as_bytes()) {
                    return Err(changed_since_checked(input).into());
                }
                *seen += 1;
            }
            if let Some(h) = hash.as_mut() {
                if h.v1.is_some() {
                    decoded.clear();
                    crate::layout::decode_into(dtype, bytes, &mut decoded);
                }
                h.block(&decoded, bytes);
            }
            let size = dtype.bytes();
            while bytes.len() >= size {
                let n = (bytes.len() / size).min(block - b.len());
                let (head, rest) = bytes.split_at(n * size);
                let at = *off + b.len() as u64;
                *clip += plan.quantize_bytes_into(dtype, head, w, b).map_err(|i| {
                    Stopped::Masking(quantize::Error::NonFinite(at + i as u64).into())
                })?;
                if b.len() == block {
                    fl(b, off).map_err(Stopped::Emit)?;
                }
                bytes = rest;
            }
            Ok(())
        }
    })
    .map_err(|e| Stopped::Masking(e.into()))??;
    match expect {
        Expect::Layout(l) if *l != layout => return Err(changed_while_read(input).into()),
        Expect::Checked(c) if *c.layout != layout || c.blocks.len() != blocks => {
            return Err(changed_since_checked(input).into());
        }
        _ => {}
    }
    buf.push(W::from_u64(weight));
    flush(&mut buf, &mut offset).map_err(Stopped::Emit)?;
    Ok((Streamed { layout, clipped }, hash.map(InputDigest::finish)))
}

/// What [`inspect_input`] found: the update's layout, its content digests, and how many
/// values it has.
#[derive(Clone, Debug)]
pub struct InputSummary {
    /// Tensor names, shapes and types.
    pub layout: Layout,
    /// The digests the release journal keys the input by ([`input_digests`]): version 2,
    /// and version 1 when asked for.
    pub digest: InputDigests,
    /// Values.
    pub values: u64,
}

/// Reads a whole update before a round (or before file mode's two-pass masking): parses
/// it, refuses NaN and infinities (naming the index), and computes its content digests,
/// version 1 too when `v1` (the registry holds version-1 releases,
/// [`Registry::legacy_releases`]). Nothing is allocated per value.
pub fn inspect_input(input: &Path, v1: bool) -> Result<InputSummary> {
    inspect(input, v1, None)
}

/// [`inspect_input`], and the BLAKE3 digest of each block of the data as
/// [`tensor::read_raw_blocks`] reads it, in order: what [`stream_checked`] holds a round
/// node's second read to.
pub fn inspect_input_blocks(input: &Path, v1: bool) -> Result<(InputSummary, Vec<[u8; 32]>)> {
    let mut blocks = Vec::new();
    let summary = inspect(input, v1, Some(&mut blocks))?;
    Ok((summary, blocks))
}

/// [`inspect_input`], pushing each block's digest to `blocks` when given.
fn inspect(input: &Path, v1: bool, mut blocks: Option<&mut Vec<[u8; 32]>>) -> Result<InputSummary> {
    let mut digest = None;
    let mut at = 0u64;
    let mut bad: Option<u64> = None;
    let read = tensor::read_raw_blocks(input, |layout| {
        let d = digest.insert(InputDigest::new(layout, v1));
        |xs: &[f64], bytes: &[u8]| {
            if let Some(blocks) = blocks.as_mut() {
                blocks.push(*blake3::hash(bytes).as_bytes());
            }
            if bad.is_none() {
                bad = xs
                    .iter()
                    .position(|x| !x.is_finite())
                    .map(|i| at + i as u64);
            }
            d.block(xs, bytes);
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
    let digest = digest.ok_or_else(|| our_bug(input))?.finish();
    Ok(InputSummary {
        layout,
        digest,
        values: at,
    })
}

/// The digest a round binds the global model by (`--model`): the version-1 input digest
/// of the model file. It travels in the announcement and the round context, so it stays
/// version 1 whatever the journal uses. Refuses NaN and infinities as [`inspect_input`].
pub fn model_digest(model: &Path) -> Result<[u8; 32]> {
    inspect_input(model, true)?
        .digest
        .v1
        .ok_or_else(|| our_bug(model))
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
    fn input_digests_hash_names_types_shapes_and_values() {
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
        tensor::write_values(&path, &layout, [0.5, -0.0, 0.1].into_iter()).expect("write");
        // The bytes spelled out, as docs/protocol.md gives them.
        let mut head = vec![0, 0, 0, 1, b'a', 4, 0, 0, 0, 1];
        head.extend_from_slice(&2u64.to_be_bytes());
        head.extend_from_slice(&[0, 0, 0, 2, b'b', b'b', 8, 0, 0, 0, 2]);
        head.extend_from_slice(&1u64.to_be_bytes());
        head.extend_from_slice(&1u64.to_be_bytes());
        // Version 1: every value as f64.
        let mut m1 = b"secagg input v1".to_vec();
        m1.extend_from_slice(&head);
        for x in [0.5f64, -0.0, 0.1] {
            m1.extend_from_slice(&x.to_le_bytes());
        }
        // Version 2: every value in its own type (a is f32, bb is f64).
        let mut m2 = b"secagg input v2".to_vec();
        m2.extend_from_slice(&head);
        m2.extend_from_slice(&0.5f32.to_le_bytes());
        m2.extend_from_slice(&(-0.0f32).to_le_bytes());
        m2.extend_from_slice(&0.1f64.to_le_bytes());
        let v1: [u8; 32] = Sha256::digest(&m1).into();
        let v2: [u8; 32] = *blake3::hash(&m2).as_bytes();
        assert_eq!(
            input_digests(&path, true).expect("digest"),
            InputDigests { v2, v1: Some(v1) }
        );
        assert_eq!(
            input_digests(&path, false).expect("digest"),
            InputDigests { v2, v1: None }
        );
        // -0.0 and 0.0 are different inputs under both versions, as they were under 1.
        tensor::write_values(&path, &layout, [0.5, 0.0, 0.1].into_iter()).expect("write");
        let zero = input_digests(&path, true).expect("digest");
        assert_ne!(zero.v2, v2);
        assert_ne!(zero.v1, Some(v1));
    }

    /// File mode writes the header from a first read of the layout; a stream that then
    /// parses another layout (the file was rewritten in between) must stop before any
    /// value is masked, and say so.
    #[test]
    fn a_stream_expecting_a_layout_stops_before_any_value_when_it_differs() {
        use crate::secagg::quantize::QuantParams;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("u.npy");
        let npy = |n: u64| Layout {
            container: Container::Npy,
            tensors: vec![TensorSpec {
                name: String::new(),
                shape: vec![n],
                dtype: DType::F32,
            }],
        };
        let (first, now) = (npy(3000), npy(3001));
        tensor::write_values(&path, &now, (0..3001).map(|i| i as f64 / 4000.0)).expect("write");
        let plan = Plan::new(QuantParams::default(), 3).expect("plan");
        let run = |expect: Expect<'_>| {
            let mut emitted = 0usize;
            let r = stream::<u64, ()>(
                &plan,
                &[],
                &path,
                1,
                1,
                1000,
                Digests::V2,
                expect,
                |_, w| {
                    emitted += w.len();
                    Ok(())
                },
            );
            (r.map(|(s, _)| s.layout), emitted)
        };
        let (r, emitted) = run(Expect::Layout(&first));
        let Err(Stopped::Masking(e)) = r else {
            panic!("a changed layout must stop the stream");
        };
        assert!(
            e.to_string().contains("changed while it was being read"),
            "{e}"
        );
        assert_eq!(emitted, 0, "nothing is masked");
        // The layout read a moment ago: the whole update and the weight go out.
        let (r, emitted) = run(Expect::Layout(&now));
        assert_eq!(r.ok(), Some(now.clone()));
        assert_eq!(emitted, 3002);
    }
}
