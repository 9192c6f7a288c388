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

/// A superpeer passes the certificate its leaf attached with: a record carrying that very
/// certificate has only its period checked again; any other certificate is verified in full,
/// and the record's own signature always is.
#[test]
fn a_known_certificate_is_not_verified_twice() {
    let issuer = issuer().public();
    let rogue = IssuerSigningKey::from_bytes(&[9; 32]).public();
    let alice = user("alice", 7, NOW - 10, 86_400);
    let rec = body(&alice, 5, Status::Online).sign(&alice.key).unwrap();
    let key = key_of("alice");
    // Known: passes even against a key that never signed it (its signature is not redone).
    assert_eq!(
        rec.validate_for_store_known(&key, &rogue, NOW, None, Some(&alice.cert)),
        Ok(())
    );
    assert!(rec.validate_for_store(&key, &rogue, NOW, None).is_err());
    // Another certificate than the known one: verified in full.
    let forger = IssuerSigningKey::from_bytes(&[9; 32]);
    let forged_cert = forger
        .issue(
            UserName::parse("alice").unwrap(),
            alice.cert.device_key(),
            1,
            NOW - 10,
            86_400,
        )
        .unwrap();
    let mut forged = body(&alice, 6, Status::Online);
    forged.cert = forged_cert;
    let forged = forged.sign(&alice.key).unwrap();
    assert!(matches!(
        forged.validate_for_store_known(&key, &issuer, NOW, None, Some(&alice.cert)),
        Err(RecordError::Certificate(CertError::WrongIssuer { .. }))
    ));
    // The record's own signature is still checked.
    let mut edited = rec.clone();
    edited.body.status = Status::Busy;
    assert_eq!(
        edited.validate_for_store_known(&key, &issuer, NOW, None, Some(&alice.cert)),
        Err(RecordError::BadSignature)
    );
    // And the known certificate's period: expired is expired.
    let old = user("alice", 7, NOW - 90_000, 86_400);
    let rec = body(&old, 5, Status::Online).sign(&old.key).unwrap();
    assert!(matches!(
        rec.validate_for_store_known(&key, &issuer, NOW, None, Some(&old.cert)),
        Err(RecordError::Certificate(CertError::Expired { .. }))
    ));
}
