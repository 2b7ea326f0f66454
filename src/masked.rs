//! Masked updates: the node-side job that turns an update file into a masked, signed
//! file, and that file's format.
//!
//! ```text
//! "SECAGGM1" | u32le header_len | header (JSON) | payload: elements x word, little-endian
//!            | u16le sig_len | ECDSA-P256 signature (DER) over SHA-256 of everything before sig_len
//! ```
//! The last payload element is the node's masked weight.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::certificate::{Fingerprint, PeerCertificate};
use crate::identity::{Identity, PartyId, Role};
use crate::keys::{MaskContext, MaskKey, PairwiseSecret, Sign};
use crate::mask::{self, PeerMask, Word};
use crate::quantize::{self, Modulus, Plan, QuantParams};
use crate::registry::{self, Registry};
use crate::tensor::{self, Layout};

/// File magic and format version 1.
pub const MAGIC: &[u8; 8] = b"SECAGGM1";
/// Current header format version.
pub const FORMAT_VERSION: u32 = 1;
/// Headers larger than this are refused (a bound on hostile input).
pub const MAX_HEADER: u32 = 1 << 20;

/// What a masked file says about itself. Everything but `sender` must agree across a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Format version.
    pub format_version: u32,
    /// Federation id.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// Attempt number.
    pub attempt: u32,
    /// Vector label.
    pub label: String,
    /// Sorted participant ids.
    pub participants: Vec<PartyId>,
    /// Quantization knobs.
    pub quant: QuantParams,
    /// The ring.
    pub modulus: Modulus,
    /// Shapes, names and types.
    pub layout: Layout,
    /// Payload words, weight included.
    pub elements: u64,
    /// Who masked it.
    pub sender: PartyId,
}

impl Header {
    /// The mask context this header commits to.
    pub fn context(&self) -> MaskContext {
        MaskContext {
            federation: self.federation.clone(),
            round: self.round,
            attempt: self.attempt,
            participants: self.participants.clone(),
            label: self.label.clone(),
        }
    }

    /// The same header with another sender (for agreement checks).
    pub fn with_sender(&self, sender: &PartyId) -> Header {
        Header {
            sender: sender.clone(),
            ..self.clone()
        }
    }

    fn payload_bytes(&self) -> Option<u64> {
        self.elements.checked_mul(self.modulus.word_bytes() as u64)
    }
}

/// Errors of masking and of masked files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What.
        action: &'static str,
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Not a masked file, or a damaged one.
    #[error("{}: not a valid secagg masked file: {reason}", path.display())]
    Malformed {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify under the sender's registered key.
    #[error("{}: signature check failed for sender '{sender}': the file was altered or not made by that party", path.display())]
    BadSignature {
        /// File.
        path: PathBuf,
        /// Claimed sender.
        sender: PartyId,
    },
    /// Our own identity is not a node.
    #[error("this party is a {0}; only nodes mask updates")]
    NotANode(Role),
    /// We are not in the participant list.
    #[error("this party '{0}' is not in --participants")]
    NotParticipant(PartyId),
    /// A participant is listed twice.
    #[error("participant '{0}' is listed twice")]
    DuplicateParticipant(PartyId),
    /// A participant is not registered here as a node.
    #[error("participant '{id}' is {why} in this party's registry")]
    UnknownParticipant {
        /// Who.
        id: PartyId,
        /// "not registered" / "registered as a researcher".
        why: &'static str,
    },
    /// The weight is out of range.
    #[error("weight {weight} is out of range 1..={max}")]
    BadWeight {
        /// Given.
        weight: u64,
        /// Max.
        max: u64,
    },
    /// The input is wrong.
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    /// The plan is refused.
    #[error(transparent)]
    Quantize(#[from] quantize::Error),
    /// Registry failure (including mask reuse).
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// A registered certificate no longer parses.
    #[error("registered certificate of '{id}' is invalid: {source}")]
    Certificate {
        /// Who.
        id: PartyId,
        /// Why.
        source: crate::certificate::Error,
    },
    /// Signing failed (internal).
    #[error("signing failed")]
    Sign,
}

impl Error {
    /// What to do.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::Io { .. } => "check the path and permissions".into(),
            Error::Malformed { .. } => {
                "pass files written by 'secagg mask'; ask the node to send it again".into()
            }
            Error::BadSignature { sender, .. } => format!(
                "do not use this file; ask '{sender}' to send it again, and check its registered certificate"
            ),
            Error::NotANode(_) => "run 'secagg mask' in a node's home (see --home)".into(),
            Error::NotParticipant(_) => "list this party's id in --participants".into(),
            Error::DuplicateParticipant(_) => "list each participant once".into(),
            Error::UnknownParticipant { id, .. } => format!(
                "register '{id}' as a node first: ask it for 'secagg certificate registration-instructions'"
            ),
            Error::BadWeight { .. } => {
                "pass --weight as the number of samples trained on, at most --max-weight".into()
            }
            Error::Tensor(e) => return e.hint(),
            Error::Quantize(e) => return e.hint(),
            Error::Registry(e) => return e.hint(),
            Error::Certificate { id, .. } => format!("delete and re-register '{id}'"),
            Error::Sign => return None,
        })
    }
}

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

/// A quantized, masked update in memory, ready to write or send.
pub struct Masked<W: Word> {
    /// Its header.
    pub header: Header,
    /// Payload words (weight last).
    pub words: Vec<W>,
    /// Values that were outside [-clip, clip] and were clipped.
    pub clipped: u64,
}

/// Either word size.
pub enum AnyMasked {
    /// Modulus 2^32.
    M32(Masked<u32>),
    /// Modulus 2^64.
    M64(Masked<u64>),
}

impl AnyMasked {
    /// The header.
    pub fn header(&self) -> &Header {
        match self {
            AnyMasked::M32(m) => &m.header,
            AnyMasked::M64(m) => &m.header,
        }
    }

    /// How many values were clipped.
    pub fn clipped(&self) -> u64 {
        match self {
            AnyMasked::M32(m) => m.clipped,
            AnyMasked::M64(m) => m.clipped,
        }
    }
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
    pub layout: tensor::Layout,
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
        mask::apply_masks_at(buf, *offset, &masks, threads);
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
    mask::apply_masks(&mut words, masks, threads);
    let header = Header {
        format_version: FORMAT_VERSION,
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

/// Encodes the header block (magic, length, JSON).
pub fn encode_header(header: &Header) -> Vec<u8> {
    // Serializing plain data to JSON cannot fail.
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(12 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Writes a masked file (to a temporary name, then renamed into place).
pub fn write_file<W: Word>(path: &Path, m: &Masked<W>, me: &Identity) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.partial", path.display()));
    let io = |action, source| Error::Io {
        action,
        path: tmp.clone(),
        source,
    };
    let mut out =
        BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| io("create", e))?);
    let mut hash = Sha256::new();
    let head = encode_header(&m.header);
    hash.update(&head);
    out.write_all(&head).map_err(|e| io("write", e))?;
    let mut buf = Vec::with_capacity(1 << 20);
    for chunk in m.words.chunks((1 << 20) / W::BYTES) {
        buf.clear();
        chunk.iter().for_each(|w| w.put_le(&mut buf));
        hash.update(&buf);
        out.write_all(&buf).map_err(|e| io("write", e))?;
    }
    let sig: Signature = me
        .key
        .signing_key()
        .sign_prehash(&hash.finalize())
        .map_err(|_| Error::Sign)?;
    let der = sig.to_der();
    out.write_all(&(der.as_bytes().len() as u16).to_le_bytes())
        .map_err(|e| io("write", e))?;
    out.write_all(der.as_bytes()).map_err(|e| io("write", e))?;
    let file = out.into_inner().map_err(|e| io("write", e.into_error()))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        action: "move into place",
        path: path.to_owned(),
        source,
    })
}

/// Reads a masked file: header first, then the payload in chunks, then the signature.
pub struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    header: Header,
    hash: Sha256,
}

impl Reader {
    /// Opens a masked file and checks its header and size.
    pub fn open(path: &Path) -> Result<Reader> {
        let bad = |reason: String| Error::Malformed {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(|source| Error::Io {
            action: "open",
            path: path.to_owned(),
            source,
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut file = BufReader::with_capacity(1 << 20, file);
        let mut fixed = [0u8; 12];
        file.read_exact(&mut fixed)
            .map_err(|_| bad("too short".into()))?;
        if &fixed[..8] != MAGIC {
            return Err(bad("wrong magic bytes".into()));
        }
        let hlen = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if hlen > MAX_HEADER {
            return Err(bad(format!("header of {hlen} bytes is too large")));
        }
        let mut json = vec![0u8; hlen as usize];
        file.read_exact(&mut json)
            .map_err(|_| bad("truncated header".into()))?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
        if header.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} (this secagg reads {FORMAT_VERSION})",
                header.format_version
            )));
        }
        if header.elements != header.layout.elements() + 1 {
            return Err(bad("element count does not match the tensor shapes".into()));
        }
        let expected = header
            .payload_bytes()
            .and_then(|p| p.checked_add(12 + u64::from(hlen) + 2))
            .ok_or_else(|| bad("sizes overflow".into()))?;
        if len < expected || len > expected + 80 {
            return Err(bad(format!(
                "file is {len} bytes; the header implies {expected} plus a signature (truncated?)"
            )));
        }
        let mut hash = Sha256::new();
        hash.update(fixed);
        hash.update(&json);
        Ok(Reader {
            path: path.to_owned(),
            file,
            header,
            hash,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Streams the payload in chunks of whole words. Call once, then [`Self::verify`].
    pub fn stream(&mut self, mut f: impl FnMut(u64, &[u8])) -> Result<()> {
        let total = self.header.payload_bytes().unwrap_or(0);
        let wb = self.header.modulus.word_bytes() as u64;
        let mut buf = vec![0u8; (1 << 20) - (1 << 20) % wb as usize];
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(buf.len() as u64) as usize;
            self.file.read_exact(&mut buf[..n]).map_err(|e| Error::Io {
                action: "read",
                path: self.path.clone(),
                source: e,
            })?;
            self.hash.update(&buf[..n]);
            f(done / wb, &buf[..n]);
            done += n as u64;
        }
        Ok(())
    }

    /// Checks the signature against the sender's registered key.
    pub fn verify(mut self, key: &p256::PublicKey) -> Result<()> {
        let bad_sig = || Error::BadSignature {
            path: self.path.clone(),
            sender: self.header.sender.clone(),
        };
        let mut l = [0u8; 2];
        self.file.read_exact(&mut l).map_err(|_| bad_sig())?;
        let mut der = vec![0u8; u16::from_le_bytes(l) as usize];
        self.file.read_exact(&mut der).map_err(|_| bad_sig())?;
        let pos = self.file.stream_position().unwrap_or(0);
        let end = self.file.seek(SeekFrom::End(0)).unwrap_or(0);
        if pos != end {
            return Err(bad_sig());
        }
        let sig = Signature::from_der(&der).map_err(|_| bad_sig())?;
        VerifyingKey::from(key)
            .verify_prehash(&self.hash.clone().finalize(), &sig)
            .map_err(|_| bad_sig())
    }
}
