//! Contacts: the users this node tells about its status changes directly, and whose presence
//! it watches (DESIGN: "Messaging", contacts).

use rusqlite::params;

use super::sql::Cached as _;
use super::{Store, StoreError, check_name, sql_limit};

/// Most contacts kept: each one costs presence traffic.
pub const MAX_CONTACTS: usize = 10_000;

impl Store {
    /// Adds `name` (canonical user name). `Ok(false)` if it was already a contact.
    pub fn add_contact(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        let max = self.max_contacts;
        self.write(|tx| {
            let n = tx.run(
                "INSERT INTO contacts (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                params![name],
            )?;
            if n == 1 {
                let count: i64 = tx.row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))?;
                if count > sql_limit(max) {
                    // Dropping the transaction rolls the insert back.
                    return Err(StoreError::ContactsFull { max });
                }
            }
            Ok(n == 1)
        })
    }

    /// Removes `name`. `Ok(false)` if it was not a contact.
    pub fn remove_contact(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx.run("DELETE FROM contacts WHERE name = ?1", params![name])?;
            Ok(n == 1)
        })
    }

    /// Refuses `name`'s messages from now on (and drops it from the contacts). `Ok(false)` if
    /// it was blocked already.
    pub fn block(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        self.write(|tx| {
            tx.run("DELETE FROM contacts WHERE name = ?1", params![name])?;
            let n = tx.run(
                "INSERT INTO blocked (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                params![name],
            )?;
            Ok(n == 1)
        })
    }

    /// Takes `name`'s messages again. `Ok(false)` if it was not blocked.
    pub fn unblock(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.run("DELETE FROM blocked WHERE name = ?1", params![name])? == 1))
    }

    /// Blocked senders, sorted by name.
    pub fn blocked(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name FROM blocked ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Contact requests: senders with messages in the inbox who are neither contacts, nor
    /// someone this user wrote to, nor blocked (their messages count against the request
    /// quota), with what they hold (messages, text bytes), by name; at most `limit`.
    pub fn contact_requests(&self, limit: usize) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT sender, messages, bytes FROM inbox_usage
             WHERE sender <> ''
               AND sender NOT IN (SELECT name FROM contacts)
               AND sender NOT IN (SELECT peer FROM conversations)
               AND sender NOT IN (SELECT name FROM blocked)
             ORDER BY sender LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![sql_limit(limit)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// All contacts, sorted by name (bounded by [`MAX_CONTACTS`]).
    pub fn contacts(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name FROM contacts ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn add_remove_list_survive_reopen() {
        let (dir, store) = fresh();
        assert!(store.add_contact("carol").unwrap());
        assert!(store.add_contact("alice").unwrap());
        assert!(!store.add_contact("alice").unwrap());
        assert!(store.add_contact("bob").unwrap());
        assert!(store.remove_contact("bob").unwrap());
        assert!(!store.remove_contact("bob").unwrap());
        assert!(!store.remove_contact("").unwrap());
        let store = reopen(&dir, store);
        assert_eq!(store.contacts().unwrap(), ["alice", "carol"]);
    }

    /// Senders who are neither contacts, nor written to, nor blocked are the requests.
    #[test]
    fn contact_requests_are_the_strangers_with_messages_waiting() {
        let (_dir, store) = fresh();
        for (n, from) in [
            (1, "mallory"),
            (2, "mallory"),
            (3, "carol"),
            (4, "dave"),
            (5, "erin"),
        ] {
            store.receive(&incoming(n, from, u64::from(n))).unwrap();
        }
        store.add_contact("carol").unwrap();
        store.block("dave").unwrap();
        store
            .enqueue(&super::super::OutgoingMessage {
                id: ulid(9),
                to: "erin".into(),
                text: "hi".into(),
                sent_at_ms: 1,
            })
            .unwrap();
        let requests = store.contact_requests(10).unwrap();
        assert_eq!(
            requests,
            [("mallory".to_owned(), 2, 2 * "hello 1".len() as u64)]
        );
        assert!(store.contact_requests(0).unwrap().is_empty());
        store.add_contact("mallory").unwrap();
        assert!(store.contact_requests(10).unwrap().is_empty());
    }

    #[test]
    fn names_are_validated_and_bounded() {
        let (_dir, mut store) = fresh();
        for bad in ["Alice", "", "al", "1abc", "a\u{0}bc", &"a".repeat(33)] {
            assert!(
                matches!(store.add_contact(bad), Err(StoreError::BadName { .. })),
                "{bad:?}"
            );
        }
        store.max_contacts = 2;
        store.add_contact("alice").unwrap();
        store.add_contact("bob").unwrap();
        assert!(
            !store.add_contact("bob").unwrap(),
            "re-adding is fine when full"
        );
        assert!(matches!(
            store.add_contact("carol"),
            Err(StoreError::ContactsFull { max: 2 })
        ));
        assert_eq!(store.contacts().unwrap(), ["alice", "bob"]);
    }
}
