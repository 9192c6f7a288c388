//! Revocation lists, as superpeers fetch them from the login server and leaves from their
//! superpeers (JSON inside `LoginResponse::Revocations` and `OverlayResponse::Revocations`):
//! `RevocationList` decoding, `verify` against the pinned issuer, and what a node does with a
//! verified list (`Revocations::update`, `revokes`).
//!
//! The same input, read as entries, is also signed by the trusted issuer, so the checks after
//! the signature are reached: a list the issuer signs verifies, survives JSON, and revokes
//! exactly the certificates its entries name (same account, same device if one is named,
//! issued at or before `revoked_at`).

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use natter_fuzz::{ALICE, BOB, MALLORY, device_key, issuer, issuer_signing, name, revocations};
use natter_proto::revocation::{RevocationList, Revoked, device_hex};

fuzz_target!(|data: &[u8]| {
    decode(data);
    let _ = sign_and_check(&mut Unstructured::new(data));
});

fn decode(data: &[u8]) {
    if let Ok(list) = serde_json::from_slice::<RevocationList>(data) {
        let again = serde_json::to_vec(&list).expect("lists encode");
        assert_eq!(
            serde_json::from_slice::<RevocationList>(&again).ok(),
            Some(list.clone())
        );
        if let Ok(verified) = list.verify(issuer()) {
            assert_eq!(verified.issued_at(), list.issued_at);
            assert_eq!(verified.len(), list.revoked.len());
            let mut held = revocations().clone();
            let newer = list.issued_at > held.issued_at();
            assert_eq!(held.update(verified), newer);
        }
    }
    let _ = serde_json::from_slice::<Revoked>(data);
}

const NAMES: [&str; 3] = ["alice", "bob", "mallory"];
const DEVICES: [u8; 3] = [ALICE, BOB, MALLORY];

fn sign_and_check(u: &mut Unstructured<'_>) -> Result<()> {
    let issued_at: u64 = u.arbitrary()?;
    let mut revoked = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let device = if u.arbitrary()? {
            Some(device_hex(&device_key(*u.choose(&DEVICES)?)))
        } else {
            None
        };
        revoked.push(Revoked {
            name: (*u.choose(&NAMES)?).to_owned(),
            device,
            revoked_at: u.arbitrary()?,
        });
    }
    let list = RevocationList::sign(issuer_signing(), issued_at, revoked.clone())
        .expect("well-formed entries sign");
    let json = serde_json::to_vec(&list).expect("lists encode");
    let decoded: RevocationList = serde_json::from_slice(&json).expect("lists decode");
    let verified = decoded
        .verify(issuer())
        .expect("a list the issuer signed verifies");
    let (user, seed, cert_issued_at) = (
        *u.choose(&NAMES)?,
        *u.choose(&DEVICES)?,
        u.int_in_range(0..=u64::MAX - 1)?,
    );
    let cert = issuer_signing()
        .issue(name(user), device_key(seed), 1, cert_issued_at, 1)
        .expect("fixture device keys are valid");
    let expected = revoked.iter().any(|r| {
        r.name == user
            && r.device
                .as_ref()
                .is_none_or(|d| *d == device_hex(&device_key(seed)))
            && cert_issued_at <= r.revoked_at
    });
    assert_eq!(verified.revokes(&cert), expected);
    Ok(())
}
