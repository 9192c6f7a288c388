#![allow(clippy::unwrap_used)]

use libp2p::identity::Keypair;
use natter_proto::IssuerSigningKey;
use natter_proto::limits::MAX_DEVICES_PER_USER;

use super::*;

pub(in crate::daemon) const NOW: u64 = 1_800_000_000;

/// `name`'s online record (sequence 1), its certificate issued by `signer`.
pub(in crate::daemon) fn record(
    name: &str,
    signer: &IssuerSigningKey,
    expires_at: u64,
) -> PresenceRecord {
    record_on(7, name, signer, expires_at)
}

/// The same, from the device with key seed `device`.
pub(in crate::daemon) fn record_on(
    device: u8,
    name: &str,
    signer: &IssuerSigningKey,
    expires_at: u64,
) -> PresenceRecord {
    let device = Keypair::ed25519_from_bytes([device; 32]).unwrap();
    let public = device
        .clone()
        .try_into_ed25519()
        .unwrap()
        .public()
        .to_bytes();
    let cert = signer
        .issue(UserName::parse(name).unwrap(), public, 1, NOW - 10, 3600)
        .unwrap();
    PresenceBody {
        cert,
        status: Status::Online,
        seq: 1,
        last_seen: expires_at - 60,
        expires_at,
        home: None,
        relay_addrs: vec![],
        direct_addrs: vec![],
    }
    .sign(&device)
    .unwrap()
}

#[test]
fn only_the_asked_users_record_under_the_pinned_issuer_is_used() {
    let issuer = IssuerSigningKey::from_bytes(&[1; 32]);
    let pinned = issuer.public();
    let bob = UserName::parse("bob").unwrap();
    let good = record("bob", &issuer, NOW + 60);
    assert_eq!(check_answer(&good, &bob, &pinned, NOW), Ok(()));
    // A certificate from a key of the attacker's own.
    let rogue = IssuerSigningKey::from_bytes(&[2; 32]);
    let forged = record("bob", &rogue, NOW + 60);
    assert!(matches!(
        check_answer(&forged, &bob, &pinned, NOW),
        Err(Distrust::Forged(_))
    ));
    // A genuine record, of somebody else.
    let mallory = record("mallory", &issuer, NOW + 60);
    assert!(matches!(
        check_answer(&mallory, &bob, &pinned, NOW),
        Err(Distrust::Forged(_))
    ));
    // A genuine record whose body was changed after signing.
    let mut tampered = good.clone();
    tampered.body.direct_addrs = vec!["/ip4/6.6.6.6/tcp/1".into()];
    assert!(matches!(
        check_answer(&tampered, &bob, &pinned, NOW),
        Err(Distrust::Forged(_))
    ));
    // Expired on the way: not the superpeer's fault.
    let old = record("bob", &issuer, NOW - 1);
    assert!(matches!(
        check_answer(&old, &bob, &pinned, NOW),
        Err(Distrust::Unusable(_))
    ));
}

/// A hostile superpeer may answer with a genuine record and slip forged devices beside
/// it: the whole answer is distrusted, as for a forged main record.
#[test]
fn every_device_of_an_answer_is_checked() {
    let issuer = IssuerSigningKey::from_bytes(&[1; 32]);
    let pinned = issuer.public();
    let bob = UserName::parse("bob").unwrap();
    let laptop = record_on(7, "bob", &issuer, NOW + 60);
    let phone = record_on(8, "bob", &issuer, NOW + 60);
    let check = |others: Vec<PresenceRecord>| check_others(&laptop, others, &bob, &pinned, NOW);
    assert_eq!(check(vec![phone.clone()]), Ok(vec![phone.clone()]));
    let rogue = IssuerSigningKey::from_bytes(&[2; 32]);
    assert!(matches!(
        check(vec![phone.clone(), record_on(9, "bob", &rogue, NOW + 60)]),
        Err(Distrust::Forged(_))
    ));
    assert!(matches!(
        check(vec![record_on(9, "mallory", &issuer, NOW + 60)]),
        Err(Distrust::Forged(_))
    ));
    // The main record's device again, or one device twice.
    assert!(matches!(
        check(vec![record_on(7, "bob", &issuer, NOW + 50)]),
        Err(Distrust::Forged(_))
    ));
    assert!(matches!(
        check(vec![phone.clone(), phone.clone()]),
        Err(Distrust::Forged(_))
    ));
    // More devices than the directory keeps.
    let many = (10..10 + MAX_DEVICES_PER_USER as u8)
        .map(|d| record_on(d, "bob", &issuer, NOW + 60))
        .collect();
    assert!(matches!(check(many), Err(Distrust::Forged(_))));
    // A device whose lease ended on the way is left out, not held against anyone.
    assert_eq!(
        check(vec![phone.clone(), record_on(9, "bob", &issuer, NOW - 1)]),
        Ok(vec![phone])
    );
}
