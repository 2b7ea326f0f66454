//! The reader of masked files: header and sizes first, the header's signature before
//! anything it declares is allocated, then the payload (in order, or on every core by
//! position for aggregation) and the signature over D.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};

use super::{
    Error, FORMAT_VERSION, Header, MAGIC, MAGIC_V1, MAGIC_V2, MAX_HEADER, MAX_SIG, Result,
    SEGMENT_ELEMENTS, digest_of, header_digest,
};
use crate::secagg::ring::Word;

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

pub use crate::secagg::sum::segment_ranges;

/// Sums the payloads of authenticated files and verifies each file's signature,
/// reading every file once: one thread per `(range, sink)` of `work` (ranges from
/// [`segment_ranges`]) reads each slice of its range from every file, hashes it into
/// the file's segment digest and adds it into a slice-sized sum that stays in the
/// core's cache, then hands the summed slice to its sink as `(first element, sums)`,
/// in order. The sums are modulo 2^(8·w) in their low bytes (w the files' width).
///
/// Returns the index (in order) of the first file that fails. A sink may already have
/// seen sums when a file fails: whatever it made of them must be discarded.
pub fn sum_verified<W: Word, S: FnMut(u64, &[W]) + Send>(
    files: Vec<(Reader, p256::PublicKey)>,
    work: Vec<(Range<u64>, S)>,
) -> std::result::Result<(), (usize, Error)> {
    let Some(first) = files.first().map(|(r, _)| r.header.clone()) else {
        return Ok(());
    };
    let w = first.modulus.word_bytes();
    // The ranges must tile [0, elements) in order, each starting on a segment boundary.
    let mut next = 0u64;
    let tiled = work.iter().all(|(r, _)| {
        let ok = r.start == next && r.start < r.end && r.start % SEGMENT_ELEMENTS as u64 == 0;
        next = r.end;
        ok
    }) && next == first.elements;
    for (i, (r, _)) in files.iter().enumerate() {
        r.check_authenticated().map_err(|e| (i, e))?;
        if r.header.modulus != first.modulus
            || r.header.elements != first.elements
            || !tiled
            || w > W::BYTES
        {
            let e = Error::Malformed {
                path: r.path.clone(),
                reason: "the files or the ranges summed do not match (our bug)".into(),
            };
            return Err((i, e));
        }
    }
    let sources: Vec<(&File, u64)> = files
        .iter()
        .map(|(r, _)| (&r.file, r.payload_start))
        .collect();
    let digests = crate::secagg::sum::sum_hashed_ranges(&FilePayloads(&sources), w, work).map_err(
        |(i, source)| {
            let e = Error::Io {
                action: "read",
                path: files[i].0.path.clone(),
                source,
            };
            (i, e)
        },
    )?;
    for (i, ((mut r, key), d)) in files.into_iter().zip(digests).enumerate() {
        r.segments = d;
        r.verify_at_end(&key).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// The files' payloads, each from its byte `payload_start`, read by position.
struct FilePayloads<'a>(&'a [(&'a File, u64)]);

impl crate::secagg::sum::Payloads for FilePayloads<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn bytes<'a>(&'a self, i: usize, at: u64, buf: &'a mut [u8]) -> std::io::Result<&'a [u8]> {
        use std::os::unix::fs::FileExt;
        let (file, start) = self
            .0
            .get(i)
            .ok_or_else(|| std::io::Error::other("no such file (our bug)"))?;
        file.read_exact_at(buf, start + at)?;
        Ok(buf)
    }
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
            if done.is_multiple_of(SEGMENT_ELEMENTS as u64) || done == elements {
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
    /// The last residue of the payload (the weight word), read by position once the
    /// header is authenticated. It is only authenticated with the rest of the payload:
    /// callers must treat it as unverified until [`sum_verified`] succeeds.
    pub fn last_residue(&self) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        self.check_authenticated()?;
        let w = self.header.modulus.word_bytes();
        let at = self.payload_start + self.header.elements.saturating_sub(1) * w as u64;
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b[..w], at)
            .map_err(|e| Error::Io {
                action: "read",
                path: self.path.clone(),
                source: e,
            })?;
        Ok(u64::from_le_bytes(b))
    }

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
    fn segment_ranges_cover_the_vector_in_whole_segments() {
        let seg = SEGMENT_ELEMENTS as u64;
        for (elements, threads) in [
            (1, 2),
            (seg, 2),
            (seg + 1, 2),
            (10 * seg + 3, 2),
            (10 * seg + 3, 3),
            (5, 300),
        ] {
            let r = segment_ranges(elements, threads);
            assert!(
                !r.is_empty() && r.len() <= threads.min(256),
                "{elements} {threads}: {r:?}"
            );
            assert_eq!(r[0].start, 0);
            assert_eq!(r[r.len() - 1].end, elements);
            for pair in r.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[0].end % seg, 0, "ranges start on segment boundaries");
            }
        }
        assert!(segment_ranges(0, 2).is_empty());
    }
}
