//! This party's identity: who it is ([`PartyId`], [`Role`]), where it is reachable
//! ([`Host`], port), where its files live ([`Home`]) and its private key ([`PartyKey`]).
//!
//! A home holds exactly one party. Its files are created so that nothing is ever
//! overwritten silently: new files go to temporary names first, old ones are moved to
//! timestamped `.bak` copies only when the caller asked for it (`--force`), and the key
//! is created `0600` with `create_new`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::party::{Host, PartyId, Role};
use crate::pki::certificate::{self, CertParams, PeerCertificate};

/// Errors about identities and the home directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed party id, role, address or port.
    #[error(transparent)]
    Party(#[from] crate::party::Error),
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

type Result<T> = std::result::Result<T, Error>;

/// The contents of `config.toml`: who this party is and where peers reach it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// This party's id (the certificate's CN).
    pub party_id: PartyId,
    /// node or researcher.
    pub role: Role,
    /// The address peers use to reach this party.
    pub ip: Host,
    /// The TCP port peers use to reach this party.
    pub port: u16,
    /// A node's own limits for the rounds it joins (`[policy]`); absent means defaults.
    #[serde(default, skip_serializing_if = "PolicyConfig::is_empty")]
    pub policy: PolicyConfig,
}

/// `[policy]` in `config.toml`: what a node accepts in a round, whatever the
/// researcher announces. Every key is optional; `round join` flags override them. See
/// `etc/config.example.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyConfig {
    /// The federation this node serves.
    pub federation: Option<String>,
    /// Largest clip bound (default 100).
    pub max_clip: Option<f64>,
    /// Fewest quantization bits (default 2).
    pub min_bits: Option<u32>,
    /// Most quantization bits (default 32).
    pub max_bits: Option<u32>,
    /// Largest max weight (default 10^6).
    pub max_weight: Option<u64>,
    /// Fewest invited nodes (default 3).
    pub min_nodes: Option<usize>,
    /// Smallest threshold (default ⌊2n/3⌋+1).
    pub min_threshold: Option<usize>,
    /// Trusted peers (registered ids) that must take part.
    pub require_peers: Option<Vec<String>>,
    /// How many of them must (default: all).
    pub require_peers_count: Option<usize>,
    /// Always send weight 1.
    pub fixed_weight: Option<bool>,
}

impl PolicyConfig {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        *self == PolicyConfig::default()
    }
}

impl Config {
    /// Parses the bytes of a `config.toml` (the entry point for fuzzing; `path` only
    /// labels errors).
    pub fn from_toml(path: &Path, bytes: &[u8]) -> Result<Config> {
        let bad = |reason: String| Error::BadConfig {
            path: path.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        toml::from_str(text).map_err(|e| bad(e.message().to_owned()))
    }
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
        Config::from_toml(&path, text.as_bytes())
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

    /// The ECDH secret scalar, for pairwise secrets: a copy that is wiped when dropped.
    pub fn secret_scalar(&self) -> SecretScalar {
        SecretScalar(*self.0.as_nonzero_scalar())
    }
}

/// A copy of a secret P-256 scalar: not `Copy`, wiped on drop, redacted in `Debug`.
/// Borrow it as a [`p256::NonZeroScalar`] for ECDH.
pub struct SecretScalar(p256::NonZeroScalar);

impl std::borrow::Borrow<p256::NonZeroScalar> for SecretScalar {
    fn borrow(&self) -> &p256::NonZeroScalar {
        &self.0
    }
}

impl zeroize::Zeroize for SecretScalar {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for SecretScalar {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

impl zeroize::ZeroizeOnDrop for SecretScalar {}

impl fmt::Debug for SecretScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretScalar(<secret>)")
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
    if !replace && let Some(existing) = home.identity_files().into_iter().find(|p| p.exists()) {
        return Err(Error::Exists {
            home: home.root.clone(),
            existing,
        });
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
        policy: PolicyConfig::default(),
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

    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Write all three files in full before touching the old ones: a failure here drops
    // the staged temporaries and leaves the old identity as it was.
    let staged = [
        (home.key_path(), key_pem.as_bytes(), true),
        (home.cert_path(), cert.to_pem().as_bytes(), false),
        (home.config_path(), config_text.as_bytes(), false),
    ]
    .into_iter()
    .map(|(path, bytes, secret)| {
        let io = |source| Error::Io {
            action: "write",
            path: path.clone(),
            source,
        };
        let mut staged = atomic::stage(&path, secret).map_err(io)?;
        staged.file().write_all(bytes).map_err(io)?;
        Ok(staged)
    })
    .collect::<Result<Vec<_>>>()?;

    let mut backups = Vec::new();
    for staged in &staged {
        let path = staged.path();
        if path.exists() {
            let bak = PathBuf::from(format!("{}.bak-{secs}", path.display()));
            rename(path, &bak)?;
            backups.push((path.to_owned(), bak));
        }
    }
    for staged in staged {
        let path = staged.path().to_owned();
        staged.commit_new().map_err(|source| Error::Io {
            action: "move into place",
            path,
            source,
        })?;
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

/// What `renew` did.
#[derive(Debug)]
pub struct Renewed {
    /// The identity with its new certificate.
    pub identity: Identity,
    /// Where the old certificate went.
    pub backup: PathBuf,
}

/// Makes a new self-signed certificate for the same key, party id and address, valid
/// for `validity_days`; the old `cert.pem` is kept as `cert.pem.bak-<unix time>`. The
/// new certificate is written in full before the old one is moved aside.
pub fn renew(home: &Home, validity_days: u32) -> Result<Renewed> {
    let old = home.load_identity()?;
    let cert = certificate::self_signed(
        old.key.signing_key(),
        &CertParams::for_days(
            old.config.party_id.clone(),
            old.config.ip.clone(),
            validity_days,
        ),
    )?;
    let path = home.cert_path();
    let io = |action, source| Error::Io {
        action,
        path: path.clone(),
        source,
    };
    let mut staged = atomic::stage(&path, false).map_err(|e| io("write", e))?;
    staged
        .file()
        .write_all(cert.to_pem().as_bytes())
        .map_err(|e| io("write", e))?;
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut backup = PathBuf::from(format!("{}.bak-{secs}", path.display()));
    let mut n = 1;
    while backup.exists() {
        backup = PathBuf::from(format!("{}.bak-{secs}-{n}", path.display()));
        n += 1;
    }
    rename(&path, &backup)?;
    if let Err(e) = staged.commit_new() {
        // Put the old certificate back: a home without cert.pem is no identity.
        let _ = fs::rename(&backup, &path);
        return Err(io("move into place", e));
    }
    Ok(Renewed {
        identity: Identity {
            config: old.config,
            key: old.key,
            certificate: cert,
        },
        backup,
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

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|source| Error::Io {
        action: "move",
        path: from.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_debug_hides_secret() {
        let key = PartyKey::generate().expect("rng");
        assert_eq!(format!("{key:?}"), "PartyKey(<secret>)");
    }
}
