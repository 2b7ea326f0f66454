//! Masked updates: the node-side job that turns an update file into a masked, signed
//! file, and that file's format.
//!
//! ```text
//! "SECAGGM2" | u32le header_len | header (JSON) | payload: elements x word, little-endian
//!            | u16le sig_len | ECDSA-P256 signature (DER) over SHA-256 of everything before sig_len
//! ```
//! The last payload element is the node's masked weight. Version 2 has no attempt and
//! names the researcher the file is for (`researcher`, its certificate fingerprint in
//! lowercase hex); a version-1 file (`"SECAGGM1"`) is refused by name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::files::tensor::{self};
use crate::layout::Layout;
use crate::party::{Fingerprint, PartyId, Role};
use crate::pki::identity::Identity;
use crate::pki::registry::{self};
use crate::secagg::keys::MaskContext;
use crate::secagg::quantize::{self, QuantParams};
use crate::secagg::ring::Modulus;
use crate::secagg::ring::Word;

/// File magic of format version 2.
pub const MAGIC: &[u8; 8] = b"SECAGGM2";
/// The magic of format version 1 (attempts, no researcher), recognised only to refuse it.
pub const MAGIC_V1: &[u8; 8] = b"SECAGGM1";
/// Current header format version.
pub const FORMAT_VERSION: u32 = 2;
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
    /// Certificate fingerprint of the researcher the file is for (lowercase hex).
    #[serde(with = "fingerprint_hex")]
    pub researcher: Fingerprint,
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
            researcher: self.researcher,
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

/// The header's `researcher`: 64 lowercase hex digits.
mod fingerprint_hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::party::Fingerprint;

    pub fn serialize<S: Serializer>(fp: &Fingerprint, s: S) -> Result<S::Ok, S::Error> {
        let hex: String = fp.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Fingerprint, D::Error> {
        let hex = String::deserialize(d)?;
        if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(D::Error::custom("researcher: expected 64 hex digits"));
        }
        hex.parse().map_err(D::Error::custom)
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
    /// A format-version-1 file (from a secagg with attempts).
    #[error("{}: masked file format version 1 (with attempts, no researcher); this secagg reads only version {FORMAT_VERSION}", path.display())]
    Version1 {
        /// File.
        path: PathBuf,
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
    /// Signing failed (internal).
    #[error("signing failed")]
    Sign,
}

type Result<T> = std::result::Result<T, Error>;

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
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let mut staged = atomic::stage(path, false).map_err(|e| io("create", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, staged.file());
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
    out.flush().map_err(|e| io("write", e))?;
    drop(out);
    staged.commit().map_err(|e| io("move into place", e))
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
        if &fixed[..8] == MAGIC_V1 {
            return Err(Error::Version1 {
                path: path.to_owned(),
            });
        }
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
        assert!(matches!(err, Error::Version1 { .. }), "{err}");
        assert!(err.to_string().contains("format version 1"), "{err}");
    }
}
