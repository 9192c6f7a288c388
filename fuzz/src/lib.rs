//! Fixtures shared by the fuzz targets (`fuzz_targets/`) and the seed generator
//! (`examples/seeds.rs`): one issuer, a few devices and a fixed clock, so that a seed signed
//! here still verifies when a target checks it, and mutations of it reach the checks that
//! come after the signature.

use std::sync::LazyLock;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use natter_proto::presence::{PresenceBody, PresenceRecord, Status};
use natter_proto::revocation::{RevocationList, Revocations, Revoked, device_hex};
use natter_proto::{Certificate, IssuerKey, IssuerSigningKey, UserName};

/// The clock of every check whose `now` the caller passes (unix seconds, in 2027).
pub const NOW: u64 = 1_800_000_000;
/// Fixture certificates are valid from 2023 to 2033, so they also verify where the code under
/// test reads the real clock (the login server's `Service`).
pub const ISSUED_AT: u64 = 1_700_000_000;
pub const LIFETIME: u64 = 300_000_000;

/// Device seeds: the sending peer of every request a target replays is [`ALICE`]'s device.
pub const ALICE: u8 = 7;
pub const BOB: u8 = 8;
pub const SUPERPEER: u8 = 9;
/// The device of mallory, whose account the fixture revocation list revokes.
pub const MALLORY: u8 = 11;

/// The secret of the login server's key that every target trusts.
pub const ISSUER_SECRET: [u8; 32] = [1; 32];

/// Keys are derived once: targets sign and verify on every input, and the instrumented curve
/// arithmetic is the slowest part of a run.
static ISSUER_SIGNING: LazyLock<IssuerSigningKey> =
    LazyLock::new(|| IssuerSigningKey::from_bytes(&ISSUER_SECRET));
static ISSUER: LazyLock<IssuerKey> = LazyLock::new(|| issuer_signing().public());

pub fn issuer_signing() -> &'static IssuerSigningKey {
    &ISSUER_SIGNING
}

pub fn issuer() -> &'static IssuerKey {
    &ISSUER
}

pub fn device(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).expect("any 32 bytes are an ed25519 secret")
}

/// Peer ids are derived once per seed: targets ask for them on every input.
pub fn peer(seed: u8) -> PeerId {
    static PEERS: LazyLock<[PeerId; 3]> =
        LazyLock::new(|| [ALICE, BOB, SUPERPEER].map(|s| device(s).public().to_peer_id()));
    match seed {
        ALICE => PEERS[0],
        BOB => PEERS[1],
        SUPERPEER => PEERS[2],
        other => device(other).public().to_peer_id(),
    }
}

/// The raw public key of device `seed` (cached for the fixture devices).
pub fn device_key(seed: u8) -> [u8; 32] {
    fn compute(seed: u8) -> [u8; 32] {
        device(seed)
            .try_into_ed25519()
            .expect("built as ed25519")
            .public()
            .to_bytes()
    }
    static KEYS: LazyLock<[[u8; 32]; 4]> =
        LazyLock::new(|| [ALICE, BOB, SUPERPEER, MALLORY].map(compute));
    match seed {
        ALICE => KEYS[0],
        BOB => KEYS[1],
        SUPERPEER => KEYS[2],
        MALLORY => KEYS[3],
        other => compute(other),
    }
}

pub fn name(text: &str) -> UserName {
    UserName::parse(text).expect("fixture names are valid")
}

/// A certificate of the trusted issuer for `user` on device `seed`.
pub fn cert(user: &str, seed: u8) -> Certificate {
    issuer_signing()
        .issue(name(user), device_key(seed), 1, ISSUED_AT, LIFETIME)
        .expect("fixture device keys are valid")
}

/// A record that verifies at [`NOW`], signed by device `seed`.
pub fn record(user: &str, seed: u8, seq: u64, status: Status) -> PresenceRecord {
    PresenceBody {
        cert: cert(user, seed),
        status,
        seq,
        last_seen: NOW - 10,
        expires_at: NOW + 80,
        home: Some(peer(SUPERPEER).to_string()),
        relay_addrs: vec![format!(
            "/ip4/192.0.2.1/tcp/4001/p2p/{}/p2p-circuit",
            peer(SUPERPEER)
        )],
        direct_addrs: vec!["/ip4/198.51.100.7/udp/4001/quic-v1".into()],
    }
    .sign(&device(seed))
    .expect("signed by the certified device")
}

/// The login server's list: mallory's account is revoked at [`NOW`], and a device of carol
/// only before any fixture certificate was issued (so it revokes none).
pub fn revocation_list() -> RevocationList {
    RevocationList::sign(
        issuer_signing(),
        NOW - 60,
        vec![
            Revoked {
                name: "mallory".into(),
                device: None,
                revoked_at: NOW,
            },
            Revoked {
                name: "carol".into(),
                device: Some(device_hex(&device_key(SUPERPEER))),
                revoked_at: ISSUED_AT - 1,
            },
        ],
    )
    .expect("fixture entries are well-formed")
}

/// [`revocation_list`], verified and indexed as nodes hold it.
pub fn revocations() -> &'static Revocations {
    static LIST: LazyLock<Revocations> = LazyLock::new(|| {
        revocation_list()
            .verify(issuer())
            .expect("signed by the issuer")
    });
    &LIST
}

/// The lines of a multi-message input: each one is one message as the codec would see it.
/// Bounded, so a target's work per input stays bounded too.
pub fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n').take(16)
}
