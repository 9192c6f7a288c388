//! Certificates and issuer keys, in every form they arrive in: the signed wire bytes
//! (`Certificate::from_bytes`), base64 text (`from_base64`: the issuer key a user pastes, the
//! JSON string form), JSON (`Deserialize`, as inside every wire message), and the node's
//! `identity.json`. Whatever decodes is verified against the trusted issuer.
//!
//! The same input, read as fields, is also issued by the trusted issuer and verified at a
//! fuzzed time: random bytes never carry a valid signature, so only this reaches the validity
//! checks after it, which are checked against their specification.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use natter_fuzz::{NOW, issuer, issuer_signing};
use natter_proto::UserName;
use natter_proto::cert::{CLOCK_SKEW_SECS, CertError, Certificate, IssuerKey};

fuzz_target!(|data: &[u8]| {
    decode(data);
    let _ = issue_and_verify(&mut Unstructured::new(data));
});

fn decode(data: &[u8]) {
    if let Ok(cert) = Certificate::from_bytes(data) {
        // Strict decoding: exactly one byte string per certificate.
        assert_eq!(cert.to_bytes(), data);
        exercise(&cert);
    }
    if let Ok(raw) = <&[u8; 32]>::try_from(data)
        && let Ok(key) = IssuerKey::from_bytes(raw)
    {
        assert_eq!(&key.to_bytes(), raw);
        let _ = key.key_id();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cert) = Certificate::from_base64(text) {
            assert_eq!(
                Certificate::from_base64(&cert.to_base64()).as_ref(),
                Ok(&cert)
            );
            exercise(&cert);
        }
        if let Ok(key) = IssuerKey::from_base64(text) {
            assert_eq!(IssuerKey::from_base64(&key.to_base64()), Ok(key));
        }
    }
    if let Ok(cert) = serde_json::from_slice::<Certificate>(data) {
        exercise(&cert);
    }
    let _ = serde_json::from_slice::<IssuerKey>(data);
    // The node's identity file: its certificate is checked with the issuer key it pins.
    if let Ok(identity) = serde_json::from_slice::<natter_node::Identity>(data) {
        let _ = identity.cert.verify(&identity.issuer_key, NOW);
        let _ = natter_node::login_client::server_peer_id(&identity.login);
    }
}

/// What peers do with a decoded certificate: show it, derive its peer id, verify it.
fn exercise(cert: &Certificate) {
    let _ = format!("{cert:?}");
    let _ = cert.peer_id();
    let _ = cert.verify(issuer(), NOW);
    let _ = cert.verify(issuer(), cert.issued_at());
    let _ = cert.verify_with_grace(issuer(), cert.expires_at(), u64::MAX);
}

fn issue_and_verify(u: &mut Unstructured<'_>) -> Result<()> {
    let name_len = u.int_in_range(0..=40)?;
    let name = String::from_utf8_lossy(u.bytes(name_len)?).into_owned();
    let Ok(user) = UserName::parse(&name) else {
        return Ok(());
    };
    let device_key: [u8; 32] = u.arbitrary()?;
    let (serial, issued_at, lifetime, now, grace): (u64, u64, u64, u64, u64) = u.arbitrary()?;
    let Ok(cert) = issuer_signing().issue(user, device_key, serial, issued_at, lifetime) else {
        return Ok(());
    };
    let decoded = Certificate::from_bytes(&cert.to_bytes());
    if cert.expires_at() <= cert.issued_at() {
        // A zero lifetime (or one saturated at u64::MAX) is refused by the decoder.
        assert!(
            matches!(decoded, Err(CertError::Malformed(_))),
            "{decoded:?}"
        );
    } else {
        assert_eq!(decoded.as_ref(), Ok(&cert));
    }
    let outcome = cert.verify_with_grace(issuer(), now, grace);
    let expected = if issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
        Err(CertError::NotYetValid { issued_at, now })
    } else if now >= cert.expires_at().saturating_add(grace) {
        Err(CertError::Expired {
            expires_at: cert.expires_at(),
            now,
        })
    } else {
        Ok(())
    };
    assert_eq!(outcome, expected);
    Ok(())
}
