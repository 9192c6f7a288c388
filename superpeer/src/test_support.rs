//! Certificates and signed records for the unit tests of this crate.

#![allow(clippy::unwrap_used)]

use libp2p::PeerId;
use libp2p::identity::Keypair;
use natter_proto::{Certificate, IssuerSigningKey, PresenceBody, PresenceRecord, Status, UserName};

/// "Now" of every test record: certificates run from 10 s before it for an hour.
pub(crate) const NOW: u64 = 1_800_000_000;

/// The tests' login server.
pub(crate) fn issuer() -> IssuerSigningKey {
    IssuerSigningKey::from_bytes(&[1; 32])
}

/// A device key from a seed.
pub(crate) fn device(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

pub(crate) fn peer(seed: u8) -> PeerId {
    device(seed).public().to_peer_id()
}

/// `name`'s certificate for device `seed`, signed by `signer`.
pub(crate) fn cert_by(name: &str, seed: u8, signer: &IssuerSigningKey) -> Certificate {
    let public = device(seed).try_into_ed25519().unwrap().public().to_bytes();
    signer
        .issue(UserName::parse(name).unwrap(), public, 1, NOW - 10, 3600)
        .unwrap()
}

/// `name`'s online record from device `seed`, sequence `seq`, at home on `home`, with a
/// certificate signed by `signer`.
pub(crate) fn record_by(
    name: &str,
    seed: u8,
    seq: u64,
    home: Option<PeerId>,
    signer: &IssuerSigningKey,
) -> PresenceRecord {
    PresenceBody {
        cert: cert_by(name, seed, signer),
        status: Status::Online,
        seq,
        last_seen: NOW,
        expires_at: NOW + 90,
        home: home.map(|h| h.to_string()),
        relay_addrs: vec![],
        direct_addrs: vec![],
    }
    .sign(&device(seed))
    .unwrap()
}
