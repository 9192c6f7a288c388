//! Identity certificates: the login server's signed statement "this device key belongs to this
//! user, from this time until that time".
//!
//! The signature covers a deterministic, domain-separated byte encoding ([`CERT_DOMAIN`] followed
//! by fixed-width and length-prefixed fields), never a JSON rendering, so every peer checks
//! exactly the bytes that were signed. On the wire a certificate is those fields followed by the
//! signature, base64 in JSON.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use libp2p_identity::PeerId;
use sha2::{Digest, Sha512};

use crate::name::{NameError, UserName};

/// Prefix of every signed certificate body: a signature made for anything else can never be
/// mistaken for a certificate signature.
pub const CERT_DOMAIN: &[u8] = b"natter-cert-v1\0";
/// Prefix hashed into an issuer key id.
const KEY_ID_DOMAIN: &[u8] = b"natter-issuer-key-id\0";
/// The only certificate format version this code issues and accepts.
pub const CERT_VERSION: u8 = 1;
/// How far in the future `issued_at` may lie before a certificate is "not yet valid": peers'
/// clocks are never perfectly in step.
pub const CLOCK_SKEW_SECS: u64 = 60;

const SIGNATURE_LEN: usize = 64;
const KEY_LEN: usize = 32;

/// Why a certificate is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate signature is invalid")]
    BadSignature,
    #[error("certificate expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    #[error("certificate is not valid before {issued_at} (now {now})")]
    NotYetValid { issued_at: u64, now: u64 },
    #[error("certificate was issued by key {found}, expected {expected}")]
    WrongIssuer { expected: KeyId, found: KeyId },
    #[error("certificate is malformed: {0}")]
    Malformed(String),
}

impl From<NameError> for CertError {
    fn from(e: NameError) -> Self {
        CertError::Malformed(e.to_string())
    }
}

/// Short identifier of an issuer key, carried in certificates so a verifier can tell a
/// certificate of another login server (or of a rotated-out key) from a forged one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The login server's public issuer key, as peers hold it to verify certificates offline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IssuerKey(ed25519_dalek::VerifyingKey);

impl IssuerKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, CertError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| CertError::Malformed("issuer key is not a valid ed25519 point".into()))
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    pub(crate) fn verifying(&self) -> &ed25519_dalek::VerifyingKey {
        &self.0
    }

    /// First eight bytes of a domain-separated SHA-512 of the key.
    pub fn key_id(&self) -> KeyId {
        let mut h = Sha512::new();
        h.update(KEY_ID_DOMAIN);
        h.update(self.0.as_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// Base64 text form, as printed by `natter-login info` and stored by nodes.
    pub fn to_base64(&self) -> String {
        B64.encode(self.to_bytes())
    }

    pub fn from_base64(text: &str) -> Result<Self, CertError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| CertError::Malformed("issuer key is not base64".into()))?;
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CertError::Malformed("issuer key must be 32 bytes".into()))?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerKey({})", self.to_base64())
    }
}

impl serde::Serialize for IssuerKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for IssuerKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// The login server's private issuer key. Only the login server holds one.
pub struct IssuerSigningKey(ed25519_dalek::SigningKey);

impl IssuerSigningKey {
    /// Builds the key from 32 secret bytes (from a CSPRNG, or from the key file).
    pub fn from_bytes(secret: &[u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(secret))
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> IssuerKey {
        IssuerKey(self.0.verifying_key())
    }

    /// The key itself, for the other statements the issuer signs (revocation lists).
    pub(crate) fn signing(&self) -> &ed25519_dalek::SigningKey {
        &self.0
    }

    /// Issues a certificate binding `username` to the ed25519 `device_key`, valid from
    /// `issued_at` for `lifetime_secs`.
    pub fn issue(
        &self,
        username: UserName,
        device_key: [u8; KEY_LEN],
        serial: u64,
        issued_at: u64,
        lifetime_secs: u64,
    ) -> Result<Certificate, CertError> {
        check_device_key(&device_key)?;
        let body = CertBody {
            version: CERT_VERSION,
            username,
            device_key,
            serial,
            issued_at,
            expires_at: issued_at.saturating_add(lifetime_secs),
            issuer: self.public().key_id(),
        };
        let signature = self.0.sign(&body.signed_message()).to_bytes();
        Ok(Certificate { body, signature })
    }
}

impl fmt::Debug for IssuerSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerSigningKey(public: {})", self.public().to_base64())
    }
}

#[derive(Clone, PartialEq, Eq)]
struct CertBody {
    version: u8,
    username: UserName,
    device_key: [u8; KEY_LEN],
    serial: u64,
    issued_at: u64,
    expires_at: u64,
    issuer: KeyId,
}

impl CertBody {
    /// Field encoding shared by the signed message and the wire form.
    fn encode_into(&self, out: &mut Vec<u8>) {
        let name = self.username.as_str().as_bytes();
        out.push(self.version);
        // Names are at most 32 bytes, so one length byte is enough and leaves no ambiguity.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.device_key);
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.issuer.0);
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CERT_DOMAIN.len() + 128);
        out.extend_from_slice(CERT_DOMAIN);
        self.encode_into(&mut out);
        out
    }
}

/// A signed identity certificate. Construct one by [`IssuerSigningKey::issue`] or by decoding;
/// a decoded certificate is well-formed but not trusted until [`Certificate::verify`] says so.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    body: CertBody,
    signature: [u8; SIGNATURE_LEN],
}

impl Certificate {
    pub fn version(&self) -> u8 {
        self.body.version
    }
    pub fn username(&self) -> &UserName {
        &self.body.username
    }
    /// Raw ed25519 public key of the device the certificate was issued to.
    pub fn device_key(&self) -> [u8; KEY_LEN] {
        self.body.device_key
    }
    pub fn serial(&self) -> u64 {
        self.body.serial
    }
    pub fn issued_at(&self) -> u64 {
        self.body.issued_at
    }
    pub fn expires_at(&self) -> u64 {
        self.body.expires_at
    }
    pub fn issuer(&self) -> KeyId {
        self.body.issuer
    }

    /// The libp2p identity of the certified device: compare it with the connection's remote
    /// PeerId before believing any name the peer claims.
    pub fn peer_id(&self) -> PeerId {
        // The key was checked to be a valid point when the certificate was built or decoded.
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.body.device_key)
            .expect("device key validated on construction");
        PeerId::from_public_key(&key.into())
    }

    /// Checks issuer, signature and validity period at `now` (unix seconds).
    pub fn verify(&self, issuer: &IssuerKey, now: u64) -> Result<(), CertError> {
        self.verify_with_grace(issuer, now, 0)
    }

    /// Like [`Certificate::verify`], but accepts a certificate expired less than `grace_secs`
    /// ago: renewal of a device that was offline a little past its expiry.
    pub fn verify_with_grace(
        &self,
        issuer: &IssuerKey,
        now: u64,
        grace_secs: u64,
    ) -> Result<(), CertError> {
        let expected = issuer.key_id();
        if self.body.issuer != expected {
            return Err(CertError::WrongIssuer {
                expected,
                found: self.body.issuer,
            });
        }
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        issuer
            .0
            .verify_strict(&self.body.signed_message(), &signature)
            .map_err(|_| CertError::BadSignature)?;
        self.check_period(now, grace_secs)
    }

    /// The validity period alone (at `now`, accepting `grace_secs` past expiry), for a
    /// certificate whose issuer and signature were verified before: a cache of verified
    /// certificates still refuses one that expired since.
    pub fn check_period(&self, now: u64, grace_secs: u64) -> Result<(), CertError> {
        if self.body.issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(CertError::NotYetValid {
                issued_at: self.body.issued_at,
                now,
            });
        }
        if now >= self.body.expires_at.saturating_add(grace_secs) {
            return Err(CertError::Expired {
                expires_at: self.body.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// Canonical wire bytes: the encoded fields followed by the signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + SIGNATURE_LEN);
        self.body.encode_into(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes wire bytes strictly: every field well-formed, no trailing bytes, and exactly one
    /// byte string per certificate.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != CERT_VERSION {
            return Err(CertError::Malformed(format!(
                "unsupported certificate version {version}"
            )));
        }
        let name_len = usize::from(r.u8()?);
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| CertError::Malformed("user name is not UTF-8".into()))?;
        let username = UserName::parse_canonical(name)?;
        let device_key = r.array::<KEY_LEN>()?;
        check_device_key(&device_key)?;
        let serial = u64::from_be_bytes(r.array()?);
        let issued_at = u64::from_be_bytes(r.array()?);
        let expires_at = u64::from_be_bytes(r.array()?);
        if expires_at <= issued_at {
            return Err(CertError::Malformed(
                "expiry is not after issue time".into(),
            ));
        }
        let issuer = KeyId(r.array()?);
        let signature = r.array::<SIGNATURE_LEN>()?;
        if !r.0.is_empty() {
            return Err(CertError::Malformed(format!(
                "{} trailing bytes",
                r.0.len()
            )));
        }
        Ok(Self {
            body: CertBody {
                version,
                username,
                device_key,
                serial,
                issued_at,
                expires_at,
                issuer,
            },
            signature,
        })
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.to_bytes())
    }

    pub fn from_base64(text: &str) -> Result<Self, CertError> {
        // A certificate is under 200 bytes; refuse to decode anything much larger.
        if text.len() > 1024 {
            return Err(CertError::Malformed("certificate text too long".into()));
        }
        let bytes = B64
            .decode(text)
            .map_err(|_| CertError::Malformed("certificate is not base64".into()))?;
        Self::from_bytes(&bytes)
    }
}

fn check_device_key(key: &[u8; KEY_LEN]) -> Result<(), CertError> {
    libp2p_identity::ed25519::PublicKey::try_from_bytes(key)
        .map(|_| ())
        .map_err(|_| CertError::Malformed("device key is not a valid ed25519 key".into()))
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("username", &self.body.username)
            .field("peer_id", &self.peer_id())
            .field("serial", &self.body.serial)
            .field("issued_at", &self.body.issued_at)
            .field("expires_at", &self.body.expires_at)
            .field("issuer", &self.body.issuer)
            .finish_non_exhaustive()
    }
}

impl serde::Serialize for Certificate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for Certificate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// Bounds-checked cursor over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CertError> {
        if self.0.len() < n {
            return Err(CertError::Malformed("certificate is truncated".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CertError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CertError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn issuer(seed: u8) -> IssuerSigningKey {
        IssuerSigningKey::from_bytes(&[seed; 32])
    }

    fn device(seed: u8) -> [u8; 32] {
        libp2p_identity::ed25519::Keypair::from(
            libp2p_identity::ed25519::SecretKey::try_from_bytes([seed; 32]).unwrap(),
        )
        .public()
        .to_bytes()
    }

    fn cert(name: &str) -> Certificate {
        issuer(1)
            .issue(UserName::parse(name).unwrap(), device(7), 42, NOW, DAY)
            .unwrap()
    }

    #[test]
    fn issued_certificate_verifies() {
        let c = cert("alice");
        assert_eq!(c.verify(&issuer(1).public(), NOW + 10), Ok(()));
        assert_eq!(c.username().as_str(), "alice");
        assert_eq!(c.serial(), 42);
        assert_eq!(c.expires_at(), NOW + DAY);
        let expected = libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32])
            .unwrap()
            .public()
            .to_peer_id();
        assert_eq!(c.peer_id(), expected);
    }

    #[test]
    fn typed_errors() {
        let c = cert("alice");
        let key = issuer(1).public();
        assert_eq!(
            c.verify(&key, NOW + DAY),
            Err(CertError::Expired {
                expires_at: NOW + DAY,
                now: NOW + DAY
            })
        );
        assert_eq!(
            c.verify(&key, NOW - CLOCK_SKEW_SECS - 1),
            Err(CertError::NotYetValid {
                issued_at: NOW,
                now: NOW - CLOCK_SKEW_SECS - 1
            })
        );
        assert!(c.verify(&key, NOW - CLOCK_SKEW_SECS).is_ok());
        assert!(matches!(
            c.verify(&issuer(2).public(), NOW),
            Err(CertError::WrongIssuer { .. })
        ));
        assert!(matches!(
            Certificate::from_bytes(&[1, 2, 3]),
            Err(CertError::Malformed(_))
        ));
    }

    #[test]
    fn grace_window_accepts_recently_expired_only() {
        let c = cert("alice");
        let key = issuer(1).public();
        assert!(c.verify_with_grace(&key, NOW + DAY + 59, 60).is_ok());
        assert!(matches!(
            c.verify_with_grace(&key, NOW + DAY + 60, 60),
            Err(CertError::Expired { .. })
        ));
    }

    #[test]
    fn signature_from_other_key_with_same_id_field_is_bad_signature() {
        // Forge: take a certificate signed by issuer 2 and claim issuer 1's key id.
        let forged = issuer(2)
            .issue(UserName::parse("mallory").unwrap(), device(9), 1, NOW, DAY)
            .unwrap();
        let mut bytes = forged.to_bytes();
        let id_at = bytes.len() - SIGNATURE_LEN - 8;
        bytes[id_at..id_at + 8].copy_from_slice(&issuer(1).public().key_id().0);
        let forged = Certificate::from_bytes(&bytes).unwrap();
        assert_eq!(
            forged.verify(&issuer(1).public(), NOW),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn device_key_must_be_a_valid_point() {
        // y = 2 is not on the curve... find a 32-byte string that fails to decompress.
        let bad = (0u8..=255)
            .map(|b| [b; 32])
            .find(|k| libp2p_identity::ed25519::PublicKey::try_from_bytes(k).is_err())
            .expect("some constant byte string is not a point");
        assert!(matches!(
            issuer(1).issue(UserName::parse("alice").unwrap(), bad, 1, NOW, DAY),
            Err(CertError::Malformed(_))
        ));
    }

    #[test]
    fn json_form_round_trips_and_refuses_garbage() {
        let c = cert("bob");
        let json = serde_json::to_string(&c).unwrap();
        let back: Certificate = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Certificate>("\"not base64!\"").is_err());
        let key = issuer(1).public();
        let back: IssuerKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
        assert_eq!(back, key);
    }

    proptest! {
        #[test]
        fn round_trip(
            name in "[a-z][a-z0-9._-]{2,31}",
            dev in any::<u8>(),
            serial in any::<u64>(),
            issued_at in 0u64..u64::MAX / 2,
            lifetime in 1u64..10 * DAY,
        ) {
            let c = issuer(3)
                .issue(UserName::parse(&name).unwrap(), device(dev), serial, issued_at, lifetime)
                .unwrap();
            let back = Certificate::from_bytes(&c.to_bytes()).unwrap();
            prop_assert_eq!(&back, &c);
            prop_assert_eq!(back.to_bytes(), c.to_bytes());
            prop_assert!(back.verify(&issuer(3).public(), issued_at).is_ok());
        }

        #[test]
        fn flipping_any_byte_fails(
            name in "[a-z][a-z0-9._-]{2,31}",
            index in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let c = issuer(4).issue(UserName::parse(&name).unwrap(), device(5), 9, NOW, DAY).unwrap();
            let mut bytes = c.to_bytes();
            let i = index.index(bytes.len());
            bytes[i] ^= mask;
            let outcome = Certificate::from_bytes(&bytes)
                .and_then(|tampered| tampered.verify(&issuer(4).public(), NOW + 1));
            prop_assert!(outcome.is_err(), "flipping byte {} with {:#04x} still verified", i, mask);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Certificate::from_bytes(&bytes);
        }
    }
}
