//! Errors about rosters and registration instructions.

use std::path::PathBuf;

use crate::party::{self, Fingerprint, PartyId};
use crate::pki::certificate;

use super::{FederationName, MAX_MEMBERS, RosterFingerprint, SIGNATURE_ALGORITHM};

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
