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

mod canonical;
mod error;
mod file;
mod import;
mod instructions;

pub use error::Error;
pub use file::read_capped;
pub use import::{Changes, FederationState, ImportPlan, MemberRecord, diff, plan_import};
pub use instructions::parse_instructions;

use canonical::canonical;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

use crate::party::{self, Fingerprint, Host, PartyId, Role};
use crate::pki::certificate::{PeerCertificate, RegistrationCheck, check_registration};

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

#[cfg(test)]
mod tests;
