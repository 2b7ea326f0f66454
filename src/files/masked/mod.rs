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

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
pub(super) const MAX_SIG: usize = 72;
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

    pub(super) fn payload_bytes(&self) -> Option<u64> {
        self.elements.checked_mul(self.modulus.word_bytes() as u64)
    }
}

/// The digest the header signature covers: the label, then the encoded header block.
pub(super) fn header_digest(head: &[u8]) -> sha2::digest::Output<Sha256> {
    let mut h = Sha256::new();
    h.update(HEADER_SIG_LABEL);
    h.update(head);
    h.finalize()
}

/// Errors of masking and of masked files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Masking failed after the round's key and the input's release were journaled:
    /// both stay used.
    #[error("{source}; round {round} is now used and this update counts as released")]
    AfterJournal {
        /// The round.
        round: u64,
        /// What failed.
        source: Box<Error>,
    },
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

pub(super) type Result<T> = std::result::Result<T, Error>;

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

/// Writes a whole in-memory masked update (to a temporary name, then renamed into place).
pub fn write_file<W: Word>(path: &Path, m: &Masked<W>, me: &Identity) -> Result<()> {
    let mut w = Writer::create(path, &m.header, me)?;
    w.write_words(&m.words)?;
    w.finish(me)?.commit()
}

mod reader;
mod writer;

pub use reader::{Reader, segment_ranges, sum_verified};
pub use writer::{Finished, Writer};

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
