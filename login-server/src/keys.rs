//! The login server's two long-lived keys, created on first start and kept across restarts:
//! the libp2p identity (pinned by the `/p2p/<id>` part of the login address users are given) and
//! the certificate issuer key. Both files are mode 0600 in a 0700 data directory.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use natter_proto::IssuerSigningKey;

use crate::Error;

pub(crate) const NODE_KEY_FILE: &str = "node.key";
pub(crate) const ISSUER_KEY_FILE: &str = "issuer.key";

/// Creates `dir` (0700) if needed.
pub fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    set_mode(dir, 0o700)
}

/// Loads the libp2p identity, generating it on first use.
pub fn load_or_create_node_key(dir: &Path) -> Result<Keypair, Error> {
    let path = dir.join(NODE_KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| Error::BadKeyFile(path.clone(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| Error::BadKeyFile(path.clone(), e.to_string()))?;
            write_private(&path, &bytes)?;
            tracing::info!(path = %path.display(), peer_id = %key.public().to_peer_id(), "created node identity");
            Ok(key)
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Loads the issuer key, generating it on first use.
pub fn load_or_create_issuer_key(dir: &Path) -> Result<IssuerSigningKey, Error> {
    let path = dir.join(ISSUER_KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                Error::BadKeyFile(
                    path.clone(),
                    format!("expected 32 bytes, found {}", bytes.len()),
                )
            })?;
            Ok(IssuerSigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = IssuerSigningKey::from_bytes(&rand::random());
            write_private(&path, &key.to_bytes())?;
            tracing::info!(path = %path.display(), key_id = %key.public().key_id(), "created issuer key");
            Ok(key)
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Writes a secret file with mode 0600 from the start (never world-readable, not even briefly),
/// through a temporary file and a rename so a crash leaves either no file or a whole one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp: PathBuf = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    set_mode(path, 0o600)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keys_are_created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_key(dir.path()).unwrap();
        let b = load_or_create_node_key(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        let i = load_or_create_issuer_key(dir.path()).unwrap();
        let j = load_or_create_issuer_key(dir.path()).unwrap();
        assert_eq!(i.public(), j.public());
        for f in [NODE_KEY_FILE, ISSUER_KEY_FILE] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn corrupt_issuer_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(ISSUER_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            load_or_create_issuer_key(dir.path()),
            Err(Error::BadKeyFile(..))
        ));
    }
}
