//! Hostile files, homes and parameters through the real binary (issue 11): every
//! refusal is one `error:` line, a `hint:` line, exit code 1, and nothing changed on
//! disk or in the registry.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{Lab, Party, cert_with_window, openssl, values};
use secagg::files::tensor;
use secagg::layout::{Container, DType, Layout, TensorSpec};

/// A researcher and two nodes that registered each other.
struct Fed {
    lab: Lab,
    researcher: Party,
    nodes: Vec<Party>,
}

fn federation() -> Fed {
    let lab = Lab::new();
    let researcher = lab.party("researcher_1", "researcher", 7000);
    let nodes: Vec<Party> = (1..=2)
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

fn npy_update(lab: &Lab, name: &str, n: usize) -> PathBuf {
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![n as u64],
            dtype: DType::F32,
        }],
    };
    let path = lab.path(name);
    tensor::write_values(&path, &layout, values(7, n).into_iter()).expect("write");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn mask(node: &Party, input: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "mask",
        "--input",
        s(input),
        "--federation",
        "fed",
        "--round",
        "1",
        "--participants",
        "node_1,node_2",
        "--weight",
        "3",
        "--out",
        s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    let _ = node;
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every file under `dir` with its bytes (to prove nothing changed).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

/// A `.npy` file whose header declares `shape` (f4) but which holds `data` bytes.
fn forged_npy(path: &Path, shape: &str, data: usize) {
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data));
    std::fs::write(path, bytes).expect("write npy");
}

// ---------------------------------------------------------------- 1. sizes

#[test]
fn npy_declaring_huge_shapes_is_refused_before_anything_is_allocated() {
    let fed = federation();
    let node = &fed.nodes[0];
    let out = fed.lab.path("m.masked");
    let before = snapshot(&node.home);
    for (shape, needle) in [
        // 10^12 elements: 4 TB declared, 16 bytes held.
        (
            "(1000000, 1000000)",
            "the data is shorter than its header says (truncated file?): the header declares 4000000000000 bytes of values, the file holds 16",
        ),
        // 2^62 x 4 overflows 64 bits.
        (
            "(4611686018427387904, 4)",
            "is too large: its size overflows 64 bits",
        ),
        (
            "(99999999999999999999999,)",
            "a dimension does not fit in 64 bits",
        ),
    ] {
        let input = fed.lab.path("huge.npy");
        forged_npy(&input, shape, 16);
        let t = Instant::now();
        let err = node.fails(&refs(&mask(node, &input, &out, &[])), needle);
        assert!(err.contains("hint: re-export the update"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(20));
        assert!(!out.exists());
        assert_eq!(snapshot(&node.home), before, "{shape}: the home changed");
    }
    // A header declaring fewer bytes than the file holds is refused too.
    let input = fed.lab.path("long.npy");
    forged_npy(&input, "(2,)", 16);
    node.fails(
        &refs(&mask(node, &input, &out, &[])),
        "the file holds 16 bytes of data but its header declares 8",
    );
    // The journal was not touched: the same round still masks.
    let good = npy_update(&fed.lab, "good.npy", 5);
    node.ok(&refs(&mask(node, &good, &out, &[])));
}

#[test]
fn safetensors_lying_about_sizes_is_refused() {
    let fed = federation();
    let node = &fed.nodes[0];
    let out = fed.lab.path("m.masked");
    let before = snapshot(&node.home);
    let st = |json: &str, data: usize, declared_len: Option<u64>| {
        let path = fed.lab.path(&format!("x{}.safetensors", json.len() + data));
        let mut b = declared_len
            .unwrap_or(json.len() as u64)
            .to_le_bytes()
            .to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        std::fs::write(&path, b).expect("write");
        path
    };
    for (path, needle) in [
        (
            st(
                r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#,
                16,
                None,
            ),
            "the data is shorter than its header says (truncated file?): the header declares 4000000000000 bytes of values, the file holds 16",
        ),
        (
            st(
                r#"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#,
                16,
                None,
            ),
            "is too large: its size overflows 64 bits",
        ),
        (
            st(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                Some(1 << 40),
            ),
            "header of 1099511627776 bytes is too large for a file of",
        ),
        (
            st(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                None,
            ),
            "data offsets overlap or leave a gap",
        ),
    ] {
        let err = node.fails(&refs(&mask(node, &path, &out, &[])), needle);
        assert!(err.contains("hint: "), "{err}");
        assert!(!out.exists());
        assert_eq!(snapshot(&node.home), before);
    }
}

/// Masks a 5-value update on both nodes; returns the two masked files.
fn masked_pair(fed: &Fed) -> Vec<PathBuf> {
    fed.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let input = npy_update(&fed.lab, &format!("u{i}.npy"), 5);
            let out = fed.lab.path(&format!("node_{}.masked", i + 1));
            node.ok(&refs(&mask(node, &input, &out, &[])));
            out
        })
        .collect()
}

#[test]
fn aggregate_refuses_a_forged_huge_sparse_masked_file_without_allocating_it() {
    let fed = federation();
    let files = masked_pair(&fed);
    // Forge node_2's file: the same header but a vector of 2^36 residues (hundreds of
    // GiB), in a sparse file exactly as long as that header says.
    let real = std::fs::read(&files[1]).expect("read");
    let hlen = u32::from_le_bytes(real[8..12].try_into().expect("4")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&real[12..12 + hlen]).expect("json");
    let n: u64 = 1 << 36;
    header["layout"]["tensors"][0]["shape"] = serde_json::json!([n]);
    header["elements"] = serde_json::json!(n + 1);
    let json = serde_json::to_vec(&header).expect("json");
    let mut head = b"SECAGGM3".to_vec();
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&json);
    // Keep the real header signature: it no longer matches.
    let hsig_len = u16::from_le_bytes([real[12 + hlen], real[13 + hlen]]) as usize;
    head.extend_from_slice(&real[12 + hlen..14 + hlen + hsig_len]);
    let forged = fed.lab.path("node_2.masked");
    std::fs::write(&forged, &head).expect("write");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&forged)
        .expect("open");
    let word: u64 = header["modulus"]
        .as_str()
        .and_then(|m| m.strip_prefix("2^"))
        .and_then(|b| b.parse::<u64>().ok())
        .expect("modulus 2^k")
        / 8;
    f.set_len(head.len() as u64 + (n + 1) * word + 2 + 70)
        .expect("sparse");
    drop(f);
    let mean = fed.lab.path("mean.npy");
    let before = snapshot(&fed.researcher.home);
    let t = Instant::now();
    let err = fed.researcher.fails(
        &["aggregate", s(&files[0]), s(&forged), "--out", s(&mean)],
        "signature check failed for sender 'node_2'",
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        err.contains("hint: do not use this file; ask 'node_2' to send it again"),
        "{err}"
    );
    assert!(!mean.exists());
    assert_eq!(snapshot(&fed.researcher.home), before);
    // A header whose count does not match the file's length is refused as malformed.
    let short = fed.lab.path("short.masked");
    std::fs::write(&short, &real[..real.len() - 100]).expect("write");
    fed.researcher.fails(
        &["aggregate", s(&files[0]), s(&short), "--out", s(&mean)],
        "not a valid secagg masked file: the header declares 30 payload bytes (6 residues of 5 bytes), but the file holds",
    );
}

// ---------------------------------------------------------------- 2. registry and home

#[test]
fn an_empty_or_foreign_registry_is_refused_and_left_byte_identical() {
    let lab = Lab::new();
    let node = lab.party("node_1", "node", 7001);
    let other = lab.party("node_2", "node", 7002);
    let pem = lab.path("node_2.pem");
    std::fs::write(&pem, other.cert_pem()).expect("write");
    let reg = node.home.join("registry.sqlite");
    let foreign = lab.path("foreign.sqlite");
    {
        let c = rusqlite::Connection::open(&foreign).expect("sqlite");
        c.execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');")
            .expect("create");
    }
    let foreign_bytes = std::fs::read(&foreign).expect("read");
    for (content, needle) in [
        (
            Vec::new(),
            "is corrupt or not a secagg registry: the file is empty",
        ),
        (
            foreign_bytes,
            "is corrupt or not a secagg registry: an SQLite database with other tables (notes) and no secagg schema",
        ),
        (
            b"this is not a database at all, just some text".repeat(40),
            "is corrupt or not a secagg registry",
        ),
    ] {
        std::fs::write(&reg, &content).expect("write registry");
        let before = snapshot(&node.home);
        for args in [
            vec!["certificate", "list"],
            vec!["certificate", "list", "--json"],
            vec!["certificate", "delete", "--party-id", "node_2", "--yes"],
            vec![
                "certificate",
                "register",
                "--public-key",
                s(&pem),
                "--party-id",
                "node_2",
                "--ip",
                "127.0.0.1",
                "--port",
                "7002",
                "--yes",
            ],
        ] {
            let err = node.fails(&args, needle);
            assert!(err.contains("hint: secagg will not overwrite it"), "{err}");
            assert_eq!(snapshot(&node.home), before, "{args:?} changed the home");
        }
    }
}

#[test]
fn certificate_list_opens_the_registry_read_only() {
    let lab = Lab::new();
    let node = lab.party("node_1", "node", 7001);
    let other = lab.party("node_2", "node", 7002);
    node.register(&other);
    let before = snapshot(&node.home);
    let set_mode = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    set_mode(&node.home.join("registry.sqlite"), 0o444);
    set_mode(&node.home, 0o555);
    let listed = node.list_json();
    let text = node.ok(&["certificate", "list"]);
    set_mode(&node.home, 0o700);
    set_mode(&node.home.join("registry.sqlite"), 0o600);
    assert_eq!(listed[0]["party_id"], "node_2");
    assert!(text.contains("node_2"), "{text}");
    // Listing wrote nothing: no -wal or -shm file, the same bytes.
    assert_eq!(snapshot(&node.home), before);
}

#[test]
fn every_command_that_uses_a_home_refuses_one_that_does_not_exist() {
    let lab = Lab::new();
    let missing = Party {
        home: lab.path("no-such-home"),
    };
    let f = lab.path("x");
    let fx = s(&f);
    let needle = format!("home directory {} does not exist", missing.home.display());
    for args in [
        vec!["certificate", "list"],
        vec!["certificate", "registration-instructions"],
        vec![
            "certificate",
            "register",
            "--public-key",
            fx,
            "--party-id",
            "node_2",
            "--ip",
            "127.0.0.1",
            "--port",
            "7002",
            "--yes",
        ],
        vec!["certificate", "delete", "--party-id", "node_2", "--yes"],
        vec![
            "mask",
            "--input",
            "u.npy",
            "--federation",
            "fed",
            "--round",
            "1",
            "--participants",
            "a,b",
            "--weight",
            "1",
            "--out",
            fx,
        ],
        vec!["aggregate", fx, "--out", "mean.npy"],
        vec![
            "round",
            "serve",
            "--federation",
            "fed",
            "--round",
            "1",
            "--nodes",
            "a,b",
            "--out",
            "mean.npy",
        ],
        vec!["round", "join", "--input", "u.npy"],
    ] {
        let out = missing.run(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(2) {
            // A usage error in these arguments: not the point of this test.
            panic!("{args:?}: usage error:\n{err}");
        }
        let err = missing.fails(&args, &needle);
        assert!(
            err.contains(
                "hint: run 'secagg certificate generate' to create this party's home, or check --home (or SECAGG_HOME)"
            ),
            "{args:?}: {err}"
        );
        assert!(!missing.home.exists(), "{args:?} created the home");
    }
    // `bench` and `completions` need no home.
    missing.ok(&["completions", "bash"]);
    missing.ok(&["bench", "--nodes", "2", "--len", "1000"]);
    assert!(!missing.home.exists());
    // `certificate generate` creates it.
    missing.ok(&["certificate", "generate", "--party-id", "node_9"]);
    assert!(missing.home.join("cert.pem").exists());
}

// ---------------------------------------------------------------- 3. clip and bits

#[test]
fn clip_and_bits_outside_their_range_are_refused_naming_the_range() {
    let fed = federation();
    let node = &fed.nodes[0];
    let input = npy_update(&fed.lab, "u.npy", 5);
    let out = fed.lab.path("m.masked");
    let before = snapshot(&node.home);
    for (extra, needle, hint) in [
        (
            vec!["--clip", "1e300"],
            "clip 1e300 is out of range: it must be a finite number from 1e-6 to 1e6",
            "hint: pass --clip from 1e-6 to 1e6",
        ),
        (
            vec!["--clip", "1e-9"],
            "clip 1e-9 is out of range",
            "hint: pass --clip from 1e-6 to 1e6",
        ),
        (
            vec!["--clip", "NaN"],
            "clip NaN is out of range",
            "hint: pass --clip from 1e-6 to 1e6",
        ),
        (
            vec!["--bits", "1"],
            "bits 1 is out of range: it must be from 2 to 32",
            "hint: pass --bits from 2 to 32",
        ),
    ] {
        let err = node.fails(&refs(&mask(node, &input, &out, &extra)), needle);
        assert!(err.contains(hint), "{err}");
        assert!(!out.exists());
        assert_eq!(snapshot(&node.home), before);
    }
    // The ends of the range work.
    node.ok(&refs(&mask(node, &input, &out, &["--clip", "1e6"])));
}

// ---------------------------------------------------------------- 4. peers' words

#[test]
fn control_characters_in_a_certificate_name_never_reach_the_terminal() {
    let lab = Lab::new();
    let node = lab.party("node_1", "node", 7001);
    let esc = "evil\x1b[31mred\x1b]0;owned\x07";
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "30",
            "-utf8",
            "-subj",
            &format!("/CN={esc}"),
        ],
        lab.dir.path(),
    );
    let before = snapshot(&node.home);
    let err = node.fails(
        &[
            "certificate",
            "register",
            "--public-key",
            s(&lab.path("c.pem")),
            "--party-id",
            "node_2",
            "--ip",
            "127.0.0.1",
            "--port",
            "7002",
            "--yes",
        ],
        "certificate CN 'evil\\u{1b}[31mred\\u{1b}]0;owned\\u{7}' does not match party id 'node_2'",
    );
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert_eq!(snapshot(&node.home), before);
}

// ---------------------------------------------------------------- 6. expired peers

#[test]
fn mask_and_aggregate_refuse_a_peer_whose_certificate_expired() {
    let fed = federation();
    let files = masked_pair(&fed);
    let now = SystemTime::now();
    let expired = cert_with_window(
        "node_2",
        now - Duration::from_secs(86_400 * 30),
        now - Duration::from_secs(86_400),
    );
    let pem = fed.lab.path("expired.pem");
    std::fs::write(&pem, &expired).expect("write");
    let reregister = |p: &Party| {
        p.ok(&["certificate", "delete", "--party-id", "node_2", "--yes"]);
        p.ok(&[
            "certificate",
            "register",
            "--public-key",
            s(&pem),
            "--party-id",
            "node_2",
            "--ip",
            "127.0.0.1",
            "--port",
            "7002",
            "--yes",
            "--allow-expired",
        ]);
    };
    reregister(&fed.researcher);
    reregister(&fed.nodes[0]);
    let list = fed.researcher.list_json();
    let date = list[1]["not_after"].as_str().expect("date").to_owned();
    let needle = format!("the registered certificate of 'node_2' expired on {date}");
    let hint = "hint: ask 'node_2' to renew its certificate";

    let mean = fed.lab.path("mean.npy");
    let before = snapshot(&fed.researcher.home);
    let err = fed.researcher.fails(
        &["aggregate", s(&files[0]), s(&files[1]), "--out", s(&mean)],
        &needle,
    );
    assert!(err.contains(hint), "{err}");
    assert!(!mean.exists());
    assert_eq!(snapshot(&fed.researcher.home), before);

    let node = &fed.nodes[0];
    let input = npy_update(&fed.lab, "again.npy", 5);
    let out = fed.lab.path("again.masked");
    let before = snapshot(&node.home);
    let mut args = mask(node, &input, &out, &[]);
    args[6] = "2".into(); // round 2: round 1 is journaled
    let err = node.fails(&refs(&args), &needle);
    assert!(err.contains(hint), "{err}");
    assert!(!out.exists());
    assert_eq!(snapshot(&node.home), before);
}
