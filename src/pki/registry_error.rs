//! The registry's and the journal's errors, each saying what is wrong in this party's
//! own words (advice on flags and commands lives in the CLI's hints).

use std::path::PathBuf;

use crate::party::{Fingerprint, PartyId};

/// Errors about the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but is not a SQLite database we can read.
    #[error("registry {} is corrupt or not a secagg registry: {reason}", path.display())]
    Corrupt {
        /// The registry file.
        path: PathBuf,
        /// SQLite's words.
        reason: String,
    },
    /// The registry was written by a newer secagg.
    #[error("registry {} has schema version {found}; this secagg knows up to {known}", path.display())]
    TooNew {
        /// The registry file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// The registry cannot be written (read-only file or directory).
    #[error("registry {} is read-only: {reason}", path.display())]
    ReadOnly {
        /// The registry file.
        path: PathBuf,
        /// SQLite's words.
        reason: String,
    },
    /// Any other SQLite failure.
    #[error("registry {} failed: {source}", path.display())]
    Sqlite {
        /// The registry file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// The party id is taken and the caller did not ask to replace it.
    #[error("party id '{0}' is already registered")]
    DuplicateId(PartyId),
    /// The same certificate is registered under another id.
    #[error("this certificate (fingerprint {fingerprint}) is already registered as '{existing}'")]
    DuplicateFingerprint {
        /// The fingerprint.
        fingerprint: Fingerprint,
        /// Who has it.
        existing: PartyId,
    },
    /// No such party.
    #[error("no party '{0}' in the registry")]
    UnknownParty(PartyId),
    /// A row that does not parse (edited by hand?).
    #[error("registry {} has an invalid row for '{party}': {reason}", path.display())]
    BadRow {
        /// The registry file.
        path: PathBuf,
        /// The row's party id as stored.
        party: String,
        /// What is wrong.
        reason: String,
    },
    /// A masked file was already made for this (federation, round, label).
    #[error(
        "already masked for federation '{federation}', round {round}, label '{label}'; reusing a mask would leak the difference of two inputs"
    )]
    MaskReuse {
        /// Federation id.
        federation: String,
        /// Round number.
        round: u64,
        /// Vector label.
        label: String,
    },
    /// A round number that is not above the last one this party advertised keys for.
    #[error(
        "round {round} of federation '{federation}' is not above round {last}, the last one this party took part in; a round is never joined twice"
    )]
    RoundNotFresh {
        /// Federation.
        federation: String,
        /// The round refused.
        round: u64,
        /// The last round journaled.
        last: u64,
    },
    /// A second, different consistency message in one round.
    #[error("this party already signed a consistency message in round {round} of '{federation}'")]
    AlreadySigned {
        /// Federation.
        federation: String,
        /// Round.
        round: u64,
    },
    /// A share of a peer was already revealed in this round.
    #[error("a share of peer {peer} was already revealed in round {round} of '{federation}'")]
    AlreadyRevealed {
        /// Federation.
        federation: String,
        /// Round.
        round: u64,
        /// The peer's fingerprint.
        peer: Fingerprint,
    },
    /// This input was released before (in a round or a masked file).
    #[error(
        "this update was already released ({mode} mode, federation '{federation}', round {round}); releasing one input to two sums lets the aggregator subtract them"
    )]
    InputReleased {
        /// Where it went: "round" or "file".
        mode: String,
        /// Federation.
        federation: String,
        /// Round.
        round: u64,
    },
    /// A release checked without its version-1 digest in a registry that holds
    /// version-1 releases: the check could miss an input released before the upgrade.
    #[error(
        "registry {} holds releases journaled with the version-1 input digest, and this update's was not computed (our bug); nothing was released",
        path.display()
    )]
    LegacyDigestMissing {
        /// The registry file.
        path: PathBuf,
    },
}
