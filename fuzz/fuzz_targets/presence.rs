//! Presence records as the directory gets them: `PresenceRecord::from_json` (what Kademlia
//! stores), `DeviceRecords::from_json` (a user's devices as one value), the superpeer's
//! `directory::admit_record` (a PUT, merged into a stored value) and `DeviceRecords::gather`
//! (a lookup's answers), and what a leaf checks of an answer (name, then `verify`). Also the body alone (JSON) and the status word.
//!
//! The same input, read as record fields, is also signed by a certified device and verified
//! at a fuzzed time, so the lease and freshness rules after the signature are reached and
//! checked against their specification.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use libp2p::identity::Keypair;
use natter_fuzz::{ALICE, ISSUED_AT, LIFETIME, NOW, cert, device, issuer, name, record};
use natter_proto::Certificate;
use natter_proto::cert::CLOCK_SKEW_SECS;
use natter_proto::limits::MAX_RECORD_LEASE_SECS;
use natter_proto::presence::{PresenceBody, PresenceRecord, RecordError, Status, directory_key};
use natter_proto::DeviceRecords;
use natter_superpeer::directory::admit_record;
use std::sync::LazyLock;

/// Alice's certificate and device key, which sign the records this target makes.
static ALICE_CERT: LazyLock<Certificate> = LazyLock::new(|| cert("alice", ALICE));
static ALICE_DEVICE: LazyLock<Keypair> = LazyLock::new(|| device(ALICE));

/// What the directory already holds for alice when a record is offered.
static STORED: LazyLock<Vec<u8>> =
    LazyLock::new(|| record("alice", ALICE, 5, Status::Online).to_json());

fuzz_target!(|data: &[u8]| {
    decode(data);
    let _ = sign_and_verify(&mut Unstructured::new(data));
});

fn decode(data: &[u8]) {
    let alice = name("alice");
    let alice_key = directory_key(&alice);
    // Each check below verifies two signatures at most once per input.
    if let Ok(record) = PresenceRecord::from_json(data) {
        // What a superpeer stores is what it read: re-encoding changes nothing signed.
        let again = serde_json::from_slice::<PresenceRecord>(&record.to_json());
        assert_eq!(again.as_ref().ok(), Some(&record));
        let _ = record.is_live(NOW);
        // `verify`, then the sequence against the stored record (under the record's own key;
        // admit_record below stores under alice's).
        let key = directory_key(record.username());
        let stored = PresenceRecord::from_json(&STORED).expect("fixture decodes");
        let _ = record.validate_for_store(&key, issuer(), NOW, Some(&stored));
    }
    // A Kademlia PUT for alice, and a lookup answer for her (a leaf checks answers alike).
    if let Ok(merged) = admit_record(&alice_key, data, issuer(), NOW, Some(&STORED)) {
        // A merged value reads back as itself, and holds alice's records only.
        let again = DeviceRecords::from_json(&merged.to_json());
        assert_eq!(again.as_ref().ok(), Some(&merged));
        assert!(merged.records().all(|r| r.username() == &alice));
    }
    let gathered = DeviceRecords::gather(&alice, [data, STORED.as_slice()], issuer(), NOW);
    assert!(gathered.len() <= natter_proto::limits::MAX_DEVICES_PER_USER);
    let _ = serde_json::from_slice::<PresenceBody>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<Status>();
    }
}

fn sign_and_verify(u: &mut Unstructured<'_>) -> Result<()> {
    let status = *u.choose(&[Status::Online, Status::Away, Status::Busy, Status::Offline])?;
    let (seq, last_seen, expires_at, now): (u64, u64, u64, u64) = u.arbitrary()?;
    let body = PresenceBody {
        cert: ALICE_CERT.clone(),
        status,
        seq,
        last_seen,
        expires_at,
        home: u.arbitrary()?,
        relay_addrs: u.arbitrary_iter()?.take(10).collect::<Result<_>>()?,
        direct_addrs: u.arbitrary_iter()?.take(10).collect::<Result<_>>()?,
    };
    let record = body
        .sign(&ALICE_DEVICE)
        .expect("alice's device signs alice's record");
    if let Ok(back) = PresenceRecord::from_json(&record.to_json()) {
        assert_eq!(back, record);
    }
    let outcome = record.verify(issuer(), now);
    // The certificate's own window (its signature is good): `Certificate::verify` without
    // checking the signature again.
    let cert_ok = ISSUED_AT <= now.saturating_add(CLOCK_SKEW_SECS) && now < ISSUED_AT + LIFETIME;
    let lease = expires_at.saturating_sub(last_seen);
    match outcome {
        // Unparsable addresses or home, or too many of them.
        Err(RecordError::Malformed(_)) => {}
        Err(RecordError::Certificate(_)) => assert!(!cert_ok),
        Err(RecordError::BadSignature) => panic!("a record signed by its device must verify"),
        Err(RecordError::FromTheFuture { .. }) => {
            assert!(last_seen > now.saturating_add(CLOCK_SKEW_SECS))
        }
        Err(RecordError::LeaseTooLong(_)) => {
            assert!(lease > MAX_RECORD_LEASE_SECS || expires_at < last_seen)
        }
        Err(RecordError::Expired { .. }) => {
            assert!(now >= expires_at)
        }
        Err(e @ (RecordError::KeyMismatch | RecordError::Stale { .. })) => {
            panic!("verify never says {e:?}")
        }
        Ok(()) => {
            assert!(cert_ok);
            assert!(last_seen <= now.saturating_add(CLOCK_SKEW_SECS));
            assert!(lease <= MAX_RECORD_LEASE_SECS && expires_at >= last_seen);
            assert!(now < expires_at);
            let key = directory_key(record.username());
            assert_eq!(record.validate_for_store(&key, issuer(), now, None), Ok(()));
        }
    }
    Ok(())
}
