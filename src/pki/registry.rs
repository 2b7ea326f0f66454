//! The peer registry and the mask-reuse journal (see `journal.rs`), in one SQLite file per home.
//!
//! - WAL mode and a busy timeout let many processes register at once.
//! - Every write is one `BEGIN IMMEDIATE` transaction, so checks and the write see the
//!   same state.
//! - Migrations are append-only and tracked with `PRAGMA user_version` (as cargo does).
//! - An existing file that is not a readable database is reported, never recreated.
//! - "Not found" is an `Option`, not an error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::party::Fingerprint;
use crate::party::{Host, PartyId, Role};
use crate::pki::schema::MIGRATIONS;

/// How long a process waits for another one holding the registry.
const BUSY_WAIT: Duration = Duration::from_secs(30);

pub use crate::pki::registry_error::Error;

type Result<T> = std::result::Result<T, Error>;

/// Why no single researcher could be chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoResearcher {
    /// None is registered.
    None,
    /// Several are, and none was chosen.
    Many(Vec<PartyId>),
    /// The chosen id is not registered as a researcher.
    Unknown(PartyId),
}

/// A registered peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its id (CN of its certificate unless registered otherwise).
    pub party_id: PartyId,
    /// node or researcher.
    pub role: Role,
    /// Where to reach it.
    pub ip: Host,
    /// Its port.
    pub port: u16,
    /// SHA-256 of its certificate.
    pub fingerprint: Fingerprint,
    /// End of the certificate's validity (unix seconds).
    pub not_after: i64,
    /// When we registered it (unix seconds).
    pub registered_at: i64,
}

/// A new registration.
#[derive(Clone, Debug)]
pub struct NewPeer<'a> {
    /// What will be listed.
    pub peer: Peer,
    /// The certificate DER.
    pub cert_der: &'a [u8],
}

/// Whether an existing registration of the same id may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Refuse.
    Refuse,
    /// Replace it.
    Replace,
}

/// What a successful registration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A new row.
    Added,
    /// The previous row for this id, now replaced.
    Replaced(Peer),
}

/// An open registry.
pub struct Registry {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
}

impl Registry {
    /// Opens (creating if needed) the registry at `path` and brings its schema up to date.
    ///
    /// While a new file switches to WAL mode, SQLite can answer "database is locked"
    /// without calling the busy handler (it would otherwise risk a deadlock). Opening
    /// therefore retries the whole open-and-migrate step, with backoff, for up to
    /// `BUSY_WAIT` (30 s).
    pub fn open(path: &Path) -> Result<Registry> {
        retry_busy(|| Self::open_once(path))
    }

    fn open_once(path: &Path) -> Result<Registry> {
        if !path.exists() {
            Self::create(path)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut reg = Self::open_with(path, flags)?;
        reg.migrate()?;
        Ok(reg)
    }

    /// Creates a new registry atomically: built and migrated under a temporary name in
    /// the same directory, then linked into place only if nothing is there yet. No
    /// process ever sees a half-made (empty) registry, so an empty file at `path` is
    /// always damage, never a registry being created.
    fn create(path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let read_only = |reason: String| Error::ReadOnly {
            path: path.to_owned(),
            reason,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".registry-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| read_only(format!("cannot create a file in {}: {e}", dir.display())))?;
        {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn =
                Connection::open_with_flags(tmp.path(), flags).map_err(|e| classify(path, e))?;
            let mut fresh = Registry {
                conn,
                path: tmp.path().to_owned(),
            };
            fresh.migrate()?;
            let mode: String = fresh
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(|e| classify(path, e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(read_only(format!(
                    "cannot switch to WAL mode (got '{mode}')"
                )));
            }
            // Closing checkpoints and removes the temporary -wal and -shm files.
            fresh.conn.close().map_err(|(_, e)| classify(path, e))?;
        }
        match tmp.persist_noclobber(path) {
            Ok(_) => Ok(()),
            // Another process created it first: use theirs.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(read_only(format!("cannot create it: {}", e.error))),
        }
    }

    /// Opens an existing registry read-only (no write, no migration, no new file, and
    /// it works in a read-only home); `None` if there is none yet. A registry older than
    /// this secagg is read as it is, if it has the tables being read.
    pub fn open_read_only(path: &Path) -> Result<Option<Registry>> {
        if !path.exists() {
            return Ok(None);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let uri = format!("file:{}?immutable=1", uri_path(path));
        let immutable = || {
            retry_busy(|| Self::open_checked(path, flags | OpenFlags::SQLITE_OPEN_URI, Some(&uri)))
        };
        // Without a -wal file every committed change is in the main file (the last
        // connection checkpointed and removed it), so the file can be read as immutable:
        // SQLite then creates no -wal or -shm file, which a read-only home could not hold.
        // With one, another connection may be live: read through the WAL as usual.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let reg = if !Path::new(&wal).exists() {
            immutable()?
        } else {
            match retry_busy(|| Self::open_checked(path, flags, None)) {
                // In a read-only directory SQLite cannot create the WAL index (-shm);
                // nobody can write the registry there either.
                Err(Error::ReadOnly { .. }) => immutable()?,
                other => other?,
            }
        };
        let version = reg.user_version()?;
        if version > MIGRATIONS.len() as i64 {
            return Err(Error::TooNew {
                path: path.to_owned(),
                found: version,
                known: MIGRATIONS.len() as i64,
            });
        }
        Ok(Some(reg))
    }

    /// Opens `path` (or `uri`) with `flags` and checks that it is a secagg registry,
    /// writing nothing.
    fn open_checked(path: &Path, flags: OpenFlags, uri: Option<&str>) -> Result<Registry> {
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                reason: "the file is empty".into(),
            });
        }
        let target = uri.map_or_else(|| path.to_string_lossy().into_owned(), str::to_owned);
        let conn = Connection::open_with_flags(&target, flags).map_err(|e| classify(path, e))?;
        let reg = Registry {
            conn,
            path: path.to_owned(),
        };
        reg.conn.busy_timeout(BUSY_WAIT).map_err(|e| reg.err(e))?;
        reg.check_secagg()?;
        Ok(reg)
    }

    /// Refuses an SQLite database that is not a secagg registry, before any write.
    fn check_secagg(&self) -> Result<()> {
        let version = self.user_version()?;
        let tables: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .map_err(|e| self.err(e))?;
            stmt.query_map([], |r| r.get(0))
                .map_err(|e| self.err(e))?
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| self.err(e))?
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: self.path.clone(),
            reason,
        };
        if version == 0 && !tables.is_empty() {
            return Err(corrupt(format!(
                "an SQLite database with other tables ({}) and no secagg schema",
                tables.join(", ")
            )));
        }
        if version > 0 && !tables.iter().any(|t| t == "peers") {
            return Err(corrupt(format!(
                "schema version {version} but no peers table"
            )));
        }
        Ok(())
    }

    /// Opens an existing registry without writing to it; `None` if there is none yet.
    pub fn open_existing(path: &Path) -> Result<Option<Registry>> {
        if !path.exists() {
            return Ok(None);
        }
        let reg = retry_busy(|| {
            Self::open_with(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        })?;
        let version = reg.user_version()?;
        if version > MIGRATIONS.len() as i64 {
            return Err(Error::TooNew {
                path: path.to_owned(),
                found: version,
                known: MIGRATIONS.len() as i64,
            });
        }
        if version < MIGRATIONS.len() as i64 {
            // Older or empty: upgrading is a write, so do it through `open`.
            drop(reg);
            return Self::open(path).map(Some);
        }
        Ok(Some(reg))
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<Registry> {
        // Reading the schema first tells a corrupt or foreign file apart before any write.
        let reg = Self::open_checked(path, flags, None)?;
        let mut mode: String = reg
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| reg.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            mode = reg
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(|e| reg.err(e))?;
        }
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::ReadOnly {
                path: path.to_owned(),
                reason: format!("cannot switch to WAL mode (got '{mode}')"),
            });
        }
        reg.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| reg.err(e))?;
        Ok(reg)
    }

    pub(super) fn err(&self, e: rusqlite::Error) -> Error {
        classify(&self.path, e)
    }

    fn user_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| classify(&path, e))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(&path, e))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(Error::TooNew {
                path,
                found: version,
                known,
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(step).map_err(|e| classify(&path, e))?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(|e| classify(&path, e))?;
        }
        tx.commit().map_err(|e| classify(&path, e))
    }

    /// The registry file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All peers, ordered by party id.
    pub fn list(&self) -> Result<Vec<Peer>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT party_id, role, ip, port, fingerprint, not_after, registered_at
                 FROM peers ORDER BY party_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], raw_row)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter().map(|r| r.parse(&self.path)).collect()
    }

    /// One peer and its certificate DER.
    pub fn get(&self, id: &PartyId) -> Result<Option<(Peer, Vec<u8>)>> {
        let row = self
            .conn
            .query_row(
                "SELECT party_id, role, ip, port, fingerprint, not_after, registered_at, cert_der
                 FROM peers WHERE party_id = ?1",
                [id.as_str()],
                |r| Ok((raw_row(r)?, r.get::<_, Vec<u8>>(7)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(raw, der)| Ok((raw.parse(&self.path)?, der)))
            .transpose()
    }

    /// The peer holding a certificate, by fingerprint, with its DER.
    pub fn get_by_fingerprint(&self, fp: &Fingerprint) -> Result<Option<(Peer, Vec<u8>)>> {
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT party_id FROM peers WHERE fingerprint = ?1",
                [fp.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match id {
            None => Ok(None),
            Some(id) => {
                let id = id.parse().map_err(|e: crate::party::Error| Error::BadRow {
                    path: self.path.clone(),
                    party: id.clone(),
                    reason: e.to_string(),
                })?;
                self.get(&id)
            }
        }
    }

    /// Adds a peer, in one transaction that re-checks both uniqueness rules.
    pub fn register(&mut self, new: &NewPeer<'_>, on_dup: OnDuplicate) -> Result<Registered> {
        let path = self.path.clone();
        let sql = |e| classify(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let p = &new.peer;
        let holder: Option<String> = tx
            .query_row(
                "SELECT party_id FROM peers WHERE fingerprint = ?1",
                [p.fingerprint.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        if let Some(holder) = holder.filter(|h| h != p.party_id.as_str()) {
            return Err(Error::DuplicateFingerprint {
                fingerprint: p.fingerprint,
                existing: holder.parse().unwrap_or_else(|_| p.party_id.clone()),
            });
        }
        let previous = tx
            .query_row(
                "SELECT party_id, role, ip, port, fingerprint, not_after, registered_at
                 FROM peers WHERE party_id = ?1",
                [p.party_id.as_str()],
                raw_row,
            )
            .optional()
            .map_err(sql)?;
        let outcome = match previous {
            Some(_) if on_dup == OnDuplicate::Refuse => {
                return Err(Error::DuplicateId(p.party_id.clone()));
            }
            Some(raw) => {
                tx.execute(
                    "DELETE FROM peers WHERE party_id = ?1",
                    [p.party_id.as_str()],
                )
                .map_err(sql)?;
                Registered::Replaced(raw.parse(&path)?)
            }
            None => Registered::Added,
        };
        tx.execute(
            "INSERT INTO peers (party_id, role, ip, port, fingerprint, cert_der, not_after, registered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                p.party_id.as_str(),
                p.role.as_str(),
                p.ip.as_str(),
                p.port,
                p.fingerprint.to_string(),
                new.cert_der,
                p.not_after,
                p.registered_at
            ],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(outcome)
    }

    /// The researcher a node works with: `chosen` if given (it must be registered as a
    /// researcher), else the only researcher registered here.
    pub fn researcher(
        &self,
        chosen: Option<&PartyId>,
    ) -> Result<std::result::Result<Peer, NoResearcher>> {
        if let Some(id) = chosen {
            return Ok(match self.get(id)? {
                Some((p, _)) if p.role == Role::Researcher => Ok(p),
                _ => Err(NoResearcher::Unknown(id.clone())),
            });
        }
        let mut all: Vec<Peer> = self
            .list()?
            .into_iter()
            .filter(|p| p.role == Role::Researcher)
            .collect();
        Ok(match all.len() {
            0 => Err(NoResearcher::None),
            1 => Ok(all.remove(0)),
            _ => Err(NoResearcher::Many(
                all.into_iter().map(|p| p.party_id).collect(),
            )),
        })
    }

    /// Deletes a peer; an unknown id is an error.
    pub fn delete(&mut self, id: &PartyId) -> Result<Peer> {
        let path = self.path.clone();
        let sql = |e| classify(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let raw = tx
            .query_row(
                "SELECT party_id, role, ip, port, fingerprint, not_after, registered_at
                 FROM peers WHERE party_id = ?1",
                [id.as_str()],
                raw_row,
            )
            .optional()
            .map_err(sql)?
            .ok_or_else(|| Error::UnknownParty(id.clone()))?;
        tx.execute("DELETE FROM peers WHERE party_id = ?1", [id.as_str()])
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        raw.parse(&path)
    }
}

struct RawRow {
    party_id: String,
    role: String,
    ip: String,
    port: i64,
    fingerprint: String,
    not_after: i64,
    registered_at: i64,
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        party_id: r.get(0)?,
        role: r.get(1)?,
        ip: r.get(2)?,
        port: r.get(3)?,
        fingerprint: r.get(4)?,
        not_after: r.get(5)?,
        registered_at: r.get(6)?,
    })
}

impl RawRow {
    fn parse(self, path: &Path) -> Result<Peer> {
        let bad = |reason: String| Error::BadRow {
            path: path.to_owned(),
            party: self.party_id.clone(),
            reason,
        };
        Ok(Peer {
            party_id: self
                .party_id
                .parse()
                .map_err(|e: crate::party::Error| bad(e.to_string()))?,
            role: self
                .role
                .parse()
                .map_err(|e: crate::party::Error| bad(e.to_string()))?,
            ip: self
                .ip
                .parse()
                .map_err(|e: crate::party::Error| bad(e.to_string()))?,
            port: u16::try_from(self.port).map_err(|e| bad(e.to_string()))?,
            fingerprint: self
                .fingerprint
                .parse()
                .map_err(|e: crate::party::Error| bad(e.to_string()))?,
            not_after: self.not_after,
            registered_at: self.registered_at,
        })
    }
}

/// Runs `step` again, with backoff, while it fails with a lock SQLite would not wait for.
fn retry_busy<T>(mut step: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + BUSY_WAIT;
    let mut pause = Duration::from_millis(2);
    loop {
        match step() {
            Err(e) if e.is_busy() && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

impl Error {
    /// Another connection held a lock SQLite would not wait for.
    fn is_busy(&self) -> bool {
        matches!(
            self,
            Error::Sqlite {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    }
}

/// `path` as the path part of an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = String::new();
    for b in abs.to_string_lossy().bytes() {
        match b {
            b'?' | b'#' | b'%' | 0x80.. => out.push_str(&format!("%{b:02X}")),
            _ => out.push(char::from(b)),
        }
    }
    out
}

pub(super) fn classify(path: &Path, e: rusqlite::Error) -> Error {
    let path = path.to_owned();
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let reason = msg.clone().unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                    Error::Corrupt { path, reason }
                }
                ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
                    Error::ReadOnly { path, reason }
                }
                _ => Error::Sqlite { path, source: e },
            }
        }
        _ => Error::Sqlite { path, source: e },
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
