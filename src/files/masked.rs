//! Masked updates: the masked-file format, its streaming writer, and its reader.
//!
//! ```text
//! "SECAGGM3" | u32le header_len | header (JSON)
//!            | u16le hsig_len | ECDSA-P256 signature (DER) over
//!              SHA-256("secagg masked header v3" || "SECAGGM3" || u32le header_len || header)
//!            | payload: elements x w bytes, little-endian residues modulo 2^(8w)
//!            | u16le sig_len | ECDSA-P256 signature (DER) over the 32-byte prehash D
//!
//! head_block = everything before the payload
//! seg_j      = BLAKE3(payload bytes of elements [j·2^20, (j+1)·2^20))
//! D          = BLAKE3("secagg masked file v3" || u64le(len(head_block)) || head_block
//!                     || u64le(segments) || seg_0 || seg_1 || ...)
//! ```
//! The last payload element is the node's masked weight; w is the ring's width (the
//! header's `modulus` is 2^(8w)). Segments let every core hash its own coordinate range
//! while it sums it, so each file is read once. Version 3 files name the researcher
//! the file is for (`researcher`, its certificate fingerprint in lowercase hex); files of
//! versions 1 and 2 are refused by name. The header signature lets a reader
//! authenticate what a header declares before it allocates anything for it.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::files::tensor::{self};
use crate::layout::Layout;
use crate::party::{PartyId, Role};
use crate::pki::identity::Identity;
use crate::pki::registry::{self};
use crate::secagg::keys::MaskContext;
use crate::secagg::quantize::{self, QuantParams};
use crate::secagg::ring::Modulus;
use crate::secagg::ring::Word;

/// File magic of format version 3.
pub const MAGIC: &[u8; 8] = b"SECAGGM3";
/// The magic of format version 1 (attempts, no researcher, no header signature),
/// recognised only to refuse it.
pub const MAGIC_V1: &[u8; 8] = b"SECAGGM1";
/// The magic of format version 2 (whole 4- or 8-byte words, one SHA-256 over the file),
/// recognised only to refuse it.
pub const MAGIC_V2: &[u8; 8] = b"SECAGGM2";
/// Current header format version.
pub const FORMAT_VERSION: u32 = 3;
/// Domain separation of the header signature.
pub const HEADER_SIG_LABEL: &[u8] = b"secagg masked header v3";
/// Domain separation of the file digest D.
pub const FILE_DIGEST_LABEL: &[u8] = b"secagg masked file v3";
/// Elements per digest segment.
pub use crate::secagg::sum::SEGMENT_ELEMENTS;
/// The longest DER ECDSA P-256 signature.
const MAX_SIG: usize = 72;
/// Headers larger than this are refused (a bound on hostile input).
pub const MAX_HEADER: u32 = 1 << 20;

/// What a masked file says about itself. Everything but `sender` must agree across a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Format version.
    pub format_version: u32,
    /// What the masks are bound to: federation, round, researcher, participants (sorted)
    /// and label; the same type the key schedule encodes (its fields sit at the top
    /// level of the JSON header).
    #[serde(flatten)]
    pub context: MaskContext,
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
    pub fn context(&self) -> &MaskContext {
        &self.context
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

/// The digest the header signature covers: the label, then the encoded header block.
fn header_digest(head: &[u8]) -> sha2::digest::Output<Sha256> {
    let mut h = Sha256::new();
    h.update(HEADER_SIG_LABEL);
    h.update(head);
    h.finalize()
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
    /// A file of an older format version (1: attempts, no researcher; 2: whole words
    /// and one SHA-256).
    #[error("{}: masked file format version {version}, made by an older secagg; this secagg reads only version {FORMAT_VERSION}", path.display())]
    OldVersion {
        /// File.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// No researcher is registered, so a file cannot be bound to one.
    #[error("no researcher is registered here; a masked file is bound to the researcher it is for")]
    NoResearcher,
    /// Several researchers are registered and none was chosen.
    #[error("{0} researchers are registered here ({1}); a masked file is bound to one of them")]
    ManyResearchers(usize, String),
    /// The chosen researcher is not registered as one.
    #[error("'{0}' is not registered here as a researcher")]
    UnknownResearcher(PartyId),
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
        source: crate::pki::certificate::Error,
    },
    /// A participant's registered certificate has expired.
    #[error("the registered certificate of '{id}' expired on {not_after}")]
    PeerExpired {
        /// Who.
        id: PartyId,
        /// When (RFC 3339).
        not_after: String,
    },
    /// Signing failed (internal).
    #[error("signing failed")]
    Sign,
}

type Result<T> = std::result::Result<T, Error>;

/// A quantized, masked update in memory (tests and tools; `secagg mask` streams with
/// [`Writer`] instead and never holds the whole vector).
pub struct Masked<W: Word> {
    /// Its header.
    pub header: Header,
    /// Payload words (weight last); each holds its residue in its low w bytes.
    pub words: Vec<W>,
    /// Values that were outside [-clip, clip] and were clipped.
    pub clipped: u64,
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

/// BLAKE3 of each segment of a payload of `width`-byte residues (segment j holds
/// elements `[j·SEGMENT_ELEMENTS, (j+1)·SEGMENT_ELEMENTS)`).
pub fn segment_digests(payload: &[u8], width: usize) -> Vec<[u8; 32]> {
    payload
        .chunks(SEGMENT_ELEMENTS * width.max(1))
        .map(|seg| *blake3::hash(seg).as_bytes())
        .collect()
}

/// The digest D the file signature covers, from the head block (everything before the
/// payload) and the payload's segment digests.
pub fn digest_of(head_block: &[u8], segments: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(FILE_DIGEST_LABEL);
    h.update(&(head_block.len() as u64).to_le_bytes());
    h.update(head_block);
    h.update(&(segments.len() as u64).to_le_bytes());
    for s in segments {
        h.update(s);
    }
    *h.finalize().as_bytes()
}

/// D for a whole payload in memory (one thread; the reference the streaming writer and
/// the parallel reader must agree with).
pub fn file_digest(head_block: &[u8], payload: &[u8], width: usize) -> [u8; 32] {
    digest_of(head_block, &segment_digests(payload, width))
}

/// Writes a masked file as its payload streams in: the header block first, then
/// residues in order, hashed segment by segment as they pass; [`Writer::finish`] signs
/// and syncs. Nothing is visible at the final path until [`Finished::commit`]; dropping
/// either discards the temporary file.
pub struct Writer {
    staged: atomic::Staged,
    out: BufWriter<File>,
    head_block: Vec<u8>,
    width: usize,
    elements: u64,
    written: u64,
    segment: blake3::Hasher,
    in_segment: usize,
    segments: Vec<[u8; 32]>,
    buf: Vec<u8>,
}

/// A masked file written and signed, not yet moved into place.
pub struct Finished {
    staged: atomic::Staged,
}

impl Finished {
    /// Syncs it and renames it over its final path.
    pub fn commit(self) -> Result<()> {
        let path = self.staged.path().to_owned();
        self.staged.commit().map_err(|source| Error::Io {
            action: "move into place",
            path,
            source,
        })
    }
}

impl Writer {
    /// Starts `path` (a temporary file beside it) and writes the signed header block.
    pub fn create(path: &Path, header: &Header, me: &Identity) -> Result<Writer> {
        let io = |action, source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let width = header.modulus.word_bytes();
        // 0600: a masked file is for the researcher only, and the node's own copy needs
        // no other reader.
        let mut staged = atomic::stage(path, true).map_err(|e| io("create", e))?;
        let file = staged.file().try_clone().map_err(|e| io("create", e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let head = encode_header(header);
        let hsig: Signature = me
            .key
            .signing_key()
            .sign_prehash(&header_digest(&head))
            .map_err(|_| Error::Sign)?;
        let hsig = hsig.to_der();
        let mut head_block = head;
        head_block.extend_from_slice(&(hsig.as_bytes().len() as u16).to_le_bytes());
        head_block.extend_from_slice(hsig.as_bytes());
        out.write_all(&head_block).map_err(|e| io("write", e))?;
        Ok(Writer {
            staged,
            out,
            head_block,
            width,
            elements: header.elements,
            written: 0,
            segment: blake3::Hasher::new(),
            in_segment: 0,
            segments: Vec::new(),
            buf: Vec::with_capacity(1 << 16),
        })
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: self.staged.path().to_owned(),
            source,
        }
    }

    /// Appends words (their low w bytes each), in order.
    pub fn write_words<W: Word>(&mut self, words: &[W]) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let per = (buf.capacity() / self.width).max(1);
        let mut res = Ok(());
        for chunk in words.chunks(per) {
            buf.clear();
            crate::secagg::sum::encode_words(chunk, self.width, &mut buf);
            res = self.write_residues(&buf);
            if res.is_err() {
                break;
            }
        }
        self.buf = buf;
        res
    }

    /// Appends residues already encoded as w little-endian bytes each, in order.
    pub fn write_residues(&mut self, mut bytes: &[u8]) -> Result<()> {
        let w = self.width;
        let count = (bytes.len() / w) as u64;
        if bytes.len() % w != 0 || self.written + count > self.elements {
            return Err(Error::Malformed {
                path: self.staged.path().to_owned(),
                reason: "payload does not match the header (our bug)".into(),
            });
        }
        while !bytes.is_empty() {
            let take = (bytes.len() / w).min(SEGMENT_ELEMENTS - self.in_segment);
            let (now, rest) = bytes.split_at(take * w);
            self.segment.update(now);
            if let Err(e) = self.out.write_all(now) {
                return Err(self.io("write", e));
            }
            self.in_segment += take;
            self.written += take as u64;
            if self.in_segment == SEGMENT_ELEMENTS {
                self.close_segment();
            }
            bytes = rest;
        }
        Ok(())
    }

    fn close_segment(&mut self) {
        let h = std::mem::take(&mut self.segment);
        self.segments.push(*h.finalize().as_bytes());
        self.in_segment = 0;
    }

    /// Signs D and writes the trailer. Fails if fewer words were written than declared.
    pub fn finish(mut self, me: &Identity) -> Result<Finished> {
        if self.written != self.elements {
            return Err(Error::Malformed {
                path: self.staged.path().to_owned(),
                reason: format!(
                    "{} of the {} declared elements were written (our bug)",
                    self.written, self.elements
                ),
            });
        }
        if self.in_segment > 0 {
            self.close_segment();
        }
        let d = digest_of(&self.head_block, &self.segments);
        let sig: Signature = me
            .key
            .signing_key()
            .sign_prehash(&d)
            .map_err(|_| Error::Sign)?;
        let der = sig.to_der();
        let mut trailer = (der.as_bytes().len() as u16).to_le_bytes().to_vec();
        trailer.extend_from_slice(der.as_bytes());
        if let Err(e) = self.out.write_all(&trailer).and_then(|()| self.out.flush()) {
            return Err(self.io("write", e));
        }
        drop(self.out);
        Ok(Finished {
            staged: self.staged,
        })
    }
}

/// Writes a whole in-memory masked update (to a temporary name, then renamed into place).
pub fn write_file<W: Word>(path: &Path, m: &Masked<W>, me: &Identity) -> Result<()> {
    let mut w = Writer::create(path, &m.header, me)?;
    w.write_words(&m.words)?;
    w.finish(me)?.commit()
}

/// Reads a masked file: header first, then the payload, then the signature.
///
/// [`Reader::open`] bounds everything by the file's length; [`Reader::authenticate`]
/// checks the header signature against the sender's registered key. The payload can
/// only be read after that, so nothing a forged header declares is ever allocated.
/// [`Reader::stream`] then [`Reader::verify`] read it in order (any reader);
/// [`sum_verified`] reads many files on every core at once.
pub struct Reader<R = File> {
    path: PathBuf,
    file: R,
    header: Header,
    header_sig: Vec<u8>,
    head: Vec<u8>,
    head_block: Vec<u8>,
    authenticated: bool,
    payload_start: u64,
    len: u64,
    segments: Vec<[u8; 32]>,
}

impl Reader {
    /// Opens a masked file and checks its header and size. Holds no buffer beyond the
    /// header, so many files can be open at once.
    pub fn open(path: &Path) -> Result<Reader> {
        let io = |action, source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("read", e))?.len();
        Reader::from_reader(path, file, len)
    }
}

/// Adds the payloads of authenticated files into `acc` and verifies each file's
/// signature, reading every file once: `threads` threads each take a range of whole
/// segments and, for each slice of it, read that slice of every file, hash it into the
/// file's segment digest and add it, so the slice of the accumulator stays in the core's
/// cache while all files pass through it. Returns the index of the first file (in
/// order) that fails; on any error `acc` holds a partial sum and must be discarded.
pub fn sum_verified(
    files: Vec<(Reader, p256::PublicKey)>,
    acc: &mut crate::secagg::sum::AnyAccumulator,
    threads: usize,
) -> std::result::Result<(), (usize, Error)> {
    use crate::secagg::sum::AnyAccumulator;
    for (i, (r, _)) in files.iter().enumerate() {
        r.check_authenticated().map_err(|e| (i, e))?;
        if acc.width() != r.header.modulus.word_bytes() || acc.len() as u64 != r.header.elements {
            let e = Error::Malformed {
                path: r.path.clone(),
                reason: "accumulator does not match the header (our bug)".into(),
            };
            return Err((i, e));
        }
    }
    let sources: Vec<(&File, u64)> = files
        .iter()
        .map(|(r, _)| (&r.file, r.payload_start))
        .collect();
    let w = acc.width();
    let digests = match acc {
        AnyAccumulator::M32(a) => sum_words(a.words_mut(), w, &sources, threads),
        AnyAccumulator::M64(a) => sum_words(a.words_mut(), w, &sources, threads),
    };
    let mut digests = digests.map_err(|(i, source)| {
        let e = Error::Io {
            action: "read",
            path: files[i].0.path.clone(),
            source,
        };
        (i, e)
    })?;
    for (i, (mut r, key)) in files.into_iter().enumerate() {
        r.segments = std::mem::take(&mut digests[i]);
        r.verify_at_end(&key).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// The threads of [`sum_verified`]: segment ranges of `acc`, every file per range.
/// Returns each file's segment digests, or the failing file's index and error.
fn sum_words<W: Word>(
    acc: &mut [W],
    w: usize,
    files: &[(&File, u64)],
    threads: usize,
) -> std::result::Result<Vec<Vec<[u8; 32]>>, (usize, std::io::Error)> {
    let nseg = acc.len().div_ceil(SEGMENT_ELEMENTS);
    let per = nseg.div_ceil(threads.clamp(1, 256)).max(1) * SEGMENT_ELEMENTS;
    type Part = std::result::Result<Vec<Vec<[u8; 32]>>, (usize, std::io::Error)>;
    let parts: Vec<Part> = std::thread::scope(|s| {
        let handles: Vec<_> = acc
            .chunks_mut(per)
            .enumerate()
            .map(|(t, part)| {
                let first = (t * per) as u64;
                s.spawn(move || sum_range(files, w, first, part))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err((0, std::io::Error::other("a summing thread panicked")))
                })
            })
            .collect()
    });
    let mut out = vec![Vec::with_capacity(nseg); files.len()];
    for part in parts {
        for (all, mine) in out.iter_mut().zip(part?) {
            all.extend(mine);
        }
    }
    Ok(out)
}

/// Elements `[first, first + acc.len())` (starting on a segment boundary) of every
/// file's payload of `w`-byte residues, added into `acc` slice by slice, each file's
/// segments hashed on the way. Returns, per file, the digests of the range's segments.
fn sum_range<W: Word>(
    files: &[(&File, u64)],
    w: usize,
    first: u64,
    acc: &mut [W],
) -> std::result::Result<Vec<Vec<[u8; 32]>>, (usize, std::io::Error)> {
    use crate::secagg::sum::READ_ELEMENTS;
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; READ_ELEMENTS.min(acc.len()) * w];
    let mut digests = vec![Vec::new(); files.len()];
    for (k, seg) in acc.chunks_mut(SEGMENT_ELEMENTS).enumerate() {
        let mut hashers = vec![blake3::Hasher::new(); files.len()];
        let seg_first = first + (k * SEGMENT_ELEMENTS) as u64;
        for (j, part) in seg.chunks_mut(READ_ELEMENTS).enumerate() {
            let bytes = &mut buf[..part.len() * w];
            let at = seg_first + (j * READ_ELEMENTS) as u64;
            for (i, ((file, start), h)) in files.iter().zip(&mut hashers).enumerate() {
                file.read_exact_at(bytes, start + at * w as u64)
                    .map_err(|e| (i, e))?;
                h.update(bytes);
                crate::secagg::sum::absorb_words(part, w, bytes);
            }
        }
        for (d, h) in digests.iter_mut().zip(hashers) {
            d.push(*h.finalize().as_bytes());
        }
    }
    Ok(digests)
}

impl<R: Read> Reader<R> {
    /// [`Reader::open`] over any reader of `len` bytes (a file, or a `Cursor` over bytes
    /// in memory: the entry point for fuzzing). `name` only labels errors. Reads the
    /// header block (at most [`MAX_HEADER`] bytes, and never more than `len`) and checks
    /// that the payload it declares, plus a signature, is exactly the rest of the file.
    pub fn from_reader(name: &Path, mut file: R, len: u64) -> Result<Reader<R>> {
        let bad = |reason: String| Error::Malformed {
            path: name.to_owned(),
            reason,
        };
        let mut fixed = [0u8; 12];
        file.read_exact(&mut fixed)
            .map_err(|_| bad("too short".into()))?;
        for (magic, version) in [(MAGIC_V1, 1), (MAGIC_V2, 2)] {
            if &fixed[..8] == magic {
                return Err(Error::OldVersion {
                    path: name.to_owned(),
                    version,
                });
            }
        }
        if &fixed[..8] != MAGIC {
            return Err(bad("wrong magic bytes".into()));
        }
        let hlen = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if hlen > MAX_HEADER || u64::from(hlen) > len.saturating_sub(12) {
            return Err(bad(format!(
                "header of {hlen} bytes is too large for a file of {len} bytes"
            )));
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
        header.layout.check().map_err(|e| bad(e.to_string()))?;
        let elements = header
            .layout
            .checked_elements()
            .map_err(|e| bad(e.to_string()))?;
        if elements.checked_add(1) != Some(header.elements) {
            return Err(bad("element count does not match the tensor shapes".into()));
        }
        let mut l = [0u8; 2];
        file.read_exact(&mut l)
            .map_err(|_| bad("truncated header signature".into()))?;
        let hsig_len = usize::from(u16::from_le_bytes(l));
        if hsig_len > MAX_SIG {
            return Err(bad(format!("header signature of {hsig_len} bytes")));
        }
        let mut header_sig = vec![0u8; hsig_len];
        file.read_exact(&mut header_sig)
            .map_err(|_| bad("truncated header signature".into()))?;
        let before = 12 + u64::from(hlen) + 2 + hsig_len as u64;
        let payload = header
            .payload_bytes()
            .ok_or_else(|| bad("sizes overflow".into()))?;
        let held = len.saturating_sub(before);
        // The payload must be the rest of the file but a u16 length and a signature.
        if payload.checked_add(2 + 8).is_none_or(|min| held < min)
            || held - payload > 2 + MAX_SIG as u64
        {
            return Err(bad(format!(
                "the header declares {payload} payload bytes ({} residues of {} bytes), but the file holds {held} bytes after the header (truncated or padded?)",
                header.elements,
                header.modulus.word_bytes()
            )));
        }
        let mut head = Vec::with_capacity(12 + json.len());
        head.extend_from_slice(&fixed);
        head.extend_from_slice(&json);
        let mut head_block = head.clone();
        head_block.extend_from_slice(&l);
        head_block.extend_from_slice(&header_sig);
        Ok(Reader {
            path: name.to_owned(),
            file,
            header,
            header_sig,
            head,
            head_block,
            authenticated: false,
            payload_start: before,
            len,
            segments: Vec::new(),
        })
    }

    /// Checks the header signature against the sender's registered key. Until this
    /// succeeds, the payload is not read.
    pub fn authenticate(&mut self, key: &p256::PublicKey) -> Result<()> {
        let bad_sig = || Error::BadSignature {
            path: self.path.clone(),
            sender: self.header.sender.clone(),
        };
        let sig = Signature::from_der(&self.header_sig).map_err(|_| bad_sig())?;
        VerifyingKey::from(key)
            .verify_prehash(&header_digest(&self.head), &sig)
            .map_err(|_| bad_sig())?;
        self.authenticated = true;
        Ok(())
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn check_authenticated(&self) -> Result<()> {
        if self.authenticated {
            Ok(())
        } else {
            Err(Error::Malformed {
                path: self.path.clone(),
                reason: "payload read before the header was authenticated (our bug)".into(),
            })
        }
    }

    /// Streams the payload in order, in chunks of whole `w`-byte residues, each with its
    /// offset in elements. Call once, after [`Self::authenticate`], then [`Self::verify`].
    pub fn stream(&mut self, mut f: impl FnMut(u64, &[u8])) -> Result<()> {
        self.check_authenticated()?;
        let elements = self.header.elements;
        let w = self.header.modulus.word_bytes();
        let chunk = (SEGMENT_ELEMENTS / 16).min(elements as usize);
        let mut buf = vec![0u8; chunk * w];
        let mut done = 0u64;
        let mut h = blake3::Hasher::new();
        while done < elements {
            let n = (elements - done).min(chunk as u64) as usize;
            let bytes = &mut buf[..n * w];
            self.file.read_exact(bytes).map_err(|e| Error::Io {
                action: "read",
                path: self.path.clone(),
                source: e,
            })?;
            h.update(bytes);
            f(done, bytes);
            done += n as u64;
            if done % SEGMENT_ELEMENTS as u64 == 0 || done == elements {
                self.segments.push(*h.finalize().as_bytes());
                h = blake3::Hasher::new();
            }
        }
        Ok(())
    }

    /// After [`Self::stream`]: reads the trailer and checks the signature over D against
    /// the sender's registered key.
    pub fn verify(mut self, key: &p256::PublicKey) -> Result<()> {
        let bad_sig = self.bad_sig();
        let mut l = [0u8; 2];
        self.file.read_exact(&mut l).map_err(|_| bad_sig())?;
        let n = usize::from(u16::from_le_bytes(l));
        if n > MAX_SIG {
            return Err(bad_sig());
        }
        let mut der = vec![0u8; n];
        self.file.read_exact(&mut der).map_err(|_| bad_sig())?;
        // Nothing may follow the signature.
        let mut extra = [0u8; 1];
        if !matches!(self.file.read(&mut extra), Ok(0)) {
            return Err(bad_sig());
        }
        self.check_signature(key, &der)
    }

    fn bad_sig(&self) -> impl Fn() -> Error + use<R> {
        let path = self.path.clone();
        let sender = self.header.sender.clone();
        move || Error::BadSignature {
            path: path.clone(),
            sender: sender.clone(),
        }
    }

    fn check_signature(&self, key: &p256::PublicKey, der: &[u8]) -> Result<()> {
        let bad_sig = self.bad_sig();
        let want = self.header.elements.div_ceil(SEGMENT_ELEMENTS as u64);
        if self.segments.len() as u64 != want {
            return Err(bad_sig());
        }
        let sig = Signature::from_der(der).map_err(|_| bad_sig())?;
        VerifyingKey::from(key)
            .verify_prehash(&digest_of(&self.head_block, &self.segments), &sig)
            .map_err(|_| bad_sig())
    }
}

impl Reader<File> {
    /// The trailer of a file read by position: exactly `u16le len || signature` after
    /// the payload, and nothing after it (the file's length is checked again now).
    fn verify_at_end(self, key: &p256::PublicKey) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let bad_sig = self.bad_sig();
        let end = self.payload_start + self.header.payload_bytes().unwrap_or(0);
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if len != self.len {
            return Err(bad_sig());
        }
        let mut l = [0u8; 2];
        self.file
            .read_exact_at(&mut l, end)
            .map_err(|_| bad_sig())?;
        let n = usize::from(u16::from_le_bytes(l));
        if n > MAX_SIG || end + 2 + n as u64 != len {
            return Err(bad_sig());
        }
        let mut der = vec![0u8; n];
        self.file
            .read_exact_at(&mut der, end + 2)
            .map_err(|_| bad_sig())?;
        self.check_signature(key, &der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("old.masked");
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, &bytes).expect("write");
        let err = Reader::open(&path).err().expect("refused");
        assert!(matches!(err, Error::OldVersion { version: 1, .. }), "{err}");
        assert!(err.to_string().contains("format version 1"), "{err}");
    }
}
