//! The journal: what this party has masked for and revealed, in the registry's
//! database, so that a mask is never used twice, an input never released twice, and a
//! node never signs two survivor sets or reveals both shares of a peer, even across
//! restarts. Protocol-2 writes run with `synchronous = FULL` inside `BEGIN IMMEDIATE`
//! transactions, so what the journal says has happened survives a power cut.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use crate::party::{Fingerprint, Role};
use crate::pki::registry::{Error, Registry, classify};

/// The furthest a round number may jump past the last one journaled (a node that
/// accepted round 2^64-1 could never take part again).
pub const MAX_ROUND_JUMP: u64 = 1_000_000;

type Result<T> = std::result::Result<T, Error>;

/// A masked file about to be released, for [`Registry::journal_file_mask`].
#[derive(Clone, Copy, Debug)]
pub struct FileMask<'a> {
    /// Federation.
    pub federation: &'a str,
    /// Round.
    pub round: u64,
    /// Vector label.
    pub label: &'a str,
    /// The researcher the file is for.
    pub researcher: &'a Fingerprint,
    /// Participants, comma separated.
    pub participants: &'a str,
    /// Content digests of the input masked.
    pub digest: &'a InputDigests,
}

/// The content digests of one input, as the release journal keys it: the version-2
/// digest always, and the version-1 digest when the registry holds releases journaled
/// with it ([`Registry::legacy_releases`]); docs/protocol.md, "Mask-reuse journal", gives
/// both byte for byte. An input is released if either is in `releases`; a release
/// journals the version-2 digest only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputDigests {
    /// BLAKE3 over `"secagg input v2"`, the layout and the values' own bytes.
    pub v2: [u8; 32],
    /// SHA-256 over `"secagg input v1"`, the layout and the values as f64: computed only
    /// when some release row has it (written by a secagg before digest version 2).
    pub v1: Option<[u8; 32]>,
}

impl Registry {
    /// Journals a masked file before it is written, in one `BEGIN IMMEDIATE` transaction:
    /// the mask key (federation, round, label) in `file_masks`, refused if used before
    /// whatever the input ([`Error::MaskReuse`]), and the input's release, refused if
    /// that input was released before in any federation or mode ([`Error::InputReleased`]).
    /// Either refusal leaves both tables as they were.
    pub fn journal_file_mask(&mut self, m: &FileMask<'_>, now: i64) -> Result<()> {
        self.durable()?;
        let path = self.path.clone();
        let sql = |e| classify(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let res = tx.execute(
            "INSERT INTO file_masks (federation, round, label, researcher, participants, used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                m.federation,
                round_i(m.round),
                m.label,
                m.researcher.to_string(),
                m.participants,
                now
            ],
        );
        match res {
            Ok(_) => {}
            Err(e) if violated(&e) => {
                return Err(Error::MaskReuse {
                    federation: m.federation.to_owned(),
                    round: m.round,
                    label: m.label.to_owned(),
                });
            }
            Err(e) => return Err(sql(e)),
        }
        insert_release(&tx, &path, m.digest, "file", m.federation, m.round, now)?;
        tx.commit().map_err(sql)
    }

    /// Whether any release was journaled with a version-1 (SHA-256) input digest, by a
    /// secagg from before digest version 2. Such a row cannot be converted (the input
    /// is not kept), so while one exists every input must be digested both ways. No
    /// secagg that knows schema 5 writes one, and none that does not can open it.
    pub fn legacy_releases(&self) -> Result<bool> {
        legacy_releases(&self.conn, &self.path)
    }

    /// Whether this party already masked a file for (federation, round, label).
    pub fn file_mask_used(&self, federation: &str, round: u64, label: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM file_masks WHERE federation = ?1 AND round = ?2 AND label = ?3",
                params![federation, round_i(round), label],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }
}

/// Which kind of a peer's share was revealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revealed {
    /// The self-mask seed share (the peer survived).
    B,
    /// The mask-key share (the peer dropped).
    S,
}

/// How a round ended, for [`Registry::finish_round`].
#[derive(Clone, Copy, Debug)]
pub struct RoundEnd<'a> {
    /// Federation.
    pub federation: &'a str,
    /// Round.
    pub round: u64,
    /// Our role.
    pub role: Role,
    /// "completed" or "failed: …".
    pub outcome: &'a str,
    /// JSON with the sets and who dropped at which phase.
    pub detail: &'a str,
    /// Where the mean was written.
    pub result_path: Option<&'a str>,
}

/// One round in the journal, for `round list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundRecord {
    /// Federation.
    pub federation: String,
    /// Round number.
    pub round: u64,
    /// Our role in it.
    pub role: Role,
    /// The researcher's fingerprint.
    pub researcher: String,
    /// Nodes invited.
    pub invitees: u64,
    /// When keys were advertised (node) or the round announced (researcher).
    pub started_at: i64,
    /// Whether this party signed a consistency message.
    pub signed: bool,
    /// "completed", "failed: …", or `None` while unfinished (or the process died).
    pub outcome: Option<String>,
    /// JSON with the sets and who dropped at which phase.
    pub detail: Option<String>,
    /// Where the mean was written.
    pub result_path: Option<String>,
    /// When it ended.
    pub finished_at: Option<i64>,
}

fn round_i(round: u64) -> i64 {
    // Rounds above i64::MAX cannot be stored; policy caps jumps at 10^6 per round.
    i64::try_from(round).unwrap_or(i64::MAX)
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `digest_version` of release rows with a version-1 and a version-2 digest.
const DIGEST_V1: i64 = 1;
const DIGEST_V2: i64 = 2;

fn legacy_releases(conn: &Connection, path: &Path) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM releases WHERE digest_version = ?1)",
        [DIGEST_V1],
        |r| r.get(0),
    )
    .map_err(|e| classify(path, e))
}

/// The release of an input, by either of its digests: (mode, federation, round).
/// Refuses digests without the version-1 one when the registry needs it (our bug: the
/// check would miss an input released before digest version 2).
fn find_release(
    conn: &Connection,
    path: &Path,
    digest: &InputDigests,
) -> Result<Option<(String, String, i64)>> {
    if digest.v1.is_none() && legacy_releases(conn, path)? {
        return Err(Error::LegacyDigestMissing {
            path: path.to_owned(),
        });
    }
    let find = |hex: String, version: i64| {
        conn.query_row(
            "SELECT mode, federation, round FROM releases
             WHERE digest = ?1 AND digest_version = ?2",
            params![hex, version],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| classify(path, e))
    };
    if let Some(found) = find(hex(&digest.v2), DIGEST_V2)? {
        return Ok(Some(found));
    }
    match &digest.v1 {
        Some(v1) => find(hex(v1), DIGEST_V1),
        None => Ok(None),
    }
}

/// Inserts a release row for `digest.v2` on `conn` (inside a transaction), refusing an
/// input released before under either digest.
fn insert_release(
    conn: &Connection,
    path: &Path,
    digest: &InputDigests,
    mode: &str,
    federation: &str,
    round: u64,
    now: i64,
) -> Result<()> {
    let released = |(mode, federation, round): (String, String, i64)| Error::InputReleased {
        mode,
        federation,
        round: u64::try_from(round).unwrap_or(0),
    };
    if let Some(found) = find_release(conn, path, digest)? {
        return Err(released(found));
    }
    let res = conn.execute(
        "INSERT INTO releases (digest, digest_version, mode, federation, round, released_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            hex(&digest.v2),
            DIGEST_V2,
            mode,
            federation,
            round_i(round),
            now
        ],
    );
    match res {
        Ok(_) => Ok(()),
        // Only a version-1 row with the same hex (a SHA-256 equal to a BLAKE3) could be
        // there: refuse it as a release all the same.
        Err(e) if violated(&e) => Err(released(
            conn.query_row(
                "SELECT mode, federation, round FROM releases WHERE digest = ?1",
                [hex(&digest.v2)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| classify(path, e))?,
        )),
        Err(e) => Err(classify(path, e)),
    }
}

fn violated(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

impl Registry {
    fn durable(&self) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e))
    }

    /// The last round this party journaled in `federation` with `role`, 0 if none.
    pub fn last_round(&self, federation: &str, role: Role) -> Result<u64> {
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(round) FROM rounds WHERE federation = ?1 AND role = ?2",
                params![federation, role.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(last.map_or(0, |r| u64::try_from(r).unwrap_or(0)))
    }

    /// Journals that this party takes part in `round` (a node: before its advert leaves).
    /// In one `BEGIN IMMEDIATE` transaction: refuses a round not above the last one
    /// journaled for (federation, role), or more than 10^6 beyond it.
    pub fn begin_round(
        &mut self,
        federation: &str,
        round: u64,
        role: Role,
        researcher: &Fingerprint,
        invitees: usize,
        now: i64,
    ) -> Result<()> {
        self.durable()?;
        let path = self.path.clone();
        let sql = |e| classify(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT MAX(round) FROM rounds WHERE federation = ?1 AND role = ?2",
                params![federation, role.as_str()],
                |r| r.get(0),
            )
            .map_err(sql)?;
        let last = last.map_or(0, |r| u64::try_from(r).unwrap_or(0));
        if round <= last || round > last.saturating_add(MAX_ROUND_JUMP) {
            return Err(Error::RoundNotFresh {
                federation: federation.to_owned(),
                round,
                last,
            });
        }
        tx.execute(
            "INSERT INTO rounds (federation, round, role, researcher, invitees, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                federation,
                round_i(round),
                role.as_str(),
                researcher.to_string(),
                invitees as i64,
                now
            ],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Journals the hash of the one consistency message this node signs in a round;
    /// refuses a second one (a different hash, or the same round signed again).
    pub fn record_signed(&mut self, federation: &str, round: u64, hash: &[u8; 32]) -> Result<()> {
        self.durable()?;
        let changed = self
            .conn
            .execute(
                "UPDATE rounds SET signed_hash = ?3
                 WHERE federation = ?1 AND round = ?2 AND role = 'node' AND signed_hash IS NULL",
                params![federation, round_i(round), &hash[..]],
            )
            .map_err(|e| self.err(e))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(Error::AlreadySigned {
                federation: federation.to_owned(),
                round,
            })
        }
    }

    /// Journals which kind of share is revealed for each peer, all or nothing; refuses
    /// if any peer of this round already had a share revealed.
    pub fn record_reveals(
        &mut self,
        federation: &str,
        round: u64,
        reveals: &[(Fingerprint, Revealed)],
        now: i64,
    ) -> Result<()> {
        self.durable()?;
        let path = self.path.clone();
        let sql = |e| classify(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        for (peer, kind) in reveals {
            let kind = match kind {
                Revealed::B => "b",
                Revealed::S => "s",
            };
            let res = tx.execute(
                "INSERT INTO reveals (federation, round, peer, kind, revealed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![federation, round_i(round), peer.to_string(), kind, now],
            );
            match res {
                Ok(_) => {}
                Err(e) if violated(&e) => {
                    return Err(Error::AlreadyRevealed {
                        federation: federation.to_owned(),
                        round,
                        peer: *peer,
                    });
                }
                Err(e) => return Err(sql(e)),
            }
        }
        tx.commit().map_err(sql)
    }

    /// Journals that an input (by its content digests) is released, in one
    /// `BEGIN IMMEDIATE` transaction; refuses an input released before under either
    /// digest, in any federation and either mode.
    pub fn release_input(
        &mut self,
        digest: &InputDigests,
        mode: &str,
        federation: &str,
        round: u64,
        now: i64,
    ) -> Result<()> {
        self.durable()?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| classify(&path, e))?;
        insert_release(&tx, &path, digest, mode, federation, round, now)?;
        tx.commit().map_err(|e| classify(&path, e))
    }

    /// Whether an input was released before under either of its digests (checked
    /// before a round starts, so a node does not spend a round number on an input it
    /// may not release).
    pub fn input_released(&self, digest: &InputDigests) -> Result<bool> {
        find_release(&self.conn, &self.path, digest).map(|r| r.is_some())
    }

    /// Records how a round ended (outcome line, JSON detail, result file).
    pub fn finish_round(&mut self, end: &RoundEnd<'_>, now: i64) -> Result<()> {
        let RoundEnd {
            federation,
            round,
            role,
            outcome,
            detail,
            result_path,
        } = *end;
        self.conn
            .execute(
                "UPDATE rounds SET outcome = ?4, detail = ?5, result_path = ?6, finished_at = ?7
                 WHERE federation = ?1 AND round = ?2 AND role = ?3",
                params![
                    federation,
                    round_i(round),
                    role.as_str(),
                    outcome,
                    detail,
                    result_path,
                    now
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Every journaled round, oldest first.
    pub fn rounds(&self) -> Result<Vec<RoundRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT federation, round, role, researcher, invitees, started_at,
                        signed_hash IS NOT NULL, outcome, detail, result_path, finished_at
                 FROM rounds ORDER BY started_at, federation, round",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let role: String = r.get(2)?;
                Ok(RoundRecord {
                    federation: r.get(0)?,
                    round: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    role: if role == "researcher" {
                        Role::Researcher
                    } else {
                        Role::Node
                    },
                    researcher: r.get(3)?,
                    invitees: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    started_at: r.get(5)?,
                    signed: r.get(6)?,
                    outcome: r.get(7)?,
                    detail: r.get(8)?,
                    result_path: r.get(9)?,
                    finished_at: r.get(10)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}

/// Digests with version 2 only, all bytes `b`.
#[cfg(test)]
fn v2(b: u8) -> InputDigests {
    InputDigests {
        v2: [b; 32],
        v1: None,
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn entry<'a>(round: u64, fp: &'a Fingerprint, digest: &'a InputDigests) -> FileMask<'a> {
        FileMask {
            federation: "f",
            round,
            label: "update",
            researcher: fp,
            participants: "a,b",
            digest,
        }
    }

    #[test]
    fn a_file_mask_key_and_an_input_are_each_used_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut reg = Registry::open(&dir.path().join("r.sqlite")).expect("open");
        let r = Fingerprint::of_der(b"r");
        let (d1, d2, d3) = (v2(1), v2(2), v2(3));
        assert!(!reg.file_mask_used("f", 1, "update").expect("query"));
        reg.journal_file_mask(&entry(1, &r, &d1), 0).expect("first");
        assert!(reg.file_mask_used("f", 1, "update").expect("query"));
        assert!(!reg.file_mask_used("f", 1, "other").expect("query"));
        // Same key, another input: refused, and the other input stays unreleased.
        assert!(matches!(
            reg.journal_file_mask(&entry(1, &r, &d2), 0),
            Err(Error::MaskReuse { round: 1, .. })
        ));
        assert!(!reg.input_released(&d2).expect("query"));
        // Same input, another round: refused, and that round's key stays unused.
        let e = reg
            .journal_file_mask(&entry(2, &r, &d1), 0)
            .expect_err("input twice");
        assert!(
            matches!(&e, Error::InputReleased { mode, round: 1, .. } if mode == "file"),
            "{e}"
        );
        assert!(!reg.file_mask_used("f", 2, "update").expect("query"));
        // An input a round released is refused in file mode too.
        reg.release_input(&d3, "round", "g", 4, 0).expect("round");
        assert!(matches!(
            reg.journal_file_mask(&entry(2, &r, &d3), 0),
            Err(Error::InputReleased { round: 4, .. })
        ));
        reg.journal_file_mask(&entry(2, &r, &d2), 0)
            .expect("new key, new input");
    }

    #[test]
    fn migration_3_carries_old_file_masks_over() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut reg = Registry::open(&dir.path().join("r.sqlite")).expect("open");
        // The same statement migration 3 ran, on a row the old journal would have held.
        reg.conn
            .execute(
                "INSERT INTO mask_journal (federation, round, attempt, label, participants, used_at)
                 VALUES ('f', 7, 2, 'update', 'a,b', 0)",
                [],
            )
            .expect("old row");
        reg.conn
            .execute_batch(
                "INSERT OR IGNORE INTO file_masks (federation, round, label, researcher, participants, used_at)
                 SELECT federation, round, label, '', participants, MIN(used_at)
                 FROM mask_journal GROUP BY federation, round, label;",
            )
            .expect("carry over");
        let r = Fingerprint::of_der(b"r");
        assert!(matches!(
            reg.journal_file_mask(&entry(7, &r, &v2(5)), 0),
            Err(Error::MaskReuse { .. })
        ));
    }
}

#[cfg(test)]
mod round_tests {
    use super::*;

    fn reg() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tmp");
        let reg = Registry::open(&dir.path().join("r.sqlite")).expect("open");
        (dir, reg)
    }

    #[test]
    fn rounds_only_move_forward_per_federation_and_role() {
        let (_d, mut reg) = reg();
        let r = Fingerprint::of_der(b"r");
        assert_eq!(reg.last_round("f", Role::Node).expect("last"), 0);
        reg.begin_round("f", 5, Role::Node, &r, 3, 0).expect("5");
        assert_eq!(reg.last_round("f", Role::Node).expect("last"), 5);
        for bad in [5, 4, 1_000_006] {
            assert!(matches!(
                reg.begin_round("f", bad, Role::Node, &r, 3, 0),
                Err(Error::RoundNotFresh { last: 5, .. })
            ));
        }
        reg.begin_round("g", 1, Role::Node, &r, 3, 0)
            .expect("other federation");
        reg.begin_round("f", 5, Role::Researcher, &r, 3, 0)
            .expect("other role");
        reg.begin_round("f", 1_000_005, Role::Node, &r, 3, 0)
            .expect("jump of 10^6");
    }

    #[test]
    fn one_signature_and_one_share_kind_per_peer() {
        let (_d, mut reg) = reg();
        let r = Fingerprint::of_der(b"r");
        let (a, b) = (Fingerprint::of_der(b"a"), Fingerprint::of_der(b"b"));
        reg.begin_round("f", 1, Role::Node, &r, 3, 0)
            .expect("begin");
        reg.record_signed("f", 1, &[1; 32]).expect("sign");
        assert!(matches!(
            reg.record_signed("f", 1, &[2; 32]),
            Err(Error::AlreadySigned { .. })
        ));
        assert!(matches!(
            reg.record_signed("f", 2, &[2; 32]),
            Err(Error::AlreadySigned { .. })
        ));
        reg.record_reveals("f", 1, &[(a, Revealed::B)], 0)
            .expect("reveal a");
        assert!(matches!(
            reg.record_reveals("f", 1, &[(b, Revealed::S), (a, Revealed::S)], 0),
            Err(Error::AlreadyRevealed { peer, .. }) if peer == a
        ));
        // All or nothing: b's row was rolled back with a's refusal.
        reg.record_reveals("f", 1, &[(b, Revealed::S)], 0)
            .expect("b once");
        let rounds = reg.rounds().expect("list");
        assert_eq!(rounds.len(), 1);
        assert!(rounds[0].signed);
    }

    #[test]
    fn an_input_is_released_once_across_federations_and_modes() {
        let (_d, mut reg) = reg();
        let d = v2(9);
        assert!(!reg.input_released(&d).expect("query"));
        reg.release_input(&d, "file", "f", 1, 0).expect("first");
        assert!(reg.input_released(&d).expect("query"));
        let e = reg
            .release_input(&d, "round", "g", 7, 0)
            .expect_err("second");
        assert!(
            matches!(&e, Error::InputReleased { mode, round: 1, .. } if mode == "file"),
            "{e}"
        );
    }

    /// The registry as a secagg before digest version 2 left it (schema 4), with one
    /// release row inserted by the statement that secagg ran.
    fn schema_4_with_release(path: &Path, v1: &[u8; 32]) {
        let mut conn = Connection::open(path).expect("open");
        let tx = conn.transaction().expect("tx");
        for (i, step) in crate::pki::schema::MIGRATIONS[..4].iter().enumerate() {
            tx.execute_batch(step).expect("step");
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .expect("version");
        }
        tx.execute(
            "INSERT INTO releases (digest, mode, federation, round, released_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hex(v1), "file", "old", 3i64, 0i64],
        )
        .expect("old release");
        tx.commit().expect("commit");
    }

    #[test]
    fn migration_5_keeps_version_1_releases_recognisable() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.sqlite");
        let old = [7u8; 32];
        schema_4_with_release(&path, &old);
        let mut reg = Registry::open(&path).expect("open upgrades");
        let (version, rows): (i64, i64) = reg
            .conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version),
                        (SELECT COUNT(*) FROM releases WHERE digest_version = 1)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("query");
        assert_eq!((version, rows), (5, 1));
        assert!(reg.legacy_releases().expect("query"));
        // The same input, digested both ways: released under version 1.
        let x = InputDigests {
            v2: [8; 32],
            v1: Some(old),
        };
        assert!(reg.input_released(&x).expect("query"));
        let e = reg
            .release_input(&x, "round", "g", 9, 0)
            .expect_err("again");
        assert!(
            matches!(&e, Error::InputReleased { mode, federation, round: 3 } if mode == "file" && federation == "old"),
            "{e}"
        );
        // Without its version-1 digest the check cannot answer: refused, not "no".
        let e = reg.input_released(&v2(8)).expect_err("no v1");
        assert!(matches!(e, Error::LegacyDigestMissing { .. }), "{e}");
        let e = reg
            .release_input(&v2(8), "round", "g", 9, 0)
            .expect_err("no v1");
        assert!(matches!(e, Error::LegacyDigestMissing { .. }), "{e}");
        // A version-1 digest is never taken for a version-2 one, nor the reverse.
        let swapped = InputDigests {
            v2: old,
            v1: Some([8; 32]),
        };
        assert!(!reg.input_released(&swapped).expect("query"));
        // Nothing of the refusals was written; a new input journals version 2 only.
        let y = InputDigests {
            v2: [10; 32],
            v1: Some([11; 32]),
        };
        reg.release_input(&y, "round", "g", 9, 0)
            .expect("new input");
        let rows: Vec<(String, i64)> = reg
            .conn
            .prepare("SELECT digest, digest_version FROM releases ORDER BY digest_version")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows, vec![(hex(&old), 1), (hex(&[10; 32]), 2)]);
        assert!(reg.input_released(&y).expect("query"));
        assert!(reg.legacy_releases().expect("query"), "v1 rows stay");
        // The schema refuses a digest version it does not know.
        assert!(
            reg.conn
                .execute(
                    "INSERT INTO releases (digest, digest_version, mode, federation, round, released_at)
                     VALUES ('x', 3, 'file', 'f', 1, 0)",
                    [],
                )
                .is_err()
        );
    }

    #[test]
    fn a_fresh_registry_needs_no_version_1_digest() {
        let (_d, mut reg) = reg();
        assert!(!reg.legacy_releases().expect("query"));
        reg.release_input(&v2(1), "file", "f", 1, 0).expect("first");
        assert!(!reg.legacy_releases().expect("query"));
        assert!(reg.input_released(&v2(1)).expect("query"));
        // A version-1 digest given anyway is checked too, never journaled.
        let both = InputDigests {
            v2: [2; 32],
            v1: Some([1; 32]),
        };
        assert!(!reg.input_released(&both).expect("query"));
        reg.release_input(&both, "file", "f", 2, 0).expect("second");
        assert!(!reg.legacy_releases().expect("query"));
    }
}
