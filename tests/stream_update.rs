//! `masked::stream_update` (the network round's masking, block by block) against
//! `masked::mask_update` (the whole vector at once): same words, same journal entry;
//! and where each reports a NaN, and what each journals when it fails.

mod common;

use std::path::Path;

use common::{Lab, Party, values};
use secagg::files::job::{RoundSpec, Stopped};
use secagg::files::masked::{self, AnyMasked};
use secagg::files::tensor::{self};
use secagg::layout::{Container, DType, Layout, TensorSpec};
use secagg::party::PartyId;
use secagg::pki::identity::Home;
use secagg::pki::registry::{self, Registry};
use secagg::secagg::quantize::QuantParams;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn registry(home: &Path) -> Registry {
    Registry::open_existing(&Home::new(home).registry_path())
        .expect("registry")
        .expect("exists")
}

/// Three registered nodes; returns the lab and node_1.
fn nodes() -> (Lab, Party) {
    let lab = Lab::new();
    let nodes: Vec<Party> = (1..=3)
        .map(|i| lab.party(&format!("node_{i}"), "node", 21000 + i))
        .collect();
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.home != a.home) {
            a.register(b);
        }
    }
    let first = Party {
        home: nodes[0].home.clone(),
    };
    (lab, first)
}

/// A one-tensor `.npy` layout of `n` values.
fn npy(n: u64, dtype: DType) -> Layout {
    Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![n],
            dtype,
        }],
    }
}

fn spec(quant: QuantParams, round: u64) -> RoundSpec {
    RoundSpec {
        federation: "fed".into(),
        round,
        attempt: 1,
        label: "update".into(),
        participants: ["node_1", "node_2", "node_3"]
            .iter()
            .map(|s| s.parse::<PartyId>().expect("id"))
            .collect(),
        quant,
    }
}

#[test]
fn streamed_blocks_equal_the_whole_masked_vector_and_are_journaled() {
    let (lab, node) = nodes();
    let input = lab.path("u.npy");
    let layout = npy(10_007, DType::F32);
    tensor::write_values(&input, &layout, values(5, 10_007).into_iter()).expect("write");
    let me = Home::new(&node.home).load_identity().expect("identity");
    // The same party twice (copied home), so both functions may journal the same round.
    let twin = lab.path("twin");
    copy_dir(&node.home, &twin);
    for (round, quant, word_bytes) in [
        (1, QuantParams::default(), 8),
        (
            2,
            QuantParams {
                bits: 8,
                max_weight: 100,
                ..QuantParams::default()
            },
            4,
        ),
    ] {
        let spec = spec(quant, round);
        let whole =
            secagg::files::job::mask_update(&me, &mut registry(&node.home), &spec, &input, 7, 2, 0)
                .expect("mask");
        assert!(whole.clipped() > 0, "some values are clipped");
        let mut streamed: Vec<u8> = Vec::new();
        let mut offsets = Vec::new();
        let mut reg = registry(&twin);
        macro_rules! stream {
            ($w:ty) => {
                secagg::files::job::stream_update::<$w, ()>(
                    &me,
                    &mut reg,
                    &spec,
                    &input,
                    7,
                    2,
                    0,
                    1000,
                    |at, words| {
                        offsets.push(at);
                        words
                            .iter()
                            .for_each(|w| streamed.extend_from_slice(&w.to_le_bytes()));
                        Ok(())
                    },
                )
            };
        }
        let done = match &whole {
            AnyMasked::M32(_) => stream!(u32),
            AnyMasked::M64(_) => stream!(u64),
        }
        .expect("stream");
        let expected: Vec<u8> = match &whole {
            AnyMasked::M32(m) => m.words.iter().flat_map(|w| w.to_le_bytes()).collect(),
            AnyMasked::M64(m) => m.words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        };
        assert_eq!(expected.len(), 10_008 * word_bytes);
        assert!(
            streamed == expected,
            "streamed words differ ({word_bytes}-byte words)"
        );
        assert_eq!(offsets, (0..=10).map(|i| i * 1000).collect::<Vec<u64>>());
        assert_eq!(
            (done.layout, done.clipped),
            (layout.clone(), whole.clipped())
        );
        // Journaled before anything was emitted: a second stream is refused.
        let again = secagg::files::job::stream_update::<u64, ()>(
            &me,
            &mut reg,
            &spec,
            &input,
            7,
            2,
            0,
            1000,
            |_, _| panic!("nothing may be emitted"),
        );
        assert!(matches!(
            again,
            Err(Stopped::Masking(masked::Error::Registry(
                registry::Error::MaskReuse { .. }
            )))
        ));
    }
}

#[test]
fn a_failing_emit_stops_the_stream_and_a_nan_is_reported_where_it_is() {
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let input = lab.path("u.npy");
    let layout = npy(5000, DType::F64);
    let mut vals = values(9, 5000);
    vals[4321] = f64::NAN;
    tensor::write_values(&input, &layout, vals.into_iter()).expect("write");
    let mut reg = registry(&node.home);
    let mut calls = 0;
    let stopped = secagg::files::job::stream_update::<u64, &str>(
        &me,
        &mut reg,
        &spec(QuantParams::default(), 1),
        &input,
        1,
        1,
        0,
        1000,
        |_, _| {
            calls += 1;
            if calls == 2 { Err("link down") } else { Ok(()) }
        },
    );
    assert!(matches!(stopped, Err(Stopped::Emit("link down"))));
    assert_eq!(calls, 2, "no block after the failing one");
    let mut spec2 = spec(QuantParams::default(), 1);
    spec2.attempt = 2;
    let stopped = secagg::files::job::stream_update::<u64, ()>(
        &me,
        &mut reg,
        &spec2,
        &input,
        1,
        1,
        0,
        1000,
        |_, _| Ok(()),
    );
    match stopped {
        Err(Stopped::Masking(e)) => assert!(e.to_string().contains("element 4321"), "{e}"),
        other => panic!("expected a NaN error, got {other:?}"),
    }
}

#[test]
fn file_mode_reports_a_nan_where_it_is_and_journals_nothing() {
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let input = lab.path("u.npy");
    let layout = npy(200_000, DType::F32);
    // Past the first 128 Ki-value block, so the index must be carried across blocks.
    let mut vals = values(3, 200_000);
    vals[150_000] = f64::NAN;
    tensor::write_values(&input, &layout, vals.iter().copied()).expect("write");
    let spec = spec(QuantParams::default(), 7);
    let mut reg = registry(&node.home);
    let err = secagg::files::job::mask_update(&me, &mut reg, &spec, &input, 1, 2, 0)
        .err()
        .expect("NaN refused");
    assert!(err.to_string().contains("element 150000"), "{err}");
    // Nothing was journaled: once the file is fixed, the same round masks.
    vals[150_000] = 0.5;
    tensor::write_values(&input, &layout, vals.into_iter()).expect("write");
    assert!(secagg::files::job::mask_update(&me, &mut reg, &spec, &input, 1, 2, 0).is_ok());
}
