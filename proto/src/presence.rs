//! Presence records: what the directory stores about a user. Signed by the user's device key
//! (not by any superpeer), carrying the user's certificate, so every superpeer can check a
//! record by itself: issuer signature, validity, record signature, key ↔ name, freshness and
//! sequence.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cert::{CertError, Certificate, IssuerKey};
use crate::limits::{
    MAX_ADDR_LEN, MAX_RECORD_BYTES, MAX_RECORD_DIRECT_ADDRS, MAX_RECORD_LEASE_SECS,
    MAX_RECORD_RELAY_ADDRS,
};
use crate::name::UserName;

/// Prefix of every signed presence record body.
pub const PRESENCE_DOMAIN: &[u8] = b"natter-presence-v1\0";
const KEY_DOMAIN: &[u8] = b"natter-directory-key-v1\0";

/// What users see of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }

    fn code(self) -> u8 {
        match self {
            Status::Online => 0,
            Status::Away => 1,
            Status::Busy => 2,
            Status::Offline => 3,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(Status::Online),
            "away" => Ok(Status::Away),
            "busy" => Ok(Status::Busy),
            "offline" => Ok(Status::Offline),
            other => Err(format!(
                "unknown status {other:?}: use online, away, busy or offline"
            )),
        }
    }
}

/// The directory key of a user: a domain-separated SHA-256 of the canonical name.
pub fn directory_key(name: &UserName) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(KEY_DOMAIN);
    h.update(name.as_str().as_bytes());
    h.finalize().to_vec()
}

/// Why a presence record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record certificate: {0}")]
    Certificate(#[from] CertError),
    #[error("record signature is invalid")]
    BadSignature,
    #[error("record is stored under another user's key")]
    KeyMismatch,
    #[error("record expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    #[error("record is from the future (last seen {last_seen}, now {now})")]
    FromTheFuture { last_seen: u64, now: u64 },
    #[error("record lease of {0} s is longer than allowed")]
    LeaseTooLong(u64),
    #[error("record sequence {offered} is not newer than the stored {stored}")]
    Stale { offered: u64, stored: u64 },
    #[error("record is malformed: {0}")]
    Malformed(String),
}

/// The signed part of a presence record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceBody {
    pub cert: Certificate,
    pub status: Status,
    /// Monotonic per user: the newest record wins. Milliseconds since the epoch, bumped when
    /// equal, so it keeps growing across restarts of the node.
    pub seq: u64,
    /// When the user's node last vouched for this record (unix seconds).
    pub last_seen: u64,
    /// The lease: after this the record says nothing about the user being online.
    pub expires_at: u64,
    /// Peer id of the superpeer the user is attached to, asked to confirm liveness.
    pub home: Option<String>,
    /// Relay circuit addresses through the user's superpeers.
    pub relay_addrs: Vec<String>,
    /// Addresses that reach the user directly, when it is publicly reachable.
    pub direct_addrs: Vec<String>,
}

/// A presence record with the device key's signature over [`PRESENCE_DOMAIN`] and the body's
/// deterministic encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    #[serde(flatten)]
    pub body: PresenceBody,
    #[serde(with = "b64_sig")]
    pub signature: Vec<u8>,
}

impl PresenceBody {
    fn signed_message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(PRESENCE_DOMAIN);
        put_bytes(&mut out, &self.cert.to_bytes());
        out.push(self.status.code());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.last_seen.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        match &self.home {
            Some(h) => {
                out.push(1);
                put_bytes(&mut out, h.as_bytes());
            }
            None => out.push(0),
        }
        for list in [&self.relay_addrs, &self.direct_addrs] {
            out.extend_from_slice(&(list.len() as u32).to_be_bytes());
            for a in list {
                put_bytes(&mut out, a.as_bytes());
            }
        }
        out
    }

    /// Signs with the device key the certificate names.
    pub fn sign(self, device: &libp2p_identity::Keypair) -> Result<PresenceRecord, RecordError> {
        if device.public().to_peer_id() != self.cert.peer_id() {
            return Err(RecordError::Malformed(
                "signing key is not the certified device key".into(),
            ));
        }
        let signature = device
            .sign(&self.signed_message())
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        Ok(PresenceRecord {
            body: self,
            signature,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl PresenceRecord {
    pub fn username(&self) -> &UserName {
        self.body.cert.username()
    }

    /// Whether the lease still runs at `now`, and the user did not sign off.
    pub fn is_live(&self, now: u64) -> bool {
        self.body.status != Status::Offline && now < self.body.expires_at
    }

    /// Every check but the sequence and the directory key: what anyone holding the issuer key
    /// can check of a record in isolation. Every record, offline ones too, ends with its
    /// lease: an old offline record cannot be replayed to hide a later sign-on, and "last
    /// seen" after the lease is what each node remembers, not what the directory keeps.
    pub fn verify(&self, issuer: &IssuerKey, now: u64) -> Result<(), RecordError> {
        let b = &self.body;
        check_lists(b)?;
        b.cert.verify(issuer, now)?;
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&b.cert.device_key())
            .map_err(|_| RecordError::Malformed("device key".into()))?;
        if !key.verify(&b.signed_message(), &self.signature) {
            return Err(RecordError::BadSignature);
        }
        if b.last_seen > now.saturating_add(crate::cert::CLOCK_SKEW_SECS) {
            return Err(RecordError::FromTheFuture {
                last_seen: b.last_seen,
                now,
            });
        }
        let lease = b.expires_at.saturating_sub(b.last_seen);
        if lease > MAX_RECORD_LEASE_SECS || b.expires_at < b.last_seen {
            return Err(RecordError::LeaseTooLong(lease));
        }
        if now >= b.expires_at {
            return Err(RecordError::Expired {
                expires_at: b.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// The directory's acceptance rule for storing `self` under `key`, replacing `stored`.
    pub fn validate_for_store(
        &self,
        key: &[u8],
        issuer: &IssuerKey,
        now: u64,
        stored: Option<&PresenceRecord>,
    ) -> Result<(), RecordError> {
        if key != directory_key(self.username()).as_slice() {
            return Err(RecordError::KeyMismatch);
        }
        self.verify(issuer, now)?;
        if let Some(stored) = stored
            && stored.username() == self.username()
            && self.body.seq <= stored.body.seq
            && self != stored
        {
            return Err(RecordError::Stale {
                offered: self.body.seq,
                stored: stored.body.seq,
            });
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialize")
    }

    /// Decodes a record from the directory, refusing oversized input before parsing it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Malformed(format!(
                "{} bytes, at most {MAX_RECORD_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))
    }
}

fn check_lists(b: &PresenceBody) -> Result<(), RecordError> {
    if b.relay_addrs.len() > MAX_RECORD_RELAY_ADDRS
        || b.direct_addrs.len() > MAX_RECORD_DIRECT_ADDRS
    {
        return Err(RecordError::Malformed("too many addresses".into()));
    }
    let device = b.cert.peer_id();
    let lists = [(&b.relay_addrs, true), (&b.direct_addrs, false)];
    for (a, relayed) in lists
        .into_iter()
        .flat_map(|(l, r)| l.iter().map(move |a| (a, r)))
    {
        let shape = (a.len() <= MAX_ADDR_LEN)
            .then(|| a.parse::<multiaddr::Multiaddr>().ok())
            .flatten()
            .is_some_and(|m| dialable_shape(&m, &device, relayed));
        if !shape {
            return Err(RecordError::Malformed(format!(
                "bad {} address {a:?}",
                if relayed { "relay" } else { "direct" }
            )));
        }
    }
    if let Some(home) = &b.home
        && home.parse::<libp2p_identity::PeerId>().is_err()
    {
        return Err(RecordError::Malformed("home is not a peer id".into()));
    }
    Ok(())
}

/// The only address shapes a record may carry, so that nobody is made to resolve names or
/// dial anything but the device's own transports on a record's word: an IP address, a port
/// (not 0) over TCP or QUIC, then for a relay address the relay's `/p2p/` and `/p2p-circuit`;
/// last, optionally, the device's own `/p2p/` (Noise checks it on every dial anyway). A node
/// keeps other addresses out of its own record with it.
pub fn dialable_shape(
    addr: &multiaddr::Multiaddr,
    device: &libp2p_identity::PeerId,
    relayed: bool,
) -> bool {
    use multiaddr::Protocol as P;
    let mut parts = addr.iter();
    if !matches!(parts.next(), Some(P::Ip4(_) | P::Ip6(_))) {
        return false;
    }
    match parts.next() {
        Some(P::Tcp(port)) if port != 0 => {}
        Some(P::Udp(port)) if port != 0 => {
            if parts.next() != Some(P::QuicV1) {
                return false;
            }
        }
        _ => return false,
    }
    if relayed && !(matches!(parts.next(), Some(P::P2p(_))) && parts.next() == Some(P::P2pCircuit))
    {
        return false;
    }
    match parts.next() {
        None => true,
        Some(P::P2p(peer)) => peer == *device && parts.next().is_none(),
        Some(_) => false,
    }
}

mod b64_sig {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(sig: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(sig))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = B64.decode(s).map_err(serde::de::Error::custom)?;
        if bytes.len() != 64 {
            return Err(serde::de::Error::custom("signature must be 64 bytes"));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IssuerSigningKey;

    const NOW: u64 = 1_800_000_000;

    struct User {
        key: libp2p_identity::Keypair,
        cert: Certificate,
    }

    fn issuer() -> IssuerSigningKey {
        IssuerSigningKey::from_bytes(&[1; 32])
    }

    fn user(name: &str, seed: u8, issued_at: u64, lifetime: u64) -> User {
        let key = libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        let device = key.clone().try_into_ed25519().unwrap().public().to_bytes();
        let cert = issuer()
            .issue(
                UserName::parse(name).unwrap(),
                device,
                1,
                issued_at,
                lifetime,
            )
            .unwrap();
        User { key, cert }
    }

    fn home() -> libp2p_identity::PeerId {
        libp2p_identity::Keypair::ed25519_from_bytes([3; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn body(u: &User, seq: u64, status: Status) -> PresenceBody {
        let me = u.key.public().to_peer_id();
        PresenceBody {
            cert: u.cert.clone(),
            status,
            seq,
            last_seen: NOW,
            expires_at: NOW + 90,
            home: Some(home().to_string()),
            relay_addrs: vec![format!(
                "/ip4/192.0.2.1/tcp/4001/p2p/{}/p2p-circuit/p2p/{me}",
                home()
            )],
            direct_addrs: vec![format!("/ip6/2001:db8::1/udp/4001/quic-v1/p2p/{me}")],
        }
    }

    /// Addresses are IP, TCP or QUIC, a relay's circuit, and the device's own peer id: no
    /// names to resolve, no other transports, nobody else's peer id.
    #[test]
    fn only_dialable_address_shapes_are_accepted() {
        let alice = user("alice", 7, NOW - 10, 86_400);
        let me = alice.key.public().to_peer_id();
        let other = home();
        let check = |relay: &[&str], direct: &[&str]| {
            let mut b = body(&alice, 5, Status::Online);
            b.relay_addrs = relay.iter().map(|a| a.to_string()).collect();
            b.direct_addrs = direct.iter().map(|a| a.to_string()).collect();
            b.sign(&alice.key).unwrap().verify(&issuer().public(), NOW)
        };
        let good_relay = [
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{other}/p2p-circuit"),
            format!("/ip4/192.0.2.1/udp/4001/quic-v1/p2p/{other}/p2p-circuit/p2p/{me}"),
        ];
        let good_direct = [
            "/ip4/192.0.2.7/tcp/4001".to_owned(),
            format!("/ip4/192.0.2.7/udp/9/quic-v1/p2p/{me}"),
        ];
        for a in &good_relay {
            assert_eq!(check(&[a.as_str()], &[]), Ok(()), "{a}");
        }
        for a in &good_direct {
            assert_eq!(check(&[], &[a.as_str()]), Ok(()), "{a}");
        }
        let bad_relay = [
            "/ip4/192.0.2.1/tcp/4001/p2p-circuit".to_owned(),
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{other}"),
            format!("/dns4/example.com/tcp/4001/p2p/{other}/p2p-circuit"),
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{other}/p2p-circuit/p2p/{other}"),
        ];
        for a in &bad_relay {
            assert!(
                matches!(check(&[a.as_str()], &[]), Err(RecordError::Malformed(_))),
                "{a}"
            );
        }
        let bad_direct = [
            "/dns4/example.com/tcp/4001".to_owned(),
            "/ip4/192.0.2.7/tcp/0".to_owned(),
            "/ip4/192.0.2.7/udp/4001".to_owned(),
            "/ip4/192.0.2.7/tcp/4001/ws".to_owned(),
            "/unix/tmp%2Fsock".to_owned(),
            format!("/ip4/192.0.2.7/tcp/4001/p2p/{other}"),
            format!("/ip4/192.0.2.7/tcp/4001/p2p/{me}/p2p-circuit"),
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{other}/p2p-circuit/p2p/{me}"),
        ];
        for a in &bad_direct {
            assert!(
                matches!(check(&[], &[a.as_str()]), Err(RecordError::Malformed(_))),
                "{a}"
            );
        }
    }

    fn key_of(name: &str) -> Vec<u8> {
        directory_key(&UserName::parse(name).unwrap())
    }

    #[test]
    fn valid_record_round_trips_and_is_accepted() {
        let alice = user("alice", 7, NOW - 10, 86_400);
        let rec = body(&alice, 5, Status::Online).sign(&alice.key).unwrap();
        let back = PresenceRecord::from_json(&rec.to_json()).unwrap();
        assert_eq!(back, rec);
        let issuer = issuer().public();
        assert_eq!(
            back.validate_for_store(&key_of("alice"), &issuer, NOW, None),
            Ok(())
        );
        assert!(back.is_live(NOW));
        assert!(!back.is_live(NOW + 90));
    }

    #[test]
    fn forged_records_are_refused() {
        let issuer = issuer().public();
        let alice = user("alice", 7, NOW - 10, 86_400);
        let mallory = user("mallory", 8, NOW - 10, 86_400);

        // Wrong key: alice's certificate, signed by mallory's device key.
        let mut forged = body(&alice, 5, Status::Online).sign(&alice.key).unwrap();
        forged.signature = mallory.key.sign(&forged.body.signed_message()).unwrap();
        assert_eq!(
            forged.validate_for_store(&key_of("alice"), &issuer, NOW, None),
            Err(RecordError::BadSignature)
        );
        // A field changed after signing.
        let mut edited = body(&alice, 5, Status::Online).sign(&alice.key).unwrap();
        edited.body.status = Status::Busy;
        assert_eq!(edited.verify(&issuer, NOW), Err(RecordError::BadSignature));

        // Expired certificate.
        let old = user("alice", 7, NOW - 90_000, 86_400);
        let rec = body(&old, 5, Status::Online).sign(&old.key).unwrap();
        assert!(matches!(
            rec.validate_for_store(&key_of("alice"), &issuer, NOW, None),
            Err(RecordError::Certificate(CertError::Expired { .. }))
        ));

        // Name mismatch: mallory's valid record stored under alice's key.
        let rec = body(&mallory, 5, Status::Online)
            .sign(&mallory.key)
            .unwrap();
        assert_eq!(
            rec.validate_for_store(&key_of("alice"), &issuer, NOW, None),
            Err(RecordError::KeyMismatch)
        );

        // Replayed lower sequence.
        let newer = body(&alice, 9, Status::Online).sign(&alice.key).unwrap();
        let older = body(&alice, 5, Status::Away).sign(&alice.key).unwrap();
        assert_eq!(
            older.validate_for_store(&key_of("alice"), &issuer, NOW, Some(&newer)),
            Err(RecordError::Stale {
                offered: 5,
                stored: 9
            })
        );
        // The same record again is idempotent, a newer one replaces.
        assert!(
            newer
                .validate_for_store(&key_of("alice"), &issuer, NOW, Some(&newer))
                .is_ok()
        );
        assert!(
            newer
                .validate_for_store(&key_of("alice"), &issuer, NOW, Some(&older))
                .is_ok()
        );

        // Expired lease, future record, overlong lease, another issuer.
        assert!(matches!(
            newer.verify(&issuer, NOW + 91),
            Err(RecordError::Expired { .. })
        ));
        let mut b = body(&alice, 10, Status::Online);
        b.last_seen = NOW + 3600;
        b.expires_at = NOW + 3690;
        assert!(matches!(
            b.sign(&alice.key).unwrap().verify(&issuer, NOW),
            Err(RecordError::FromTheFuture { .. })
        ));
        let mut b = body(&alice, 10, Status::Online);
        b.expires_at = NOW + 100_000;
        assert!(matches!(
            b.sign(&alice.key).unwrap().verify(&issuer, NOW),
            Err(RecordError::LeaseTooLong(_))
        ));
        assert!(matches!(
            newer.verify(&IssuerSigningKey::from_bytes(&[2; 32]).public(), NOW),
            Err(RecordError::Certificate(CertError::WrongIssuer { .. }))
        ));
    }

    /// Before, an offline record stayed valid for its certificate's life (a day), so an old
    /// one could be replayed long after the user signed on again.
    #[test]
    fn an_offline_record_ends_with_its_lease_like_an_online_one() {
        let alice = user("alice", 7, NOW - 10, 86_400);
        let rec = body(&alice, 5, Status::Offline).sign(&alice.key).unwrap();
        assert!(!rec.is_live(NOW));
        assert_eq!(rec.verify(&issuer().public(), NOW), Ok(()));
        let end = rec.body.expires_at;
        assert_eq!(rec.verify(&issuer().public(), end - 1), Ok(()));
        assert!(matches!(
            rec.verify(&issuer().public(), end),
            Err(RecordError::Expired { .. })
        ));
        assert!(matches!(
            rec.verify(&issuer().public(), NOW + 3600),
            Err(RecordError::Expired { .. })
        ));
    }

    #[test]
    fn malformed_input_is_refused_without_panic() {
        assert!(PresenceRecord::from_json(b"{}").is_err());
        assert!(PresenceRecord::from_json(&vec![b' '; MAX_RECORD_BYTES + 1]).is_err());
        let alice = user("alice", 7, NOW - 10, 86_400);
        let mut b = body(&alice, 5, Status::Online);
        b.relay_addrs = vec!["garbage".into()];
        assert!(matches!(
            b.sign(&alice.key).unwrap().verify(&issuer().public(), NOW),
            Err(RecordError::Malformed(_))
        ));
        let mallory = user("mallory", 8, NOW - 10, 86_400);
        assert!(body(&alice, 1, Status::Online).sign(&mallory.key).is_err());
    }
}
