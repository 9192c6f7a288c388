//! Accounts in SQLite: names, argon2id password hashes, the disabled flag, and the certificate
//! serial counter. Passwords are hashed here and nowhere else, and never logged.

use std::path::Path;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use natter_proto::UserName;
use natter_proto::login::Password;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::Error;

pub(crate) const DB_FILE: &str = "accounts.sqlite3";

/// argon2id with the OWASP Password Storage Cheat Sheet's first recommended setting:
/// 19 MiB of memory, 2 iterations, 1 lane.
pub fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string (algorithm, parameters and salt included).
pub fn hash_password(password: &Password) -> Result<String, Error> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| Error::Internal(format!("salt: {e}")))?;
    argon2()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("argon2: {e}")))
}

/// Checks a password against a stored PHC string, with the parameters stored in it.
pub fn verify_password(password: &Password, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            argon2()
                .verify_password(password.expose().as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// One account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: UserName,
    pub password_hash: String,
    pub created_at: u64,
    pub disabled: bool,
}

/// The account database. Calls block (SQLite, and argon2 in callers): run them off the event loop.
#[derive(Debug)]
pub struct Accounts {
    conn: Mutex<Connection>,
    /// Serials reserved on disk but not yet handed out: `next..end`.
    serials: Mutex<(u64, u64)>,
}

/// How old a device's certification time may get before a certificate for it writes it again.
const FRESH_DEVICE_SECS: u64 = 3600;

/// Serials are reserved on disk this many at a time, so issuing a certificate costs no disk
/// write of its own. A crash skips the rest of a block; serials never repeat.
const SERIAL_BLOCK: u64 = 1024;

impl Accounts {
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| Error::db(&path, e))?;
        // Password hashes are secrets too; SQLite gives its -wal and -shm files the same mode.
        crate::keys::set_mode(&path, 0o600)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS accounts (
                 name TEXT PRIMARY KEY NOT NULL,
                 password_hash TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 disabled INTEGER NOT NULL DEFAULT 0
             ) STRICT;
             CREATE TABLE IF NOT EXISTS counters (
                 key TEXT PRIMARY KEY NOT NULL,
                 value INTEGER NOT NULL
             ) STRICT;
             INSERT OR IGNORE INTO counters (key, value) VALUES ('cert_serial', 0);
             -- Devices certified for an account, and when last: what the cap on devices
             -- per account counts.
             CREATE TABLE IF NOT EXISTS devices (
                 account   TEXT NOT NULL,
                 device    TEXT NOT NULL,  -- the device's ed25519 key, hex
                 certified_at INTEGER NOT NULL,  -- when it was last certified (written at most hourly)
                 PRIMARY KEY (account, device)
             ) STRICT;
             -- Revoked accounts (device NULL) and devices: certificates issued at or before
             -- revoked_at no longer count. Kept one certificate lifetime, then pruned.
             CREATE TABLE IF NOT EXISTS revocations (
                 account    TEXT NOT NULL,
                 device     TEXT NOT NULL DEFAULT '',  -- the device key, hex; '' for all
                 revoked_at INTEGER NOT NULL,
                 PRIMARY KEY (account, device)
             ) STRICT;",
        )
        .map_err(|e| Error::db(&path, e))?;
        Ok(Self {
            conn: Mutex::new(conn),
            serials: Mutex::new((0, 0)),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: keep serving.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an account; `Ok(false)` if the name is taken.
    pub fn create(&self, name: &UserName, password_hash: &str, now: u64) -> Result<bool, Error> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO accounts (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![name.as_str(), password_hash, now as i64],
            )
            .map_err(Error::sql)?;
        Ok(n == 1)
    }

    pub fn get(&self, name: &UserName) -> Result<Option<Account>, Error> {
        self.conn()
            .query_row(
                "SELECT password_hash, created_at, disabled FROM accounts WHERE name = ?1",
                params![name.as_str()],
                |row| {
                    Ok(Account {
                        name: name.clone(),
                        password_hash: row.get(0)?,
                        created_at: row.get::<_, i64>(1)? as u64,
                        disabled: row.get::<_, i64>(2)? != 0,
                    })
                },
            )
            .optional()
            .map_err(Error::sql)
    }

    pub fn exists(&self, name: &UserName) -> Result<bool, Error> {
        self.conn()
            .query_row(
                "SELECT 1 FROM accounts WHERE name = ?1",
                params![name.as_str()],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(Error::sql)
    }

    /// Sets the disabled flag; `Ok(false)` if there is no such account. Disabling also
    /// revokes every certificate of the account issued until `now`.
    pub fn set_disabled(&self, name: &UserName, disabled: bool, now: u64) -> Result<bool, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(Error::sql)?;
        let n = tx
            .execute(
                "UPDATE accounts SET disabled = ?2 WHERE name = ?1",
                params![name.as_str(), disabled as i64],
            )
            .map_err(Error::sql)?;
        if n == 1 && disabled {
            revoke(&tx, name, "", now)?;
        }
        tx.commit().map_err(Error::sql)?;
        Ok(n == 1)
    }

    /// Revokes the certificates of one device of an account issued until `now`, and forgets
    /// the device (it no longer counts against the device cap). `Ok(false)` if there is no
    /// such account.
    pub fn revoke_device(&self, name: &UserName, device: &str, now: u64) -> Result<bool, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(Error::sql)?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM accounts WHERE name = ?1",
                params![name.as_str()],
                |_| Ok(()),
            )
            .optional()
            .map_err(Error::sql)?
            .is_some();
        if exists {
            revoke(&tx, name, device, now)?;
            tx.execute(
                "DELETE FROM devices WHERE account = ?1 AND device = ?2",
                params![name.as_str(), device],
            )
            .map_err(Error::sql)?;
        }
        tx.commit().map_err(Error::sql)?;
        Ok(exists)
    }

    /// The revocations made after `since` (unix seconds), oldest first, at most `max`; older
    /// ones are deleted (they revoke no certificate that is still valid).
    pub fn revocations(
        &self,
        since: u64,
        max: usize,
    ) -> Result<Vec<natter_proto::revocation::Revoked>, Error> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM revocations WHERE revoked_at < ?1",
            params![since as i64],
        )
        .map_err(Error::sql)?;
        let mut stmt = conn
            .prepare(
                "SELECT account, device, revoked_at FROM revocations
                 ORDER BY revoked_at, account, device LIMIT ?1",
            )
            .map_err(Error::sql)?;
        let rows = stmt
            .query_map(params![max as i64], |row| {
                Ok(natter_proto::revocation::Revoked {
                    name: row.get(0)?,
                    device: Some(row.get::<_, String>(1)?).filter(|d| !d.is_empty()),
                    revoked_at: row.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(Error::sql)?;
        rows.collect::<Result<_, _>>().map_err(Error::sql)
    }

    pub fn list(&self) -> Result<Vec<Account>, Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, password_hash, created_at, disabled FROM accounts ORDER BY name")
            .map_err(Error::sql)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .map_err(Error::sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (name, password_hash, created_at, disabled) = row.map_err(Error::sql)?;
            let name = UserName::parse_canonical(&name)
                .map_err(|e| Error::Internal(format!("stored name {name:?}: {e}")))?;
            out.push(Account {
                name,
                password_hash,
                created_at: created_at as u64,
                disabled: disabled != 0,
            });
        }
        Ok(out)
    }

    /// Notes that `device` is certified for `name` now, unless it is a new device and the
    /// account already has `max` devices certified since `since` (unix seconds): then
    /// `Ok(false)` and nothing changes. Devices not certified since `since` are forgotten.
    pub fn admit_device(
        &self,
        name: &UserName,
        device: &str,
        now: u64,
        since: u64,
        max: usize,
    ) -> Result<bool, Error> {
        let mut conn = self.conn();
        // A known device seen within the hour: nothing to write (renewals stay free of a
        // disk sync).
        let certified_at: Option<i64> = conn
            .query_row(
                "SELECT certified_at FROM devices WHERE account = ?1 AND device = ?2",
                params![name.as_str(), device],
                |r| r.get(0),
            )
            .optional()
            .map_err(Error::sql)?;
        if certified_at
            .is_some_and(|t| t as u64 >= since.max(now.saturating_sub(FRESH_DEVICE_SECS)))
        {
            return Ok(true);
        }
        let tx = conn.transaction().map_err(Error::sql)?;
        tx.execute(
            "DELETE FROM devices WHERE account = ?1 AND certified_at < ?2",
            params![name.as_str(), since as i64],
        )
        .map_err(Error::sql)?;
        let known: bool = tx
            .query_row(
                "SELECT 1 FROM devices WHERE account = ?1 AND device = ?2",
                params![name.as_str(), device],
                |_| Ok(()),
            )
            .optional()
            .map_err(Error::sql)?
            .is_some();
        if !known {
            let count: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM devices WHERE account = ?1",
                    params![name.as_str()],
                    |r| r.get(0),
                )
                .map_err(Error::sql)?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= max {
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT INTO devices (account, device, certified_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (account, device) DO UPDATE SET certified_at = excluded.certified_at",
            params![name.as_str(), device, now as i64],
        )
        .map_err(Error::sql)?;
        tx.commit().map_err(Error::sql)?;
        Ok(true)
    }

    /// Allocates the next certificate serial: serials never repeat, even across crashes.
    pub fn next_serial(&self) -> Result<u64, Error> {
        let mut range = self.serials.lock().unwrap_or_else(|p| p.into_inner());
        if range.0 >= range.1 {
            let end = self
                .conn()
                .query_row(
                    "UPDATE counters SET value = value + ?1 WHERE key = 'cert_serial' RETURNING value",
                    params![SERIAL_BLOCK as i64],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(Error::sql)? as u64;
            *range = (end - SERIAL_BLOCK + 1, end + 1);
        }
        let serial = range.0;
        range.0 += 1;
        Ok(serial)
    }
}

/// Records a revocation (a later one of the same account or device replaces it).
fn revoke(
    tx: &rusqlite::Transaction<'_>,
    name: &UserName,
    device: &str,
    now: u64,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO revocations (account, device, revoked_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (account, device) DO UPDATE SET revoked_at = excluded.revoked_at",
        params![name.as_str(), device, now as i64],
    )
    .map_err(Error::sql)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }

    #[test]
    fn create_get_disable_list_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Accounts::open(dir.path()).unwrap();
            assert!(db.create(&name("alice"), "h1", 10).unwrap());
            assert!(
                !db.create(&name("alice"), "h2", 11).unwrap(),
                "duplicate refused"
            );
            assert!(db.create(&name("bob"), "h3", 12).unwrap());
            assert!(db.set_disabled(&name("bob"), true, 1).unwrap());
            assert!(!db.set_disabled(&name("carol"), true, 1).unwrap());
            assert_eq!(db.next_serial().unwrap(), 1);
            assert_eq!(db.next_serial().unwrap(), 2);
        }
        let db = Accounts::open(dir.path()).unwrap();
        let alice = db.get(&name("alice")).unwrap().unwrap();
        assert_eq!(alice.password_hash, "h1");
        assert!(!alice.disabled);
        assert!(db.get(&name("bob")).unwrap().unwrap().disabled);
        assert!(db.get(&name("carol")).unwrap().is_none());
        assert!(db.exists(&name("bob")).unwrap());
        assert_eq!(db.list().unwrap().len(), 2);
        assert_eq!(
            db.next_serial().unwrap(),
            SERIAL_BLOCK + 1,
            "a reopened database never reuses a reserved serial"
        );
    }

    #[test]
    fn password_hashing_round_trip() {
        let pw = Password::new("correct horse");
        let phc = hash_password(&pw).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&pw, &phc));
        assert!(!verify_password(&Password::new("wrong horse"), &phc));
        assert!(!verify_password(&pw, "not a hash"));
        assert_ne!(phc, hash_password(&pw).unwrap(), "salted");
    }
}
