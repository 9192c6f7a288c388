//! Group commit: many writes, one transaction, one fsync.
//!
//! With `synchronous = FULL` every commit waits for the disk, and a burst of small writes (a
//! batch of acks, a crowd of presence updates) would spend its time in fsync. A group opens one
//! `BEGIN IMMEDIATE` transaction; every write made meanwhile by the same thread becomes a
//! savepoint inside it, so one that fails is undone alone, and the group ends with one `COMMIT`.
//! The store thread ([`super::StoreHandle`]) runs each batch of queued jobs as a group.

use std::thread;

use super::sql::{JOB, TRANSACTION};
use super::{Store, StoreError};

impl Store {
    /// Runs `f` with every write this thread makes meanwhile grouped into one transaction,
    /// committed (one fsync) when `f` returns.
    ///
    /// Inside the group each write is atomic on its own (a savepoint): one that fails leaves
    /// no trace and the others stay. Reads see the group's writes. Nothing of the group is on
    /// disk until this returns `Ok`; if it returns `Err`, nothing of it is kept. Other threads'
    /// calls on this store wait until the group ends. A group opened inside a group is part of
    /// the outer one. If `f` panics, the group is rolled back and the panic goes on.
    pub fn group<T>(&self, f: impl FnOnce() -> T) -> Result<T, StoreError> {
        self.group_synced(true, f)
    }

    /// [`Store::group`] whose commit does not wait for the disk (`synchronous = NORMAL`): for
    /// writes whose loss in a power cut costs only a repeat (a delivery recorded again after
    /// the recipient acknowledges the message a second time, a host heard of again). It stays
    /// atomic and ordered: a power cut loses a suffix of commits, never a middle one, and the
    /// next synced group's fsync makes it durable too. A crash of the process loses nothing.
    pub fn lazy_group<T>(&self, f: impl FnOnce() -> T) -> Result<T, StoreError> {
        self.group_synced(false, f)
    }

    fn group_synced<T>(&self, synced: bool, f: impl FnOnce() -> T) -> Result<T, StoreError> {
        {
            let mut conn = self.conn();
            if conn.group.is_some() {
                drop(conn);
                return Ok(f());
            }
            if conn.lazy == synced {
                // Outside any transaction, where SQLite takes the change.
                conn.sqlite.execute_batch(if synced {
                    "PRAGMA synchronous = FULL"
                } else {
                    "PRAGMA synchronous = NORMAL"
                })?;
                conn.lazy = !synced;
            }
            TRANSACTION.open(&conn.sqlite)?;
            conn.group = Some(thread::current().id());
        }
        let open = OpenGroup { store: self };
        let out = f();
        open.commit()?;
        Ok(out)
    }

    /// Runs `f` in a savepoint of this thread's group (in a group of its own if none is open):
    /// everything `f` writes is kept if it returns `Ok`, nothing if it returns `Err` or panics.
    pub(super) fn atomically<T>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let conn = self.conn();
            if conn.group.is_none() {
                drop(conn);
                return self.group(|| self.atomically(f))?;
            }
            if conn.sqlite.is_autocommit() {
                return Err(StoreError::RolledBack);
            }
            JOB.open(&conn.sqlite)?;
        }
        let savepoint = OpenSavepoint {
            store: self,
            open: true,
        };
        let out = f()?; // `savepoint` drops: rolled back
        savepoint.release()?;
        Ok(out)
    }
}

/// The transaction of an open [`Store::group`]: committed by [`OpenGroup::commit`], rolled back
/// if dropped (the group's closure panicked). Either way the group is over for other threads.
struct OpenGroup<'a> {
    store: &'a Store,
}

impl OpenGroup<'_> {
    fn commit(self) -> Result<(), StoreError> {
        let conn = self.store.lock();
        let committed = if conn.sqlite.is_autocommit() {
            // SQLite rolled the transaction back itself; COMMIT would only say "no transaction".
            Err(StoreError::RolledBack)
        } else {
            TRANSACTION.keep(&conn.sqlite).map_err(StoreError::from)
        };
        drop(conn);
        // Drop rolls back if the COMMIT left the transaction open, and ends the group.
        committed
    }
}

impl Drop for OpenGroup<'_> {
    fn drop(&mut self) {
        let mut conn = self.store.lock();
        if let Err(e) = TRANSACTION.undo(&conn.sqlite) {
            tracing::error!(error = %e, "rolling back a store group failed");
        }
        conn.group = None;
        drop(conn);
        self.store.group_ended.notify_all();
    }
}

/// The savepoint of an open [`Store::atomically`]: released by [`OpenSavepoint::release`],
/// rolled back if dropped open.
struct OpenSavepoint<'a> {
    store: &'a Store,
    open: bool,
}

impl OpenSavepoint<'_> {
    fn release(mut self) -> Result<(), StoreError> {
        let released = JOB.keep(&self.store.lock());
        // On failure `self` drops still open, which rolls the savepoint back.
        released?;
        self.open = false;
        Ok(())
    }
}

impl Drop for OpenSavepoint<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Without a transaction the savepoint went with it (SQLite rolled everything back).
        if let Err(e) = JOB.undo(&self.store.lock()) {
            tracing::error!(error = %e, "rolling back a store savepoint failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::Duration;

    use super::super::test_util::*;
    use super::super::{OutgoingMessage, StoreError};

    fn msg(n: u32) -> OutgoingMessage {
        OutgoingMessage {
            id: ulid(n),
            to: "alice".into(),
            text: format!("message {n}"),
            sent_at_ms: 1_000,
        }
    }

    #[test]
    fn writes_in_a_group_are_kept_apart_and_committed_together() {
        let (dir, store) = fresh();
        let (first, dup, contact, second, seen) = store
            .group(|| {
                let first = store.enqueue(&msg(1));
                let dup = store.enqueue(&msg(1));
                let contact = store.add_contact("Bob");
                let second = store.enqueue(&msg(2));
                let seen = store.queued_for("alice").unwrap().len();
                (first, dup, contact, second, seen)
            })
            .unwrap();
        assert_eq!(first.unwrap().conv_seq, 1);
        assert!(matches!(dup, Err(StoreError::DuplicateId(_))));
        assert!(matches!(contact, Err(StoreError::BadName { .. })));
        assert_eq!(
            second.unwrap().conv_seq,
            2,
            "the failed write used no number"
        );
        assert_eq!(seen, 2, "reads in a group see its writes");
        let store = reopen(&dir, store);
        assert_eq!(store.outbox_len().unwrap(), 2);
        // The connection left the group: a plain write is its own transaction again.
        assert!(store.add_contact("bob").unwrap());
    }

    #[test]
    fn a_failing_write_rolls_back_only_itself() {
        let (_dir, store) = fresh();
        let q = store.enqueue(&msg(1)).unwrap();
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER fail_delete BEFORE DELETE ON outbox
                 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
            .unwrap();
        store
            .group(|| {
                assert!(store.add_contact("alice").unwrap());
                // The INSERT half succeeds, the DELETE half fails: the savepoint undoes both.
                assert!(store.mark_delivered(&q.id, "direct", 2_000).is_err());
                assert!(store.add_contact("bob").unwrap());
            })
            .unwrap();
        assert_eq!(store.get_sent(&q.id).unwrap(), None);
        assert_eq!(store.outbox_len().unwrap(), 1);
        assert_eq!(store.contacts().unwrap(), ["alice", "bob"]);
    }

    #[test]
    fn nested_groups_join_the_outer_one() {
        let (_dir, store) = fresh();
        let inner = store
            .group(|| store.group(|| store.add_contact("alice").unwrap()))
            .unwrap();
        assert!(inner.unwrap());
        assert_eq!(store.contacts().unwrap(), ["alice"]);
    }

    #[test]
    fn a_panicking_group_is_rolled_back_and_the_store_keeps_serving() {
        let (dir, store) = fresh();
        let result = catch_unwind(AssertUnwindSafe(|| {
            store.group(|| {
                store.add_contact("alice").unwrap();
                panic!("bug");
            })
        }));
        assert!(result.is_err());
        assert!(store.contacts().unwrap().is_empty());
        store.group(|| store.add_contact("bob").unwrap()).unwrap();
        let store = reopen(&dir, store);
        assert_eq!(store.contacts().unwrap(), ["bob"]);
    }

    #[test]
    fn atomically_keeps_all_or_nothing() {
        let (_dir, store) = fresh();
        // Outside a group it opens one.
        let err = store
            .atomically(|| {
                store.add_contact("alice")?;
                store.add_contact("Bob")
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::BadName { .. }));
        store
            .group(|| {
                let kept = store.atomically(|| store.add_contact("carol"));
                let undone = catch_unwind(AssertUnwindSafe(|| {
                    store.atomically(|| -> Result<(), StoreError> {
                        store.add_contact("dave")?;
                        panic!("bug")
                    })
                }));
                assert!(kept.unwrap());
                assert!(undone.is_err());
            })
            .unwrap();
        assert_eq!(store.contacts().unwrap(), ["carol"]);
    }

    #[test]
    fn other_threads_wait_for_the_group_and_stay_out_of_it() {
        let (_dir, store) = fresh();
        std::thread::scope(|s| {
            let result = catch_unwind(AssertUnwindSafe(|| {
                store.group(|| {
                    store.add_contact("alice").unwrap();
                    let other = s.spawn(|| store.add_contact("bob").unwrap());
                    std::thread::sleep(Duration::from_millis(100));
                    assert!(!other.is_finished(), "waits for the group");
                    // Rolled back: alice goes, bob (not part of this group) must stay.
                    panic!("abandon the group");
                })
            }));
            assert!(result.is_err());
        });
        assert_eq!(store.contacts().unwrap(), ["bob"]);
    }
}
