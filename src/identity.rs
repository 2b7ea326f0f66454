//! This party's identity: who it is ([`PartyId`], [`Role`]), where it is reachable
//! ([`Host`], port), where its files live ([`Home`]) and its private key ([`PartyKey`]).
//!
//! A home holds exactly one party. Its files are created so that nothing is ever
//! overwritten silently: new files go to temporary names first, old ones are moved to
//! timestamped `.bak` copies only when the caller asked for it (`--force`), and the key
//! is created `0600` with `create_new`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};

use crate::certificate::{self, CertParams, PeerCertificate};

/// Errors about identities and the home directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A party id has characters or a length we refuse.
    #[error("invalid party id '{0}': use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadPartyId(String),
    /// A role other than node or researcher.
    #[error("invalid role '{0}': expected 'node' or 'researcher'")]
    BadRole(String),
    /// Neither an IP address nor a valid DNS name.
    #[error("invalid address '{0}': expected an IPv4/IPv6 address or a DNS hostname")]
    BadHost(String),
    /// A port outside 1..=65535.
    #[error("invalid port {0}: expected a number from 1 to 65535")]
    BadPort(u64),
    /// `certificate generate` found an identity and was not told to replace it.
    #[error("{} already holds an identity ({})", home.display(), existing.display())]
    Exists {
        /// The home directory.
        home: PathBuf,
        /// The first file found.
        existing: PathBuf,
    },
    /// The home has no identity yet.
    #[error("no identity in {}: {} is missing", home.display(), missing.display())]
    NoIdentity {
        /// The home directory.
        home: PathBuf,
        /// The missing file.
        missing: PathBuf,
    },
    /// A file could not be read, written or moved.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("write", "read", ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("config file {} is invalid: {reason}", path.display())]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file is not a PKCS#8 P-256 key.
    #[error("key file {} is not a PKCS#8 P-256 private key", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// Our own certificate failed to parse or does not match our key.
    #[error("own certificate {} is unusable: {reason}", path.display())]
    BadOwnCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The operating system's random generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// Encoding our key for the TLS stack failed.
    #[error("cannot encode the private key as PKCS#8")]
    KeyEncoding,
    /// Building the certificate failed.
    #[error(transparent)]
    Certificate(#[from] certificate::Error),
}

impl Error {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::BadPartyId(_) => "party ids look like 'hospital-a' or 'node_1f3c...'".into(),
            Error::BadRole(_) => "pass --role node or --role researcher".into(),
            Error::BadHost(_) => "pass the address peers use to reach this party, e.g. --ip 10.0.0.5 or --ip node-a.example.org".into(),
            Error::BadPort(_) => "pass --port with a value from 1 to 65535".into(),
            Error::Exists { .. } => "keep the current identity, or pass --force to replace it (the old files are kept as .bak)".into(),
            Error::NoIdentity { .. } => "run 'secagg certificate generate' first (or pass --home to choose another home)".into(),
            Error::Io { .. } => "check that the directory exists and is writable by you".into(),
            Error::BadConfig { .. } => "fix the file by hand (see etc/config.example.toml) or regenerate with 'secagg certificate generate --force'".into(),
            Error::BadKey { .. } | Error::BadOwnCertificate { .. } => "regenerate the identity with 'secagg certificate generate --force' and re-run the exchange with your peers".into(),
            Error::Rng | Error::KeyEncoding => return None,
            Error::Certificate(e) => return e.hint(),
        })
    }
}

type Result<T> = std::result::Result<T, Error>;

/// A party's identifier: 1..=64 characters from `[A-Za-z0-9._-]`.
///
/// It is the certificate's CN and the registry's primary key, and it appears in
/// shell commands we print, so the alphabet is kept shell- and filename-safe.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PartyId(String);

impl PartyId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh id `<role>_<uuid v4>`.
    pub fn random(role: Role) -> PartyId {
        PartyId(format!("{}_{}", role, uuid::Uuid::new_v4()))
    }
}

impl FromStr for PartyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(PartyId(s.to_owned()))
        } else {
            Err(Error::BadPartyId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for PartyId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<PartyId> for String {
    fn from(p: PartyId) -> String {
        p.0
    }
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a party does in a federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A data holder (hospital) that trains locally and masks its update.
    Node,
    /// The aggregator that sums masked updates.
    Researcher,
}

impl Role {
    /// The lowercase name used on the command line and in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Researcher => "researcher",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "node" => Ok(Role::Node),
            "researcher" => Ok(Role::Researcher),
            other => Err(Error::BadRole(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a party is reachable: an IP address or a DNS hostname.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Host(String);

impl Host {
    /// The host as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.parse().ok()
    }
}

impl FromStr for Host {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.parse::<IpAddr>().is_ok() || is_dns_name(s) {
            Ok(Host(s.to_owned()))
        } else {
            Err(Error::BadHost(s.to_owned()))
        }
    }
}

/// RFC 1123 hostnames; an all-numeric name (`999.1.1.1`) is a mistyped IP, not a host.
fn is_dns_name(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty()
        && s.len() <= 253
        && labels.iter().all(label_ok)
        && !labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl TryFrom<String> for Host {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Host> for String {
    fn from(h: Host) -> String {
        h.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a port number typed by a user.
pub fn parse_port(port: u64) -> Result<u16> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Error::BadPort(port)),
    }
}

/// The contents of `config.toml`: who this party is and where peers reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// This party's id (the certificate's CN).
    pub party_id: PartyId,
    /// node or researcher.
    pub role: Role,
    /// The address peers use to reach this party.
    pub ip: Host,
    /// The TCP port peers use to reach this party.
    pub port: u16,
}

/// The files of one party's home directory.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home rooted at `root` (not created until something is written).
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `key.pem`, PKCS#8, mode 0600.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("key.pem")
    }

    /// `cert.pem`, our self-signed certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.root.join("cert.pem")
    }

    /// `registry.sqlite`, peers and the mask journal.
    pub fn registry_path(&self) -> PathBuf {
        self.root.join("registry.sqlite")
    }

    fn identity_files(&self) -> [PathBuf; 3] {
        [self.key_path(), self.cert_path(), self.config_path()]
    }

    /// Whether any identity file exists.
    pub fn has_identity(&self) -> bool {
        self.identity_files().iter().any(|p| p.exists())
    }

    /// Reads `config.toml`.
    pub fn load_config(&self) -> Result<Config> {
        let path = self.config_path();
        let text = read_identity_file(self, &path)?;
        toml::from_str(&text).map_err(|e| Error::BadConfig {
            path,
            reason: e.message().to_owned(),
        })
    }

    /// Reads our own certificate, if there is one.
    pub fn load_certificate(&self) -> Result<PeerCertificate> {
        let path = self.cert_path();
        let text = read_identity_file(self, &path)?;
        PeerCertificate::from_pem(text.as_bytes()).map_err(|e| Error::BadOwnCertificate {
            path,
            reason: e.to_string(),
        })
    }

    /// Reads config, key and certificate, and checks that they belong together.
    pub fn load_identity(&self) -> Result<Identity> {
        let config = self.load_config()?;
        let certificate = self.load_certificate()?;
        let key_path = self.key_path();
        let pem = zeroize::Zeroizing::new(read_identity_file(self, &key_path)?);
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| Error::BadKey {
            path: key_path.clone(),
        })?;
        let cert_path = self.cert_path();
        if p256::PublicKey::from(key.verifying_key()) != *certificate.public_key() {
            return Err(Error::BadOwnCertificate {
                path: cert_path,
                reason: "it does not match key.pem".into(),
            });
        }
        if certificate.common_name() != config.party_id.as_str() {
            return Err(Error::BadOwnCertificate {
                path: cert_path,
                reason: format!(
                    "its CN '{}' differs from party_id '{}' in config.toml",
                    certificate.common_name(),
                    config.party_id
                ),
            });
        }
        Ok(Identity {
            config,
            key: PartyKey(key),
            certificate,
        })
    }
}

fn read_identity_file(home: &Home, path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NoIdentity {
                home: home.root.clone(),
                missing: path.to_owned(),
            }
        } else {
            Error::Io {
                action: "read",
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// This party's private key. Its `Debug` never shows the secret, and the key material
/// is zeroized on drop by `p256`.
pub struct PartyKey(SigningKey);

impl PartyKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<PartyKey> {
        SigningKey::try_generate()
            .map(PartyKey)
            .map_err(|_| Error::Rng)
    }

    /// A key from a big-endian scalar (known-answer tests, imports).
    pub fn from_scalar_bytes(bytes: &[u8]) -> Option<PartyKey> {
        SigningKey::from_slice(bytes).ok().map(PartyKey)
    }

    /// The ECDSA signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// PKCS#8 DER, for the TLS stack. Zeroized when dropped.
    pub fn to_pkcs8_der(&self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        self.0
            .to_pkcs8_der()
            .map(|doc| zeroize::Zeroizing::new(doc.as_bytes().to_vec()))
            .map_err(|_| Error::KeyEncoding)
    }

    /// The ECDH secret scalar, for pairwise secrets.
    pub fn secret_scalar(&self) -> p256::NonZeroScalar {
        *self.0.as_nonzero_scalar()
    }
}

impl fmt::Debug for PartyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartyKey(<secret>)")
    }
}

/// A loaded identity: config, key and certificate that belong together.
#[derive(Debug)]
pub struct Identity {
    /// Who we are and where we listen.
    pub config: Config,
    /// Our private key.
    pub key: PartyKey,
    /// Our certificate.
    pub certificate: PeerCertificate,
}

/// What `generate` needs.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Our party id.
    pub party_id: PartyId,
    /// Our role.
    pub role: Role,
    /// The address peers reach us at.
    pub ip: Host,
    /// The port peers reach us at.
    pub port: u16,
    /// Certificate lifetime in days.
    pub validity_days: u32,
}

/// What `generate` did.
#[derive(Debug)]
pub struct Generated {
    /// The new identity.
    pub identity: Identity,
    /// Old files moved aside, as `(from, to)`.
    pub backups: Vec<(PathBuf, PathBuf)>,
}

/// Creates a key, a certificate and a config in `home`.
///
/// Without `replace`, an existing identity is an error. With it, the old files are
/// moved to `<name>.bak-<unix time>`, but only after the new ones have been fully
/// written to temporary files, so a failure leaves the old identity in place.
pub fn generate(home: &Home, params: &GenerateParams, replace: bool) -> Result<Generated> {
    if !replace {
        if let Some(existing) = home.identity_files().into_iter().find(|p| p.exists()) {
            return Err(Error::Exists {
                home: home.root.clone(),
                existing,
            });
        }
    }
    create_home_dir(&home.root)?;

    let key = PartyKey::generate()?;
    let cert = certificate::self_signed(
        key.signing_key(),
        &CertParams::for_days(
            params.party_id.clone(),
            params.ip.clone(),
            params.validity_days,
        ),
    )?;
    let config = Config {
        party_id: params.party_id.clone(),
        role: params.role,
        ip: params.ip.clone(),
        port: params.port,
    };
    let key_pem = key
        .signing_key()
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| Error::BadKey {
            path: home.key_path(),
        })?;
    let config_text = format!(
        "# secagg party configuration, written by 'secagg certificate generate'.\n{}",
        toml::to_string(&config).map_err(|e| Error::BadConfig {
            path: home.config_path(),
            reason: e.to_string(),
        })?
    );

    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let staged = [
        (home.key_path(), key_pem.as_bytes(), true),
        (home.cert_path(), cert.to_pem().as_bytes(), false),
        (home.config_path(), config_text.as_bytes(), false),
    ]
    .into_iter()
    .map(|(path, bytes, secret)| {
        let tmp = path.with_extension(format!("tmp-{stamp}"));
        write_new(&tmp, bytes, secret).map(|()| (tmp, path))
    })
    .collect::<Result<Vec<_>>>();
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            remove_staged(home, stamp);
            return Err(e);
        }
    };

    let mut backups = Vec::new();
    let secs = stamp / 1_000_000_000;
    for (_, path) in &staged {
        if path.exists() {
            let bak = PathBuf::from(format!("{}.bak-{secs}", path.display()));
            rename(path, &bak)?;
            backups.push((path.clone(), bak));
        }
    }
    for (tmp, path) in &staged {
        rename(tmp, path)?;
    }
    Ok(Generated {
        identity: Identity {
            config,
            key,
            certificate: cert,
        },
        backups,
    })
}

/// Creates the home (and parents); a new home directory is private (0700).
pub fn create_home_dir(root: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(root).map_err(|source| Error::Io {
        action: "create directory",
        path: root.to_owned(),
        source,
    })
}

fn remove_staged(home: &Home, stamp: u128) {
    for path in home.identity_files() {
        let _ = fs::remove_file(path.with_extension(format!("tmp-{stamp}")));
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|source| Error::Io {
        action: "move",
        path: from.to_owned(),
        source,
    })
}

/// Writes a file that must not exist yet; secret files get mode 0600 from the start.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let io = |source| Error::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut file: File = opts.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn party_ids() {
        for ok in ["a", "node_1", "hospital-A.eu", &"x".repeat(64)] {
            assert!(ok.parse::<PartyId>().is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "a;rm", &"x".repeat(65)] {
            assert!(bad.parse::<PartyId>().is_err(), "{bad}");
        }
        let id = PartyId::random(Role::Node);
        assert!(id.as_str().starts_with("node_"));
        assert!(id.as_str().parse::<PartyId>().is_ok());
    }

    #[test]
    fn hosts() {
        for ok in ["127.0.0.1", "::1", "node-a.example.org", "localhost"] {
            assert!(ok.parse::<Host>().is_ok(), "{ok}");
        }
        for bad in ["", "999.1.1.1", "a..b", "-a.org", "a b", "1.2.3"] {
            assert!(bad.parse::<Host>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert!(parse_port(0).is_err());
        assert!(parse_port(70000).is_err());
        assert_eq!(parse_port(443).ok(), Some(443));
    }

    #[test]
    fn key_debug_hides_secret() {
        let key = PartyKey::generate().expect("rng");
        assert_eq!(format!("{key:?}"), "PartyKey(<secret>)");
    }
}
