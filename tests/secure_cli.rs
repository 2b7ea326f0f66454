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
    args.extend(["--out", out.to_str().expect("utf8"), "--json"]);
    let summary: serde_json::Value =
        serde_json::from_str(&fed.researcher.ok(&args)).expect("--json prints one JSON object");
    let total_weight: u64 = weights.iter().sum();
    assert_eq!(summary["total_weight"], total_weight);
    assert_eq!(summary["participants"].as_array().map(Vec::len), Some(3));
    assert_eq!(summary["mode"], "file");
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
    // 3 nodes x weight 10 x 127 levels < 2^15: residues of 2 bytes, modulus 2^16.
    assert_eq!(header["modulus"], "2^16");
    let hsig = u16::from_le_bytes([bytes[12 + hlen], bytes[13 + hlen]]) as usize;
    let start = 14 + hlen + hsig;
    let words: Vec<f64> = bytes[start..start + 2 * n]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as f64)
        .collect();
    // Uniform residues: mean near 2^15 and top bit set about half the time (5 sigma bounds).
    let mean = words.iter().sum::<f64>() / n as f64;
    let sigma_mean = 2f64.powi(16) / 12f64.sqrt() / (n as f64).sqrt();
    assert!(
        (mean - 2f64.powi(15)).abs() < 5.0 * sigma_mean,
        "mean {mean}"
    );
    let top = words.iter().filter(|w| **w >= 2f64.powi(15)).count() as f64;
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
    let layout = npy_of(64, DType::F32);
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
    // Mask reuse: same round, even with another input.
    let again = fed.lab.path("again.masked");
    fed.nodes[0].fails(
        &mask_args(
            fed.lab.path("in1.npy").to_str().expect("utf8"),
            again.to_str().expect("utf8"),
            "5",
            "2",
            &[],
        ),
        "already masked for federation 'fed', round 5, label 'update'",
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

/// Every row of the journal tables and the peers, to show a refusal changed nothing.
fn journal(party: &Party) -> Vec<String> {
    let conn = rusqlite::Connection::open(party.home.join("registry.sqlite")).expect("open");
    let mut rows = Vec::new();
    for sql in [
        "SELECT federation || '|' || round || '|' || label || '|' || researcher || '|' || participants FROM file_masks ORDER BY 1",
        "SELECT digest || '|' || mode || '|' || federation || '|' || round FROM releases ORDER BY 1",
        "SELECT party_id || '|' || role || '|' || fingerprint FROM peers ORDER BY 1",
    ] {
        let mut stmt = conn.prepare(sql).expect("prepare");
        let got = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        rows.extend(got);
    }
    rows
}

/// Runs, asserts exit 1 and exactly these `error:` and `hint:` lines; returns stderr.
fn refused(party: &Party, args: &[&str], error: &str, hint: &str) -> String {
    let out = party.run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "secagg {args:?}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.contains(&format!("error: {error}").as_str()),
        "secagg {args:?}: expected 'error: {error}', got:\n{err}"
    );
    assert!(
        lines.contains(&format!("hint: {hint}").as_str()),
        "secagg {args:?}: expected 'hint: {hint}', got:\n{err}"
    );
    err
}

fn npy64(n: u64) -> Layout {
    npy_of(n, DType::F64)
}

/// A one-tensor `.npy` layout of `n` values of `dtype`.
fn npy_of(n: u64, dtype: DType) -> Layout {
    Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![n],
            dtype,
        }],
    }
}

fn fp(party: &Party) -> String {
    party.instructions()["fingerprint"]
        .as_str()
        .expect("fp")
        .to_owned()
}

#[test]
fn an_update_is_released_once_and_a_round_is_masked_once() {
    let fed = federation(3);
    let node = &fed.nodes[0];
    let input = fed.lab.path("u.npy");
    tensor::write_values(&input, &npy64(64), values(1, 64).into_iter()).expect("write");
    let input = input.to_str().expect("utf8");
    let first = fed.lab.path("first.masked");
    node.ok(&mask_args(
        input,
        first.to_str().expect("utf8"),
        "10",
        "1",
        &[],
    ));
    let before = journal(node);
    assert_eq!(
        before.iter().filter(|r| r.contains("|file|fed|10")).count(),
        1
    );
    let first_bytes = std::fs::read(&first).expect("read");

    // The same update again, for another round: refused, nothing written or journaled.
    let again = fed.lab.path("again.masked");
    let released = "this update was already released (file mode, federation 'fed', round 10); releasing one input to two sums lets the aggregator subtract them";
    let hint =
        "train a new update (or pass a different --input); the same update is never released twice";
    refused(
        node,
        &mask_args(input, again.to_str().expect("utf8"), "11", "1", &[]),
        released,
        hint,
    );
    assert!(!again.exists());
    assert_eq!(journal(node), before);
    // The same content under another name, for another federation: the same refusal.
    let copy = fed.lab.path("copy.npy");
    std::fs::copy(input, &copy).expect("copy");
    let mut other_fed = mask_args(
        copy.to_str().expect("utf8"),
        again.to_str().expect("utf8"),
        "12",
        "1",
        &[],
    );
    other_fed[4] = "another-fed";
    refused(node, &other_fed, released, hint);
    assert!(!again.exists());
    assert_eq!(journal(node), before);

    // A different update for the round already masked: refused whatever the input.
    let other = fed.lab.path("other.npy");
    tensor::write_values(&other, &npy64(64), values(2, 64).into_iter()).expect("write");
    refused(
        node,
        &mask_args(
            other.to_str().expect("utf8"),
            again.to_str().expect("utf8"),
            "10",
            "1",
            &[],
        ),
        "already masked for federation 'fed', round 10, label 'update'; reusing a mask would leak the difference of two inputs",
        "keep the masked file you made for that round, or ask the researcher for a new --round number",
    );
    assert!(!again.exists());
    // Not even over the file already made.
    refused(
        node,
        &mask_args(
            other.to_str().expect("utf8"),
            first.to_str().expect("utf8"),
            "10",
            "1",
            &[],
        ),
        "already masked for federation 'fed', round 10, label 'update'; reusing a mask would leak the difference of two inputs",
        "keep the masked file you made for that round, or ask the researcher for a new --round number",
    );
    assert_eq!(std::fs::read(&first).expect("read"), first_bytes);
    assert_eq!(journal(node), before);
    // The different update in a new round is fine.
    node.ok(&mask_args(
        other.to_str().expect("utf8"),
        again.to_str().expect("utf8"),
        "11",
        "1",
        &[],
    ));
    assert!(again.exists());
}

/// A node that masked X before the upgrade (its registry holds X's version-1 digest, at
/// schema 4) is refused X again by the new binary, and its journal is left as it was.
#[test]
fn an_update_released_before_digest_version_2_is_refused_after_the_upgrade() {
    let fed = federation(3);
    let node = &fed.nodes[0];
    let layout = npy_of(500, DType::F32);
    let xs = values(21, 500);
    let x = fed.lab.path("x.npy");
    tensor::write_values(&x, &layout, xs.iter().copied()).expect("write");
    common::as_schema_4_with_release(
        &node.home,
        &common::v1_digest_npy(DType::F32, &xs),
        "old-fed",
        3,
    );
    let (version, rows) = common::release_rows(&node.home);
    assert_eq!((version, rows.len()), (4, 1));
    let before = journal(node);
    let out = fed.lab.path("x.masked");
    let out = out.to_str().expect("utf8");
    let x = x.to_str().expect("utf8");
    refused(
        node,
        &mask_args(x, out, "1", "1", &[]),
        "this update was already released (file mode, federation 'old-fed', round 3); releasing one input to two sums lets the aggregator subtract them",
        "train a new update (or pass a different --input); the same update is never released twice",
    );
    assert!(!Path::new(out).exists());
    // The registry was upgraded (schema 5, the old row version 1) and nothing else changed.
    assert_eq!(journal(node), before);
    let (version, after) = common::release_rows(&node.home);
    assert_eq!((version, &after), (5, &rows));
    // The same content under another name and container type is the same input.
    let copy = fed.lab.path("copy.safetensors");
    tensor::write_values(
        &copy,
        &Layout {
            container: Container::Safetensors,
            ..layout.clone()
        },
        xs.iter().copied(),
    )
    .expect("write");
    refused(
        node,
        &mask_args(copy.to_str().expect("utf8"), out, "1", "1", &[]),
        "this update was already released (file mode, federation 'old-fed', round 3); releasing one input to two sums lets the aggregator subtract them",
        "train a new update (or pass a different --input); the same update is never released twice",
    );
    assert_eq!(journal(node), before);
    // A new update masks; it is journaled under version 2, the old row stays.
    let y = fed.lab.path("y.npy");
    tensor::write_values(&y, &layout, values(22, 500).into_iter()).expect("write");
    node.ok(&mask_args(y.to_str().expect("utf8"), out, "1", "1", &[]));
    let (_, now) = common::release_rows(&node.home);
    assert_eq!(now.len(), 2);
    assert!(now.contains(&rows[0]));
    assert!(now.iter().any(|r| r.ends_with("|2|file|fed|1")), "{now:?}");
    // Still refused after that (the version-1 row is still read).
    refused(
        node,
        &mask_args(
            x,
            fed.lab.path("x2.masked").to_str().expect("utf8"),
            "2",
            "1",
            &[],
        ),
        "this update was already released (file mode, federation 'old-fed', round 3); releasing one input to two sums lets the aggregator subtract them",
        "train a new update (or pass a different --input); the same update is never released twice",
    );
}

#[test]
fn the_researcher_is_bound_into_the_file() {
    let fed = federation(3);
    let second = fed.lab.party("researcher_2", "researcher", 7100);
    for node in &fed.nodes {
        node.register(&second);
        second.register(node);
    }
    let mut files = Vec::new();
    // Two researchers registered: the node must say which one the file is for.
    let input = fed.lab.path("in0.npy");
    tensor::write_values(&input, &npy64(32), values(7, 32).into_iter()).expect("write");
    let out = fed.lab.path("n0.masked");
    let before = journal(&fed.nodes[0]);
    refused(
        &fed.nodes[0],
        &mask_args(
            input.to_str().expect("utf8"),
            out.to_str().expect("utf8"),
            "1",
            "1",
            &[],
        ),
        "2 researchers are registered here (researcher_1, researcher_2); a masked file is bound to one of them",
        "pass --researcher ID to say which one the file is for",
    );
    assert!(!out.exists());
    assert_eq!(journal(&fed.nodes[0]), before);
    refused(
        &fed.nodes[0],
        &mask_args(
            input.to_str().expect("utf8"),
            out.to_str().expect("utf8"),
            "1",
            "1",
            &["--researcher", "node_2"],
        ),
        "'node_2' is not registered here as a researcher",
        "see 'secagg certificate list' for the researchers registered here",
    );
    assert!(!out.exists());
    assert_eq!(journal(&fed.nodes[0]), before);
    // node_1 and node_2 mask for researcher_1, node_3 for researcher_2.
    for (i, node) in fed.nodes.iter().enumerate() {
        let input = fed.lab.path(&format!("in{i}.npy"));
        tensor::write_values(&input, &npy64(32), values(7 + i as u64, 32).into_iter())
            .expect("write");
        let out = fed.lab.path(&format!("n{i}.masked"));
        let who = if i == 2 {
            "researcher_2"
        } else {
            "researcher_1"
        };
        node.ok(&mask_args(
            input.to_str().expect("utf8"),
            out.to_str().expect("utf8"),
            "1",
            "1",
            &["--researcher", who],
        ));
        files.push(out.to_str().expect("utf8").to_owned());
    }
    let header = |f: &str| -> serde_json::Value {
        let bytes = std::fs::read(f).expect("read");
        assert_eq!(&bytes[..8], b"SECAGGM3");
        let hlen = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        serde_json::from_slice(&bytes[12..12 + hlen]).expect("header")
    };
    let hex = |fp: String| fp.replace(':', "").to_lowercase();
    let h = header(&files[0]);
    assert_eq!(h["format_version"], 3);
    assert_eq!(h["researcher"], hex(fp(&fed.researcher)));
    assert!(h.get("attempt").is_none(), "{h}");
    assert_eq!(header(&files[2])["researcher"], hex(fp(&second)));

    let mean = fed.lab.path("mean.npy");
    let mean = mean.to_str().expect("utf8");
    let args = ["aggregate", &files[0], &files[1], &files[2], "--out", mean];
    let hint = "only that researcher can aggregate it; ask the nodes to mask new updates for you (secagg mask --researcher YOUR-ID) in a new round";
    let own = fp(&fed.researcher);
    refused(
        &fed.researcher,
        &args,
        &format!(
            "{}: masked for researcher {} (not registered here), not for this party ({own})",
            files[2],
            fp(&second)
        ),
        hint,
    );
    assert!(!Path::new(mean).exists());
    // researcher_2 knows itself and refuses node_1's file, naming researcher_1 if registered.
    second.register(&fed.researcher);
    refused(
        &second,
        &args,
        &format!(
            "{}: masked for researcher 'researcher_1' ({own}), not for this party ({})",
            files[0],
            fp(&second)
        ),
        hint,
    );
    assert!(!Path::new(mean).exists());
    // A version-1 file is refused by name.
    let old = fed.lab.path("old.masked");
    let mut bytes = std::fs::read(&files[0]).expect("read");
    bytes[..8].copy_from_slice(b"SECAGGM1");
    std::fs::write(&old, &bytes).expect("write");
    refused(
        &fed.researcher,
        &[
            "aggregate",
            old.to_str().expect("utf8"),
            &files[1],
            "--out",
            mean,
        ],
        &format!(
            "{}: masked file format version 1, made by an older secagg; this secagg reads only version 3",
            old.display()
        ),
        "ask the node to mask a new update with this secagg version, in a new round",
    );
    assert!(!Path::new(mean).exists());
}

/// One update of 1000 f64 values per node, all inside [-1, 1] (nothing is clipped, so no
/// warning is printed), written as `{prefix}{i}.npy`; with the masked file's path
/// `{prefix}{i}.masked` beside each.
fn small_updates(fed: &Fed, prefix: &str, seed: u64) -> Vec<(PathBuf, PathBuf)> {
    let layout = npy64(1000);
    (0..fed.nodes.len())
        .map(|i| {
            let input = fed.lab.path(&format!("{prefix}{i}.npy"));
            let vals = values(seed + i as u64, 1000).into_iter().map(|x| x / 4.0);
            tensor::write_values(&input, &layout, vals).expect("write");
            (input, fed.lab.path(&format!("{prefix}{i}.masked")))
        })
        .collect()
}

/// `-q` silences the progress lines of `mask`, `aggregate` and `bench` (stderr stays
/// empty on success); without it they report what they did.
#[test]
fn quiet_silences_progress_lines() {
    let fed = federation(3);
    let mut files = Vec::new();
    for (node, (input, out)) in fed.nodes.iter().zip(small_updates(&fed, "q", 40)) {
        let mut args = vec!["-q"];
        args.extend(mask_args(
            input.to_str().expect("utf8"),
            out.to_str().expect("utf8"),
            "1",
            "1",
            &[],
        ));
        let run = node.run(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&run.stderr), "", "mask -q");
        files.push(out.to_str().expect("utf8").to_owned());
    }
    let mean = fed.lab.path("q.npy");
    let mut args = vec!["-q", "aggregate"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--out", mean.to_str().expect("utf8")]);
    let run = fed.researcher.run(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stderr), "", "aggregate -q");
    assert!(mean.exists());
    let run = fed
        .researcher
        .run(&["-q", "bench", "--nodes", "2", "--len", "1000"]);
    assert!(run.status.success());
    assert_eq!(String::from_utf8_lossy(&run.stderr), "", "bench -q");
    assert!(String::from_utf8_lossy(&run.stdout).contains("masking"));
    // Without -q, bench says what it measures.
    let run = fed
        .researcher
        .run(&["bench", "--nodes", "2", "--len", "1000"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("raw PRG"));
}

/// A node that signs a poisoned masked file (one value far outside what a clipped,
/// weighted input can be) cannot move the mean: `aggregate` range-checks every sum
/// against W·L and refuses, writing no mean. Built from the library's own pieces: the
/// attacker is node_2 with its real key, re-signing its own file after adding 2^36 to
/// its first residue. (Fails if `aggregate_files` decodes with `finish` instead of
/// `finish_checked`.)
#[test]
fn a_poisoned_masked_file_cannot_move_the_mean() {
    use secagg::files::masked::{self, Masked};
    let (fed, files) = three_masked("p", 70);
    // node_2 re-signs its own file with one residue pushed far out of range.
    let (me, header, mut words) = open_own_file(&fed.nodes[1], &files[1]);
    words[0] = words[0].wrapping_add(1 << 36);
    let poisoned = Masked {
        header,
        words,
        clipped: 0,
    };
    masked::write_file(&files[1], &poisoned, &me).expect("re-sign");
    let (args, mean) = aggregate_args(&fed, &files, "p.npy");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = fed
        .researcher
        .fails(&args, "the sum is out of range at value #0");
    assert!(err.contains("poisoned"), "{err}");
    assert!(!mean.exists(), "no mean is written");
}

/// Masks three small updates for round 1 and returns the federation and the files.
fn three_masked(prefix: &str, seed: u64) -> (Fed, Vec<PathBuf>) {
    let fed = federation(3);
    let mut files = Vec::new();
    for (node, (input, out)) in fed.nodes.iter().zip(small_updates(&fed, prefix, seed)) {
        node.ok(&mask_args(
            input.to_str().expect("utf8"),
            out.to_str().expect("utf8"),
            "1",
            "1",
            &[],
        ));
        files.push(out);
    }
    (fed, files)
}

/// `aggregate FILES --out <lab>/<name>` as arguments.
fn aggregate_args(fed: &Fed, files: &[PathBuf], name: &str) -> (Vec<String>, PathBuf) {
    let mean = fed.lab.path(name);
    let mut args = vec!["aggregate".to_owned()];
    args.extend(files.iter().map(|p| p.to_str().expect("utf8").to_owned()));
    args.extend(["--out".to_owned(), mean.to_str().expect("utf8").to_owned()]);
    (args, mean)
}

#[test]
fn a_weight_word_altered_on_disk_fails_the_signature_not_the_weight_check() {
    // aggregate reads the weight words before it verifies the files (to decode while it
    // sums); an altered one must still be reported as the alteration it is.
    let (fed, files) = three_masked("ww", 71);
    let mut bytes = std::fs::read(&files[2]).expect("read");
    // magic(8) || u32le hlen || header || u16le slen || header signature || payload.
    let hlen = u32::from_le_bytes(bytes[8..12].try_into().expect("4")) as usize;
    let at = 12 + hlen;
    let slen = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let payload_start = at + 2 + slen;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[12..12 + hlen]).expect("header json");
    let elements = header["elements"].as_u64().expect("elements") as usize;
    let w = 5; // 3 nodes at the default parameters
    assert_eq!(header["modulus"], "2^40");
    let last = payload_start + elements * w - 1;
    bytes[last] ^= 0x80; // the top byte of the last residue: the weight word
    std::fs::write(&files[2], &bytes).expect("write");
    let (args, mean) = aggregate_args(&fed, &files, "ww.npy");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = fed
        .researcher
        .fails(&args, "signature check failed for sender 'node_3'");
    assert!(!err.contains("total weight"), "{err}");
    assert!(!mean.exists(), "no mean is written");
}

#[test]
fn a_re_signed_impossible_weight_is_refused_and_writes_nothing() {
    use secagg::files::masked::{self, Masked};
    let (fed, files) = three_masked("iw", 72);
    let (me, header, mut words) = open_own_file(&fed.nodes[0], &files[0]);
    // node_1 claims a weight far above 3 · max_weight.
    let last = words.len() - 1;
    words[last] = words[last].wrapping_add(1 << 30);
    masked::write_file(
        &files[0],
        &Masked {
            header,
            words,
            clipped: 0,
        },
        &me,
    )
    .expect("re-sign");
    let (args, mean) = aggregate_args(&fed, &files, "iw.npy");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fed.researcher
        .fails(&args, "is invalid (inputs inconsistent or tampered)");
    assert!(!mean.exists(), "no mean is written");
}

/// A node's identity and its own verified masked file, read back as header and words
/// (for tests in which the node re-signs an altered file).
fn open_own_file(
    node: &Party,
    file: &Path,
) -> (
    secagg::pki::identity::Identity,
    secagg::files::masked::Header,
    Vec<u64>,
) {
    use secagg::files::masked::Reader;
    use secagg::pki::identity::Home;
    let me = Home::new(&node.home).load_identity().expect("identity");
    let key = p256::PublicKey::from(me.key.signing_key().verifying_key());
    let mut r = Reader::open(file).expect("open");
    r.authenticate(&key).expect("header");
    let header = r.header().clone();
    let w = header.modulus.word_bytes();
    let mut words: Vec<u64> = Vec::new();
    r.stream(|_, b| {
        for c in b.chunks_exact(w) {
            let mut x = [0u8; 8];
            x[..w].copy_from_slice(c);
            words.push(u64::from_le_bytes(x));
        }
    })
    .expect("read");
    r.verify(&key).expect("honest file verifies");
    (me, header, words)
}

/// The unnamed file a process holds open in `dir` (Linux shows it as
/// `dir/#inode (deleted)`), with its size so far.
#[cfg(target_os = "linux")]
fn unnamed_file_in(pid: u32, dir: &Path) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let unnamed =
                target.starts_with(dir) && target.to_string_lossy().ends_with(" (deleted)");
            // The metadata of the fd link is the open file's own.
            unnamed.then(|| std::fs::metadata(fd.path()).map_or(0, |m| m.len()))
        })
}

/// A masking killed while it writes (masked bytes exist, the journal has not been
/// written) leaves no file under any name in the output's directory and journals
/// nothing, so the same update masks again for the same round.
#[cfg(target_os = "linux")]
#[test]
fn a_mask_killed_while_writing_leaves_no_file_and_journals_nothing() {
    let fed = federation(3);
    let node = &fed.nodes[0];
    let n = 3_000_000u64;
    let input = fed.lab.path("big.npy");
    tensor::write_values(
        &input,
        &npy_of(n, DType::F32),
        values(3, n as usize).into_iter(),
    )
    .expect("write");
    let out_dir = fed.lab.path("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let kind = rustix::fs::statfs(&out_dir).expect("statfs").f_type as u32;
    if !secagg::atomic::LOCAL_FILESYSTEMS.contains(&kind) {
        // mask holds the residues in memory there (tests/stream_update.rs covers it):
        // there is no unnamed file to catch it writing.
        eprintln!("not a local filesystem ({kind:#x}): nothing to kill mid-write");
        return;
    }
    let out = out_dir.join("u.masked");
    let (input, out_s) = (input.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let before = journal(node);
    let mut child = node
        .cmd()
        .args(mask_args(input, out_s, "1", "5", &[]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Caught once a megabyte of masked residues is in its unnamed file.
    let caught = loop {
        if let Some(size) = unnamed_file_in(child.id(), &out_dir).filter(|s| *s > 1 << 20) {
            break size;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the masking ended before it was caught writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert!(
        caught < 5 * (n + 1) + 4096,
        "caught mid-write ({caught} bytes)"
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(journal(node), before, "nothing journaled");
    // Nothing was released: the same update masks for the same round.
    node.ok(&mask_args(input, out_s, "1", "5", &[]));
    assert!(out.exists());
    assert_ne!(journal(node), before);
}

/// An --out that is a directory is refused before anything is journaled (found at the
/// rename, it would use up the round).
#[test]
fn a_directory_as_out_is_refused_before_the_journal() {
    let fed = federation(3);
    let node = &fed.nodes[0];
    let input = fed.lab.path("u.npy");
    tensor::write_values(&input, &npy64(64), values(1, 64).into_iter()).expect("write");
    let out = fed.lab.path("out.masked");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep"), b"x").expect("write");
    let before = journal(node);
    let (input, out_s) = (input.to_str().expect("utf8"), out.to_str().expect("utf8"));
    refused(
        node,
        &mask_args(input, out_s, "1", "5", &[]),
        &format!("cannot write the masked file at {out_s}: is a directory"),
        "check the path and permissions",
    );
    assert_eq!(journal(node), before, "nothing journaled");
    let left: Vec<_> = std::fs::read_dir(fed.lab.dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Nor can a directory that does not exist.
    let missing = fed.lab.path("no/such/dir/u.masked");
    let missing = missing.to_str().expect("utf8");
    let err = refused(
        node,
        &mask_args(input, missing, "1", "5", &[]),
        &format!(
            "cannot write the masked file at {missing}: No such file or directory (os error 2)"
        ),
        "check the path and permissions",
    );
    assert!(!err.contains("round 1 is now used"), "{err}");
    assert_eq!(journal(node), before, "nothing journaled");
    // The same update then masks for the same round.
    let ok = fed.lab.path("u.masked");
    node.ok(&mask_args(input, ok.to_str().expect("utf8"), "1", "5", &[]));
}

/// A registry row whose certificate was swapped for another (valid, self-signed) one
/// while its fingerprint stayed is refused by `mask` before anything is journaled:
/// registered certificates are held to their stored fingerprints.
#[test]
fn a_registry_row_whose_certificate_was_swapped_is_refused() {
    let fed = federation(3);
    let node = &fed.nodes[0];
    let input = fed.lab.path("u.npy");
    tensor::write_values(&input, &npy64(64), values(1, 64).into_iter()).expect("write");
    let conn = rusqlite::Connection::open(node.home.join("registry.sqlite")).expect("open");
    conn.execute(
        "UPDATE peers SET cert_der = (SELECT cert_der FROM peers WHERE party_id = 'node_3')
         WHERE party_id = 'node_2'",
        [],
    )
    .expect("swap");
    drop(conn);
    let before = journal(node);
    let out = fed.lab.path("u.masked");
    let (input, out_s) = (input.to_str().expect("utf8"), out.to_str().expect("utf8"));
    refused(
        node,
        &mask_args(input, out_s, "1", "5", &[]),
        &format!(
            "registered certificate of 'node_2' is invalid: the stored certificate does not match its stored fingerprint {}",
            fp(&fed.nodes[1])
        ),
        "delete and re-register 'node_2'",
    );
    assert_eq!(journal(node), before);
    assert!(!out.exists());
}
