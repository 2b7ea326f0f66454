//! Who the parties are: this party's identity and key ([`identity`]), self-signed
//! P-256 certificates ([`certificate`]), the SQLite registry of peers ([`registry`]) and,
//! in the same database, the journal of what this party has masked for ([`journal`]) and
//! the federation rosters it created or imported ([`roster`], [`federation`]).

pub mod certificate;
pub mod federation;
pub mod identity;
pub mod journal;
pub mod registry;
pub mod registry_error;
pub mod roster;
pub mod schema;
