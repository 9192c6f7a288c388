//! The node's home directory: the device key (the node's libp2p identity) and the identity
//! file (user name, certificate, issuer key, login address). Secrets are 0600 in a 0700 dir.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use natter_proto::{Certificate, IssuerKey, UserName};
use serde::{Deserialize, Serialize};

const DEVICE_KEY_FILE: &str = "device.key";
const IDENTITY_FILE: &str = "identity.json";

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// `natter` is how to run natter for this home (`natter --home DIR` when one was given),
    /// so that the hint can be copied as is.
    #[error(
        "not logged in: run `{natter} register NAME --login ADDR` or `{natter} login NAME --login ADDR` first"
    )]
    NotLoggedIn { natter: String },
    #[error("no home directory found: pass --home or set NATTER_HOME")]
    NoDefault,
}

/// What this device is logged in as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub user: UserName,
    /// Address of the login server, ending in `/p2p/<its peer id>`.
    pub login: Multiaddr,
    /// The issuer key the login server presented; certificates of peers are checked with it.
    pub issuer_key: IssuerKey,
    pub cert: Certificate,
}

/// A node's home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
    /// Whether `dir` was given (`--home`, `NATTER_HOME`) rather than the platform default:
    /// then the commands suggested to the user must name it too.
    explicit: bool,
}

impl Home {
    /// `dir`, or the platform data dir (e.g. `~/.local/share/natter`) when `None`.
    pub fn new(dir: Option<PathBuf>) -> Result<Self, HomeError> {
        let explicit = dir.is_some();
        let dir = match dir {
            Some(d) => d,
            None => directories::ProjectDirs::from("", "", "natter")
                .map(|d| d.data_dir().to_owned())
                .ok_or(HomeError::NoDefault)?,
        };
        Ok(Self { dir, explicit })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How to run `natter` for this home in a hint: `natter --home DIR` when the home was
    /// given, plain `natter` for the default one.
    pub fn command(&self) -> String {
        if self.explicit {
            format!("natter --home {}", self.dir.display())
        } else {
            "natter".to_owned()
        }
    }

    /// Whether the identity file exists (whoever it names).
    pub fn has_identity(&self) -> bool {
        self.dir.join(IDENTITY_FILE).exists()
    }

    /// Moves the message store of the user this home belonged to aside, into
    /// `replaced-USER-SECS/`, before another user's identity replaces theirs (`login
    /// --force`): their inbox must not show up for the new user, nor their queued messages go
    /// out under the new user's name. Returns where it went, or `None` if there was no store.
    pub fn retire_store(&self, old_user: &UserName) -> Result<Option<PathBuf>, HomeError> {
        let db = crate::store::DB_FILE;
        if !self.dir.join(db).exists() {
            return Ok(None);
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.dir.join(format!("replaced-{old_user}-{secs}"));
        fs::create_dir(&aside).map_err(|e| io(&aside, e))?;
        set_mode(&aside, 0o700)?;
        // SQLite's write-ahead log and index go with the database, or it would lose commits.
        for name in [db.to_owned(), format!("{db}-wal"), format!("{db}-shm")] {
            let from = self.dir.join(&name);
            match fs::rename(&from, aside.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&from, e)),
            }
        }
        Ok(Some(aside))
    }

    fn ensure(&self) -> Result<(), HomeError> {
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        set_mode(&self.dir, 0o700)
    }

    /// The device key, created on first use. It never leaves this directory.
    pub fn device_key(&self) -> Result<Keypair, HomeError> {
        self.ensure()?;
        let path = self.dir.join(DEVICE_KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| HomeError::Corrupt {
                path,
                reason: format!("device key: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Keypair::generate_ed25519();
                let bytes = key.to_protobuf_encoding().map_err(|e| HomeError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                write_private(&path, &bytes)?;
                tracing::info!(peer_id = %key.public().to_peer_id(), "created device key");
                Ok(key)
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    pub fn identity(&self) -> Result<Identity, HomeError> {
        let path = self.dir.join(IDENTITY_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::NotLoggedIn {
                    natter: self.command(),
                });
            }
            Err(e) => return Err(io(&path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| HomeError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    pub fn save_identity(&self, identity: &Identity) -> Result<(), HomeError> {
        self.ensure()?;
        let path = self.dir.join(IDENTITY_FILE);
        let bytes = serde_json::to_vec_pretty(identity).map_err(|e| HomeError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &bytes)
    }
}

fn io(path: &Path, source: std::io::Error) -> HomeError {
    HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file that is 0600 from its first byte, atomically (temporary file and rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), HomeError> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn device_key_is_stable_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(Some(tmp.path().join("h"))).unwrap();
        let a = home.device_key().unwrap();
        let b = home.device_key().unwrap();
        assert_eq!(a.public(), b.public());
        let meta = fs::metadata(home.dir().join(DEVICE_KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let meta = fs::metadata(home.dir()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn missing_identity_says_how_to_log_in_with_the_home_given() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(Some(tmp.path().to_owned())).unwrap();
        let err = home.identity().unwrap_err().to_string();
        let natter = format!("natter --home {}", tmp.path().display());
        assert!(err.contains(&format!("`{natter} register NAME")), "{err}");
        assert!(err.contains(&format!("`{natter} login NAME")), "{err}");
        // The default home needs no --home in the hint.
        let default = Home {
            dir: tmp.path().to_owned(),
            explicit: false,
        };
        let err = default.identity().unwrap_err().to_string();
        assert!(err.contains("`natter register NAME"), "{err}");
        assert!(!err.contains("--home"), "{err}");
    }

    #[test]
    fn retiring_the_store_moves_it_and_its_log_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(Some(tmp.path().join("h"))).unwrap();
        home.device_key().unwrap();
        let alice = UserName::parse("alice").unwrap();
        assert_eq!(home.retire_store(&alice).unwrap(), None);
        let store = crate::store::Store::open(home.dir()).unwrap();
        store.add_contact("carol").unwrap();
        drop(store);
        fs::write(home.dir().join("natter.sqlite3-wal"), b"").unwrap();
        let aside = home.retire_store(&alice).unwrap().unwrap();
        assert!(aside.starts_with(home.dir()));
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("replaced-alice-")
        );
        assert!(aside.join("natter.sqlite3").exists());
        assert!(aside.join("natter.sqlite3-wal").exists());
        assert!(!home.dir().join("natter.sqlite3").exists());
        let fresh = crate::store::Store::open(home.dir()).unwrap();
        assert!(fresh.contacts().unwrap().is_empty());
        let old = crate::store::Store::open(&aside).unwrap();
        assert_eq!(old.contacts().unwrap(), ["carol"]);
    }
}
