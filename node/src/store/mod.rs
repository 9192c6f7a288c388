//! The node's durable local store: one SQLite file, [`DB_FILE`], in the home directory.
//!
//! It holds everything that must survive a crash or a restart:
//!
//! - the **host cache** ([`Store::record_host`], [`Store::learn_host`], [`Store::hosts`]):
//!   superpeers this node reached (verified) or only heard of (unverified), so it can reattach
//!   without the login server;
//! - the **outbox** and the **sent** log ([`Store::enqueue`], [`Store::mark_delivered`]): `send`
//!   writes a message here *before* any network I/O, delivery retries until the recipient's node
//!   acks, and the ack moves the message to `sent`;
//! - the **inbox** ([`Store::receive`]): received messages, deduplicated by sender and id, in arrival order
//!   and per-conversation order;
//! - **contacts** ([`Store::contacts`]).
//!
//! [`Store`]'s methods are synchronous and block on disk (every commit is fsynced,
//! `synchronous = FULL`). The CLI calls them directly when the daemon is down; the daemon never
//! does: it moves the store onto its own thread with [`StoreHandle::spawn`] and sends it jobs
//! ([`StoreHandle::run`], [`StoreHandle::submit`]) through a bounded queue. The store thread runs
//! every job that waited meanwhile in one [group](Store::group), one transaction and one fsync
//! for all of them, and answers each job only once that commit returned: an `Ok` means the
//! write is on disk. Each job runs inside its own savepoint, so a job that fails (or panics)
//! leaves no trace and does not undo the others.
//!
//! Every write is atomic: one transaction of its own, or one savepoint inside a group, so a
//! crash leaves either all of it or none of it.
//!
//! Inputs are checked here too (names, message ids, text size, integer range), because this is
//! the last place where two spellings of one name could split a conversation: a bad input is a
//! typed [`StoreError`], never a panic and never a silent change.

mod actor;
mod contacts;
mod fanout;
mod group;
mod history;
mod hosts;
mod inbox;
mod outbox;
mod quota;
mod schema;
mod seen;
mod sql;

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};
use std::time::Duration;

use natter_proto::limits::MAX_MESSAGE_TEXT_BYTES;
use natter_proto::{NameError, UserName};
use rusqlite::Connection;

use sql::{TRANSACTION, WRITE};

pub use actor::{MAX_GROUP_JOBS, StoreHandle, StoreThread};
pub use contacts::MAX_CONTACTS;
pub use fanout::{
    CopyMessage, DeviceDelivery, FANOUT_TTL_MS, FanoutBatch, FanoutMessage, FanoutTarget,
    MAX_COPIES,
};
pub use history::{HistoryEntry, HistoryKind};
pub use hosts::{
    FAILING_AFTER, Host, MAX_HOST_ADDRS, MAX_HOSTS, MAX_UNVERIFIED_HOSTS, UNVERIFIED_DROP_AFTER,
};
pub use inbox::{InboxEntry, InboxLimits, IncomingMessage, OverQuota, Receipt};
pub use outbox::{MAX_OUTBOX, OutgoingMessage, QueuedMessage, SentMessage};
pub use seen::MAX_LAST_SEEN;

/// The store's file name inside the home directory.
pub const DB_FILE: &str = "natter.sqlite3";

/// How long a write waits for another connection (say, a second daemon started by mistake)
/// before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating the file or setting its mode failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// SQLite refused to open, configure or migrate the file.
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The file was written by a newer Natter; opening it could corrupt what that version wrote.
    #[error(
        "{}: schema version {found} is newer than this natter supports ({supported}); upgrade natter",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// A query or a write failed.
    #[error("local store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be decoded (the file was edited or damaged outside Natter).
    #[error("local store is corrupt: {0}")]
    Corrupt(String),
    /// A user name that is not a valid, canonical (lower-case) Natter name.
    #[error("{name:?}: {source}")]
    BadName { name: String, source: NameError },
    /// Any other input outside what the store accepts.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// An input larger than its limit.
    #[error("{what} is {len} bytes; at most {max} allowed")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A message with this id is already in the outbox or the sent log.
    #[error("message {0} is already stored")]
    DuplicateId(String),
    /// Too many messages wait for delivery; refuse more rather than fill the disk.
    #[error("outbox is full: {max} messages are waiting for delivery")]
    OutboxFull { max: usize },
    /// The contact list is at its limit.
    #[error("contact list is full: at most {max} contacts")]
    ContactsFull { max: usize },
    /// SQLite rolled the open [group](Store::group)'s transaction back on its own (disk full,
    /// I/O error): nothing written in the group is kept, and no more writes are accepted in it.
    #[error("local store: the transaction was rolled back by SQLite; nothing of it was kept")]
    RolledBack,
    /// Committing (or beginning) the job's group failed: nothing it wrote is kept, and what it
    /// read may have included writes that were not kept either. Shared by every job of the
    /// group.
    #[error("local store: commit failed, this write was not kept: {0}")]
    CommitFailed(#[source] std::sync::Arc<StoreError>),
    /// A store call panicked; what it wrote was rolled back.
    #[error("local store: a store call panicked: {0}")]
    Panicked(String),
    /// The store thread has stopped (shut down, its owner dropped, or it died): the job did not
    /// run, or its group was never committed. Either way nothing it wrote is kept.
    #[error("local store is closed")]
    Closed,
}

/// The node's store. Cheap to share (`Arc<Store>`); calls block, see the module docs.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// One connection, serialised: the daemon is the only writer, and SQLite serialises writes
    /// anyway, so a pool would add nothing but lock contention.
    conn: Mutex<Conn>,
    /// Notified when a group ends, for other threads waiting for the connection meanwhile.
    group_ended: Condvar,
    /// [`MAX_OUTBOX`], lowered by tests to exercise the limit cheaply.
    max_outbox: usize,
    /// [`MAX_CONTACTS`], lowered by tests.
    max_contacts: usize,
    /// [`MAX_LAST_SEEN`], lowered by tests.
    max_last_seen: usize,
    /// [`MAX_COPIES`], lowered by tests.
    max_copies: usize,
    /// The inbox quotas.
    inbox_limits: InboxLimits,
}

impl Store {
    /// Opens (creating if needed) `dir/natter.sqlite3` and brings its schema up to date.
    ///
    /// `dir` must exist ([`crate::Home`] creates it, 0700). The file is 0600: it holds private
    /// conversations; SQLite gives its `-wal` and `-shm` files the same mode.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        create_private(&path)?;
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL: readers never block the writer; FULL: a commit that returned is on disk, which
        // is what "accepted by send" and "acked as stored" promise.
        // temp_store = MEMORY: a savepoint's journal (one per write inside a group) stays in
        // memory rather than in a temporary file.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;",
        )
        .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(sql::STATEMENT_CACHE);
        schema::migrate(&mut conn, &path).map_err(|e| match e {
            StoreError::Sqlite(source) => open_err(source),
            other => other,
        })?;
        Ok(Self {
            path,
            conn: Mutex::new(Conn {
                sqlite: conn,
                group: None,
                lazy: false,
            }),
            group_ended: Condvar::new(),
            max_outbox: MAX_OUTBOX,
            max_contacts: MAX_CONTACTS,
            max_last_seen: MAX_LAST_SEEN,
            max_copies: MAX_COPIES,
            inbox_limits: InboxLimits::default(),
        })
    }

    /// Sets the inbox quotas (the defaults are [`InboxLimits::default`]).
    pub fn set_inbox_limits(&mut self, limits: InboxLimits) {
        self.inbox_limits = limits;
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, once no other thread's [group](Store::group) is open.
    fn conn(&self) -> MutexGuard<'_, Conn> {
        let me = thread::current().id();
        let mut conn = self.lock();
        while conn.group.is_some_and(|owner| owner != me) {
            conn = self
                .group_ended
                .wait(conn)
                .unwrap_or_else(PoisonError::into_inner);
        }
        conn
    }

    /// The connection's lock, whoever's group is open.
    fn lock(&self) -> MutexGuard<'_, Conn> {
        // A panic while the lock was held rolled its transaction or savepoint back (their
        // Drop): the connection is consistent, keep serving.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` atomically, kept only if `f` succeeds: in a write transaction of its own, or,
    /// inside this thread's [group](Store::group), in a savepoint that the group's commit
    /// makes durable.
    ///
    /// `IMMEDIATE` takes the write lock up front, so a transaction that reads then writes never
    /// fails half-way with SQLITE_BUSY when another connection writes (a group begins
    /// `IMMEDIATE` too).
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn();
        if conn.group.is_none() {
            return TRANSACTION.run(&conn.sqlite, f);
        }
        if conn.sqlite.is_autocommit() {
            // A savepoint now would be a transaction of its own, outside the group.
            return Err(StoreError::RolledBack);
        }
        WRITE.run(&conn.sqlite, f)
    }
}

/// The connection and who is grouping writes on it; derefs to the connection.
#[derive(Debug)]
struct Conn {
    sqlite: Connection,
    /// The thread whose [group](Store::group) is open: its writes become savepoints in the
    /// group's transaction, and other threads wait until it ends.
    group: Option<ThreadId>,
    /// The connection commits without waiting for the disk (`synchronous = NORMAL`), as
    /// [`Store::lazy_group`] sets it for its group; `false` (`FULL`) otherwise.
    lazy: bool,
}

impl Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.sqlite
    }
}

/// Creates `path` with mode 0600 if it does not exist (so it is never readable by others, not
/// even for an instant), and resets the mode if it does.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

/// A `u64` from the caller as SQLite's `INTEGER` (i64), refusing what would not round-trip.
fn int(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid {
        what,
        reason: format!("{value} is larger than {}", i64::MAX),
    })
}

/// A caller's `limit` as an SQL `LIMIT`; anything past i64::MAX means "all" anyway.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A user name must already be canonical: "Alice" and "alice" must never become two
/// conversations with two sequence counters.
fn check_name(name: &str) -> Result<(), StoreError> {
    UserName::parse_canonical(name)
        .map(drop)
        .map_err(|source| StoreError::BadName {
            name: name.to_owned(),
            source,
        })
}

/// Message ids are ULIDs in canonical text form (26 upper-case Crockford base-32 characters):
/// the id is the dedup key, so one message must have exactly one spelling.
fn check_message_id(id: &str) -> Result<(), StoreError> {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ok = id.len() == 26
        // 26 base-32 digits hold 130 bits; a ULID is 128, so the first digit is at most 7.
        && id.as_bytes().first().is_some_and(|b| *b <= b'7')
        && id.bytes().all(|b| CROCKFORD.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "message id",
            reason: format!("{id:?} is not a canonical ULID"),
        })
    }
}

/// Message text is bounded like on the wire.
fn check_text(text: &str) -> Result<(), StoreError> {
    if text.len() > MAX_MESSAGE_TEXT_BYTES {
        return Err(StoreError::TooLarge {
            what: "message text",
            len: text.len(),
            max: MAX_MESSAGE_TEXT_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the store's test modules.

    use super::*;

    /// A fresh store in a fresh directory; keep the `TempDir` alive as long as the store.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// Drops `store` and opens the same file again, as a restart would.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn reopen(dir: &tempfile::TempDir, store: Store) -> Store {
        drop(store);
        Store::open(dir.path()).unwrap()
    }

    /// Message `n` (id `ulid(n)`) from `from`, number `conv_seq` of the conversation.
    pub(crate) fn incoming(n: u32, from: &str, conv_seq: u64) -> super::IncomingMessage {
        super::IncomingMessage {
            id: ulid(n),
            from: from.into(),
            text: format!("hello {n}"),
            sent_at_ms: 1_000 + u64::from(n),
            conv_seq,
            received_at_ms: 2_000 + u64::from(n),
        }
    }

    /// A distinct, valid ULID for test message `n`.
    pub(crate) fn ulid(n: u32) -> String {
        format!("01ARZ3NDEKTSV4RRFFQ{n:07}")
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn store_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private_including_wal() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, store) = fresh();
        store.add_contact("alice").unwrap();
        for name in [DB_FILE.to_owned(), format!("{DB_FILE}-wal")] {
            let mode = fs::metadata(dir.path().join(&name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn existing_file_mode_is_tightened() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        fs::write(&path, b"").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let _store = Store::open(dir.path()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn pragmas_are_set() {
        let (_dir, store) = fresh();
        let conn = store.conn();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::VERSION);
    }

    #[test]
    fn missing_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DB_FILE), vec![0x42; 4096]).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains(DB_FILE), "{err}");
    }

    #[test]
    fn message_ids_must_be_canonical_ulids() {
        assert!(check_message_id("01ARZ3NDEKTSV4RRFFQ69G5FAV").is_ok());
        assert!(check_message_id(&ulid(7)).is_ok());
        for bad in [
            "",
            "01arz3ndektsv4rrffq69g5fav", // lower case: a second spelling
            "01ARZ3NDEKTSV4RRFFQ69G5FA",  // 25
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
            "81ARZ3NDEKTSV4RRFFQ69G5FAV", // overflows 128 bits
            "01ARZ3NDEKTSV4RRFFQ69G5FAI", // I is not Crockford
            "01ARZ3NDEKTSV4RRFFQ69G5FA\u{e9}",
        ] {
            assert!(
                matches!(check_message_id(bad), Err(StoreError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn out_of_range_integers_are_refused() {
        assert_eq!(int("t", i64::MAX as u64).unwrap(), i64::MAX);
        assert!(matches!(
            int("t", u64::MAX),
            Err(StoreError::Invalid { what: "t", .. })
        ));
        assert_eq!(sql_limit(usize::MAX), i64::MAX);
    }
}
