//! What a leaf makes of a lookup answer from its superpeer: which records it trusts (the
//! superpeer is not trusted: every record is checked against the pinned issuer key), and the
//! view `natter lookup` shows.

use natter_proto::limits::MAX_DEVICES_PER_USER;
use natter_proto::{PresenceRecord, UserName};

use super::super::api::{DeviceView, LookupView};
use super::super::unix_now;

/// Why a lookup answer is not used.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Distrust {
    /// No honest superpeer sends this: a record of another user, or a signature that does
    /// not verify (certificate of another issuer, record not signed by the device).
    Forged(String),
    /// Possibly honest but not usable here: expired meanwhile, or a clock apart from ours.
    Unusable(String),
}

/// Checks a superpeer's lookup answer for `name` against the pinned issuer key.
pub(super) fn check_answer(
    record: &PresenceRecord,
    name: &UserName,
    issuer: &natter_proto::IssuerKey,
    now: u64,
) -> Result<(), Distrust> {
    use natter_proto::cert::CertError;
    use natter_proto::presence::RecordError;
    if record.username() != name {
        return Err(Distrust::Forged(format!(
            "the record is {}'s",
            record.username()
        )));
    }
    match record.verify(issuer, now) {
        Ok(()) => Ok(()),
        Err(
            e @ (RecordError::BadSignature
            | RecordError::Malformed(_)
            | RecordError::LeaseTooLong(_)
            | RecordError::Certificate(
                CertError::BadSignature | CertError::WrongIssuer { .. } | CertError::Malformed(_),
            )),
        ) => Err(Distrust::Forged(e.to_string())),
        Err(e) => Err(Distrust::Unusable(e.to_string())),
    }
}

/// Checks the user's other devices in a lookup answer: each one as the main record is
/// checked, at most [`MAX_DEVICES_PER_USER`] in all, one record per device. Records that are
/// only unusable (expired meanwhile) are left out; the usable ones are returned.
pub(super) fn check_others(
    record: &PresenceRecord,
    others: Vec<PresenceRecord>,
    name: &UserName,
    issuer: &natter_proto::IssuerKey,
    now: u64,
) -> Result<Vec<PresenceRecord>, Distrust> {
    if others.len() >= MAX_DEVICES_PER_USER {
        return Err(Distrust::Forged(format!(
            "{} device records, at most {MAX_DEVICES_PER_USER}",
            others.len() + 1
        )));
    }
    let mut devices = std::collections::BTreeSet::from([record.body.cert.device_key()]);
    let mut usable = Vec::with_capacity(others.len());
    for other in others {
        if !devices.insert(other.body.cert.device_key()) {
            return Err(Distrust::Forged("two records of one device".into()));
        }
        match check_answer(&other, name, issuer, now) {
            Ok(()) => usable.push(other),
            Err(Distrust::Unusable(why)) => {
                tracing::debug!(user = %name, %why, "a device record of a lookup answer left out");
            }
            Err(forged) => return Err(forged),
        }
    }
    Ok(usable)
}

/// What a lookup shows: the user's presence is that of the most available device, shown only
/// while its lease runs and its home superpeer confirms the device; otherwise offline, with
/// last-seen. `devices` lists every device, that one first.
pub(in crate::daemon) fn lookup_view(
    record: &PresenceRecord,
    confirmed: bool,
    others: &[PresenceRecord],
) -> LookupView {
    let now = unix_now();
    let live = confirmed && record.is_live(now);
    let device = |r: &PresenceRecord, confirmed: bool| DeviceView {
        peer_id: r.body.cert.peer_id().to_string(),
        status: if r.is_live(now) {
            r.body.status.as_str().into()
        } else {
            "offline".into()
        },
        confirmed,
        last_seen: r.body.last_seen,
        home: r.body.home.clone(),
        direct_addrs: r.body.direct_addrs.clone(),
        seq: r.body.seq,
    };
    let devices = std::iter::once(device(record, live))
        .chain(others.iter().map(|r| device(r, false)))
        .collect();
    LookupView {
        user: record.username().to_string(),
        status: if live {
            record.body.status.as_str().into()
        } else {
            "offline".into()
        },
        peer_id: Some(record.body.cert.peer_id().to_string()),
        superpeers: record.body.relay_addrs.clone(),
        direct_addrs: record.body.direct_addrs.clone(),
        last_seen: Some(record.body.last_seen),
        home: record.body.home.clone(),
        confirmed,
        seq: Some(record.body.seq),
        devices,
    }
}
