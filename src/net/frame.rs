//! Round messages on the wire: versioned, length-prefixed, size-bounded frames.
//!
//! Every frame is a fixed 24-byte header followed by its payload:
//!
//! ```text
//! version u8 | kind u8 | reserved u16 (0) | round id [16] | payload length u32 LE | payload
//! ```
//!
//! - The round id binds every frame to one (federation, round); a frame for another round
//!   is rejected, not skipped.
//! - The length is checked against [`MAX_PAYLOAD`] as soon as the header is in, so an
//!   oversized frame is refused before anything is buffered for it.
//! - Vectors travel as [`Message::Chunk`] frames of at most [`CHUNK_BYTES`] bytes.
//! - Chunks and `End` are binary; `Abort` carries JSON; the round protocol's own
//!   messages (kinds 16..=31) are binary payloads that `round::messages` decodes.
//!
//! The encoder and decoder of each message sit side by side below, with round-trip tests.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Wire format version (2: protocol 2's frames).
pub const VERSION: u8 = 2;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;
/// The largest payload accepted.
pub const MAX_PAYLOAD: usize = 2 << 20;
/// Vector bytes per chunk frame.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Bytes before the data in a chunk payload (offset u64).
const CHUNK_HEAD: usize = 8;

/// Binds frames to one round of one federation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoundId([u8; 16]);

impl RoundId {
    /// SHA-256("secagg v1 round" || u32be len || federation || u64be round), first 16 bytes.
    pub fn new(federation: &str, round: u64) -> RoundId {
        let mut h = Sha256::new();
        h.update(b"secagg v1 round");
        h.update((federation.len() as u32).to_be_bytes());
        h.update(federation.as_bytes());
        h.update(round.to_be_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RoundId(id)
    }
}

impl std::fmt::Display for RoundId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for RoundId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoundId({self})")
    }
}

/// Either side: the round is over for this connection, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// A one-line reason for the other side's log (sanitised before it is shown).
    pub reason: String,
}

/// A slice of a vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Where the data starts: in words for a masked update, in bytes for a mean.
    pub offset: u64,
    /// Little-endian words (or bytes of the mean).
    pub data: Vec<u8>,
}

/// The first kind of the round protocol's own messages (16..=31); their payloads are
/// the round layer's business (`round::messages`).
pub const FIRST_PROTOCOL_KIND: u8 = 16;
/// The last kind reserved for the round protocol.
pub const LAST_PROTOCOL_KIND: u8 = 31;

/// One frame's content.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// See [`Chunk`] (kind 4).
    Chunk(Chunk),
    /// The sender has sent every chunk of this vector (kind 5).
    End,
    /// See [`Abort`] (kind 7).
    Abort(Abort),
    /// A round-protocol message: its kind (16..=31) and payload, decoded above this layer.
    Protocol {
        /// The kind.
        kind: u8,
        /// The payload.
        payload: Vec<u8>,
    },
}

impl Message {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Chunk(_) => "chunk",
            Message::End => "end",
            Message::Abort(_) => "abort",
            Message::Protocol { .. } => "protocol",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Chunk(_) => 4,
            Message::End => 5,
            Message::Abort(_) => 7,
            Message::Protocol { kind, .. } => *kind,
        }
    }
}

/// Why a frame was refused. The peer that sent it is at fault in every case.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Unknown version.
    #[error("frame has wire version {0}, this build speaks {VERSION}")]
    Version(u8),
    /// Unknown message kind.
    #[error("frame has unknown message kind {0}")]
    Kind(u8),
    /// Reserved bits set.
    #[error("frame has reserved bits set")]
    Reserved,
    /// Length beyond the bound.
    #[error("frame announces {0} payload bytes, more than the {MAX_PAYLOAD} allowed")]
    Oversized(u64),
    /// Round id of another round.
    #[error("frame belongs to round {got}, not to this round ({expected})")]
    OtherRound {
        /// Ours.
        expected: RoundId,
        /// Theirs.
        got: RoundId,
    },
    /// Payload does not parse.
    #[error("malformed {kind} message: {reason}")]
    Malformed {
        /// Message name.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Appends one frame to `out`. A protocol payload longer than [`MAX_PAYLOAD`] is the
/// caller's bug; it is framed anyway and the receiver refuses it.
pub fn encode(round: RoundId, msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Chunk(c) => {
            encode_chunk_head(round, c.offset, c.data.len(), out);
            out.extend_from_slice(&c.data);
        }
        Message::End => put_header(round, msg.kind(), 0, out),
        Message::Abort(m) => {
            // Serializing a plain struct to JSON cannot fail.
            let json = serde_json::to_vec(m).unwrap_or_default();
            put_header(round, msg.kind(), json.len() as u32, out);
            out.extend_from_slice(&json);
        }
        Message::Protocol { kind, payload } => {
            put_header(round, *kind, payload.len() as u32, out);
            out.extend_from_slice(payload);
        }
    }
}

/// Appends the header and chunk fields of a chunk frame whose `len` data bytes the caller
/// appends next (so vectors are framed without an extra copy).
pub fn encode_chunk_head(round: RoundId, offset: u64, len: usize, out: &mut Vec<u8>) {
    debug_assert!(len <= CHUNK_BYTES);
    put_header(round, 4, (CHUNK_HEAD + len) as u32, out);
    out.extend_from_slice(&offset.to_le_bytes());
}

fn put_header(round: RoundId, kind: u8, len: u32, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&round.0);
    out.extend_from_slice(&len.to_le_bytes());
}

/// Decodes one payload; a chunk's data goes into a buffer from `spares` when there is one.
fn decode_payload(kind: u8, payload: &[u8], spares: &Spares) -> Result<Message, WireError> {
    Ok(match kind {
        4 => {
            if payload.len() < CHUNK_HEAD || payload.len() > CHUNK_HEAD + CHUNK_BYTES {
                return Err(WireError::Malformed {
                    kind: "chunk",
                    reason: format!("{} payload bytes", payload.len()),
                });
            }
            let (head, data) = payload.split_at(CHUNK_HEAD);
            let mut offset = [0u8; 8];
            offset.copy_from_slice(head);
            Message::Chunk(Chunk {
                offset: u64::from_le_bytes(offset),
                data: {
                    let mut buf = spares.take();
                    buf.extend_from_slice(data);
                    buf
                },
            })
        }
        5 if payload.is_empty() => Message::End,
        5 => {
            return Err(WireError::Malformed {
                kind: "end",
                reason: format!("{} payload bytes, expected 0", payload.len()),
            });
        }
        7 => Message::Abort(
            serde_json::from_slice(payload).map_err(|e| WireError::Malformed {
                kind: "abort",
                reason: e.to_string(),
            })?,
        ),
        FIRST_PROTOCOL_KIND..=LAST_PROTOCOL_KIND => Message::Protocol {
            kind,
            payload: payload.to_vec(),
        },
        k => return Err(WireError::Kind(k)),
    })
}

/// Reassembles frames from a byte stream for one round.
///
/// Bytes live in `buf[start..end]`; `buf[end..]` is initialized spare room that
/// [`Decoder::fill_from`] reads into directly, so a received byte is copied once on its
/// way from the TLS layer to a frame.
pub struct Decoder {
    round: Option<RoundId>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Chunk buffers to reuse for the next chunks.
    spares: Spares,
}

/// Most chunk buffers a [`Spares`] keeps.
const SPARE_BUFFERS: usize = 8;

/// Chunk data buffers handed back once used, shared by any number of decoders (the
/// researcher's connections share one), so chunks reuse warm 1 MiB buffers instead of
/// fresh allocations whose pages the kernel must zero. It keeps at most 8 buffers,
/// whatever the number of connections.
#[derive(Clone, Default)]
pub struct Spares(Arc<Mutex<Vec<Vec<u8>>>>);

impl Spares {
    /// An empty buffer, recycled if one is available.
    fn take(&self) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_default();
        buf.clear();
        buf
    }

    /// Hands back a chunk's data buffer once its contents are used.
    pub fn give(&self, buf: Vec<u8>) {
        if let Ok(mut s) = self.0.lock()
            && s.len() < SPARE_BUFFERS
            && buf.capacity() <= CHUNK_BYTES
        {
            s.push(buf);
        }
    }
}

/// The smallest read [`Decoder::fill_from`] offers its reader.
const MIN_READ: usize = 64 * 1024;

impl Decoder {
    /// Accepts only frames of `round`.
    pub fn new(round: RoundId) -> Decoder {
        Decoder {
            round: Some(round),
            buf: Vec::new(),
            start: 0,
            end: 0,
            spares: Spares::default(),
        }
    }

    /// Binds to the round of the first frame (a node learns the round from the
    /// researcher's hello, and checks that the hello names the same round).
    pub fn unbound() -> Decoder {
        Decoder {
            round: None,
            buf: Vec::new(),
            start: 0,
            end: 0,
            spares: Spares::default(),
        }
    }

    /// The round this decoder is bound to.
    pub fn round(&self) -> Option<RoundId> {
        self.round
    }

    /// Makes room for at least `want` more bytes after `end`: first by moving the
    /// undecoded bytes to the front, then by growing (only ever up to the largest
    /// frame plus one read).
    fn reserve(&mut self, want: usize) {
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `r` straight into the buffer; returns what `r.read` returned.
    /// Offers room for the rest of the frame being received, and at least 64 KiB.
    pub fn fill_from(&mut self, r: &mut impl std::io::Read) -> std::io::Result<usize> {
        let want = self.missing().max(MIN_READ);
        self.reserve(want);
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Bytes still missing from the frame at the front (0 if its header is incomplete
    /// or its length is out of bounds, which `next_message` reports).
    fn missing(&self) -> usize {
        let avail = &self.buf[self.start..self.end];
        match avail.get(..HEADER_LEN) {
            Some(head) => {
                let len = u32::from_le_bytes([head[20], head[21], head[22], head[23]]) as usize;
                if len > MAX_PAYLOAD {
                    0
                } else {
                    (HEADER_LEN + len).saturating_sub(avail.len())
                }
            }
            None => 0,
        }
    }

    /// Takes chunk buffers from `spares` (shared with other decoders) from now on.
    pub fn share_spares(&mut self, spares: Spares) {
        self.spares = spares;
    }

    /// Hands back a chunk's data buffer once its contents are used (see [`Spares`]).
    pub fn recycle(&self, buf: Vec<u8>) {
        self.spares.give(buf);
    }

    /// Bytes received but not yet decoded.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next complete frame, `None` if more bytes are needed. After an error the
    /// stream is unusable and the connection must be dropped.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let avail = &self.buf[self.start..self.end];
        let Some(head) = avail.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let kind = check_header(self.round, head)?;
        if self.round.is_none() {
            let mut id = [0u8; 16];
            id.copy_from_slice(&head[4..20]);
            self.round = Some(RoundId(id));
        }
        let len = u32::from_le_bytes([head[20], head[21], head[22], head[23]]) as usize;
        let Some(payload) = avail.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = decode_payload(kind, payload, &self.spares)?;
        self.start += HEADER_LEN + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(msg))
    }
}

/// Checks everything in a header; returns the kind.
fn check_header(round: Option<RoundId>, head: &[u8]) -> Result<u8, WireError> {
    if head[0] != VERSION {
        return Err(WireError::Version(head[0]));
    }
    if !matches!(
        head[1],
        4 | 5 | 7 | FIRST_PROTOCOL_KIND..=LAST_PROTOCOL_KIND
    ) {
        return Err(WireError::Kind(head[1]));
    }
    if head[2] != 0 || head[3] != 0 {
        return Err(WireError::Reserved);
    }
    let len = u32::from_le_bytes([head[20], head[21], head[22], head[23]]);
    if len as usize > MAX_PAYLOAD {
        return Err(WireError::Oversized(u64::from(len)));
    }
    let mut got = [0u8; 16];
    got.copy_from_slice(&head[4..20]);
    if let Some(round) = round.filter(|r| r.0 != got) {
        return Err(WireError::OtherRound {
            expected: round,
            got: RoundId(got),
        });
    }
    Ok(head[1])
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
