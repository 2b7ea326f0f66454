//! The mask journal: what this party has masked for, in the registry's database, so
//! that a mask is never used twice, even across restarts.

use rusqlite::{ErrorCode, OptionalExtension, params};

use crate::pki::registry::{Error, Registry, classify};

type Result<T> = std::result::Result<T, Error>;

impl Registry {
    /// Records that we masked for `(federation, round, attempt, label)`; refuses a second time.
    pub fn journal_mask(
        &mut self,
        federation: &str,
        round: u64,
        attempt: u32,
        label: &str,
        participants: &str,
        now: i64,
    ) -> Result<()> {
        let path = self.path.clone();
        let round_i = i64::try_from(round).map_err(|_| Error::BadRow {
            path: path.clone(),
            party: String::new(),
            reason: "round number too large".into(),
        })?;
        let res = self.conn.execute(
            "INSERT INTO mask_journal (federation, round, attempt, label, participants, used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![federation, round_i, attempt, label, participants, now],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                Err(Error::MaskReuse {
                    federation: federation.to_owned(),
                    round,
                    attempt,
                    label: label.to_owned(),
                })
            }
            Err(e) => Err(classify(&path, e)),
        }
    }

    /// Whether we already masked for `(federation, round, attempt, label)`.
    pub fn journal_has(
        &self,
        federation: &str,
        round: u64,
        attempt: u32,
        label: &str,
    ) -> Result<bool> {
        let round_i = i64::try_from(round).unwrap_or(i64::MAX);
        self.conn
            .query_row(
                "SELECT 1 FROM mask_journal WHERE federation = ?1 AND round = ?2 AND attempt = ?3 AND label = ?4",
                params![federation, round_i, attempt, label],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// How many attempts of a round we have masked for (any label).
    pub fn journal_attempts(&self, federation: &str, round: u64) -> Result<u32> {
        let round_i = i64::try_from(round).unwrap_or(i64::MAX);
        self.conn
            .query_row(
                "SELECT COUNT(DISTINCT attempt) FROM mask_journal WHERE federation = ?1 AND round = ?2",
                params![federation, round_i],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_refuses_reuse() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut reg = Registry::open(&dir.path().join("r.sqlite")).expect("open");
        reg.journal_mask("f", 1, 0, "update", "a,b", 0)
            .expect("first");
        assert!(matches!(
            reg.journal_mask("f", 1, 0, "update", "a,b,c", 0),
            Err(Error::MaskReuse { .. })
        ));
        reg.journal_mask("f", 1, 1, "update", "a,b", 0)
            .expect("next attempt");
        assert_eq!(reg.journal_attempts("f", 1).expect("count"), 2);
    }
}
