//! Unit tests of `frame`.
use super::*;
use proptest::prelude::*;

fn samples() -> Vec<Message> {
    vec![
        Message::Protocol {
            kind: 16,
            payload: vec![1, 2, 3],
        },
        Message::Chunk(Chunk {
            offset: 99,
            data: vec![1, 2, 3, 4],
        }),
        Message::End,
        Message::Protocol {
            kind: 31,
            payload: Vec::new(),
        },
        Message::Abort(Abort {
            reason: "below threshold".into(),
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
    encode(RoundId::new("fed", 6), &Message::End, &mut bytes);
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
    encode(round, &Message::End, &mut good);
    let cases: [(usize, u8, WireError); 4] = [
        (0, 1, WireError::Version(1)),
        (1, 9, WireError::Kind(9)),
        (1, 32, WireError::Kind(32)),
        (2, 1, WireError::Reserved),
    ];
    for (at, value, want) in cases {
        let mut bad = good.clone();
        bad[at] = value;
        let mut dec = Decoder::new(round);
        dec.push(&bad);
        assert_eq!(dec.next_message(), Err(want));
    }
    // An end with 3 bytes, a chunk too short for its fields, and JSON garbage.
    for (kind, payload) in [(5u8, vec![0u8; 3]), (4, vec![0; 5]), (7, b"{no".to_vec())] {
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
                offset: i * 1000,
                data: (0..CHUNK_BYTES - i as usize)
                    .map(|b| (b % 251) as u8)
                    .collect(),
            })
        })
        .chain(std::iter::once(Message::End))
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
    fn chunks_round_trip(offset: u64,
                         data in proptest::collection::vec(any::<u8>(), 0..4096),
                         split in 0usize..5000) {
        let round = RoundId::new("f", 3);
        let m = Message::Chunk(Chunk { offset, data });
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
