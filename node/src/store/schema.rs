//! The schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the file from version `i` to `i + 1`. Each step runs in its own
//! transaction together with the version bump (the version lives in the file header, which is
//! transactional), so a crash mid-upgrade leaves the previous version intact. Never edit a
//! released step: append a new one.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// The schema version this build writes.
pub(super) const VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7];

/// Version 1: host cache, outbox, sent, inbox, contacts.
const V1: &str = "
-- Superpeers this node has seen. Bounded (MAX_HOSTS) by evicting the least recently seen.
CREATE TABLE hosts (
    peer_id      TEXT PRIMARY KEY NOT NULL,
    addrs        TEXT NOT NULL,     -- JSON array of multiaddrs, freshest first, <= 16
    rtt_ms       INTEGER,           -- last measured round trip, NULL if never measured
    leaves       INTEGER,           -- last announced load, NULL if never announced
    capacity     INTEGER,
    last_seen    INTEGER NOT NULL,  -- last success, unix seconds
    failures     INTEGER NOT NULL DEFAULT 0,  -- consecutive failures since last_seen
    last_failure INTEGER            -- unix seconds, NULL if none since last_seen
) STRICT;
CREATE INDEX hosts_last_seen ON hosts (last_seen);

-- Per-recipient counter of outgoing sequence numbers. Kept apart from outbox and sent so a
-- number is never reused, whatever happens to the messages that carried it.
CREATE TABLE conversations (
    peer          TEXT PRIMARY KEY NOT NULL,
    last_sent_seq INTEGER NOT NULL CHECK (last_sent_seq >= 1)
) STRICT;

-- Messages accepted by `send` and not yet acked by the recipient's node.
CREATE TABLE outbox (
    id                 TEXT PRIMARY KEY NOT NULL,  -- ULID
    recipient          TEXT NOT NULL,
    text               TEXT NOT NULL,
    sent_at_ms         INTEGER NOT NULL,
    conv_seq           INTEGER NOT NULL CHECK (conv_seq >= 1),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    UNIQUE (recipient, conv_seq)
) STRICT;
CREATE INDEX outbox_due ON outbox (next_attempt_at_ms);

-- Messages the recipient's node acked as stored.
CREATE TABLE sent (
    id              TEXT PRIMARY KEY NOT NULL,
    recipient       TEXT NOT NULL,
    text            TEXT NOT NULL,
    sent_at_ms      INTEGER NOT NULL,
    conv_seq        INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    path            TEXT NOT NULL CHECK (path IN ('direct', 'relayed')),
    delivered_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX sent_conversation ON sent (recipient, conv_seq);

-- Received messages. `arrival` is the arrival order; AUTOINCREMENT so it never goes back,
-- even if old rows are deleted, and `inbox --follow` cursors stay valid.
CREATE TABLE inbox (
    arrival        INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,  -- ULID, the dedup key
    sender         TEXT NOT NULL,
    text           TEXT NOT NULL,
    sent_at_ms     INTEGER NOT NULL,
    conv_seq       INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX inbox_conversation ON inbox (sender, conv_seq);

CREATE TABLE contacts (
    name TEXT PRIMARY KEY NOT NULL
) STRICT;
";

/// Version 2: hosts heard of second-hand are kept apart from hosts this node reached.
///
/// Version 1 saved every superpeer of every list it was given as if it had just answered, so
/// one hostile superpeer's list could fill the cache with hosts that do not exist (issue 11).
/// Nothing tells which old entries this node really reached: they all become unverified, and
/// only the 32 most recently seen stay (`MAX_UNVERIFIED_HOSTS` when this was written). Each is
/// verified again the first time this node reaches it.
const V2: &str = "
ALTER TABLE hosts ADD COLUMN verified INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1));
DELETE FROM hosts WHERE peer_id NOT IN (
    SELECT peer_id FROM hosts ORDER BY last_seen DESC, failures, peer_id LIMIT 32
);
";

/// Version 3: the inbox deduplicates by sender and message id.
///
/// Version 2 deduplicated by the id alone, which the sender chooses: a sender that reused
/// another sender's id made this node drop that other message as a duplicate (issue 12).
/// SQLite cannot drop a column's UNIQUE, so the table is copied; arrival numbers and the
/// AUTOINCREMENT high-water mark are kept, so `inbox --follow` cursors stay valid.
const V3: &str = "
CREATE TABLE inbox_v3 (
    arrival        INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL,         -- ULID chosen by the sender
    sender         TEXT NOT NULL,
    text           TEXT NOT NULL,
    sent_at_ms     INTEGER NOT NULL,
    conv_seq       INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    UNIQUE (sender, id)                   -- the dedup key
) STRICT;
INSERT INTO inbox_v3 (arrival, id, sender, text, sent_at_ms, conv_seq, received_at_ms)
    SELECT arrival, id, sender, text, sent_at_ms, conv_seq, received_at_ms FROM inbox;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'inbox_v3', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'inbox_v3');
UPDATE sqlite_sequence
    SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'inbox'), 0))
    WHERE name = 'inbox_v3';
DROP TABLE inbox;
ALTER TABLE inbox_v3 RENAME TO inbox;
CREATE INDEX inbox_conversation ON inbox (sender, conv_seq);
";

/// Version 4: what each sender's messages take in the inbox, and blocked senders.
///
/// Version 3 stored whatever any sender sent: one sender filled 80 MiB in 3.6 s (issue 12).
/// `inbox_usage` keeps each sender's message count and text bytes, and the totals under the
/// sender '' (no user name is empty), maintained by triggers in the same transaction as the
/// inbox, so the quotas cost two key lookups per message.
const V4: &str = "
CREATE TABLE inbox_usage (
    sender   TEXT PRIMARY KEY NOT NULL,  -- '' for the whole inbox
    messages INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
) STRICT;
INSERT INTO inbox_usage (sender, messages, bytes)
    SELECT sender, COUNT(*), SUM(LENGTH(CAST(text AS BLOB))) FROM inbox GROUP BY sender;
INSERT INTO inbox_usage (sender, messages, bytes)
    SELECT '', COUNT(*), COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM inbox;
CREATE TRIGGER inbox_usage_insert AFTER INSERT ON inbox BEGIN
    INSERT INTO inbox_usage (sender, messages, bytes)
        VALUES (NEW.sender, 1, LENGTH(CAST(NEW.text AS BLOB)))
        ON CONFLICT (sender) DO UPDATE
        SET messages = messages + 1, bytes = bytes + excluded.bytes;
    UPDATE inbox_usage
        SET messages = messages + 1, bytes = bytes + LENGTH(CAST(NEW.text AS BLOB))
        WHERE sender = '';
END;
CREATE TRIGGER inbox_usage_delete AFTER DELETE ON inbox BEGIN
    UPDATE inbox_usage
        SET messages = messages - 1, bytes = bytes - LENGTH(CAST(OLD.text AS BLOB))
        WHERE sender IN (OLD.sender, '');
    DELETE FROM inbox_usage WHERE sender = OLD.sender AND messages <= 0;
END;
-- Senders whose messages are refused (`natter contacts block`).
CREATE TABLE blocked (
    name TEXT PRIMARY KEY NOT NULL
) STRICT;
";

/// Version 5: messages the recipient's node refused for good stay in the outbox, parked.
///
/// Version 4 retried a message the recipient refused as malformed (`BadMessage`) for ever,
/// every 30 s (issue 12). Such a message is now kept, marked `refused`, shown by
/// `natter outbox`, and no longer tried; it no longer holds back the ones after it.
const V5: &str = "
ALTER TABLE outbox ADD COLUMN refused INTEGER NOT NULL DEFAULT 0 CHECK (refused IN (0, 1));
";

/// Version 6: when this node last saw each user online.
///
/// Version 5 showed "last seen" only while the directory kept the user's record; offline
/// records now end with their lease like online ones (issue 11), so the node remembers
/// (bounded, `seen::MAX_LAST_SEEN`).
const V6: &str = "
CREATE TABLE last_seen (
    name TEXT PRIMARY KEY NOT NULL,
    at   INTEGER NOT NULL  -- unix seconds, from the user's signed record
) STRICT;
CREATE INDEX last_seen_at ON last_seen (at);
";

/// Version 7: users on several devices (issue 13).
///
/// Version 6 delivered a message to one device of its recipient and kept what a device sent
/// on that device alone. Now `sent.device` is the recipient's device that stored a message
/// first; `fanout` is each further device the message goes to, the recipient's other devices
/// and this user's own (`device` is `''` while the owner's devices are not known yet), with
/// its delivery state; `copies` keeps what this user's other devices sent.
const V7: &str = "
ALTER TABLE sent ADD COLUMN device TEXT;
CREATE TABLE fanout (
    id                 TEXT NOT NULL,  -- the message, in `sent`
    owner              TEXT NOT NULL,  -- the user the device belongs to
    device             TEXT NOT NULL,  -- its peer id; '' until the owner's devices are known
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    created_at_ms      INTEGER NOT NULL,
    path               TEXT CHECK (path IN ('direct', 'relayed')),
    delivered_at_ms    INTEGER,
    PRIMARY KEY (id, owner, device)
) STRICT;
CREATE INDEX fanout_due ON fanout (next_attempt_at_ms) WHERE delivered_at_ms IS NULL;
CREATE INDEX fanout_device ON fanout (owner, device) WHERE delivered_at_ms IS NULL;
CREATE TABLE copies (
    device         TEXT NOT NULL,  -- the device of this user that sent it
    id             TEXT NOT NULL,  -- ULID chosen by that device
    recipient      TEXT NOT NULL,
    text           TEXT NOT NULL,
    sent_at_ms     INTEGER NOT NULL,
    conv_seq       INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (device, id)
) STRICT;
CREATE INDEX copies_conversation ON copies (recipient, conv_seq);
CREATE INDEX copies_age ON copies (received_at_ms);
";

/// Brings `conn` up to [`VERSION`]; refuses a file from a newer build.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: VERSION,
            });
        }
        let Some(step) = usize::try_from(found).ok().and_then(|i| MIGRATIONS.get(i)) else {
            // found == VERSION (a negative version was never written by Natter: treat as
            // corrupt rather than guess).
            if found < 0 {
                return Err(StoreError::Corrupt(format!(
                    "{}: schema version {found}",
                    path.display()
                )));
            }
            return Ok(());
        };
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        tracing::debug!(version = found + 1, "local store schema migrated");
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{DB_FILE, Store};
    use super::*;

    #[test]
    fn newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.pragma_update(None, "user_version", VERSION + 1)
                .unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        match &err {
            StoreError::NewerSchema {
                path,
                found,
                supported,
            } => {
                assert_eq!(*found, VERSION + 1);
                assert_eq!(*supported, VERSION);
                assert!(path.ends_with(DB_FILE));
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("upgrade natter"), "{err}");
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let tables: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0, "nothing was created in a newer file");
    }

    #[test]
    fn reopen_does_not_migrate_again() {
        let (dir, store) = fresh();
        store.add_contact("alice").unwrap();
        let store = reopen(&dir, store);
        let version: i64 = store
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        assert_eq!(store.contacts().unwrap(), ["alice"]);
    }

    #[test]
    fn a_version_2_inbox_keeps_its_messages_and_arrival_numbers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(V1).unwrap();
            tx.execute_batch(V2).unwrap();
            tx.pragma_update(None, "user_version", 2).unwrap();
            for (n, sender) in [(1, "bob"), (2, "carol"), (3, "bob")] {
                tx.execute(
                    "INSERT INTO inbox (id, sender, text, sent_at_ms, conv_seq, received_at_ms)
                     VALUES (?1, ?2, 'hi', 1, ?3, 2)",
                    rusqlite::params![ulid(n), sender, n],
                )
                .unwrap();
            }
            // The newest was deleted: its arrival number must not come back.
            tx.execute("DELETE FROM inbox WHERE arrival = 3", [])
                .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let inbox = store.inbox(None, 10).unwrap();
        let arrivals: Vec<i64> = inbox.iter().map(|e| e.rowid).collect();
        assert_eq!(arrivals, [1, 2]);
        store.receive(&incoming(9, "dave", 1)).unwrap();
        assert_eq!(store.inbox(Some(2), 10).unwrap()[0].rowid, 4);
    }

    #[test]
    fn a_version_1_host_cache_becomes_unverified_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(V1).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            for i in 0..100 {
                tx.execute(
                    "INSERT INTO hosts (peer_id, addrs, last_seen) VALUES (?1, '[\"/a\"]', ?2)",
                    rusqlite::params![format!("old{i:03}"), i],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let hosts = store.hosts(usize::MAX).unwrap();
        assert_eq!(hosts.len(), crate::store::MAX_UNVERIFIED_HOSTS);
        assert!(hosts.iter().all(|h| !h.verified));
        assert_eq!(hosts[0].peer_id, "old099");
        assert_eq!(hosts[31].peer_id, "old068");
        assert_eq!(hosts[0].addrs, ["/a"]);
        // Reached again: verified, ahead of the rest.
        store.record_host("old070", &[], None, None, 1_000).unwrap();
        let hosts = store.hosts(2).unwrap();
        assert_eq!(hosts[0].peer_id, "old070");
        assert!(hosts[0].verified);
    }
}
