//! Federation rosters: one file, signed by the researcher, that lists every member of a
//! federation with its certificate, so that each party checks one fingerprint instead of
//! one per peer (O(n) manual steps instead of O(n²)).
//!
//! This module owns the roster file (TOML), its canonical bytes, its signature and its
//! fingerprint, the parsing of registration instructions into members, and the pure
//! rules for importing a roster after an earlier version ([`plan_import`]). Writing to
//! the registry is [`crate::pki::federation`]'s job; printing is the CLI's.
//!
//! The canonical bytes (docs/roster.md) are a length-prefixed binary encoding of every
//! field, members sorted by certificate fingerprint, so reformatting the TOML or
//! re-wrapping a PEM changes neither the signature nor the fingerprint. The roster
//! fingerprint is SHA-256 of the canonical bytes, which include the researcher's
//! certificate: everything an importer trusts is under the one value it checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::Deserialize;

use crate::party::{self, Fingerprint, Host, PartyId, Role};
use crate::pki::certificate::{self, PeerCertificate, RegistrationCheck, check_registration};

/// Most members a roster may list; checked before any certificate is parsed.
pub const MAX_MEMBERS: usize = 10_000;
/// Largest roster file read (10,000 members at about 1 KiB each, with room to spare).
pub const MAX_ROSTER_BYTES: u64 = 32 * 1024 * 1024;
/// Largest registration-instructions file read.
pub const MAX_INSTRUCTIONS_BYTES: u64 = 64 * 1024;
/// The first field of the canonical bytes: format and version of the encoding.
pub const CANONICAL_LABEL: &str = "secagg/roster/1";
/// The only signature algorithm: ECDSA P-256 with SHA-256 (RFC 6979), 64-byte r ‖ s.
pub const SIGNATURE_ALGORITHM: &str = "ecdsa-p256-sha256";

/// Errors about rosters and registration instructions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A federation name with characters or a length we refuse.
    #[error("invalid federation name '{0}': use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file larger than we read.
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max: u64,
    },
    /// The roster file is not a roster (TOML syntax, a missing or extra field).
    #[error("not a valid roster file: {0}")]
    Malformed(String),
    /// More members than [`MAX_MEMBERS`].
    #[error("the roster lists {0} members; at most {MAX_MEMBERS} are accepted")]
    TooManyMembers(usize),
    /// A roster with no member.
    #[error("the roster lists no members")]
    NoMembers,
    /// A malformed id, role, address or port in a roster line or instructions.
    #[error(transparent)]
    Party(#[from] party::Error),
    /// A member's certificate fails a registration check.
    #[error("member '{id}': {source}")]
    Member {
        /// The member's id as listed.
        id: String,
        /// What is wrong with its certificate.
        source: certificate::Error,
    },
    /// The researcher's certificate fails a check.
    #[error("the researcher's certificate: {0}")]
    ResearcherCertificate(certificate::Error),
    /// The same party id twice.
    #[error("party id '{0}' is listed twice")]
    DuplicateId(PartyId),
    /// The same certificate twice.
    #[error("'{first}' and '{second}' have the same certificate ({fingerprint})")]
    DuplicateFingerprint {
        /// The first holder.
        first: PartyId,
        /// The second.
        second: PartyId,
        /// The certificate.
        fingerprint: Fingerprint,
    },
    /// A member with role researcher: a roster has one researcher, its signer.
    #[error(
        "member '{0}' has role researcher; a roster's members are nodes and its researcher is its signer"
    )]
    MemberNotNode(PartyId),
    /// The researcher listed as a member (by id or certificate).
    #[error("member '{0}' is the researcher itself")]
    ResearcherAsMember(PartyId),
    /// Unknown signature algorithm.
    #[error("unsupported roster signature algorithm '{0}' (expected {SIGNATURE_ALGORITHM})")]
    UnknownAlgorithm(String),
    /// The signature does not verify against the roster's researcher certificate.
    #[error(
        "the roster's signature does not verify against its researcher's certificate: the file was altered"
    )]
    BadSignature,
    /// The signing key is not the researcher certificate's key (our bug or a wrong home).
    #[error("the signing key does not belong to the researcher's certificate")]
    WrongKey,
    /// Signing failed.
    #[error("signing the roster failed")]
    Sign,
    /// The roster's fingerprint is not the one the user expected.
    #[error("roster fingerprint mismatch: the file has {actual}, you expected {expected}")]
    FingerprintMismatch {
        /// What the user typed.
        expected: RosterFingerprint,
        /// What the file has.
        actual: RosterFingerprint,
    },
    /// This party's line in the roster holds another certificate.
    #[error(
        "the roster's line for '{id}' holds certificate {listed}, but this party's certificate is {own}"
    )]
    OwnLineNotOurs {
        /// The id of the line.
        id: PartyId,
        /// The certificate listed.
        listed: Fingerprint,
        /// Ours.
        own: Fingerprint,
    },
    /// Our certificate is listed under another id.
    #[error(
        "the roster lists this party's certificate under id '{listed}', but this party is '{own}'"
    )]
    OwnCertificateElsewhere {
        /// The id it is listed under.
        listed: PartyId,
        /// Our id.
        own: PartyId,
    },
    /// This party is not in the roster.
    #[error("this party ('{0}') is not a member of this roster")]
    NotAMember(PartyId),
    /// The importer is the roster's researcher.
    #[error("this roster was created by this party; its members are registered already")]
    OwnRoster,
    /// A fingerprint check is needed and was not given.
    #[error("{reason}; importing it needs the roster fingerprint checked")]
    NeedsFingerprint {
        /// Why.
        reason: String,
    },
    /// An older version than the one already imported.
    #[error("federation '{name}' is at version {have} here; refusing version {got}")]
    Rollback {
        /// The federation.
        name: FederationName,
        /// The version already here.
        have: u64,
        /// The version offered.
        got: u64,
    },
    /// Two different rosters with the same version.
    #[error(
        "federation '{name}' version {version} here has fingerprint {have}; this file is another roster with the same version"
    )]
    Equivocation {
        /// The federation.
        name: FederationName,
        /// The version.
        version: u64,
        /// The fingerprint we hold.
        have: RosterFingerprint,
    },
    /// A next version signed by another researcher key.
    #[error(
        "federation '{name}' was set up with researcher '{have}' ({have_fp}); this roster is signed by another key"
    )]
    DifferentResearcher {
        /// The federation.
        name: FederationName,
        /// The researcher we know.
        have: PartyId,
        /// Its certificate.
        have_fp: Fingerprint,
    },
    /// Registration instructions that cannot be read.
    #[error("not registration instructions: {0}")]
    BadInstructions(String),
    /// Instructions whose command names another certificate than the PEM they carry.
    #[error(
        "the instructions' certificate has fingerprint {actual}, but their command says {stated}"
    )]
    InstructionsFingerprint {
        /// In the command.
        stated: Fingerprint,
        /// Of the PEM.
        actual: Fingerprint,
    },
    /// The certificate in instructions does not parse.
    #[error("{0}")]
    InstructionsCertificate(certificate::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// A federation's name: 1..=64 characters from `[A-Za-z0-9._-]`, like a party id
/// (it appears in shell commands and file names).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FederationName(String);

impl FederationName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FederationName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(FederationName(s.to_owned()))
        } else {
            Err(Error::BadName(s.to_owned()))
        }
    }
}

impl fmt::Display for FederationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a roster's canonical bytes, printed as colon hex like openssl prints
/// fingerprints (`AB:CD:…`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RosterFingerprint(Fingerprint);

impl RosterFingerprint {
    /// The fingerprint of canonical bytes.
    pub fn of_canonical(bytes: &[u8]) -> RosterFingerprint {
        // `Fingerprint::of_der` is SHA-256 of the bytes it is given; the newtype keeps a
        // roster's fingerprint from being taken for a certificate's.
        RosterFingerprint(Fingerprint::of_der(bytes))
    }
}

impl fmt::Display for RosterFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for RosterFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RosterFingerprint({})", self.0)
    }
}

impl FromStr for RosterFingerprint {
    type Err = party::Error;
    /// Accepts `AB:CD:…`, plain hex, and `roster fingerprint: AB:…` as `show` prints it.
    fn from_str(s: &str) -> std::result::Result<Self, party::Error> {
        let t = s.trim();
        let t = match t.split_once(':') {
            Some((prefix, rest)) if prefix.trim().eq_ignore_ascii_case("roster fingerprint") => {
                rest
            }
            _ => t,
        };
        t.parse().map(RosterFingerprint)
    }
}

/// One party in a roster: who, where, and its certificate.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its id (its certificate's CN).
    pub party_id: PartyId,
    /// Its role.
    pub role: Role,
    /// Where peers reach it.
    pub ip: Host,
    /// Its port.
    pub port: u16,
    /// Its certificate.
    pub certificate: PeerCertificate,
}

impl Member {
    /// The record kept of it in the registry's federation tables.
    pub fn record(&self) -> MemberRecord {
        MemberRecord {
            party_id: self.party_id.clone(),
            role: self.role,
            ip: self.ip.clone(),
            port: self.port,
            fingerprint: self.certificate.fingerprint(),
        }
    }
}

/// What a roster says, before it is signed.
#[derive(Clone, Debug)]
pub struct Draft {
    /// The federation.
    pub federation: FederationName,
    /// 1 for the first roster, then one more per version.
    pub version: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// The researcher (role researcher): the signer.
    pub researcher: Member,
    /// The nodes.
    pub members: Vec<Member>,
}

/// A roster whose structure, certificates and signature were checked: it can only be
/// made by [`create`] or [`Roster::from_toml`].
#[derive(Clone, Debug)]
pub struct Roster {
    draft: Draft,
    signature: Signature,
    fingerprint: RosterFingerprint,
}

impl Roster {
    /// The federation.
    pub fn federation(&self) -> &FederationName {
        &self.draft.federation
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.draft.version
    }

    /// Unix seconds.
    pub fn created_at(&self) -> i64 {
        self.draft.created_at
    }

    /// The researcher who signed it.
    pub fn researcher(&self) -> &Member {
        &self.draft.researcher
    }

    /// The members, in canonical order (by certificate fingerprint).
    pub fn members(&self) -> &[Member] {
        &self.draft.members
    }

    /// The roster fingerprint: SHA-256 of the canonical bytes.
    pub fn fingerprint(&self) -> RosterFingerprint {
        self.fingerprint
    }

    /// The canonical bytes (what is signed and fingerprinted).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical(&self.draft)
    }

    /// The roster file: TOML, with a comment saying how to check it.
    pub fn to_toml(&self) -> String {
        let d = &self.draft;
        let mut out = format!(
            "# secagg federation roster. Check it with 'secagg federation show FILE':\n\
             # roster fingerprint: {fp}\n\
             # Only the [roster] values are signed; comments and layout are not.\n\n\
             [roster]\nfederation = \"{fed}\"\nversion = {version}\ncreated_at = {created}\n\n\
             [roster.researcher]\n{researcher}\n",
            fp = self.fingerprint,
            fed = d.federation,
            version = d.version,
            created = d.created_at,
            researcher = party_toml(&d.researcher, false),
        );
        for m in &d.members {
            out.push_str("[[roster.members]]\n");
            out.push_str(&party_toml(m, true));
            out.push('\n');
        }
        out.push_str(&format!(
            "[signature]\nalgorithm = \"{SIGNATURE_ALGORITHM}\"\nvalue = \"{}\"\n",
            hex(&self.signature.to_bytes())
        ));
        out
    }

    /// Parses and checks a roster file: size, TOML shape, member count, every
    /// certificate as `certificate register` checks it at `now` (no waivers), no
    /// duplicate id or certificate, and the researcher's signature.
    pub fn from_toml(bytes: &[u8], now: SystemTime) -> Result<Roster> {
        if bytes.len() as u64 > MAX_ROSTER_BYTES {
            return Err(Error::TooLarge {
                path: PathBuf::from("roster"),
                max: MAX_ROSTER_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::Malformed("the file is not UTF-8 text".into()))?;
        let raw: RawFile =
            toml::from_str(text).map_err(|e| Error::Malformed(e.message().into()))?;
        if raw.roster.members.len() > MAX_MEMBERS {
            return Err(Error::TooManyMembers(raw.roster.members.len()));
        }
        if raw.signature.algorithm != SIGNATURE_ALGORITHM {
            return Err(Error::UnknownAlgorithm(raw.signature.algorithm));
        }
        let signature = unhex(&raw.signature.value)
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| Error::Malformed("the signature is not 64 bytes of hex".into()))?;
        let federation: FederationName = raw.roster.federation.parse()?;
        if raw.roster.version == 0 || raw.roster.version > i64::MAX as u64 {
            return Err(Error::Malformed(format!(
                "version {} is out of range (1 to 2^63-1)",
                raw.roster.version
            )));
        }
        let r = raw.roster.researcher;
        let researcher = Member {
            party_id: r.id.parse()?,
            role: Role::Researcher,
            ip: r.ip.parse()?,
            port: party::parse_port(r.port)?,
            certificate: PeerCertificate::from_pem(r.certificate.as_bytes())
                .map_err(Error::ResearcherCertificate)?,
        };
        let members = raw
            .roster
            .members
            .into_iter()
            .map(|m| {
                let certificate =
                    PeerCertificate::from_pem(m.certificate.as_bytes()).map_err(|source| {
                        Error::Member {
                            id: m.id.clone(),
                            source,
                        }
                    })?;
                Ok(Member {
                    party_id: m.id.parse()?,
                    role: m.role.parse()?,
                    ip: m.ip.parse()?,
                    port: party::parse_port(m.port)?,
                    certificate,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut draft = Draft {
            federation,
            version: raw.roster.version,
            created_at: raw.roster.created_at,
            researcher,
            members,
        };
        sort_members(&mut draft.members);
        // The signature first: a tampered file says so, not what its tampering broke.
        let bytes = canonical(&draft);
        VerifyingKey::from(draft.researcher.certificate.public_key())
            .verify(&bytes, &signature)
            .map_err(|_| Error::BadSignature)?;
        validate(&draft, now)?;
        Ok(Roster {
            draft,
            signature,
            fingerprint: RosterFingerprint::of_canonical(&bytes),
        })
    }

    /// Errors unless the roster's fingerprint is `expected`.
    pub fn check_fingerprint(&self, expected: &RosterFingerprint) -> Result<()> {
        if *expected != self.fingerprint {
            return Err(Error::FingerprintMismatch {
                expected: *expected,
                actual: self.fingerprint,
            });
        }
        Ok(())
    }
}

/// Checks a draft like [`Roster::from_toml`] does, and signs it with the researcher's
/// key (which must be the key of `draft.researcher`'s certificate).
pub fn create(mut draft: Draft, key: &SigningKey, now: SystemTime) -> Result<Roster> {
    if draft.members.len() > MAX_MEMBERS {
        return Err(Error::TooManyMembers(draft.members.len()));
    }
    if p256::PublicKey::from(key.verifying_key()) != *draft.researcher.certificate.public_key() {
        return Err(Error::WrongKey);
    }
    draft.researcher.role = Role::Researcher;
    sort_members(&mut draft.members);
    validate(&draft, now)?;
    let bytes = canonical(&draft);
    let signature: Signature = key.try_sign(&bytes).map_err(|_| Error::Sign)?;
    Ok(Roster {
        draft,
        signature,
        fingerprint: RosterFingerprint::of_canonical(&bytes),
    })
}

fn sort_members(members: &mut [Member]) {
    members.sort_by_key(|m| *m.certificate.fingerprint().as_bytes());
}

/// Every member passes the registration checks, nobody twice, the researcher not a member.
fn validate(d: &Draft, now: SystemTime) -> Result<()> {
    if d.members.is_empty() {
        return Err(Error::NoMembers);
    }
    let r = &d.researcher;
    check_registration(
        &r.certificate,
        &r.party_id,
        None,
        now,
        RegistrationCheck::STRICT,
    )
    .map_err(Error::ResearcherCertificate)?;
    let mut ids = BTreeSet::new();
    let mut fps: BTreeMap<Fingerprint, &PartyId> = BTreeMap::new();
    for m in &d.members {
        if m.role != Role::Node {
            return Err(Error::MemberNotNode(m.party_id.clone()));
        }
        if m.party_id == r.party_id || m.certificate.fingerprint() == r.certificate.fingerprint() {
            return Err(Error::ResearcherAsMember(m.party_id.clone()));
        }
        check_registration(
            &m.certificate,
            &m.party_id,
            Some(&r.certificate.fingerprint()),
            now,
            RegistrationCheck::STRICT,
        )
        .map_err(|source| Error::Member {
            id: m.party_id.to_string(),
            source,
        })?;
        if !ids.insert(&m.party_id) {
            return Err(Error::DuplicateId(m.party_id.clone()));
        }
        if let Some(first) = fps.insert(m.certificate.fingerprint(), &m.party_id) {
            return Err(Error::DuplicateFingerprint {
                first: first.clone(),
                second: m.party_id.clone(),
                fingerprint: m.certificate.fingerprint(),
            });
        }
    }
    Ok(())
}

/// `str(s) = u32be(len) ‖ bytes`.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded far below 4 GiB (ids 64 bytes, certificates from a file of
    // at most MAX_ROSTER_BYTES), so the length fits.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_party(out: &mut Vec<u8>, m: &Member) {
    put(out, m.party_id.as_str().as_bytes());
    put(out, m.role.as_str().as_bytes());
    put(out, m.ip.as_str().as_bytes());
    out.extend_from_slice(&m.port.to_be_bytes());
    put(out, m.certificate.der());
}

/// The canonical bytes, exactly as docs/roster.md specifies them.
fn canonical(d: &Draft) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 * (d.members.len() + 1));
    put(&mut out, CANONICAL_LABEL.as_bytes());
    put(&mut out, d.federation.as_str().as_bytes());
    out.extend_from_slice(&d.version.to_be_bytes());
    out.extend_from_slice(&d.created_at.to_be_bytes());
    put_party(&mut out, &d.researcher);
    // MAX_MEMBERS fits in a u32.
    out.extend_from_slice(&(d.members.len() as u32).to_be_bytes());
    for m in &d.members {
        put_party(&mut out, m);
    }
    out
}

fn party_toml(m: &Member, with_role: bool) -> String {
    // Ids, roles, hosts and PEM use alphabets that need no TOML escaping.
    let role = if with_role {
        format!("role = \"{}\"\n", m.role)
    } else {
        String::new()
    };
    format!(
        "id = \"{}\"\n{role}ip = \"{}\"\nport = {}\ncertificate = \"\"\"\n{}\"\"\"\n",
        m.party_id,
        m.ip,
        m.port,
        m.certificate.to_pem()
    )
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if s.len() != 128 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    roster: RawBody,
    signature: RawSignature,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    federation: String,
    version: u64,
    created_at: i64,
    researcher: RawResearcher,
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResearcher {
    id: String,
    ip: String,
    port: u64,
    certificate: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: String,
    role: String,
    ip: String,
    port: u64,
    certificate: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    algorithm: String,
    value: String,
}

/// Reads at most `max` bytes of `path`; a longer file is an error before it is read whole.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(bytes)
}

#[derive(Deserialize)]
struct InstructionsJson {
    party_id: String,
    role: String,
    ip: String,
    port: u64,
    fingerprint: String,
    certificate_pem: String,
}

/// Reads what `certificate registration-instructions` printed (text or `--json`): the
/// certificate, and the id, role, address and port of its command. The fingerprint in
/// the command must be the certificate's. Registration checks come later ([`create`]).
pub fn parse_instructions(text: &str) -> Result<Member> {
    let (id, role, ip, port, stated, pem) = if text.trim_start().starts_with('{') {
        let j: InstructionsJson =
            serde_json::from_str(text).map_err(|e| Error::BadInstructions(e.to_string()))?;
        (
            j.party_id,
            j.role,
            j.ip,
            j.port,
            j.fingerprint,
            j.certificate_pem,
        )
    } else {
        instructions_text(text)?
    };
    let certificate =
        PeerCertificate::from_pem(pem.as_bytes()).map_err(Error::InstructionsCertificate)?;
    let stated: Fingerprint = stated.parse()?;
    if stated != certificate.fingerprint() {
        return Err(Error::InstructionsFingerprint {
            stated,
            actual: certificate.fingerprint(),
        });
    }
    Ok(Member {
        party_id: id.parse()?,
        role: role.parse()?,
        ip: ip.parse()?,
        port: party::parse_port(port)?,
        certificate,
    })
}

type InstructionFields = (String, String, String, u64, String, String);

fn instructions_text(text: &str) -> Result<InstructionFields> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END CERTIFICATE-----";
    let pem = match text.matches(BEGIN).count() {
        0 => return Err(Error::InstructionsCertificate(certificate::Error::NotPem)),
        1 => {
            let start = text.find(BEGIN).unwrap_or(0);
            let end = text[start..]
                .find(END)
                .map(|e| start + e + END.len())
                .ok_or(Error::InstructionsCertificate(certificate::Error::NotPem))?;
            format!("{}\n", &text[start..end])
        }
        n => {
            return Err(Error::InstructionsCertificate(
                certificate::Error::TooManyBlocks(n),
            ));
        }
    };
    let command = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("secagg ") && l.contains(" certificate register "))
        .ok_or_else(|| {
            Error::BadInstructions("no 'secagg certificate register ...' command line".into())
        })?;
    let words: Vec<&str> = command.split_whitespace().collect();
    let flag = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .map(|v| (*v).to_owned())
    };
    let need = |name: &str| {
        flag(name).ok_or_else(|| Error::BadInstructions(format!("the command has no {name}")))
    };
    let port = need("--port")?;
    let port = port.parse::<u64>().map_err(|_| {
        Error::BadInstructions(format!("the command's --port '{port}' is not a number"))
    })?;
    Ok((
        need("--party-id")?,
        flag("--role").unwrap_or_else(|| "node".into()),
        need("--ip")?,
        port,
        need("--fingerprint")?,
        pem,
    ))
}

/// A member as the registry's federation tables remember it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// Its id.
    pub party_id: PartyId,
    /// Its role.
    pub role: Role,
    /// Its address.
    pub ip: Host,
    /// Its port.
    pub port: u16,
    /// Its certificate.
    pub fingerprint: Fingerprint,
}

/// What this party holds of a federation: the last roster it created or imported.
#[derive(Clone, Debug)]
pub struct FederationState {
    /// The federation.
    pub name: FederationName,
    /// The version.
    pub version: u64,
    /// Its fingerprint.
    pub roster_fingerprint: RosterFingerprint,
    /// The researcher's line.
    pub researcher: MemberRecord,
    /// The researcher's certificate DER (its key must sign every next version).
    pub researcher_der: Vec<u8>,
    /// The members.
    pub members: Vec<MemberRecord>,
}

/// How a roster differs from the version held before.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// New ids.
    pub added: Vec<MemberRecord>,
    /// Ids no longer listed.
    pub removed: Vec<MemberRecord>,
    /// Same id, another certificate: `(old, new)`.
    pub recertified: Vec<(MemberRecord, MemberRecord)>,
    /// Same id and certificate, another address or port: `(old, new)`.
    pub moved: Vec<(MemberRecord, MemberRecord)>,
    /// The researcher's line changed: `(old, new)`.
    pub researcher: Option<(MemberRecord, MemberRecord)>,
}

impl Changes {
    /// Whether any certificate nobody confirmed through the previous fingerprint
    /// appears: a new member, or a member or researcher with a new certificate or id.
    pub fn brings_new_certificates(&self) -> bool {
        !self.added.is_empty()
            || !self.recertified.is_empty()
            || self
                .researcher
                .as_ref()
                .is_some_and(|(o, n)| o.fingerprint != n.fingerprint || o.party_id != n.party_id)
    }

    /// Whether nothing changed at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.recertified.is_empty()
            && self.moved.is_empty()
            && self.researcher.is_none()
    }
}

/// Compares a roster with what was held before.
pub fn diff(previous: &FederationState, roster: &Roster) -> Changes {
    let old: BTreeMap<&PartyId, &MemberRecord> =
        previous.members.iter().map(|m| (&m.party_id, m)).collect();
    let mut changes = Changes::default();
    let mut seen = BTreeSet::new();
    for m in roster.members() {
        let new = m.record();
        seen.insert(m.party_id.clone());
        match old.get(&m.party_id) {
            None => changes.added.push(new),
            Some(o) if o.fingerprint != new.fingerprint => {
                changes.recertified.push(((*o).clone(), new))
            }
            Some(o) if **o != new => changes.moved.push(((*o).clone(), new)),
            Some(_) => {}
        }
    }
    changes.removed = previous
        .members
        .iter()
        .filter(|m| !seen.contains(&m.party_id))
        .cloned()
        .collect();
    let r = roster.researcher().record();
    if r != previous.researcher {
        changes.researcher = Some((previous.researcher.clone(), r));
    }
    changes.added.sort_by(|a, b| a.party_id.cmp(&b.party_id));
    changes
}

/// What importing a roster will do.
#[derive(Clone, Debug)]
pub enum ImportPlan {
    /// The first roster of this federation here.
    First,
    /// A next version.
    Update {
        /// The version held before.
        from: u64,
        /// What changes.
        changes: Box<Changes>,
    },
    /// Exactly this roster is imported already.
    UpToDate,
}

/// The rules of `federation import`, checked before anything is written:
/// - a given fingerprint must match;
/// - this party's own line must be its own certificate (by id and by fingerprint);
/// - the first roster of a federation needs the fingerprint;
/// - a next version must be signed by the same researcher key, have a higher version,
///   and needs the fingerprint again if it brings a certificate nobody confirmed
///   (a new member could be a Sybil); removals and address changes need only the
///   signature.
pub fn plan_import(
    roster: &Roster,
    previous: Option<&FederationState>,
    own_id: &PartyId,
    own: &Fingerprint,
    expected: Option<&RosterFingerprint>,
) -> Result<ImportPlan> {
    if let Some(expected) = expected {
        roster.check_fingerprint(expected)?;
    }
    if roster.researcher().certificate.fingerprint() == *own {
        return Err(Error::OwnRoster);
    }
    check_own_line(roster, own_id, own)?;
    let Some(prev) = previous else {
        if expected.is_none() {
            return Err(Error::NeedsFingerprint {
                reason: format!(
                    "this is the first roster of federation '{}' here",
                    roster.federation()
                ),
            });
        }
        return Ok(ImportPlan::First);
    };
    let same_key = PeerCertificate::from_der(&prev.researcher_der)
        .map(|c| c.public_key() == roster.researcher().certificate.public_key())
        .unwrap_or(false);
    if !same_key {
        return Err(Error::DifferentResearcher {
            name: prev.name.clone(),
            have: prev.researcher.party_id.clone(),
            have_fp: prev.researcher.fingerprint,
        });
    }
    if roster.version() < prev.version {
        return Err(Error::Rollback {
            name: prev.name.clone(),
            have: prev.version,
            got: roster.version(),
        });
    }
    if roster.version() == prev.version {
        if roster.fingerprint() == prev.roster_fingerprint {
            return Ok(ImportPlan::UpToDate);
        }
        return Err(Error::Equivocation {
            name: prev.name.clone(),
            version: prev.version,
            have: prev.roster_fingerprint,
        });
    }
    let changes = diff(prev, roster);
    if changes.brings_new_certificates() && expected.is_none() {
        let mut new: Vec<String> = changes
            .added
            .iter()
            .map(|m| m.party_id.to_string())
            .collect();
        new.extend(
            changes
                .recertified
                .iter()
                .map(|(_, n)| format!("{} (new certificate)", n.party_id)),
        );
        if let Some((_, n)) = &changes.researcher {
            new.push(format!("researcher {}", n.party_id));
        }
        return Err(Error::NeedsFingerprint {
            reason: format!(
                "version {} of federation '{}' brings certificates not confirmed before: {}",
                roster.version(),
                roster.federation(),
                new.join(", ")
            ),
        });
    }
    Ok(ImportPlan::Update {
        from: prev.version,
        changes: Box::new(changes),
    })
}

fn check_own_line(roster: &Roster, own_id: &PartyId, own: &Fingerprint) -> Result<()> {
    for m in roster.members() {
        let fp = m.certificate.fingerprint();
        if m.party_id == *own_id && fp != *own {
            return Err(Error::OwnLineNotOurs {
                id: own_id.clone(),
                listed: fp,
                own: *own,
            });
        }
        if fp == *own && m.party_id != *own_id {
            return Err(Error::OwnCertificateElsewhere {
                listed: m.party_id.clone(),
                own: own_id.clone(),
            });
        }
    }
    if roster.members().iter().any(|m| m.party_id == *own_id) {
        Ok(())
    } else {
        Err(Error::NotAMember(own_id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::certificate::{CertParams, self_signed};
    use crate::pki::identity::PartyKey;

    fn party(id: &str, role: Role, port: u16) -> (PartyKey, Member) {
        let key = PartyKey::generate().expect("rng");
        let cert = self_signed(
            key.signing_key(),
            &CertParams::for_days(
                id.parse().expect("id"),
                "127.0.0.1".parse().expect("host"),
                30,
            ),
        )
        .expect("cert");
        let m = Member {
            party_id: id.parse().expect("id"),
            role,
            ip: "127.0.0.1".parse().expect("host"),
            port,
            certificate: cert,
        };
        (key, m)
    }

    fn draft(n: usize) -> (PartyKey, Draft) {
        let (key, researcher) = party("researcher", Role::Researcher, 7000);
        let members = (1..=n)
            .map(|i| party(&format!("node_{i}"), Role::Node, 7000 + i as u16).1)
            .collect();
        let d = Draft {
            federation: "study-42".parse().expect("name"),
            version: 1,
            created_at: 1_700_000_000,
            researcher,
            members,
        };
        (key, d)
    }

    #[test]
    fn sign_write_parse_round_trip() {
        let (key, d) = draft(3);
        let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
        let text = roster.to_toml();
        let again = Roster::from_toml(text.as_bytes(), SystemTime::now()).expect("parse");
        assert_eq!(again.fingerprint(), roster.fingerprint());
        assert_eq!(again.canonical_bytes(), roster.canonical_bytes());
        assert_eq!(again.to_toml(), text);
        assert_eq!(again.members().len(), 3);
        let fps: Vec<_> = again
            .members()
            .iter()
            .map(|m| *m.certificate.fingerprint().as_bytes())
            .collect();
        let mut sorted = fps.clone();
        sorted.sort();
        assert_eq!(fps, sorted, "members in canonical order");
        // The fingerprint is SHA-256 of the canonical bytes and prints like openssl's.
        let s = roster.fingerprint().to_string();
        assert_eq!(s.len(), 95);
        assert_eq!(
            s.parse::<RosterFingerprint>().ok(),
            Some(roster.fingerprint())
        );
        assert_eq!(
            format!("roster fingerprint: {s}")
                .parse::<RosterFingerprint>()
                .ok(),
            Some(roster.fingerprint())
        );
    }

    #[test]
    fn reformatting_keeps_the_fingerprint_and_tampering_breaks_the_signature() {
        let (key, d) = draft(2);
        let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
        let text = roster.to_toml();
        // Comments, blank lines and member order are not signed.
        let mut blocks: Vec<&str> = text.split("[[roster.members]]\n").collect();
        let sig_at = blocks[2].find("[signature]").expect("sig");
        let (m2, sig) = blocks[2].split_at(sig_at);
        let tail = m2.to_string();
        blocks[2] = &tail;
        let swapped = format!(
            "{}\n\n[[roster.members]]\n{}[[roster.members]]\n{}\n{}",
            blocks[0].replace("# ", "## "),
            blocks[2],
            blocks[1],
            sig
        );
        let again = Roster::from_toml(swapped.as_bytes(), SystemTime::now()).expect("parse");
        assert_eq!(again.fingerprint(), roster.fingerprint());

        let tampered = text.replacen("port = 7001", "port = 7009", 1);
        assert_ne!(tampered, text);
        assert!(matches!(
            Roster::from_toml(tampered.as_bytes(), SystemTime::now()),
            Err(Error::BadSignature)
        ));
        let renamed = text.replacen("version = 1", "version = 2", 1);
        assert!(matches!(
            Roster::from_toml(renamed.as_bytes(), SystemTime::now()),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn canonical_bytes_are_length_prefixed_fields() {
        let (key, d) = draft(1);
        let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
        let b = roster.canonical_bytes();
        assert_eq!(&b[..4], &(CANONICAL_LABEL.len() as u32).to_be_bytes());
        assert_eq!(&b[4..4 + CANONICAL_LABEL.len()], CANONICAL_LABEL.as_bytes());
        let at = 4 + CANONICAL_LABEL.len();
        assert_eq!(&b[at..at + 4], &8u32.to_be_bytes());
        assert_eq!(&b[at + 4..at + 12], b"study-42");
        assert_eq!(&b[at + 12..at + 20], &1u64.to_be_bytes());
        assert_eq!(&b[at + 20..at + 28], &1_700_000_000i64.to_be_bytes());
        let m = &roster.members()[0];
        let der = m.certificate.der();
        assert_eq!(&b[b.len() - der.len()..], der);
    }

    #[test]
    fn drafts_are_validated() {
        let (key, mut d) = draft(2);
        d.members[1].party_id = d.members[0].party_id.clone();
        assert!(matches!(
            create(d, key.signing_key(), SystemTime::now()),
            Err(Error::Member {
                source: certificate::Error::CnMismatch { .. },
                ..
            }) | Err(Error::DuplicateId(_))
        ));
        let (key, mut d) = draft(2);
        d.members[1] = d.members[0].clone();
        assert!(matches!(
            create(d, key.signing_key(), SystemTime::now()),
            Err(Error::DuplicateId(_))
        ));
        let (key, mut d) = draft(1);
        d.members.push(d.researcher.clone());
        assert!(matches!(
            create(d, key.signing_key(), SystemTime::now()),
            Err(Error::MemberNotNode(_)) | Err(Error::ResearcherAsMember(_))
        ));
        let (_, d) = draft(1);
        let other = PartyKey::generate().expect("rng");
        assert!(matches!(
            create(d, other.signing_key(), SystemTime::now()),
            Err(Error::WrongKey)
        ));
        let (key, d) = draft(1);
        let later = SystemTime::now() + std::time::Duration::from_secs(86_400 * 60);
        assert!(matches!(
            create(d, key.signing_key(), later),
            Err(Error::ResearcherCertificate(certificate::Error::Expired(_)))
        ));
    }

    #[test]
    fn import_rules() {
        let (key, d) = draft(3);
        let me = d.members[0].clone();
        let v1 = create(d.clone(), key.signing_key(), SystemTime::now()).expect("v1");
        let own = me.certificate.fingerprint();
        assert!(matches!(
            plan_import(&v1, None, &me.party_id, &own, None),
            Err(Error::NeedsFingerprint { .. })
        ));
        assert!(matches!(
            plan_import(&v1, None, &me.party_id, &own, Some(&v1.fingerprint())),
            Ok(ImportPlan::First)
        ));
        let state = FederationState {
            name: v1.federation().clone(),
            version: 1,
            roster_fingerprint: v1.fingerprint(),
            researcher: v1.researcher().record(),
            researcher_der: v1.researcher().certificate.der().to_vec(),
            members: v1.members().iter().map(Member::record).collect(),
        };
        // v2 drops node_3 and moves node_2: the signature suffices.
        let mut d2 = d.clone();
        d2.version = 2;
        d2.members.retain(|m| m.party_id.as_str() != "node_3");
        d2.members[1].port = 9999;
        let v2 = create(d2.clone(), key.signing_key(), SystemTime::now()).expect("v2");
        match plan_import(&v2, Some(&state), &me.party_id, &own, None) {
            Ok(ImportPlan::Update { from: 1, changes }) => {
                assert_eq!(changes.removed.len(), 1);
                assert_eq!(changes.moved.len(), 1);
                assert!(!changes.brings_new_certificates());
            }
            other => panic!("{other:?}"),
        }
        // v3 adds a member: fingerprint needed.
        let mut d3 = d2.clone();
        d3.version = 3;
        d3.members.push(party("node_9", Role::Node, 7009).1);
        let v3 = create(d3, key.signing_key(), SystemTime::now()).expect("v3");
        assert!(matches!(
            plan_import(&v3, Some(&state), &me.party_id, &own, None),
            Err(Error::NeedsFingerprint { .. })
        ));
        // Same version, other content: equivocation; lower: rollback; same: up to date.
        let mut d1b = d.clone();
        d1b.created_at += 1;
        let v1b = create(d1b, key.signing_key(), SystemTime::now()).expect("v1b");
        assert!(matches!(
            plan_import(&v1b, Some(&state), &me.party_id, &own, None),
            Err(Error::Equivocation { .. })
        ));
        assert!(matches!(
            plan_import(&v1, Some(&state), &me.party_id, &own, None),
            Ok(ImportPlan::UpToDate)
        ));
        // Another researcher key.
        let (key2, mut r2) = party("researcher", Role::Researcher, 7000);
        r2.role = Role::Researcher;
        let mut d4 = d.clone();
        d4.version = 4;
        d4.researcher = r2;
        let v4 = create(d4, key2.signing_key(), SystemTime::now()).expect("v4");
        assert!(matches!(
            plan_import(
                &v4,
                Some(&state),
                &me.party_id,
                &own,
                Some(&v4.fingerprint())
            ),
            Err(Error::DifferentResearcher { .. })
        ));
        // Our line with another certificate; not listed at all; our own roster.
        let other = party("node_1", Role::Node, 1).1.certificate.fingerprint();
        assert!(matches!(
            plan_import(&v1, None, &me.party_id, &other, Some(&v1.fingerprint())),
            Err(Error::OwnLineNotOurs { .. })
        ));
        let stranger: PartyId = "node_7".parse().expect("id");
        assert!(matches!(
            plan_import(&v1, None, &stranger, &other, Some(&v1.fingerprint())),
            Err(Error::NotAMember(_))
        ));
        let rfp = v1.researcher().certificate.fingerprint();
        assert!(matches!(
            plan_import(&v1, None, &v1.researcher().party_id, &rfp, None),
            Err(Error::OwnRoster)
        ));
        let wrong = v2.fingerprint();
        assert!(matches!(
            plan_import(&v1, None, &me.party_id, &own, Some(&wrong)),
            Err(Error::FingerprintMismatch { .. })
        ));
    }

    #[test]
    fn instructions_parse_text_and_refuse_mismatches() {
        let (_, m) = party("node_1", Role::Node, 7001);
        let fp = m.certificate.fingerprint();
        let text = format!(
            "Registration instructions for node 'node_1'\n\n{}\n\
             secagg certificate register --public-key node_1.pem --party-id node_1 --ip 10.0.0.1 --port 7001 --role node --fingerprint {fp}\n",
            m.certificate.to_pem()
        );
        let got = parse_instructions(&text).expect("parse");
        assert_eq!(got.party_id.as_str(), "node_1");
        assert_eq!(got.ip.as_str(), "10.0.0.1");
        assert_eq!(got.port, 7001);
        assert_eq!(got.certificate.fingerprint(), fp);
        let other = party("node_2", Role::Node, 7002)
            .1
            .certificate
            .fingerprint();
        let lying = text.replace(&fp.to_string(), &other.to_string());
        assert!(matches!(
            parse_instructions(&lying),
            Err(Error::InstructionsFingerprint { .. })
        ));
        assert!(matches!(
            parse_instructions("hello"),
            Err(Error::InstructionsCertificate(certificate::Error::NotPem))
        ));
        let no_cmd = m.certificate.to_pem();
        assert!(matches!(
            parse_instructions(&no_cmd),
            Err(Error::BadInstructions(_))
        ));
    }

    #[test]
    fn oversized_and_malformed_rosters_are_refused() {
        assert!(matches!(
            Roster::from_toml(b"[roster]\nfederation = 1", SystemTime::now()),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            Roster::from_toml(&[0xff, 0xfe], SystemTime::now()),
            Err(Error::Malformed(_))
        ));
        let (key, d) = draft(1);
        let roster = create(d, key.signing_key(), SystemTime::now()).expect("create");
        let extra = roster
            .to_toml()
            .replace("[signature]\n", "[signature]\nnote = \"x\"\n");
        assert!(matches!(
            Roster::from_toml(extra.as_bytes(), SystemTime::now()),
            Err(Error::Malformed(_))
        ));
    }
}
