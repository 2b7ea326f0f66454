//! Shared harness for CLI tests: temporary homes and the real `secagg` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use secagg::pki::certificate::{self, CertParams};
use secagg::pki::identity::PartyKey;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_secagg"))
}

/// A temporary directory holding one or more party homes.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A party with a generated identity.
    pub fn party(&self, id: &str, role: &str, port: u16) -> Party {
        let p = Party {
            home: self.path(id),
        };
        p.ok(&[
            "certificate",
            "generate",
            "--role",
            role,
            "--party-id",
            id,
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
        p
    }
}

/// One party's home.
pub struct Party {
    pub home: PathBuf,
}

impl Party {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_remove("SECAGG_HOME").arg("--home").arg(&self.home);
        c
    }

    /// Runs with stdin closed (never a terminal).
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("spawn secagg")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "secagg {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Runs, asserts exit code 1 with `error: ...<needle>...` and a `hint:` line; returns stderr.
    pub fn fails(&self, args: &[&str], needle: &str) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "secagg {args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("error: ") && l.contains(needle)),
            "secagg {args:?}: expected an error containing {needle:?}, got:\n{err}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("hint: ")),
            "secagg {args:?}: no hint line in:\n{err}"
        );
        err
    }

    pub fn list_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["certificate", "list", "--json"])).expect("json")
    }

    pub fn instructions(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["certificate", "registration-instructions", "--json"]))
            .expect("json")
    }

    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(self.home.join("cert.pem")).expect("cert.pem")
    }

    /// Registers `other` here non-interactively via `--fingerprint`.
    pub fn register(&self, other: &Party) {
        let i = other.instructions();
        let file = self
            .home
            .join(format!("{}.pem", i["party_id"].as_str().expect("id")));
        std::fs::write(&file, i["certificate_pem"].as_str().expect("pem")).expect("write");
        self.ok(&[
            "certificate",
            "register",
            "--public-key",
            file.to_str().expect("utf8"),
            "--party-id",
            i["party_id"].as_str().expect("id"),
            "--ip",
            i["ip"].as_str().expect("ip"),
            "--port",
            &i["port"].to_string(),
            "--role",
            i["role"].as_str().expect("role"),
            "--fingerprint",
            i["fingerprint"].as_str().expect("fp"),
        ]);
    }
}

/// A P-256 certificate made by the library with an explicit validity window.
pub fn cert_with_window(id: &str, not_before: SystemTime, not_after: SystemTime) -> String {
    let key = PartyKey::generate().expect("rng");
    let params = CertParams {
        party_id: id.parse().expect("id"),
        host: "127.0.0.1".parse().expect("host"),
        not_before,
        not_after,
    };
    certificate::self_signed(key.signing_key(), &params)
        .expect("build")
        .to_pem()
}

pub fn valid_cert(id: &str) -> String {
    let now = SystemTime::now();
    cert_with_window(
        id,
        now - Duration::from_secs(60),
        now + Duration::from_secs(86_400 * 90),
    )
}

/// Runs openssl; panics with its stderr on failure.
pub fn openssl(args: &[&str], cwd: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random values in [-1.2, 1.2] (some beyond the default clip of 1).
pub fn values(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.4 - 1.2
        })
        .collect()
}

/// Every value of an update file, in layout order.
pub fn read_all(path: &Path) -> Vec<f64> {
    let mut out = Vec::new();
    secagg::files::tensor::read_values(path, |v| {
        out.push(v);
        Ok::<(), ()>(())
    })
    .expect("read")
    .expect("visit");
    out
}

/// The version-1 input digest of a one-tensor `.npy` update of `values` in `dtype`,
/// spelled out here as the secagg before digest version 2 computed it (docs/protocol.md,
/// "Mask-reuse journal"): SHA-256 over "secagg input v1", the head (empty name, dtype
/// byte, one dimension), and every value as stored, widened to f64 little-endian.
pub fn v1_digest_npy(dtype: secagg::layout::DType, values: &[f64]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut m = b"secagg input v1".to_vec();
    m.extend_from_slice(&0u32.to_be_bytes());
    m.push(dtype.bytes() as u8);
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&(values.len() as u64).to_be_bytes());
    for v in values {
        let stored = match dtype {
            secagg::layout::DType::F32 => f64::from(*v as f32),
            secagg::layout::DType::F64 => *v,
        };
        m.extend_from_slice(&stored.to_le_bytes());
    }
    Sha256::digest(&m).into()
}

/// Turns the registry in `home` (schema 5) back into schema 4, as a secagg before input
/// digest version 2 left it, and inserts a release of `v1` with the statement that
/// secagg ran: the home of a node that masked before the upgrade.
pub fn as_schema_4_with_release(home: &Path, v1: &[u8; 32], federation: &str, round: u64) {
    let conn = rusqlite::Connection::open(home.join("registry.sqlite")).expect("open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, 5, "this helper undoes migration 5 only");
    conn.execute_batch(
        "ALTER TABLE releases DROP COLUMN digest_version;
         PRAGMA user_version = 4;",
    )
    .expect("back to schema 4");
    let hex: String = v1.iter().map(|b| format!("{b:02x}")).collect();
    conn.execute(
        "INSERT INTO releases (digest, mode, federation, round, released_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![hex, "file", federation, round as i64, 1_700_000_000i64],
    )
    .expect("old release");
}

/// The registry's schema version and each release row as
/// `digest|digest_version|mode|federation|round` (version 1 for a schema-4 registry).
pub fn release_rows(home: &Path) -> (i64, Vec<String>) {
    let conn = rusqlite::Connection::open(home.join("registry.sqlite")).expect("open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    let dv = if version >= 5 { "digest_version" } else { "1" };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT digest || '|' || {dv} || '|' || mode || '|' || federation || '|' || round
             FROM releases ORDER BY 1"
        ))
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    (version, rows)
}
