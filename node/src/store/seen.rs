//! When this node last saw each user online: "last seen" outlives the directory record.
//!
//! A presence record ends with its lease (90 s by default), offline records too, so the
//! directory forgets a user soon after sign-off. What a lookup then shows as "last seen" is
//! what this node remembers from the records it verified (lookups and contacts' pushes).

use rusqlite::{OptionalExtension as _, params};

use super::sql::Cached as _;
use super::{Store, StoreError, check_name, sql_limit};

/// Most users remembered; beyond, the longest unseen are forgotten first.
pub const MAX_LAST_SEEN: usize = 10_000;

impl Store {
    /// Notes that `name` was seen at `at` (unix seconds, from a verified record); an older
    /// time than the one kept changes nothing.
    pub fn note_seen(&self, name: &str, at: u64) -> Result<(), StoreError> {
        check_name(name)?;
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let max = sql_limit(self.max_last_seen);
        self.write(|tx| {
            let known: i64 = tx.row(
                "SELECT COUNT(*) FROM last_seen WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )?;
            tx.run(
                "INSERT INTO last_seen (name, at) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET at = MAX(at, excluded.at)",
                params![name, at],
            )?;
            if known == 0 {
                // A new name: forget the longest unseen beyond the bound.
                tx.run(
                    "DELETE FROM last_seen WHERE name IN (
                         SELECT name FROM last_seen ORDER BY at, name
                         LIMIT MAX(0, (SELECT COUNT(*) FROM last_seen) - ?1))",
                    params![max],
                )?;
            }
            Ok(())
        })
    }

    /// When `name` was last seen, if this node remembers.
    pub fn last_seen(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT at FROM last_seen WHERE name = ?1")?;
        let at: Option<i64> = stmt.query_row(params![name], |r| r.get(0)).optional()?;
        Ok(at.and_then(|a| u64::try_from(a).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn the_latest_time_is_kept_across_a_reopen() {
        let (dir, store) = fresh();
        assert_eq!(store.last_seen("alice").unwrap(), None);
        store.note_seen("alice", 100).unwrap();
        store.note_seen("alice", 90).unwrap();
        store.note_seen("bob", 5).unwrap();
        let store = reopen(&dir, store);
        assert_eq!(store.last_seen("alice").unwrap(), Some(100));
        store.note_seen("alice", 120).unwrap();
        assert_eq!(store.last_seen("alice").unwrap(), Some(120));
        assert_eq!(store.last_seen("bob").unwrap(), Some(5));
        assert!(matches!(
            store.note_seen("Not A Name", 1),
            Err(StoreError::BadName { .. })
        ));
    }

    #[test]
    fn the_longest_unseen_are_forgotten_first() {
        let (_dir, mut store) = fresh();
        store.max_last_seen = 3;
        for (name, at) in [("dave", 40), ("alice", 10), ("bob", 20), ("carol", 30)] {
            store.note_seen(name, at).unwrap();
        }
        assert_eq!(store.last_seen("alice").unwrap(), None);
        // Seen again: kept, and no one else is dropped for it.
        store.note_seen("bob", 50).unwrap();
        for (name, at) in [("bob", 50), ("carol", 30), ("dave", 40)] {
            assert_eq!(store.last_seen(name).unwrap(), Some(at), "{name}");
        }
        store.note_seen("erin", 60).unwrap();
        assert_eq!(store.last_seen("carol").unwrap(), None);
        assert_eq!(store.last_seen("dave").unwrap(), Some(40));
    }
}
