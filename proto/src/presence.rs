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
        self.verify_known(issuer, now, None)
    }

    /// [`Self::verify`], where `known` is a certificate this node verified under `issuer`
    /// before (a leaf's, at attach): when the record carries that very certificate, only its
    /// validity period is checked again, not its signature. The record's own signature is
    /// always checked. A superpeer takes each leaf's record every 30 s, and the certificate's
    /// signature was half of what that cost.
    pub fn verify_known(
        &self,
        issuer: &IssuerKey,
        now: u64,
        known: Option<&Certificate>,
    ) -> Result<(), RecordError> {
        let b = &self.body;
        check_lists(b)?;
        if known.is_some_and(|k| *k == b.cert) {
            b.cert.check_period(now, 0)?;
        } else {
            b.cert.verify(issuer, now)?;
        }
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
        self.validate_for_store_known(key, issuer, now, stored, None)
    }

    /// [`Self::validate_for_store`] with a certificate verified before: see
    /// [`Self::verify_known`].
    pub fn validate_for_store_known(
        &self,
        key: &[u8],
        issuer: &IssuerKey,
        now: u64,
        stored: Option<&PresenceRecord>,
        known: Option<&Certificate>,
    ) -> Result<(), RecordError> {
        if key != directory_key(self.username()).as_slice() {
            return Err(RecordError::KeyMismatch);
        }
        self.verify_known(issuer, now, known)?;
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
mod tests;
