//! Federation rosters, `certificate renew` and `man`, driven through the real binary in
//! temporary homes. Every refusal also checks that the registry did not change.

mod common;

use std::path::PathBuf;

use common::{Lab, Party, openssl, valid_cert};
use secagg::pki::certificate::PeerCertificate;

/// A researcher and `n` nodes with identities, and each node's instructions in a file.
struct Fed {
    lab: Lab,
    researcher: Party,
    nodes: Vec<Party>,
}

impl Fed {
    fn new(n: u16) -> Fed {
        let lab = Lab::new();
        let researcher = lab.party("researcher", "researcher", 7000);
        let nodes = (1..=n)
            .map(|i| lab.party(&format!("node_{i}"), "node", 7000 + i))
            .collect();
        let fed = Fed {
            lab,
            researcher,
            nodes,
        };
        for i in 1..=n as usize {
            fed.save_instructions(i);
        }
        fed
    }

    /// Saves node i's instructions as `node_i.txt` in the lab (node 2's as `--json`,
    /// which `federation create` reads too); returns the path.
    fn save_instructions(&self, i: usize) -> PathBuf {
        let args: &[&str] = if i == 2 {
            &["certificate", "registration-instructions", "--json"]
        } else {
            &["certificate", "registration-instructions"]
        };
        let text = self.nodes[i - 1].ok(args);
        let path = self.instructions(i);
        std::fs::write(&path, text).expect("write instructions");
        path
    }

    fn instructions(&self, i: usize) -> PathBuf {
        self.lab.path(&format!("node_{i}.txt"))
    }

    fn roster(&self, name: &str) -> PathBuf {
        self.lab.path(name)
    }

    /// `federation create` at the researcher with the given nodes' instructions.
    fn create(&self, out: &str, nodes: &[usize]) -> String {
        let out = self.roster(out);
        let files: Vec<String> = nodes
            .iter()
            .map(|i| self.instructions(*i).display().to_string())
            .collect();
        let mut args = vec![
            "federation",
            "create",
            "--name",
            "study-42",
            "--out",
            out.to_str().expect("utf8"),
        ];
        args.extend(files.iter().map(String::as_str));
        self.researcher.ok(&args)
    }
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("utf8")
}

fn fingerprint_of(show: &str) -> String {
    show.lines()
        .find_map(|l| l.strip_prefix("roster fingerprint: "))
        .expect("roster fingerprint line")
        .to_owned()
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|r| r["party_id"].as_str().expect("id").to_owned())
        .collect()
}

fn cert_fp(party: &Party) -> String {
    party.instructions()["fingerprint"]
        .as_str()
        .expect("fp")
        .to_owned()
}

#[test]
fn create_show_import_registers_everyone_and_show_prints_the_format() {
    let fed = Fed::new(3);
    let shown_at_create = fed.create("roster.toml", &[1, 2, 3]);
    // The researcher registered every member at once.
    assert_eq!(
        ids(&fed.researcher.list_json()),
        ["node_1", "node_2", "node_3"]
    );
    let roster = fed.roster("roster.toml");
    // `show` needs no home; its output is exact.
    let show = fed.nodes[0].ok(&["federation", "show", path_str(&roster)]);
    let fp = fingerprint_of(&show);
    assert_eq!(fingerprint_of(&shown_at_create), fp);
    let lines: Vec<&str> = show.lines().collect();
    assert_eq!(lines[0], "federation: study-42");
    assert_eq!(lines[1], "version: 1");
    assert!(
        lines[2].starts_with("created: ") && lines[2].ends_with('Z'),
        "{show}"
    );
    assert_eq!(lines[3], "");
    let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[4]),
        [
            "PARTY",
            "ID",
            "ROLE",
            "IP",
            "PORT",
            "CERTIFICATE",
            "FINGERPRINT"
        ]
    );
    assert_eq!(
        cols(lines[5]),
        [
            "researcher",
            "researcher",
            "127.0.0.1",
            "7000",
            &cert_fp(&fed.researcher)
        ]
    );
    for i in 1..=3 {
        assert_eq!(
            cols(lines[5 + i]),
            [
                format!("node_{i}*").replace('*', if i == 1 { "*" } else { "" }),
                "node".into(),
                "127.0.0.1".into(),
                format!("{}", 7000 + i),
                cert_fp(&fed.nodes[i - 1])
            ]
        );
    }
    assert_eq!(lines[9], "");
    assert_eq!(lines.len(), 11, "{show}");
    // SHA-256, colon hex, upper case, like openssl prints fingerprints.
    assert_eq!(fp.len(), 95);
    assert!(
        fp.split(':').all(|b| b.len() == 2
            && b.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())),
        "{fp}"
    );

    for (i, node) in fed.nodes.iter().enumerate() {
        node.ok(&[
            "federation",
            "import",
            path_str(&roster),
            "--fingerprint",
            &fp,
        ]);
        let list = node.list_json();
        let mut expected: Vec<String> = (1..=3)
            .filter(|j| *j != i + 1)
            .map(|j| format!("node_{j}"))
            .collect();
        expected.push("researcher".into());
        assert_eq!(ids(&list), expected);
        let r = list
            .as_array()
            .expect("array")
            .iter()
            .find(|r| r["party_id"] == "researcher")
            .expect("researcher");
        assert_eq!(r["role"], "researcher");
        assert_eq!(r["port"], 7000);
        assert_eq!(
            r["fingerprint"].as_str(),
            Some(cert_fp(&fed.researcher).as_str())
        );
    }
    // Importing the same roster again changes nothing and succeeds.
    let before = fed.nodes[0].list_json();
    let out = fed.nodes[0].run(&["federation", "import", path_str(&roster)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already at version 1"));
    assert_eq!(fed.nodes[0].list_json(), before);
}

#[test]
fn wrong_fingerprint_is_refused_and_nothing_registered() {
    let fed = Fed::new(2);
    fed.create("roster.toml", &[1, 2]);
    let roster = fed.roster("roster.toml");
    let node = &fed.nodes[0];
    let before = node.list_json();
    let wrong = cert_fp(node); // a well-formed fingerprint of something else
    node.fails(
        &[
            "federation",
            "import",
            path_str(&roster),
            "--fingerprint",
            &wrong,
        ],
        "roster fingerprint mismatch: the file has",
    );
    assert_eq!(node.list_json(), before);
    // Without any fingerprint the first import is refused too.
    node.fails(
        &["federation", "import", path_str(&roster)],
        "this is the first roster of federation 'study-42' here; importing it needs the roster fingerprint checked",
    );
    assert_eq!(node.list_json(), before);
}

#[test]
fn tampered_roster_fails_the_signature() {
    let fed = Fed::new(2);
    let shown = fed.create("roster.toml", &[1, 2]);
    let fp = fingerprint_of(&shown);
    let text = std::fs::read_to_string(fed.roster("roster.toml")).expect("read");
    // Point node_2 at another address: a signed field.
    let tampered = text.replacen("port = 7002", "port = 6666", 1);
    assert_ne!(tampered, text);
    let bad = fed.roster("tampered.toml");
    std::fs::write(&bad, tampered).expect("write");
    let node = &fed.nodes[0];
    let before = node.list_json();
    node.fails(
        &["federation", "import", path_str(&bad), "--fingerprint", &fp],
        "the roster's signature does not verify against its researcher's certificate: the file was altered",
    );
    node.fails(
        &["federation", "show", path_str(&bad)],
        "signature does not verify",
    );
    assert_eq!(node.list_json(), before);
    // Reformatting (comments, blank lines) is not tampering.
    let reformatted = fed.roster("reformatted.toml");
    std::fs::write(
        &reformatted,
        format!(
            "# re-indented by a mail client\n\n{}",
            text.replace("\n[[", "\n\n\n[[")
        ),
    )
    .expect("write");
    node.ok(&[
        "federation",
        "import",
        path_str(&reformatted),
        "--fingerprint",
        &fp,
    ]);
}

#[test]
fn a_roster_whose_line_for_this_party_holds_another_certificate_is_refused() {
    let fed = Fed::new(2);
    // Someone substituted node_1's certificate on the way to the researcher.
    let text = std::fs::read_to_string(fed.instructions(1)).expect("read");
    let real = PeerCertificate::from_pem(fed.nodes[0].cert_pem().as_bytes()).expect("pem");
    let fake_pem = valid_cert("node_1");
    let fake = PeerCertificate::from_pem(fake_pem.as_bytes()).expect("pem");
    let swapped = text.replace(&fed.nodes[0].cert_pem(), &fake_pem).replace(
        &real.fingerprint().to_string(),
        &fake.fingerprint().to_string(),
    );
    assert_ne!(swapped, text);
    std::fs::write(fed.instructions(1), swapped).expect("write");
    let fp = fingerprint_of(&fed.create("roster.toml", &[1, 2]));
    let node = &fed.nodes[0];
    let before = node.list_json();
    node.fails(
        &[
            "federation",
            "import",
            path_str(&fed.roster("roster.toml")),
            "--fingerprint",
            &fp,
        ],
        &format!(
            "the roster's line for 'node_1' holds certificate {}, but this party's certificate is {}",
            fake.fingerprint(),
            real.fingerprint()
        ),
    );
    assert_eq!(node.list_json(), before);
    // `show` tells the party too.
    let out = node.run(&["federation", "show", path_str(&fed.roster("roster.toml"))]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("this party's certificate is not in this roster")
    );
}

#[test]
fn an_invalid_member_certificate_fails_create_and_registers_nobody() {
    let fed = Fed::new(2);
    let before = fed.researcher.list_json();
    // node_2's instructions carry an expired certificate (made with its CN).
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let expired = common::cert_with_window("node_2", now - day * 10, now - day);
    let cert = PeerCertificate::from_pem(expired.as_bytes()).expect("pem");
    let text = fed.nodes[1].ok(&["certificate", "registration-instructions"]);
    let real = PeerCertificate::from_pem(fed.nodes[1].cert_pem().as_bytes()).expect("pem");
    std::fs::write(
        fed.instructions(2),
        text.replace(&fed.nodes[1].cert_pem(), &expired).replace(
            &real.fingerprint().to_string(),
            &cert.fingerprint().to_string(),
        ),
    )
    .expect("write");
    let out = fed.roster("roster.toml");
    let err = fed.researcher.fails(
        &[
            "federation",
            "create",
            "--name",
            "study-42",
            "--out",
            path_str(&out),
            path_str(&fed.instructions(1)),
            path_str(&fed.instructions(2)),
        ],
        "member 'node_2': the certificate expired on",
    );
    assert!(err.contains("nothing was registered"), "{err}");
    assert_eq!(fed.researcher.list_json(), before);
    assert!(!out.exists(), "no roster file after a failed create");
    // Instructions whose command names another certificate than their PEM.
    std::fs::write(
        fed.instructions(2),
        text.replace(
            &real.fingerprint().to_string(),
            &cert.fingerprint().to_string(),
        ),
    )
    .expect("write");
    fed.researcher.fails(
        &[
            "federation",
            "create",
            "--name",
            "study-42",
            "--out",
            path_str(&out),
            path_str(&fed.instructions(1)),
            path_str(&fed.instructions(2)),
        ],
        "the instructions' certificate has fingerprint",
    );
    // The same party twice.
    fed.researcher.fails(
        &[
            "federation",
            "create",
            "--name",
            "study-42",
            "--out",
            path_str(&out),
            path_str(&fed.instructions(1)),
            path_str(&fed.instructions(1)),
        ],
        "party id 'node_1' is listed twice",
    );
    assert_eq!(fed.researcher.list_json(), before);
    assert!(!out.exists());
    // A node cannot create a roster.
    fed.nodes[0].fails(
        &[
            "federation",
            "create",
            "--name",
            "study-42",
            "--out",
            path_str(&out),
            path_str(&fed.instructions(2)),
        ],
        "only the researcher creates a federation's roster",
    );
}

#[test]
fn an_update_that_removes_a_member_needs_only_the_signature_and_yes() {
    let fed = Fed::new(3);
    let fp1 = fingerprint_of(&fed.create("v1.toml", &[1, 2, 3]));
    let node = &fed.nodes[0];
    node.ok(&[
        "federation",
        "import",
        path_str(&fed.roster("v1.toml")),
        "--fingerprint",
        &fp1,
    ]);
    // Version 2 drops node_3; the researcher's registry drops it in the same step.
    let shown = fed.create("v2.toml", &[1, 2]);
    assert!(shown.contains("version: 2"), "{shown}");
    assert_ne!(fingerprint_of(&shown), fp1);
    assert_eq!(ids(&fed.researcher.list_json()), ["node_1", "node_2"]);

    let v2 = fed.roster("v2.toml");
    let before = node.list_json();
    // Without a terminal and without --yes: shown, then refused, nothing changed.
    let err = node.fails(
        &["federation", "import", path_str(&v2)],
        "confirmation needed but stdin is not a terminal",
    );
    assert!(
        err.contains("federation 'study-42': version 1 -> 2"),
        "{err}"
    );
    assert!(
        err.contains("  - remove node_3 node 127.0.0.1:7003"),
        "{err}"
    );
    assert_eq!(node.list_json(), before);

    let out = node.run(&["federation", "import", path_str(&v2), "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("  - remove node_3 node 127.0.0.1:7003"),
        "{err}"
    );
    assert!(err.contains("removed: node_3"), "{err}");
    assert_eq!(ids(&node.list_json()), ["node_2", "researcher"]);

    // An older version is refused afterwards.
    node.fails(
        &[
            "federation",
            "import",
            path_str(&fed.roster("v1.toml")),
            "--fingerprint",
            &fp1,
        ],
        "federation 'study-42' is at version 2 here; refusing version 1",
    );
    // A tampered next version is refused, even with --yes.
    let text = std::fs::read_to_string(&v2).expect("read");
    let bad = fed.roster("v3-tampered.toml");
    std::fs::write(&bad, text.replacen("version = 2", "version = 3", 1)).expect("write");
    let before = node.list_json();
    node.fails(
        &["federation", "import", path_str(&bad), "--yes"],
        "signature does not verify",
    );
    assert_eq!(node.list_json(), before);
}

#[test]
fn an_update_that_adds_a_member_needs_the_new_fingerprint() {
    let fed = Fed::new(3);
    let fp1 = fingerprint_of(&fed.create("v1.toml", &[1, 2]));
    let node = &fed.nodes[0];
    node.ok(&[
        "federation",
        "import",
        path_str(&fed.roster("v1.toml")),
        "--fingerprint",
        &fp1,
    ]);
    let fp2 = fingerprint_of(&fed.create("v2.toml", &[1, 2, 3]));
    let v2 = fed.roster("v2.toml");
    let before = node.list_json();
    for args in [
        vec!["federation", "import", path_str(&v2)],
        vec!["federation", "import", path_str(&v2), "--yes"],
    ] {
        node.fails(
            &args,
            "version 2 of federation 'study-42' brings certificates not confirmed before: node_3; importing it needs the roster fingerprint checked",
        );
        assert_eq!(node.list_json(), before);
    }
    let out = node.run(&["federation", "import", path_str(&v2), "--fingerprint", &fp2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("  + add node_3 node 127.0.0.1:7003"), "{err}");
    assert_eq!(ids(&node.list_json()), ["node_2", "node_3", "researcher"]);
}

#[test]
fn renew_keeps_the_key_and_peers_reregister_with_upsert() {
    let lab = Lab::new();
    let a = lab.party("node_a", "node", 7001);
    let b = lab.party("node_b", "node", 7002);
    b.register(&a);
    let old_pem = a.cert_pem();
    let old = PeerCertificate::from_pem(old_pem.as_bytes()).expect("pem");
    let serial = |dir: &std::path::Path, file: &str| {
        openssl(&["x509", "-noout", "-serial", "-in", file], dir)
    };
    let old_serial = serial(&a.home, "cert.pem");

    let text = a.ok(&["certificate", "renew", "--validity-days", "30"]);
    let new = PeerCertificate::from_pem(a.cert_pem().as_bytes()).expect("pem");
    assert_eq!(new.public_key(), old.public_key(), "same key");
    assert_ne!(new.fingerprint(), old.fingerprint());
    assert_ne!(serial(&a.home, "cert.pem"), old_serial);
    assert_eq!(new.common_name(), "node_a");
    let days =
        (new.not_after_unix() - secagg::clock::unix_secs(std::time::SystemTime::now())) / 86_400;
    assert!((29..=30).contains(&days), "{days}");
    // The old certificate is kept; the key still matches the new one.
    let baks: Vec<String> = std::fs::read_dir(&a.home)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cert.pem.bak-"))
        .collect();
    assert_eq!(baks.len(), 1, "{baks:?}");
    assert_eq!(
        std::fs::read_to_string(a.home.join(&baks[0])).expect("bak"),
        old_pem
    );
    openssl(&["verify", "-CAfile", "cert.pem", "cert.pem"], &a.home);
    a.ok(&["certificate", "registration-instructions"]);

    // The printed instructions carry the new PEM and a command with --upsert.
    assert!(text.contains(&new.to_pem()), "{text}");
    let command = text
        .lines()
        .find(|l| l.starts_with("secagg certificate register "))
        .expect("command");
    assert!(command.ends_with(&format!("--fingerprint {} --upsert", new.fingerprint())));

    // A peer with the old registration: a plain register is refused, --upsert replaces.
    let file = lab.path("node_a.pem");
    std::fs::write(&file, new.to_pem()).expect("write");
    let fp = new.fingerprint().to_string();
    let reg = |extra: Option<&str>| {
        let mut v = vec![
            "certificate",
            "register",
            "--public-key",
            path_str(&file),
            "--party-id",
            "node_a",
            "--ip",
            "127.0.0.1",
            "--port",
            "7001",
            "--fingerprint",
            &fp,
        ];
        v.extend(extra);
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let before = b.list_json();
    let args = reg(None);
    b.fails(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "party id 'node_a' is already registered",
    );
    assert_eq!(b.list_json(), before);
    let args = reg(Some("--upsert"));
    b.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(b.list_json()[0]["fingerprint"].as_str(), Some(fp.as_str()));
}

#[test]
fn a_renewed_member_needs_the_new_roster_fingerprint() {
    let fed = Fed::new(2);
    let fp1 = fingerprint_of(&fed.create("v1.toml", &[1, 2]));
    let node = &fed.nodes[0];
    node.ok(&[
        "federation",
        "import",
        path_str(&fed.roster("v1.toml")),
        "--fingerprint",
        &fp1,
    ]);
    fed.nodes[1].ok(&["certificate", "renew"]);
    fed.save_instructions(2);
    let fp2 = fingerprint_of(&fed.create("v2.toml", &[1, 2]));
    let v2 = fed.roster("v2.toml");
    node.fails(
        &["federation", "import", path_str(&v2), "--yes"],
        "brings certificates not confirmed before: node_2 (new certificate)",
    );
    node.ok(&["federation", "import", path_str(&v2), "--fingerprint", &fp2]);
    let list = node.list_json();
    let row = list
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["party_id"] == "node_2")
        .expect("node_2");
    assert_eq!(
        row["fingerprint"].as_str(),
        Some(cert_fp(&fed.nodes[1]).as_str())
    );
}

#[test]
fn man_writes_one_page_per_command() {
    let lab = Lab::new();
    let p = Party {
        home: lab.path("home"),
    };
    let dir = lab.path("man");
    p.ok(&["man", "--out", path_str(&dir)]);
    for page in [
        "secagg.1",
        "secagg-certificate.1",
        "secagg-certificate-register.1",
        "secagg-certificate-renew.1",
        "secagg-federation.1",
        "secagg-federation-create.1",
        "secagg-federation-show.1",
        "secagg-federation-import.1",
        "secagg-round-serve.1",
        "secagg-man.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page}");
    }
    let import = std::fs::read_to_string(dir.join("secagg-federation-import.1")).expect("page");
    assert!(import.contains("fingerprint"), "{import}");
    assert!(!dir.join("secagg-help.1").exists());
}
