//! The registry's schema: migration steps, tracked with `PRAGMA user_version` (as
//! cargo's SQLite code does). Append only: never edit or reorder a released step.

/// Schema steps, in order; step i brings `user_version` from i to i+1.
pub const MIGRATIONS: &[&str] = &[
    // 1: peers
    "CREATE TABLE peers (
        party_id      TEXT PRIMARY KEY NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('node', 'researcher')),
        ip            TEXT NOT NULL,
        port          INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
        fingerprint   TEXT NOT NULL UNIQUE,
        cert_der      BLOB NOT NULL,
        not_after     INTEGER NOT NULL,
        registered_at INTEGER NOT NULL
    ) STRICT;",
    // 2: mask-reuse journal
    "CREATE TABLE mask_journal (
        federation    TEXT NOT NULL,
        round         INTEGER NOT NULL,
        attempt       INTEGER NOT NULL,
        label         TEXT NOT NULL,
        participants  TEXT NOT NULL,
        used_at       INTEGER NOT NULL,
        PRIMARY KEY (federation, round, attempt, label)
    ) STRICT;",
    // 3: protocol 2. Rounds this party advertised keys for (a node refuses any round
    // not above its last one), the one consistency message it signed per round, which
    // kind of share it revealed for which peer (one kind per peer, by primary key), and
    // every input it released (one release per input, across federations and modes).
    // File mode loses its attempts: (federation, round, label) is used at most once.
    "CREATE TABLE rounds (
        federation    TEXT NOT NULL,
        round         INTEGER NOT NULL CHECK (round >= 0),
        role          TEXT NOT NULL CHECK (role IN ('node', 'researcher')),
        researcher    TEXT NOT NULL,
        invitees      INTEGER NOT NULL,
        started_at    INTEGER NOT NULL,
        signed_hash   BLOB,
        outcome       TEXT,
        detail        TEXT,
        result_path   TEXT,
        finished_at   INTEGER,
        PRIMARY KEY (federation, round, role)
    ) STRICT;
    CREATE TABLE reveals (
        federation    TEXT NOT NULL,
        round         INTEGER NOT NULL,
        peer          TEXT NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('b', 's')),
        revealed_at   INTEGER NOT NULL,
        PRIMARY KEY (federation, round, peer)
    ) STRICT;
    CREATE TABLE releases (
        digest        TEXT PRIMARY KEY NOT NULL,
        mode          TEXT NOT NULL CHECK (mode IN ('round', 'file')),
        federation    TEXT NOT NULL,
        round         INTEGER NOT NULL,
        released_at   INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE file_masks (
        federation    TEXT NOT NULL,
        round         INTEGER NOT NULL,
        label         TEXT NOT NULL,
        researcher    TEXT NOT NULL,
        participants  TEXT NOT NULL,
        used_at       INTEGER NOT NULL,
        PRIMARY KEY (federation, round, label)
    ) STRICT;
    INSERT OR IGNORE INTO file_masks (federation, round, label, researcher, participants, used_at)
        SELECT federation, round, label, '', participants, MIN(used_at)
        FROM mask_journal GROUP BY federation, round, label;",
    // 4: federation rosters: the last version this party created or imported, and its members
    "CREATE TABLE federations (
        name               TEXT PRIMARY KEY NOT NULL,
        version            INTEGER NOT NULL CHECK (version >= 1),
        roster_fingerprint TEXT NOT NULL,
        researcher_id      TEXT NOT NULL,
        researcher_ip      TEXT NOT NULL,
        researcher_port    INTEGER NOT NULL CHECK (researcher_port BETWEEN 1 AND 65535),
        researcher_der     BLOB NOT NULL,
        updated_at         INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE federation_members (
        federation  TEXT NOT NULL REFERENCES federations (name) ON DELETE CASCADE,
        party_id    TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('node', 'researcher')),
        ip          TEXT NOT NULL,
        port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
        fingerprint TEXT NOT NULL,
        PRIMARY KEY (federation, party_id)
    ) STRICT;",
    // 5: input digest version 2. Every release row so far holds a version-1 digest
    // (SHA-256, values widened to f64); rows from now on hold version 2 (BLAKE3 over the
    // values' own bytes). Bumping the version also keeps a secagg that knows only
    // version 1 from opening this registry: it would not recognise a version-2 row.
    "ALTER TABLE releases ADD COLUMN digest_version INTEGER NOT NULL DEFAULT 1
        CHECK (digest_version IN (1, 2));",
];
