//! File-mode secure aggregation through the real binary: three nodes and a researcher.

mod common;

use std::path::{Path, PathBuf};

use common::{Lab, Party, read_all, values};
use secagg::files::tensor::{self};
use secagg::layout::{Container, DType, Layout, TensorSpec};

struct Fed {
    lab: Lab,
    researcher: Party,
    nodes: Vec<Party>,
}

fn federation(n: usize) -> Fed {
    let lab = Lab::new();
    let researcher = lab.party("researcher_1", "researcher", 7000);
    let nodes: Vec<Party> = (1..=n)
        .map(|i| lab.party(&format!("node_{i}"), "node", 7000 + i as u16))
        .collect();
    for a in &nodes {
        researcher.register(a);
        a.register(&researcher);
        for b in nodes.iter().filter(|b| b.home != a.home) {
            a.register(b);
        }
    }
    Fed {
        lab,
        researcher,
        nodes,
    }
}

fn mask_args<'a>(
    input: &'a str,
    out: &'a str,
    round: &'a str,
    weight: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![
        "mask",
        "--input",
        input,
        "--federation",
        "fed",
        "--round",
        round,
        "--participants",
        "node_1,node_2,node_3",
        "--weight",
        weight,
        "--out",
        out,
    ];
    v.extend_from_slice(extra);
    v
}

/// Runs a round on `layout` and checks the result against the weighted mean computed here.
fn round_matches_plain_mean(layout: Layout, ext: &str, round: &str) {
    let fed = federation(3);
    let n = layout.elements() as usize;
    let weights = [3u64, 5, 11];
    let mut inputs = Vec::new();
    let mut masked: Vec<PathBuf> = Vec::new();
    for (i, node) in fed.nodes.iter().enumerate() {
        let input = fed.lab.path(&format!("in{i}.{ext}"));
        let vals = values(i as u64 + 1, n);
        tensor::write_values(&input, &layout, vals.iter().copied()).expect("write input");
        inputs.push(read_all(&input)); // as stored (f32 rounding included)
        let out = fed.lab.path(&format!("node_{}.masked", i + 1));
        let w = weights[i].to_string();
        let stderr = node.run(&mask_args(
            input.to_str().expect("utf8"),
            out.to_str().expect("utf8"),
            round,
            &w,
            &[],
        ));
        assert!(
            stderr.status.success(),
            "{}",
            String::from_utf8_lossy(&stderr.stderr)
        );
        let msg = String::from_utf8_lossy(&stderr.stderr);
        assert!(
            msg.contains("were outside [-1, 1] and were clipped"),
            "{msg}"
        );
        masked.push(out);
    }
    let out = fed.lab.path(&format!("mean.{ext}"));
    let mut args = vec!["aggregate"];
    let files: Vec<String> = masked
        .iter()
        .map(|p| p.to_str().expect("utf8").to_owned())
        .collect();
    args.extend(files.iter().map(String::as_str));
    args.extend(["--out", out.to_str().expect("utf8")]);
    fed.researcher.ok(&args);
    assert_eq!(tensor::read_layout(&out).expect("layout"), layout);
    let got = read_all(&out);
    let total: u64 = weights.iter().sum();
    let step = 1.0 / 32767.0;
    let f32_out = layout.tensors.iter().any(|t| t.dtype == DType::F32);
    for k in 0..n {
        let plain: f64 = (0..3)
            .map(|i| inputs[i][k].clamp(-1.0, 1.0) * weights[i] as f64)
            .sum::<f64>()
            / total as f64;
        let tol = step / 2.0 + if f32_out { 1e-7 } else { 1e-12 };
        assert!(
            (got[k] - plain).abs() <= tol,
            "element {k}: secure {} plain {plain}",
            got[k]
        );
    }
}

#[test]
fn npy_f32_round_equals_weighted_mean() {
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![40, 25],
            dtype: DType::F32,
        }],
    };
    round_matches_plain_mean(layout, "npy", "1");
}

#[test]
fn npy_f64_round_equals_weighted_mean() {
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![3, 4, 50],
            dtype: DType::F64,
        }],
    };
    round_matches_plain_mean(layout, "npy", "2");
}

#[test]
fn safetensors_round_equals_weighted_mean() {
    let layout = Layout {
        container: Container::Safetensors,
        tensors: vec![
            TensorSpec {
                name: "fc.bias".into(),
                shape: vec![10],
                dtype: DType::F32,
            },
            TensorSpec {
                name: "fc.weight".into(),
                shape: vec![10, 30],
                dtype: DType::F32,
            },
            TensorSpec {
                name: "head".into(),
                shape: vec![7],
                dtype: DType::F64,
            },
        ],
    };
    round_matches_plain_mean(layout, "safetensors", "3");
}

#[test]
fn masked_file_is_unrelated_to_its_input() {
    let fed = federation(3);
    let n = 20_000;
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![n as u64],
            dtype: DType::F64,
        }],
    };
    // A strongly structured input: a ramp.
    let vals: Vec<f64> = (0..n).map(|i| i as f64 / n as f64 - 0.5).collect();
    let input = fed.lab.path("ramp.npy");
    tensor::write_values(&input, &layout, vals.iter().copied()).expect("write");
    let out = fed.lab.path("m.masked");
    fed.nodes[0].ok(&mask_args(
        input.to_str().expect("utf8"),
        out.to_str().expect("utf8"),
        "1",
        "1",
        &["--bits", "8", "--max-weight", "10"],
    ));
    let bytes = std::fs::read(&out).expect("read");
    let hlen = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[12..12 + hlen]).expect("header");
    assert_eq!(header["modulus"], "2^32");
    let words: Vec<f64> = bytes[12 + hlen..12 + hlen + 4 * n]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    // Uniform words: mean near 2^31 and top bit set about half the time (5 sigma bounds).
    let mean = words.iter().sum::<f64>() / n as f64;
    let sigma_mean = 2f64.powi(32) / 12f64.sqrt() / (n as f64).sqrt();
    assert!(
        (mean - 2f64.powi(31)).abs() < 5.0 * sigma_mean,
        "mean {mean}"
    );
    let top = words.iter().filter(|w| **w >= 2f64.powi(31)).count() as f64;
    assert!(
        (top - n as f64 / 2.0).abs() < 5.0 * (n as f64 / 4.0).sqrt(),
        "top bits {top}"
    );
    // No linear relation with the input.
    let (mx, my) = (vals.iter().sum::<f64>() / n as f64, mean);
    let cov: f64 = vals
        .iter()
        .zip(&words)
        .map(|(x, y)| (x - mx) * (y - my))
        .sum();
    let vx: f64 = vals.iter().map(|x| (x - mx).powi(2)).sum();
    let vy: f64 = words.iter().map(|y| (y - my).powi(2)).sum();
    let r = cov / (vx * vy).sqrt();
    assert!(r.abs() < 5.0 / (n as f64).sqrt(), "correlation {r}");
}

#[test]
fn round_errors_are_clear() {
    let fed = federation(3);
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![64],
            dtype: DType::F32,
        }],
    };
    let mut files = Vec::new();
    for (i, node) in fed.nodes.iter().enumerate() {
        let input = fed.lab.path(&format!("in{i}.npy"));
        tensor::write_values(&input, &layout, values(i as u64, 64).into_iter()).expect("write");
        let out = fed.lab.path(&format!("n{i}.masked"));
        node.ok(&mask_args(
            input.to_str().expect("utf8"),
            out.to_str().expect("utf8"),
            "5",
            "2",
            &[],
        ));
        files.push(out.to_str().expect("utf8").to_owned());
    }
    let input0 = fed.lab.path("in0.npy");
    let input0 = input0.to_str().expect("utf8");
    let mean = fed.lab.path("mean.npy");
    let mean = mean.to_str().expect("utf8");
    let r = &fed.researcher;

    // Missing participant.
    r.fails(
        &["aggregate", &files[0], &files[1], "--out", mean],
        "missing participant(s): node_3",
    );
    assert!(!Path::new(mean).exists());
    // Mask reuse: same round and attempt, even with another input.
    let again = fed.lab.path("again.masked");
    fed.nodes[0].fails(
        &mask_args(
            fed.lab.path("in1.npy").to_str().expect("utf8"),
            again.to_str().expect("utf8"),
            "5",
            "2",
            &[],
        ),
        "already masked for federation 'fed', round 5, attempt 0",
    );
    assert!(!again.exists());
    // Header mismatch: node_3 masks round 6 instead.
    let other = fed.lab.path("other.masked");
    fed.nodes[2].ok(&mask_args(
        input0,
        other.to_str().expect("utf8"),
        "6",
        "2",
        &[],
    ));
    r.fails(
        &[
            "aggregate",
            &files[0],
            &files[1],
            other.to_str().expect("utf8"),
            "--out",
            mean,
        ],
        "header disagrees with",
    );
    // Tampered payload.
    let tampered = fed.lab.path("tampered.masked");
    let mut bytes = std::fs::read(&files[2]).expect("read");
    let k = bytes.len() - 100;
    bytes[k] ^= 1;
    std::fs::write(&tampered, &bytes).expect("write");
    r.fails(
        &[
            "aggregate",
            &files[0],
            &files[1],
            tampered.to_str().expect("utf8"),
            "--out",
            mean,
        ],
        "signature check failed for sender 'node_3'",
    );
    // Truncated file.
    std::fs::write(&tampered, &bytes[..bytes.len() / 2]).expect("write");
    r.fails(
        &[
            "aggregate",
            &files[0],
            &files[1],
            tampered.to_str().expect("utf8"),
            "--out",
            mean,
        ],
        "truncated",
    );
    // Duplicate file.
    r.fails(
        &["aggregate", &files[0], &files[0], &files[2], "--out", mean],
        "a second file from 'node_1'",
    );
    assert!(!Path::new(mean).exists());
    // All three: works.
    r.ok(&["aggregate", &files[0], &files[1], &files[2], "--out", mean]);
    // Unregistered sender.
    r.ok(&["certificate", "delete", "--party-id", "node_3", "--yes"]);
    r.fails(
        &["aggregate", &files[0], &files[1], &files[2], "--out", mean],
        "participant 'node_3' is not registered",
    );
    // Overflow-prone configuration, refused before any work, naming the knobs.
    let err = fed.nodes[0].fails(
        &mask_args(
            input0,
            again.to_str().expect("utf8"),
            "9",
            "2",
            &["--bits", "32", "--max-weight", "9000000000000"],
        ),
        "overflow risk: 3 nodes x max weight 9000000000000",
    );
    assert!(
        err.contains("hint: lower --bits to") && err.contains("--max-weight to"),
        "{err}"
    );
    // Weight above max.
    fed.nodes[0].fails(
        &mask_args(input0, again.to_str().expect("utf8"), "9", "2000000", &[]),
        "weight 2000000 is out of range",
    );
    // Unregistered participant at the node.
    let mut args = mask_args(input0, again.to_str().expect("utf8"), "9", "2", &[]);
    args[8] = "node_1,node_2,node_9";
    fed.nodes[0].fails(&args, "participant 'node_9' is not registered");
    // A researcher cannot mask.
    fed.researcher.fails(
        &mask_args(input0, again.to_str().expect("utf8"), "9", "2", &[]),
        "only nodes mask updates",
    );
    assert!(!again.exists());
}
