//! The streaming writer of masked files: header block, residues hashed segment by
//! segment as they pass, then the signature over D.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use p256::ecdsa::Signature;
use p256::ecdsa::signature::hazmat::PrehashSigner;

use super::{Error, Header, Result, SEGMENT_ELEMENTS, digest_of, encode_header, header_digest};
use crate::atomic;
use crate::pki::identity::Identity;
use crate::secagg::ring::Word;

/// Bytes of residues encoded, hashed and written at a time: small enough to stay in L2
/// between the three, large enough to be few system calls.
const ENCODE_BYTES: usize = 256 * 1024;

fn create_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        action: "create",
        path: path.to_owned(),
        source,
    }
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
        // 0600: a masked file is for the researcher only, and the node's own copy needs
        // no other reader.
        let staged = atomic::stage(path, true).map_err(|e| create_error(path, e))?;
        Writer::start(staged, header, me)
    }

    /// [`Writer::create`] in an unnamed file ([`atomic::stage_unnamed`], `0600`): until
    /// [`Finished::commit`] it has no path in the directory tree (only this process's
    /// descriptor reaches it), and it disappears with this process however it ends.
    /// `Ok(None)` where `path`'s directory is not on a local filesystem that has unnamed
    /// files it can link.
    pub fn create_unnamed(path: &Path, header: &Header, me: &Identity) -> Result<Option<Writer>> {
        match atomic::stage_unnamed(path).map_err(|e| create_error(path, e))? {
            Some(staged) => Writer::start(staged, header, me).map(Some),
            None => Ok(None),
        }
    }

    fn start(mut staged: atomic::Staged, header: &Header, me: &Identity) -> Result<Writer> {
        let path = staged.path().to_owned();
        let io = |action, source| Error::Io {
            action,
            path: path.clone(),
            source,
        };
        let width = header.modulus.word_bytes();
        let file = staged.file().try_clone().map_err(|e| io("create", e))?;
        // Residues come in chunks of `ENCODE_BYTES`: those bypass the buffer, which
        // gathers only the header, the trailer and pieces cut at a segment's end.
        let mut out = BufWriter::with_capacity(ENCODE_BYTES / 4, file);
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
            buf: Vec::with_capacity(ENCODE_BYTES),
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
        if !bytes.len().is_multiple_of(w) || self.written + count > self.elements {
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
