//! The certificate workflow, driven through the real binary in temporary homes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{Lab, Party, bin, cert_with_window, openssl, valid_cert};

/// Splits the text instructions into (pem file name, PEM, fingerprint line, command).
fn parse_instructions(text: &str) -> (String, String, String, String) {
    let begin = text.find("-----BEGIN CERTIFICATE-----").expect("pem begin");
    let end_marker = "-----END CERTIFICATE-----\n";
    let end = text.find(end_marker).expect("pem end") + end_marker.len();
    let pem = text[begin..end].to_owned();
    let file = text
        .split_whitespace()
        .find(|w| w.ends_with(".pem:"))
        .expect("file name")
        .trim_end_matches(':')
        .to_owned();
    let fp = text
        .lines()
        .find(|l| l.starts_with("sha256 Fingerprint="))
        .expect("fingerprint line")
        .to_owned();
    let command = text
        .lines()
        .find(|l| l.starts_with("secagg certificate register "))
        .expect("command line")
        .to_owned();
    (file, pem, fp, command)
}

/// Follows a party's printed instructions at a peer: save the PEM under the name the
/// instructions give, then run the printed command verbatim in a shell.
fn follow_instructions(lab: &Lab, from: &Party, to: &Party) {
    let text = from.ok(&["certificate", "registration-instructions"]);
    let (file, pem, fp_line, command) = parse_instructions(&text);
    let inbox = lab.path(&format!(
        "inbox-{}",
        to.home.file_name().and_then(|n| n.to_str()).expect("name")
    ));
    std::fs::create_dir_all(&inbox).expect("inbox");
    std::fs::write(inbox.join(&file), &pem).expect("save pem");
    // The fingerprint shown is exactly openssl's.
    assert_eq!(
        openssl(
            &["x509", "-noout", "-fingerprint", "-sha256", "-in", &file],
            &inbox
        )
        .trim(),
        fp_line
    );
    let path = format!(
        "{}:{}",
        bin().parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(&inbox)
        .env("PATH", path)
        .env("SECAGG_HOME", &to.home)
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn researcher_and_three_nodes_exchange_by_printed_instructions() {
    let lab = Lab::new();
    let researcher = lab.party("researcher_1", "researcher", 7000);
    let nodes: Vec<Party> = (1..=3)
        .map(|i| lab.party(&format!("node_{i}"), "node", 7000 + i))
        .collect();
    for n in &nodes {
        follow_instructions(&lab, n, &researcher);
        follow_instructions(&lab, &researcher, n);
        for m in nodes.iter().filter(|m| m.home != n.home) {
            follow_instructions(&lab, m, n);
        }
    }
    let listed = researcher.list_json();
    let rows = listed.as_array().expect("array");
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        let n = i + 1;
        assert_eq!(row["party_id"], format!("node_{n}"));
        assert_eq!(row["role"], "node");
        assert_eq!(row["ip"], "127.0.0.1");
        assert_eq!(row["port"], 7000 + n);
        assert_eq!(row["fingerprint"], nodes[i].instructions()["fingerprint"]);
        for key in ["not_after", "registered_at"] {
            assert!(
                row[key].as_str().is_some_and(|s| s.ends_with('Z')),
                "{key}: {row}"
            );
        }
    }
    let node1 = nodes[0].list_json();
    let ids: Vec<&str> = node1
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["party_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["node_2", "node_3", "researcher_1"]);
    assert_eq!(node1[2]["role"], "researcher");

    let table = researcher.ok(&["certificate", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("PARTY ID"), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[1].starts_with("node_1") && lines[1].contains(" ok"),
        "{table}"
    );
}

#[test]
fn generated_identity_files_and_openssl_interop() {
    let lab = Lab::new();
    let p = lab.party("node_a", "node", 5000);
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        std::fs::metadata(p.home.join(f))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    assert_eq!(
        std::fs::metadata(&p.home)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let verify = openssl(&["verify", "-CAfile", "cert.pem", "cert.pem"], &p.home);
    assert_eq!(verify.trim(), "cert.pem: OK");
    let text = openssl(&["x509", "-noout", "-text", "-in", "cert.pem"], &p.home);
    for needle in [
        "Signature Algorithm: ecdsa-with-SHA256",
        "Subject: CN = node_a",
        "NIST CURVE: P-256",
        "CA:FALSE",
        "Digital Signature, Key Agreement",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "IP Address:127.0.0.1",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    let fp = openssl(
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            "cert.pem",
        ],
        &p.home,
    );
    let text = p.ok(&["certificate", "registration-instructions"]);
    assert!(text.lines().any(|l| l == fp.trim()), "{text}");
    assert_eq!(
        format!(
            "sha256 Fingerprint={}",
            p.instructions()["fingerprint"].as_str().expect("fp")
        ),
        fp.trim()
    );
    // The key is PKCS#8 and openssl reads it.
    openssl(&["pkey", "-in", "key.pem", "-noout"], &p.home);

    // An openssl-made P-256 certificate registers.
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
            "o.key",
            "-out",
            "o.pem",
            "-subj",
            "/CN=hospital-x",
            "-days",
            "30",
        ],
        lab.dir.path(),
    );
    let ofp = openssl(
        &["x509", "-noout", "-fingerprint", "-sha256", "-in", "o.pem"],
        lab.dir.path(),
    );
    let ofp = ofp.trim().trim_start_matches("sha256 Fingerprint=");
    let o = lab.path("o.pem");
    p.ok(&[
        "certificate",
        "register",
        "--public-key",
        o.to_str().expect("utf8"),
        "--party-id",
        "hospital-x",
        "--ip",
        "hospital-x.example.org",
        "--port",
        "443",
        "--fingerprint",
        ofp,
    ]);
    assert_eq!(p.list_json()[0]["fingerprint"], ofp);
    assert_eq!(p.list_json()[0]["ip"], "hospital-x.example.org");
}

#[test]
fn generate_refuses_to_overwrite_and_force_keeps_backup() {
    let lab = Lab::new();
    let p = lab.party("node_a", "node", 5000);
    let before = p.cert_pem();
    p.fails(
        &["certificate", "generate", "--party-id", "node_a"],
        "already holds an identity",
    );
    assert_eq!(p.cert_pem(), before);
    // --force without --yes and without a terminal refuses instead of hanging.
    p.fails(
        &["certificate", "generate", "--party-id", "node_a", "--force"],
        "stdin is not a terminal",
    );
    assert_eq!(p.cert_pem(), before);
    p.ok(&[
        "certificate",
        "generate",
        "--party-id",
        "node_b",
        "--force",
        "--yes",
    ]);
    assert_ne!(p.cert_pem(), before);
    let names: Vec<String> = std::fs::read_dir(&p.home)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let bak = names
        .iter()
        .find(|n| n.starts_with("cert.pem.bak-"))
        .expect("cert backup");
    assert_eq!(
        std::fs::read_to_string(p.home.join(bak)).expect("bak"),
        before
    );
    assert!(
        names.iter().any(|n| n.starts_with("key.pem.bak-")),
        "{names:?}"
    );
    assert_eq!(p.instructions()["party_id"], "node_b");
    // Bad generate arguments.
    let q = Party {
        home: lab.path("q"),
    };
    q.fails(
        &["certificate", "generate", "--party-id", "bad id"],
        "invalid party id",
    );
    q.fails(
        &["certificate", "generate", "--ip", "999.1.1.1"],
        "invalid address",
    );
    q.fails(
        &["certificate", "generate", "--port", "0"],
        "invalid port 0",
    );
    assert!(!q.home.join("key.pem").exists());
    let default = lab.path("d");
    let d = Party { home: default };
    d.ok(&["certificate", "generate", "--role", "researcher"]);
    let id = d.instructions()["party_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(
        id.starts_with("researcher_") && id.len() == "researcher_".len() + 36,
        "{id}"
    );
}

#[test]
fn instructions_without_identity_fail_with_hint() {
    let lab = Lab::new();
    let p = Party {
        home: lab.path("empty"),
    };
    std::fs::create_dir(&p.home).expect("mkdir");
    p.fails(&["certificate", "registration-instructions"], "no identity");
}

/// Every rejected input leaves `list --json` exactly as it was.
#[test]
fn bad_inputs_are_rejected_and_registry_unchanged() {
    let lab = Lab::new();
    let me = lab.party("researcher_1", "researcher", 7000);
    let other = lab.party("node_1", "node", 7001);
    me.register(&other);
    let d = lab.dir.path();
    let w = |name: &str, bytes: &[u8]| {
        let p = lab.path(name);
        std::fs::write(&p, bytes).expect("write");
        p.to_str().expect("utf8").to_owned()
    };

    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let good = w("good.pem", valid_cert("node_2").as_bytes());
    let two = w(
        "two.pem",
        format!("{}{}", valid_cert("node_2"), valid_cert("node_2")).as_bytes(),
    );
    let empty = w("empty.pem", b"");
    let garbage = w(
        "garbage.pem",
        &(0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    let privkey = w(
        "key.pem",
        &std::fs::read(other.home.join("key.pem")).expect("key"),
    );
    let expired = w(
        "expired.pem",
        cert_with_window("node_2", now - 10 * day, now - day).as_bytes(),
    );
    let future = w(
        "future.pem",
        cert_with_window("node_2", now + day, now + 10 * day).as_bytes(),
    );
    for (name, alg) in [("rsa", "rsa:2048"), ("p384", "ec"), ("ed25519", "ed25519")] {
        let mut args = vec!["req", "-x509", "-newkey", alg];
        if name == "p384" {
            args.extend(["-pkeyopt", "ec_paramgen_curve:P-384"]);
        }
        let out = format!("{name}.pem");
        let key = format!("{name}.key");
        args.extend([
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &out,
            "-subj",
            "/CN=node_2",
            "-days",
            "30",
        ]);
        openssl(&args, d);
    }
    let tampered = {
        let pem = valid_cert("node_2");
        let block = pem::parse(pem.as_bytes()).expect("pem");
        let mut der = block.contents().to_vec();
        let n = der.len();
        der[n - 3] ^= 0x55;
        w(
            "tampered.pem",
            pem::encode(&pem::Pem::new("CERTIFICATE", der)).as_bytes(),
        )
    };
    let own = me.home.join("cert.pem").to_str().expect("utf8").to_owned();
    let other_again = w("node_1_again.pem", other.cert_pem().as_bytes());
    let missing = lab.path("nope.pem").to_str().expect("utf8").to_owned();

    let reg = |file: &str, id: &str, ip: &str, port: &str| -> Vec<String> {
        [
            "certificate",
            "register",
            "--public-key",
            file,
            "--party-id",
            id,
            "--ip",
            ip,
            "--port",
            port,
            "--yes",
        ]
        .map(String::from)
        .to_vec()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (reg(&empty, "node_2", "127.0.0.1", "7002"), "not a PEM file"),
        (
            reg(&garbage, "node_2", "127.0.0.1", "7002"),
            "not a PEM file",
        ),
        (
            reg(&privkey, "node_2", "127.0.0.1", "7002"),
            "labelled 'PRIVATE KEY', not 'CERTIFICATE'",
        ),
        (
            reg(&two, "node_2", "127.0.0.1", "7002"),
            "holds 2 PEM blocks",
        ),
        (
            reg(
                &lab.path("rsa.pem").to_string_lossy(),
                "node_2",
                "127.0.0.1",
                "7002",
            ),
            "key is RSA; secagg needs P-256",
        ),
        (
            reg(
                &lab.path("p384.pem").to_string_lossy(),
                "node_2",
                "127.0.0.1",
                "7002",
            ),
            "uses curve P-384",
        ),
        (
            reg(
                &lab.path("ed25519.pem").to_string_lossy(),
                "node_2",
                "127.0.0.1",
                "7002",
            ),
            "key is Ed25519",
        ),
        (
            reg(&expired, "node_2", "127.0.0.1", "7002"),
            "certificate expired on",
        ),
        (
            reg(&future, "node_2", "127.0.0.1", "7002"),
            "not valid before",
        ),
        (
            reg(&tampered, "node_2", "127.0.0.1", "7002"),
            "signature does not verify",
        ),
        (
            reg(&good, "node_3", "127.0.0.1", "7002"),
            "CN 'node_2' does not match party id 'node_3'",
        ),
        (
            reg(&own, "researcher_1", "127.0.0.1", "7002"),
            "this party's own certificate",
        ),
        (
            reg(&other_again, "node_1", "127.0.0.1", "7002"),
            "party id 'node_1' is already registered",
        ),
        (
            reg(&good, "bad id!", "127.0.0.1", "7002"),
            "invalid party id 'bad id!'",
        ),
        (
            reg(&good, "node_2", "999.1.1.1", "7002"),
            "invalid address '999.1.1.1'",
        ),
        (
            reg(&good, "node_2", "no spaces.org", "7002"),
            "invalid address",
        ),
        (reg(&good, "node_2", "127.0.0.1", "0"), "invalid port 0"),
        (
            reg(&good, "node_2", "127.0.0.1", "70000"),
            "invalid port 70000",
        ),
        (
            reg(&missing, "node_2", "127.0.0.1", "7002"),
            "cannot read certificate file",
        ),
    ];
    let before = me.list_json();
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        me.fails(&args, needle);
        assert_eq!(me.list_json(), before, "registry changed after {args:?}");
    }

    // The same certificate under a second id (CN check relaxed to reach the fingerprint check).
    me.fails(
        &[
            "certificate",
            "register",
            "--public-key",
            &other_again,
            "--party-id",
            "node_9",
            "--ip",
            "127.0.0.1",
            "--port",
            "7009",
            "--yes",
            "--allow-cn-mismatch",
        ],
        "already registered as 'node_1'",
    );
    // A wrong --fingerprint.
    me.fails(
        &[
            "certificate",
            "register",
            "--public-key",
            &good,
            "--party-id",
            "node_2",
            "--ip",
            "127.0.0.1",
            "--port",
            "7002",
            "--fingerprint",
            &"AB:".repeat(31).to_string().add_last("CD"),
        ],
        "fingerprint mismatch",
    );
    // No terminal and neither --yes nor --fingerprint: fails at once.
    me.fails(
        &[
            "certificate",
            "register",
            "--public-key",
            &good,
            "--party-id",
            "node_2",
            "--ip",
            "127.0.0.1",
            "--port",
            "7002",
        ],
        "stdin is not a terminal",
    );
    // Delete: unknown id, and no confirmation without a terminal.
    me.fails(
        &["certificate", "delete", "--party-id", "node_7", "--yes"],
        "no party 'node_7'",
    );
    me.fails(
        &["certificate", "delete", "--party-id", "node_1"],
        "stdin is not a terminal",
    );
    assert_eq!(me.list_json(), before);

    // Expired is accepted only when asked for.
    me.ok(&[
        "certificate",
        "register",
        "--public-key",
        &expired,
        "--party-id",
        "node_2",
        "--ip",
        "127.0.0.1",
        "--port",
        "7002",
        "--yes",
        "--allow-expired",
    ]);
    let rows = me.list_json();
    assert_eq!(rows[1]["status"], "expired");
    assert!(me.ok(&["certificate", "list"]).contains("EXPIRED"));
    // --upsert replaces.
    me.ok(&[
        "certificate",
        "register",
        "--public-key",
        &good,
        "--party-id",
        "node_2",
        "--ip",
        "10.1.2.3",
        "--port",
        "7002",
        "--yes",
        "--upsert",
    ]);
    let rows = me.list_json();
    assert_eq!(rows[1]["ip"], "10.1.2.3");
    assert_eq!(rows[1]["status"], "ok");
    me.ok(&["certificate", "delete", "--party-id", "node_2", "--yes"]);
    assert_eq!(me.list_json(), before);
}

trait AddLast {
    fn add_last(self, s: &str) -> String;
}
impl AddLast for String {
    fn add_last(mut self, s: &str) -> String {
        self.push_str(s);
        self
    }
}

#[test]
fn corrupt_registry_is_reported_and_kept() {
    let lab = Lab::new();
    let me = lab.party("researcher_1", "researcher", 7000);
    let node = lab.party("node_1", "node", 7001);
    let junk: Vec<u8> = b"this is not sqlite"
        .iter()
        .cycle()
        .take(8192)
        .copied()
        .collect();
    std::fs::write(me.home.join("registry.sqlite"), &junk).expect("write");
    me.fails(&["certificate", "list", "--json"], "is corrupt");
    let pem = lab.path("n.pem");
    std::fs::write(&pem, node.cert_pem()).expect("write");
    me.fails(
        &[
            "certificate",
            "register",
            "--public-key",
            pem.to_str().expect("utf8"),
            "--party-id",
            "node_1",
            "--ip",
            "127.0.0.1",
            "--port",
            "7001",
            "--yes",
        ],
        "is corrupt",
    );
    assert_eq!(
        std::fs::read(me.home.join("registry.sqlite")).expect("read"),
        junk
    );
}

/// Makes a directory unwritable even for root (chattr +i), or by mode for other users.
struct ReadOnly<'a>(&'a std::path::Path);
impl<'a> ReadOnly<'a> {
    fn new(dir: &'a std::path::Path) -> ReadOnly<'a> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        }
        assert!(
            std::fs::write(dir.join("probe"), b"x").is_err(),
            "could not make {} read-only",
            dir.display()
        );
        ReadOnly(dir)
    }
}
impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(0o700));
    }
}

#[test]
fn read_only_home_is_reported() {
    let lab = Lab::new();
    let me = lab.party("researcher_1", "researcher", 7000);
    let node = lab.party("node_1", "node", 7001);
    let second = lab.party("node_2", "node", 7002);
    me.register(&node);
    let before = me.list_json();
    let pem = lab.path("n2.pem");
    std::fs::write(&pem, second.cert_pem()).expect("write");
    {
        let _ro = ReadOnly::new(&me.home);
        me.fails(
            &[
                "certificate",
                "register",
                "--public-key",
                pem.to_str().expect("utf8"),
                "--party-id",
                "node_2",
                "--ip",
                "127.0.0.1",
                "--port",
                "7002",
                "--yes",
            ],
            "read-only",
        );
        me.fails(
            &[
                "certificate",
                "generate",
                "--force",
                "--yes",
                "--party-id",
                "x",
            ],
            "cannot write",
        );
    }
    assert_eq!(me.list_json(), before);
    assert_eq!(me.instructions()["party_id"], "researcher_1");
}

#[test]
fn twenty_concurrent_registers_all_land() {
    let lab = Lab::new();
    let me = lab.party("researcher_1", "researcher", 7000);
    let files: Vec<(String, String)> = (0..20)
        .map(|i| {
            let id = format!("node_{i:02}");
            let path = lab.path(&format!("{id}.pem"));
            std::fs::write(&path, valid_cert(&id)).expect("write");
            (id, path.to_str().expect("utf8").to_owned())
        })
        .collect();
    let children: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (id, path))| {
            me.cmd()
                .args([
                    "certificate",
                    "register",
                    "--public-key",
                    path,
                    "--party-id",
                    id,
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    &(8000 + i).to_string(),
                    "--yes",
                ])
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = me.list_json();
    let ids: Vec<&str> = rows
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["party_id"].as_str().expect("id"))
        .collect();
    let expected: Vec<&str> = files.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, expected);
}

#[test]
fn usage_errors_exit_2_and_completions_work() {
    let lab = Lab::new();
    let p = Party {
        home: lab.path("p"),
    };
    let out = p.run(&["certificate", "register", "--party-id", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = p.run(&["certificate", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let bash = p.ok(&["completions", "bash"]);
    assert!(bash.contains("registration-instructions"), "{bash}");
    let help = p.ok(&["certificate", "register", "--help"]);
    assert!(help.contains("--fingerprint <FP>"), "{help}");
}
