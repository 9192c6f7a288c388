//! Revocations: the login server's signed list of accounts and devices whose certificates no
//! longer count, so that a disabled user is cut off within a minute instead of at expiry.
//!
//! An entry revokes every certificate of its account (or of one device of it) issued at or
//! before `revoked_at`. A certificate lives at most the issuer's certificate lifetime, so an
//! entry older than that revokes nothing that is still valid and leaves the list: the list stays
//! as short as the disables of one lifetime ([`MAX_REVOKED`] at most).
//!
//! The list is signed by the issuer key over a deterministic, domain-separated encoding
//! ([`REVOCATION_DOMAIN`]), like certificates, so superpeers may pass it on to leaves: an
//! untrusted relay of the list can withhold a newer one, never forge or shorten one.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};

use crate::cert::{Certificate, IssuerKey, IssuerSigningKey};
use crate::name::UserName;

/// Prefix of every signed revocation list.
pub const REVOCATION_DOMAIN: &[u8] = b"natter-revocations-v1\0";
/// Entries one list carries at most.
pub const MAX_REVOKED: usize = 6_000;

/// Why a revocation list is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("revocation list signature is invalid")]
    BadSignature,
    #[error("revocation list is malformed: {0}")]
    Malformed(String),
}

/// One revoked account, or one revoked device of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// The account's canonical name.
    pub name: String,
    /// The device key (hex), or none for every device of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Certificates issued at or before this time (unix seconds) are revoked.
    pub revoked_at: u64,
}

/// The signed list, as it travels (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// When the issuer made this list (unix seconds): a newer list replaces an older one.
    pub issued_at: u64,
    pub revoked: Vec<Revoked>,
    /// Ed25519 signature of the issuer key over the encoded list, base64.
    pub signature: String,
}

/// A checked entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    device: Option<[u8; 32]>,
    revoked_at: u64,
}

fn parse_entry(r: &Revoked) -> Result<(UserName, Entry), RevocationError> {
    let name = UserName::parse_canonical(&r.name)
        .map_err(|e| RevocationError::Malformed(format!("name {:?}: {e}", r.name)))?;
    let device = r
        .device
        .as_deref()
        .map(|hex| {
            parse_hex32(hex).ok_or_else(|| {
                RevocationError::Malformed(format!("device {hex:?} is not 64 hex digits"))
            })
        })
        .transpose()?;
    Ok((
        name,
        Entry {
            device,
            revoked_at: r.revoked_at,
        },
    ))
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    // Hex digits only: `from_str_radix` would also take a sign, and one key would have
    // several spellings.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex of a device key, as [`Revoked::device`] spells it.
pub fn device_hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn signed_message(issued_at: u64, entries: &[(UserName, Entry)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REVOCATION_DOMAIN.len() + 12 + entries.len() * 80);
    out.extend_from_slice(REVOCATION_DOMAIN);
    out.extend_from_slice(&issued_at.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (name, entry) in entries {
        let name = name.as_str().as_bytes();
        // Names are at most 32 bytes: one length byte, no ambiguity.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        match entry.device {
            Some(key) => {
                out.push(1);
                out.extend_from_slice(&key);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&entry.revoked_at.to_be_bytes());
    }
    out
}

impl RevocationList {
    /// Signs `revoked` (at most [`MAX_REVOKED`], well-formed) as of `issued_at`.
    pub fn sign(
        key: &IssuerSigningKey,
        issued_at: u64,
        revoked: Vec<Revoked>,
    ) -> Result<Self, RevocationError> {
        let entries = check_entries(&revoked)?;
        let signature = key.signing().sign(&signed_message(issued_at, &entries));
        Ok(Self {
            issued_at,
            revoked,
            signature: B64.encode(signature.to_bytes()),
        })
    }

    /// Checks the list against the pinned issuer key and indexes it.
    pub fn verify(&self, issuer: &IssuerKey) -> Result<Revocations, RevocationError> {
        let entries = check_entries(&self.revoked)?;
        let signature: [u8; 64] = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| RevocationError::Malformed("signature is not 64 bytes".into()))?;
        issuer
            .verifying()
            .verify_strict(
                &signed_message(self.issued_at, &entries),
                &ed25519_dalek::Signature::from_bytes(&signature),
            )
            .map_err(|_| RevocationError::BadSignature)?;
        let mut by_name: HashMap<UserName, Vec<Entry>> = HashMap::new();
        for (name, entry) in entries {
            by_name.entry(name).or_default().push(entry);
        }
        Ok(Revocations(Some(Arc::new(Index {
            list: self.clone(),
            by_name,
        }))))
    }
}

fn check_entries(revoked: &[Revoked]) -> Result<Vec<(UserName, Entry)>, RevocationError> {
    if revoked.len() > MAX_REVOKED {
        return Err(RevocationError::Malformed(format!(
            "{} entries, at most {MAX_REVOKED}",
            revoked.len()
        )));
    }
    revoked.iter().map(parse_entry).collect()
}

#[derive(Debug)]
struct Index {
    list: RevocationList,
    by_name: HashMap<UserName, Vec<Entry>>,
}

/// A verified revocation list, indexed by account; cheap to clone and share. The default is
/// "no list yet", which revokes nothing.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Option<Arc<Index>>);

impl Revocations {
    /// Whether `cert` is revoked: its account, or its device, was revoked at or after the time
    /// it was issued.
    pub fn revokes(&self, cert: &Certificate) -> bool {
        let Some(index) = &self.0 else {
            return false;
        };
        index.by_name.get(cert.username()).is_some_and(|entries| {
            entries.iter().any(|e| {
                e.device.is_none_or(|d| d == cert.device_key()) && cert.issued_at() <= e.revoked_at
            })
        })
    }

    /// When the list was issued; 0 without one.
    pub fn issued_at(&self) -> u64 {
        self.0.as_ref().map_or(0, |i| i.list.issued_at)
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |i| i.list.revoked.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The signed list, to hand on; none before the first.
    pub fn list(&self) -> Option<&RevocationList> {
        self.0.as_ref().map(|i| &i.list)
    }

    /// Takes `other` if it is newer; says whether it did.
    pub fn update(&mut self, other: Revocations) -> bool {
        if other.0.is_some() && other.issued_at() > self.issued_at() {
            *self = other;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn issuer() -> IssuerSigningKey {
        IssuerSigningKey::from_bytes(&[7; 32])
    }

    fn device(seed: u8) -> [u8; 32] {
        libp2p_identity::ed25519::Keypair::from(
            libp2p_identity::ed25519::SecretKey::try_from_bytes([seed; 32]).unwrap(),
        )
        .public()
        .to_bytes()
    }

    fn cert(name: &str, seed: u8, issued_at: u64) -> Certificate {
        issuer()
            .issue(
                UserName::parse(name).unwrap(),
                device(seed),
                1,
                issued_at,
                3600,
            )
            .unwrap()
    }

    fn revoked(name: &str, device: Option<[u8; 32]>, revoked_at: u64) -> Revoked {
        Revoked {
            name: name.into(),
            device: device.as_ref().map(device_hex),
            revoked_at,
        }
    }

    #[test]
    fn an_account_entry_revokes_its_older_certificates_only() {
        let list = RevocationList::sign(&issuer(), NOW, vec![revoked("mallory", None, NOW)])
            .unwrap()
            .verify(&issuer().public())
            .unwrap();
        assert!(list.revokes(&cert("mallory", 1, NOW - 10)));
        assert!(list.revokes(&cert("mallory", 2, NOW)));
        // Issued after the revocation (the account was enabled again): valid.
        assert!(!list.revokes(&cert("mallory", 1, NOW + 1)));
        assert!(!list.revokes(&cert("alice", 1, NOW - 10)));
        assert!(!Revocations::default().revokes(&cert("mallory", 1, NOW)));
    }

    #[test]
    fn a_device_entry_revokes_that_device_only() {
        let list =
            RevocationList::sign(&issuer(), NOW, vec![revoked("alice", Some(device(3)), NOW)])
                .unwrap()
                .verify(&issuer().public())
                .unwrap();
        assert!(list.revokes(&cert("alice", 3, NOW - 1)));
        assert!(!list.revokes(&cert("alice", 4, NOW - 1)));
    }

    #[test]
    fn a_changed_or_foreign_list_is_refused() {
        let list =
            RevocationList::sign(&issuer(), NOW, vec![revoked("mallory", None, NOW)]).unwrap();
        // A relay drops the entry, or moves the time.
        let mut shortened = list.clone();
        shortened.revoked.clear();
        assert_eq!(
            shortened.verify(&issuer().public()).unwrap_err(),
            RevocationError::BadSignature
        );
        let mut older = list.clone();
        older.revoked[0].revoked_at = NOW - 100;
        assert!(older.verify(&issuer().public()).is_err());
        let mut newer = list.clone();
        newer.issued_at += 1;
        assert!(newer.verify(&issuer().public()).is_err());
        let other = IssuerSigningKey::from_bytes(&[8; 32]);
        assert!(list.verify(&other.public()).is_err());
        assert!(parse_hex32(&format!("+{}", "a".repeat(63))).is_none());
        let mut bad = list.clone();
        bad.revoked[0].device = Some("zz".into());
        assert!(matches!(
            bad.verify(&issuer().public()),
            Err(RevocationError::Malformed(_))
        ));
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(serde_json::from_str::<RevocationList>(&json).unwrap(), list);
    }

    #[test]
    fn only_a_newer_list_replaces_the_one_held() {
        let key = issuer();
        let sign = |at, names: &[&str]| {
            RevocationList::sign(
                &key,
                at,
                names.iter().map(|n| revoked(n, None, at)).collect(),
            )
            .unwrap()
            .verify(&key.public())
            .unwrap()
        };
        let mut held = Revocations::default();
        assert!(held.update(sign(NOW, &["mallory"])));
        assert!(!held.update(sign(NOW - 5, &[])));
        assert_eq!(held.len(), 1);
        assert!(held.update(sign(NOW + 5, &[])));
        assert!(held.is_empty());
        assert_eq!(held.issued_at(), NOW + 5);
    }

    #[test]
    fn the_longest_list_fits_its_wire_limit() {
        let name = "m".repeat(crate::limits::MAX_NAME_LEN);
        let full = vec![revoked(&name, Some([0xab; 32]), u64::MAX); MAX_REVOKED];
        let list = RevocationList::sign(&issuer(), u64::MAX, full).unwrap();
        let bytes = serde_json::to_vec(&list).unwrap().len() as u64;
        assert!(
            bytes <= crate::limits::MAX_REVOCATION_LIST_BYTES,
            "{bytes} bytes"
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let many = vec![revoked("mallory", None, NOW); MAX_REVOKED + 1];
        assert!(RevocationList::sign(&issuer(), NOW, many).is_err());
    }
}
