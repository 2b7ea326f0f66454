//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) through the same
//! entry points the fuzzers run (`fuzz/entry.rs`), so a regression in a parser of
//! outside bytes fails `cargo test` without a fuzzer. Also holds the regression inputs
//! the fuzzers found, and (ignored) the generator of the seed corpora.

#[path = "../fuzz/entry.rs"]
mod entry;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

#[test]
fn every_committed_corpus_file_replays_without_a_panic() {
    let mut total = 0;
    for (name, run) in entry::TARGETS {
        let dir = corpus_dir(name);
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        assert!(!files.is_empty(), "no corpus for target {name}");
        for f in files {
            let data = std::fs::read(&f).expect("read corpus file");
            run(&data);
            total += 1;
        }
    }
    assert!(total >= entry::TARGETS.len());
}

/// Writes the seed corpora: `cargo test --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    use secagg::files::masked::{self, Header, Masked};
    use secagg::files::tensor;
    use secagg::layout::{Container, DType, Layout, TensorSpec};
    use secagg::net::frame::{self, Abort, Chunk, Message, RoundId};
    use secagg::pki::certificate::{self, CertParams};
    use secagg::pki::identity::{Config, Identity};
    use secagg::secagg::quantize::QuantParams;
    use secagg::secagg::ring::Modulus;
    use std::time::{Duration, SystemTime};

    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let npy = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![2, 3],
            dtype: DType::F32,
        }],
    };
    let st = Layout {
        container: Container::Safetensors,
        tensors: vec![
            TensorSpec {
                name: "bias".into(),
                shape: vec![2],
                dtype: DType::F64,
            },
            TensorSpec {
                name: "weight".into(),
                shape: vec![2, 2],
                dtype: DType::F32,
            },
        ],
    };
    for (target, file, layout) in [
        ("npy", "a.npy", &npy),
        ("safetensors", "a.safetensors", &st),
    ] {
        let p = tmp.path().join(file);
        let n = layout.elements() as usize;
        tensor::write_values(&p, layout, (0..n).map(|i| i as f64 - 1.5)).expect("write");
        put(target, "seed-1", &std::fs::read(&p).expect("read"));
    }
    let f64npy = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![3],
            dtype: DType::F64,
        }],
    };
    let p = tmp.path().join("b.npy");
    tensor::write_values(&p, &f64npy, [0.5, -0.25, 1e-3].into_iter()).expect("write");
    put("npy", "seed-2", &std::fs::read(&p).expect("read"));

    let key = entry::masked_key();
    let now = SystemTime::now();
    let params = CertParams {
        party_id: "fuzz-node".parse().expect("id"),
        host: "127.0.0.1".parse().expect("host"),
        not_before: now - Duration::from_secs(60),
        not_after: now + Duration::from_secs(86_400 * 365 * 10),
    };
    let cert = certificate::self_signed(key.signing_key(), &params).expect("cert");
    put("certificate", "seed-1", cert.to_pem().as_bytes());
    put(
        "config",
        "seed-1",
        b"party_id = \"hospital-a\"\nrole = \"node\"\nip = \"10.0.0.5\"\nport = 7000\n",
    );

    let me = Identity {
        config: Config {
            party_id: "fuzz-node".parse().expect("id"),
            role: secagg::party::Role::Node,
            ip: "127.0.0.1".parse().expect("host"),
            port: 7000,
            policy: Default::default(),
        },
        key,
        certificate: cert,
    };
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![3],
            dtype: DType::F32,
        }],
    };
    let header = Header {
        format_version: masked::FORMAT_VERSION,
        context: secagg::secagg::keys::MaskContext {
            federation: "fed".into(),
            round: 1,
            researcher: secagg::party::Fingerprint::of_der(b"fuzz researcher"),
            label: "update".into(),
            participants: vec![
                "fuzz-node".parse().expect("id"),
                "other".parse().expect("id"),
            ],
        },
        quant: QuantParams::default(),
        modulus: Modulus::M32,
        elements: 4,
        layout,
        sender: "fuzz-node".parse().expect("id"),
    };
    let m = Masked::<u32> {
        header,
        words: vec![1, 2, 3, 4],
        clipped: 0,
    };
    let p = tmp.path().join("m.masked");
    masked::write_file(&p, &m, &me).expect("write masked");
    put("masked", "seed-1", &std::fs::read(&p).expect("read"));

    let round = RoundId::new("fed", 1);
    let mut out = Vec::new();
    for msg in [
        Message::Protocol {
            kind: 16,
            payload: vec![0, 0, 0, 3, b'f', b'e', b'd'],
        },
        Message::Chunk(Chunk {
            offset: 0,
            data: vec![1, 2, 3, 4, 5],
        }),
        Message::End,
        Message::Abort(Abort {
            reason: "bye".into(),
        }),
    ] {
        frame::encode(round, &msg, &mut out);
    }
    put("frame", "seed-1", &out);

    // Protocol-2 payloads: the kind byte, then the payload (see fuzz/entry.rs `round`).
    for (i, payload) in entry::round_seeds().into_iter().enumerate() {
        put("round", &format!("seed-{}", i + 1), &payload);
    }
    // A roster as `federation import` reads it.
    put("roster", "seed-1", entry::ROSTER_SEED.as_bytes());
}
