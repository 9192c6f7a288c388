//! Statements through the connection's statement cache.
//!
//! Parsing and planning a statement costs more than running one of the store's small writes:
//! with `Connection::execute` a burst of sends spent a third of the store thread's time in
//! SQLite's parser. Every statement the store runs more than once goes through here, so each
//! SQL text is compiled once per connection and reused.

use rusqlite::{Connection, Params, Row};

/// How many compiled statements a connection keeps; above the number of distinct statements
/// the store runs, so none is ever compiled twice.
pub(super) const STATEMENT_CACHE: usize = 128;

/// [`Connection::execute`] and [`Connection::query_row`] through the statement cache.
pub(super) trait Cached {
    /// Runs one statement; the number of rows it changed.
    fn run(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize>;

    /// Runs one statement and maps its first row (`QueryReturnedNoRows` if there is none).
    fn row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// A transaction or a savepoint: the statements that open it, keep its writes, and undo them.
/// `ROLLBACK TO` and `RELEASE` act on the innermost savepoint of a name, so savepoints of one
/// name nest.
#[derive(Debug)]
pub(super) struct Scope {
    open: &'static str,
    keep: &'static str,
    undo: &'static [&'static str],
}

/// A write transaction. `IMMEDIATE` takes the write lock up front, so a transaction that reads
/// then writes never fails half-way with `SQLITE_BUSY` when another connection writes.
pub(super) const TRANSACTION: Scope = Scope {
    open: "BEGIN IMMEDIATE",
    keep: "COMMIT",
    undo: &["ROLLBACK"],
};

/// The savepoint around each job of a group ([`super::Store::atomically`]).
pub(super) const JOB: Scope = Scope {
    open: "SAVEPOINT natter_job",
    keep: "RELEASE natter_job",
    undo: &["ROLLBACK TO natter_job", "RELEASE natter_job"],
};

/// The savepoint around each write made inside a group.
pub(super) const WRITE: Scope = Scope {
    open: "SAVEPOINT natter_write",
    keep: "RELEASE natter_write",
    undo: &["ROLLBACK TO natter_write", "RELEASE natter_write"],
};

impl Scope {
    pub(super) fn open(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.run(self.open, []).map(drop)
    }

    pub(super) fn keep(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.run(self.keep, []).map(drop)
    }

    /// Undoes the scope's writes and closes it. Nothing to do once SQLite has rolled the
    /// whole transaction back itself (the connection is in autocommit mode again).
    pub(super) fn undo(&self, conn: &Connection) -> rusqlite::Result<()> {
        if conn.is_autocommit() {
            return Ok(());
        }
        self.undo
            .iter()
            .try_for_each(|sql| conn.run(sql, []).map(drop))
    }

    /// Runs `f` inside this scope: its writes are kept if it returns `Ok`, undone if it
    /// returns `Err` or panics, or if keeping them fails.
    pub(super) fn run<T, E: From<rusqlite::Error>>(
        &'static self,
        conn: &Connection,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        self.open(conn)?;
        let open = Open { scope: self, conn };
        let out = f(conn)?;
        self.keep(conn)?;
        std::mem::forget(open);
        Ok(out)
    }
}

/// A scope that [`Scope::run`] opened and has not kept yet: dropped, it undoes the writes.
struct Open<'a> {
    scope: &'static Scope,
    conn: &'a Connection,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.scope.undo(self.conn) {
            tracing::error!(error = %e, statement = self.scope.open, "undoing a store write failed");
        }
    }
}
