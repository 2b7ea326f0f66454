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
//! - Control messages carry JSON; chunks and `Done` are binary.
//!
//! The encoder and decoder of each message sit side by side below, with round-trip tests.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use crate::party::PartyId;
use crate::secagg::quantize::QuantParams;
use crate::secagg::ring::Modulus;

/// Wire format version.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;
/// The largest payload accepted.
pub const MAX_PAYLOAD: usize = 2 << 20;
/// Vector bytes per chunk frame.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Bytes before the data in a chunk payload (attempt u32, offset u64).
const CHUNK_HEAD: usize = 12;

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

/// Researcher → node, first frame on every connection (the server speaks first, so a
/// node whose certificate was refused learns it at once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The researcher's party id.
    pub researcher: PartyId,
    /// Federation id.
    pub federation: String,
    /// Round number.
    pub round: u64,
}

/// Node → researcher: the shape of the update it brings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Join {
    /// Names, shapes and types of the update.
    pub layout: Layout,
}

/// Researcher → node: mask for this attempt among these participants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Sorted participant ids.
    pub participants: Vec<PartyId>,
    /// Vector label.
    pub label: String,
    /// Quantization knobs.
    pub quant: QuantParams,
    /// The ring, as the researcher computed it (nodes recompute and compare).
    pub modulus: Modulus,
    /// Bytes per element in update chunks: each masked word reduced modulo
    /// 2^(8·word_bytes), the smallest width that holds the sum (nodes recompute and
    /// compare).
    pub word_bytes: usize,
    /// The layout every participant must have.
    pub layout: Layout,
}

/// Researcher → node: the weighted mean follows as chunks, then `Done`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The attempt that completed.
    pub attempt: u32,
    /// Who contributed.
    pub participants: Vec<PartyId>,
    /// Sum of the weights.
    pub total_weight: u64,
    /// Bytes of the mean that follow: every value in layout order, little-endian in its
    /// tensor's type (f32 or f64). Chunk offsets count bytes.
    pub bytes: u64,
}

/// Either side: the round is over for this connection, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// A one-line reason for the other side's log.
    pub reason: String,
}

/// A slice of a vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Attempt it belongs to.
    pub attempt: u32,
    /// Offset in words.
    pub offset: u64,
    /// Little-endian words.
    pub data: Vec<u8>,
}

/// One frame's content.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Join`].
    Join(Join),
    /// See [`Start`].
    Start(Start),
    /// See [`Chunk`].
    Chunk(Chunk),
    /// The sender has sent every chunk of this attempt.
    Done {
        /// The attempt.
        attempt: u32,
    },
    /// See [`Outcome`].
    Outcome(Outcome),
    /// See [`Abort`].
    Abort(Abort),
}

impl Message {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Join(_) => "join",
            Message::Start(_) => "start",
            Message::Chunk(_) => "chunk",
            Message::Done { .. } => "done",
            Message::Outcome(_) => "outcome",
            Message::Abort(_) => "abort",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Join(_) => 2,
            Message::Start(_) => 3,
            Message::Chunk(_) => 4,
            Message::Done { .. } => 5,
            Message::Outcome(_) => 6,
            Message::Abort(_) => 7,
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

/// Appends one frame to `out`.
pub fn encode(round: RoundId, msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Chunk(c) => {
            encode_chunk_head(round, c.attempt, c.offset, c.data.len(), out);
            out.extend_from_slice(&c.data);
        }
        Message::Done { attempt } => {
            put_header(round, msg.kind(), 4, out);
            out.extend_from_slice(&attempt.to_le_bytes());
        }
        Message::Hello(m) => put_json(round, msg.kind(), m, out),
        Message::Join(m) => put_json(round, msg.kind(), m, out),
        Message::Start(m) => put_json(round, msg.kind(), m, out),
        Message::Outcome(m) => put_json(round, msg.kind(), m, out),
        Message::Abort(m) => put_json(round, msg.kind(), m, out),
    }
}

/// Appends the header and chunk fields of a chunk frame whose `len` data bytes the caller
/// appends next (so vectors are framed without an extra copy).
pub fn encode_chunk_head(round: RoundId, attempt: u32, offset: u64, len: usize, out: &mut Vec<u8>) {
    debug_assert!(len <= CHUNK_BYTES);
    put_header(round, 4, (CHUNK_HEAD + len) as u32, out);
    out.extend_from_slice(&attempt.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
}

fn put_header(round: RoundId, kind: u8, len: u32, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&round.0);
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_json<T: Serialize>(round: RoundId, kind: u8, m: &T, out: &mut Vec<u8>) {
    // Serializing plain data structs to JSON cannot fail.
    let json = serde_json::to_vec(m).unwrap_or_default();
    put_header(round, kind, json.len() as u32, out);
    out.extend_from_slice(&json);
}

/// Parses one payload.
/// Decodes one payload; a chunk's data goes into a buffer from `spares` when there is one.
fn decode_payload(kind: u8, payload: &[u8], spares: &Spares) -> Result<Message, WireError> {
    fn json<T: for<'a> Deserialize<'a>>(kind: &'static str, p: &[u8]) -> Result<T, WireError> {
        serde_json::from_slice(p).map_err(|e| WireError::Malformed {
            kind,
            reason: e.to_string(),
        })
    }
    Ok(match kind {
        1 => Message::Hello(json("hello", payload)?),
        2 => Message::Join(json("join", payload)?),
        3 => Message::Start(json("start", payload)?),
        4 => {
            if payload.len() < CHUNK_HEAD || payload.len() > CHUNK_HEAD + CHUNK_BYTES {
                return Err(WireError::Malformed {
                    kind: "chunk",
                    reason: format!("{} payload bytes", payload.len()),
                });
            }
            let (head, data) = payload.split_at(CHUNK_HEAD);
            Message::Chunk(Chunk {
                attempt: u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
                offset: u64::from_le_bytes([
                    head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11],
                ]),
                data: {
                    let mut buf = spares.take();
                    buf.extend_from_slice(data);
                    buf
                },
            })
        }
        5 => match payload {
            [a, b, c, d] => Message::Done {
                attempt: u32::from_le_bytes([*a, *b, *c, *d]),
            },
            _ => {
                return Err(WireError::Malformed {
                    kind: "done",
                    reason: format!("{} payload bytes, expected 4", payload.len()),
                });
            }
        },
        6 => Message::Outcome(json("outcome", payload)?),
        7 => Message::Abort(json("abort", payload)?),
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
        if let Ok(mut s) = self.0.lock() {
            if s.len() < SPARE_BUFFERS && buf.capacity() <= CHUNK_BYTES {
                s.push(buf);
            }
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
    if !(1..=7).contains(&head[1]) {
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
mod tests {
    use super::*;
    use crate::layout::{Container, DType, TensorSpec};
    use proptest::prelude::*;

    fn id(s: &str) -> PartyId {
        s.parse().expect("valid id")
    }

    fn layout() -> Layout {
        Layout {
            container: Container::Safetensors,
            tensors: vec![TensorSpec {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![2, 3],
            }],
        }
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                researcher: id("researcher_1"),
                federation: "fed".into(),
                round: 7,
            }),
            Message::Join(Join { layout: layout() }),
            Message::Start(Start {
                attempt: 2,
                participants: vec![id("a"), id("b")],
                label: "update".into(),
                quant: QuantParams::default(),
                modulus: Modulus::M64,
                word_bytes: 5,
                layout: layout(),
            }),
            Message::Chunk(Chunk {
                attempt: 1,
                offset: 99,
                data: vec![1, 2, 3, 4],
            }),
            Message::Done { attempt: 3 },
            Message::Outcome(Outcome {
                attempt: 1,
                participants: vec![id("a")],
                total_weight: 10,
                bytes: 28,
            }),
            Message::Abort(Abort {
                reason: "below min-nodes".into(),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_through_one_stream() {
        let round = RoundId::new("fed", 7);
        let mut bytes = Vec::new();
        for m in samples() {
            encode(round, &m, &mut bytes);
        }
        let mut dec = Decoder::new(round);
        // Feed one byte at a time: frames may be split anywhere.
        let mut out = Vec::new();
        for b in &bytes {
            dec.push(std::slice::from_ref(b));
            while let Some(m) = dec.next_message().expect("valid stream") {
                out.push(m);
            }
        }
        assert_eq!(out, samples());
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn frame_of_another_round_is_rejected() {
        let mut bytes = Vec::new();
        encode(
            RoundId::new("fed", 6),
            &Message::Done { attempt: 1 },
            &mut bytes,
        );
        let mut dec = Decoder::new(RoundId::new("fed", 7));
        dec.push(&bytes);
        assert!(matches!(
            dec.next_message(),
            Err(WireError::OtherRound { .. })
        ));
        // Another federation with the same round number is another round too.
        let mut dec = Decoder::new(RoundId::new("other", 6));
        dec.push(&bytes);
        assert!(matches!(
            dec.next_message(),
            Err(WireError::OtherRound { .. })
        ));
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let round = RoundId::new("fed", 1);
        let mut bytes = Vec::new();
        put_header(round, 4, (MAX_PAYLOAD + 1) as u32, &mut bytes);
        let mut dec = Decoder::new(round);
        dec.push(&bytes);
        assert_eq!(
            dec.next_message(),
            Err(WireError::Oversized(MAX_PAYLOAD as u64 + 1))
        );
    }

    #[test]
    fn bad_version_kind_reserved_and_payloads_are_rejected() {
        let round = RoundId::new("fed", 1);
        let mut good = Vec::new();
        encode(round, &Message::Done { attempt: 1 }, &mut good);
        let cases: [(usize, u8, WireError); 3] = [
            (0, 2, WireError::Version(2)),
            (1, 9, WireError::Kind(9)),
            (2, 1, WireError::Reserved),
        ];
        for (at, value, want) in cases {
            let mut bad = good.clone();
            bad[at] = value;
            let mut dec = Decoder::new(round);
            dec.push(&bad);
            assert_eq!(dec.next_message(), Err(want));
        }
        // A done with 3 bytes, a chunk too short for its fields, and JSON garbage.
        for (kind, payload) in [(5u8, vec![0u8; 3]), (4, vec![0; 5]), (3, b"{no".to_vec())] {
            let mut bad = Vec::new();
            put_header(round, kind, payload.len() as u32, &mut bad);
            bad.extend_from_slice(&payload);
            let mut dec = Decoder::new(round);
            dec.push(&bad);
            assert!(matches!(
                dec.next_message(),
                Err(WireError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn round_ids_differ_and_print_as_hex() {
        let a = RoundId::new("fed", 1);
        assert_ne!(a, RoundId::new("fed", 2));
        assert_ne!(a, RoundId::new("fed1", 1));
        assert_eq!(a.to_string().len(), 32);
    }

    /// A reader that hands out at most `step` bytes per read, like a socket would.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(self.step).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn fill_from_reassembles_large_chunks_from_small_reads() {
        let round = RoundId::new("fed", 9);
        let sent: Vec<Message> = (0..5u64)
            .map(|i| {
                Message::Chunk(Chunk {
                    attempt: 1,
                    offset: i * 1000,
                    data: (0..CHUNK_BYTES - i as usize)
                        .map(|b| (b % 251) as u8)
                        .collect(),
                })
            })
            .chain(std::iter::once(Message::Done { attempt: 1 }))
            .collect();
        let mut bytes = Vec::new();
        for m in &sent {
            encode(round, m, &mut bytes);
        }
        for step in [1 << 10, 16 * 1024 + 5, 1 << 20] {
            let mut src = Trickle { data: &bytes, step };
            let mut dec = Decoder::new(round);
            let mut got = Vec::new();
            while got.len() < sent.len() {
                match dec.next_message().expect("valid stream") {
                    Some(m) => got.push(m),
                    None => assert!(
                        dec.fill_from(&mut src).expect("read") > 0,
                        "stream ended early"
                    ),
                }
            }
            assert_eq!(got, sent, "read size {step}");
            assert_eq!(dec.pending(), 0);
            // The buffer holds at most one frame plus one read, not the stream.
            assert!(
                dec.buf.len() <= HEADER_LEN + MAX_PAYLOAD + MIN_READ,
                "{}",
                dec.buf.len()
            );
        }
    }

    #[test]
    fn recycled_chunk_buffers_are_reused() {
        let round = RoundId::new("fed", 2);
        let mut bytes = Vec::new();
        for offset in [0u64, 10] {
            let m = Message::Chunk(Chunk {
                attempt: 1,
                offset,
                data: vec![offset as u8; 1000],
            });
            encode(round, &m, &mut bytes);
        }
        let mut dec = Decoder::new(round);
        dec.push(&bytes);
        let Ok(Some(Message::Chunk(first))) = dec.next_message() else {
            panic!("a chunk")
        };
        let at = first.data.as_ptr();
        // Another decoder sharing the spares hands the buffer back.
        let spares = Spares::default();
        dec.share_spares(spares.clone());
        let mut other = Decoder::new(round);
        other.share_spares(spares);
        other.recycle(first.data);
        let Ok(Some(Message::Chunk(second))) = dec.next_message() else {
            panic!("a chunk")
        };
        assert_eq!(
            second.data.as_ptr(),
            at,
            "the recycled buffer carries the next chunk"
        );
        assert_eq!((second.offset, second.data), (10, vec![10u8; 1000]));
    }

    proptest! {
        #[test]
        fn chunks_round_trip(attempt: u32, offset: u64,
                             data in proptest::collection::vec(any::<u8>(), 0..4096),
                             split in 0usize..5000) {
            let round = RoundId::new("f", 3);
            let m = Message::Chunk(Chunk { attempt, offset, data });
            let mut bytes = Vec::new();
            encode(round, &m, &mut bytes);
            let cut = split.min(bytes.len());
            let mut dec = Decoder::new(round);
            dec.push(&bytes[..cut]);
            let first = dec.next_message().expect("valid prefix");
            if cut < bytes.len() {
                prop_assert!(first.is_none());
                dec.push(&bytes[cut..]);
                prop_assert_eq!(dec.next_message().expect("valid"), Some(m));
            } else {
                prop_assert_eq!(first, Some(m));
            }
        }
    }
}
