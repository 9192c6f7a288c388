//! A user's devices in the directory: the newest presence record of each device, each signed
//! by its own device key. One user name is one directory key; its value is this set, so two
//! devices of one user never overwrite each other.
//!
//! On the wire a set of one device is written as that bare record, as the directory stored it
//! before users had several devices; a set of more is a JSON array. Both are read.

use std::collections::BTreeMap;

use crate::cert::IssuerKey;
use crate::limits::{MAX_DEVICE_SET_BYTES, MAX_DEVICES_PER_USER};
use crate::name::UserName;
use crate::presence::{PresenceRecord, RecordError, Status, directory_key};

/// The newest record of each of one user's devices, at most [`MAX_DEVICES_PER_USER`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRecords {
    /// By device key: at most one record per device.
    by_device: BTreeMap<[u8; 32], PresenceRecord>,
}

impl DeviceRecords {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes a directory value (one bare record or an array), refusing oversized input
    /// before parsing it, more records than the cap, and two records of one device.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_DEVICE_SET_BYTES {
            return Err(RecordError::Malformed(format!(
                "{} bytes, at most {MAX_DEVICE_SET_BYTES}",
                bytes.len()
            )));
        }
        let records: Vec<PresenceRecord> = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => {
                serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?
            }
            _ => vec![PresenceRecord::from_json(bytes)?],
        };
        if records.is_empty() {
            return Err(RecordError::Malformed("no device record".into()));
        }
        if records.len() > MAX_DEVICES_PER_USER {
            return Err(RecordError::Malformed(format!(
                "{} device records, at most {MAX_DEVICES_PER_USER}",
                records.len()
            )));
        }
        let mut set = Self::new();
        for record in records {
            let device = record.body.cert.device_key();
            if set.by_device.insert(device, record).is_some() {
                return Err(RecordError::Malformed(
                    "two records of one device in one value".into(),
                ));
            }
        }
        Ok(set)
    }

    /// The directory value: a bare record for one device, an array for more.
    pub fn to_json(&self) -> Vec<u8> {
        match self.by_device.values().next() {
            Some(only) if self.by_device.len() == 1 => only.to_json(),
            _ => {
                let records: Vec<&PresenceRecord> = self.by_device.values().collect();
                serde_json::to_vec(&records).expect("records serialize")
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = &PresenceRecord> {
        self.by_device.values()
    }

    /// The stored record of the device that signed `record`, if any.
    pub fn same_device(&self, record: &PresenceRecord) -> Option<&PresenceRecord> {
        self.by_device.get(&record.body.cert.device_key())
    }

    /// Drops the records whose lease ended by `now`.
    pub fn expire(&mut self, now: u64) {
        self.by_device.retain(|_, r| now < r.body.expires_at);
    }

    /// Takes `record` if it is newer than its device's record here (or the first of its
    /// device); whether it was taken. Over the cap, the device the user was least recently
    /// seen on goes (offline ones before). No check here: callers verify every record before.
    pub fn merge(&mut self, record: PresenceRecord) -> bool {
        let device = record.body.cert.device_key();
        if let Some(stored) = self.by_device.get(&device)
            && stored.body.seq >= record.body.seq
        {
            return false;
        }
        self.by_device.insert(device, record);
        while self.by_device.len() > MAX_DEVICES_PER_USER {
            let Some(evicted) = self
                .by_device
                .iter()
                .min_by_key(|(d, r)| (r.body.status != Status::Offline, r.body.last_seen, **d))
                .map(|(d, _)| *d)
            else {
                break;
            };
            self.by_device.remove(&evicted);
        }
        self.by_device.contains_key(&device)
    }

    /// The directory's acceptance rule for a value offered under `key` (a superpeer's PUT),
    /// merged into `stored`: every record must be `key`'s user's and verify (a forged one
    /// refuses the whole value); the value is refused as stale when it brings nothing newer
    /// and is not what is stored. Returns the merged set to store.
    pub fn admit(
        offered: &[u8],
        key: &[u8],
        issuer: &IssuerKey,
        now: u64,
        stored: Option<&[u8]>,
    ) -> Result<DeviceRecords, RecordError> {
        let offered = DeviceRecords::from_json(offered)?;
        let mut merged = stored
            .and_then(|s| DeviceRecords::from_json(s).ok())
            .unwrap_or_default();
        merged.expire(now);
        let mut stale = None;
        let mut changed = false;
        for record in offered.by_device.into_values() {
            if key != directory_key(record.username()).as_slice() {
                return Err(RecordError::KeyMismatch);
            }
            record.verify(issuer, now)?;
            let same = merged.same_device(&record).cloned();
            match same {
                Some(s) if s.body.seq > record.body.seq => {
                    stale = Some(RecordError::Stale {
                        offered: record.body.seq,
                        stored: s.body.seq,
                    });
                }
                Some(s) if s.body.seq == record.body.seq && s != record => {
                    stale = Some(RecordError::Stale {
                        offered: record.body.seq,
                        stored: s.body.seq,
                    });
                }
                _ => changed |= merged.merge(record),
            }
        }
        match stale {
            Some(e) if !changed => Err(e),
            _ => Ok(merged),
        }
    }

    /// Every valid record of `name` among several answers (a lookup's), merged per device.
    pub fn gather<'a>(
        name: &UserName,
        values: impl IntoIterator<Item = &'a [u8]>,
        issuer: &IssuerKey,
        now: u64,
    ) -> DeviceRecords {
        let mut set = DeviceRecords::new();
        for value in values {
            let Ok(found) = DeviceRecords::from_json(value) else {
                continue;
            };
            for record in found.by_device.into_values() {
                if record.username() == name && record.verify(issuer, now).is_ok() {
                    set.merge(record);
                }
            }
        }
        set
    }

    /// The records from the most available device to the least: live ones first (online,
    /// then away, then busy), then by the newest sign of life.
    pub fn by_availability(&self, now: u64) -> Vec<&PresenceRecord> {
        let mut records: Vec<&PresenceRecord> = self.by_device.values().collect();
        records.sort_by_key(|r| {
            (
                !r.is_live(now),
                availability(r.body.status),
                std::cmp::Reverse(r.body.last_seen),
                std::cmp::Reverse(r.body.seq),
            )
        });
        records
    }
}

/// Lower is more available.
pub fn availability(status: Status) -> u8 {
    match status {
        Status::Online => 0,
        Status::Away => 1,
        Status::Busy => 2,
        Status::Offline => 3,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::IssuerSigningKey;
    use crate::cert::Certificate;
    use crate::presence::PresenceBody;

    const NOW: u64 = 1_800_000_000;

    fn issuer() -> IssuerSigningKey {
        IssuerSigningKey::from_bytes(&[1; 32])
    }

    /// `name`'s record from device `seed`.
    fn record(name: &str, seed: u8, seq: u64, status: Status, last_seen: u64) -> PresenceRecord {
        let key = libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        let device = key.clone().try_into_ed25519().unwrap().public().to_bytes();
        let cert: Certificate = issuer()
            .issue(UserName::parse(name).unwrap(), device, 1, NOW - 10, 86_400)
            .unwrap();
        PresenceBody {
            cert,
            status,
            seq,
            last_seen,
            expires_at: last_seen + 90,
            home: None,
            relay_addrs: vec![],
            direct_addrs: vec![],
        }
        .sign(&key)
        .unwrap()
    }

    fn key(name: &str) -> Vec<u8> {
        directory_key(&UserName::parse(name).unwrap())
    }

    #[test]
    fn one_device_is_written_as_a_bare_record_and_both_shapes_are_read() {
        let a = record("alice", 7, 5, Status::Online, NOW);
        let mut set = DeviceRecords::new();
        assert!(set.merge(a.clone()));
        assert_eq!(set.to_json(), a.to_json());
        assert_eq!(DeviceRecords::from_json(&a.to_json()).unwrap(), set);
        assert!(set.merge(record("alice", 8, 1, Status::Away, NOW)));
        let json = set.to_json();
        assert_eq!(json.first(), Some(&b'['));
        assert_eq!(DeviceRecords::from_json(&json).unwrap(), set);
    }

    #[test]
    fn two_devices_of_one_user_do_not_overwrite_each_other() {
        let k = key("alice");
        let pk = issuer().public();
        let laptop = record("alice", 7, 10, Status::Online, NOW);
        let phone = record("alice", 8, 20, Status::Away, NOW);
        let stored = DeviceRecords::admit(&laptop.to_json(), &k, &pk, NOW, None).unwrap();
        let stored =
            DeviceRecords::admit(&phone.to_json(), &k, &pk, NOW, Some(&stored.to_json())).unwrap();
        assert_eq!(stored.len(), 2);
        // The laptop's older sequence is no replay: it is another device's.
        let newer_laptop = record("alice", 7, 11, Status::Busy, NOW);
        let stored = DeviceRecords::admit(
            &newer_laptop.to_json(),
            &k,
            &pk,
            NOW,
            Some(&stored.to_json()),
        )
        .unwrap();
        assert_eq!(stored.same_device(&laptop), Some(&newer_laptop));
        assert_eq!(stored.same_device(&phone), Some(&phone));
    }

    #[test]
    fn a_replayed_record_of_one_device_is_stale_and_a_forged_one_refuses_the_value() {
        let k = key("alice");
        let pk = issuer().public();
        let old = record("alice", 7, 10, Status::Online, NOW);
        let new = record("alice", 7, 11, Status::Online, NOW);
        let stored = DeviceRecords::admit(&new.to_json(), &k, &pk, NOW, None).unwrap();
        assert!(matches!(
            DeviceRecords::admit(&old.to_json(), &k, &pk, NOW, Some(&stored.to_json())),
            Err(RecordError::Stale { .. })
        ));
        // The same value again is no refusal (a republication).
        assert!(
            DeviceRecords::admit(&new.to_json(), &k, &pk, NOW, Some(&stored.to_json())).is_ok()
        );
        // A good record beside a forged one: the whole value goes.
        let mut forged = record("alice", 9, 12, Status::Online, NOW);
        forged.body.status = Status::Busy;
        let both =
            serde_json::to_vec(&[&record("alice", 8, 12, Status::Online, NOW), &forged]).unwrap();
        assert_eq!(
            DeviceRecords::admit(&both, &k, &pk, NOW, None),
            Err(RecordError::BadSignature)
        );
        // Another user's record under alice's key.
        let bob = record("bob", 8, 12, Status::Online, NOW);
        assert_eq!(
            DeviceRecords::admit(&bob.to_json(), &k, &pk, NOW, None),
            Err(RecordError::KeyMismatch)
        );
    }

    #[test]
    fn values_are_bounded_in_bytes_devices_and_duplicates() {
        assert!(DeviceRecords::from_json(&vec![b' '; MAX_DEVICE_SET_BYTES + 1]).is_err());
        let a = record("alice", 7, 5, Status::Online, NOW);
        let twice = serde_json::to_vec(&[&a, &a]).unwrap();
        assert!(DeviceRecords::from_json(&twice).is_err());
        // An empty value would let anyone fill the store under keys of nobody.
        assert!(DeviceRecords::from_json(b"[]").is_err());
        let many: Vec<PresenceRecord> = (0..=MAX_DEVICES_PER_USER as u8)
            .map(|i| record("alice", 20 + i, 1, Status::Online, NOW))
            .collect();
        assert!(DeviceRecords::from_json(&serde_json::to_vec(&many).unwrap()).is_err());
        // Merging past the cap drops the device seen least recently, offline ones first.
        let mut set = DeviceRecords::new();
        for (i, r) in many.into_iter().enumerate() {
            let mut r = r;
            r.body.last_seen = NOW - 50 + i as u64;
            set.merge(r);
        }
        assert_eq!(set.len(), MAX_DEVICES_PER_USER);
        let offline = record("alice", 60, 1, Status::Offline, NOW);
        assert!(
            !set.merge(offline),
            "an offline device does not evict a live one"
        );
        assert_eq!(set.len(), MAX_DEVICES_PER_USER);
    }

    #[test]
    fn the_most_available_device_comes_first_and_expired_ones_are_dropped() {
        let away = record("alice", 7, 30, Status::Away, NOW);
        let online = record("alice", 8, 10, Status::Online, NOW - 20);
        let signed_off = record("alice", 9, 40, Status::Offline, NOW);
        let mut set = DeviceRecords::new();
        for r in [away.clone(), online.clone(), signed_off.clone()] {
            set.merge(r);
        }
        let order: Vec<&PresenceRecord> = set.by_availability(NOW);
        assert_eq!(order, vec![&online, &away, &signed_off]);
        // Past the online record's lease, it goes.
        set.expire(NOW + 75);
        assert!(set.same_device(&online).is_none());
        assert_eq!(set.len(), 2);
        let gathered = DeviceRecords::gather(
            &UserName::parse("alice").unwrap(),
            [
                away.to_json().as_slice(),
                online.to_json().as_slice(),
                b"junk",
            ],
            &issuer().public(),
            NOW,
        );
        assert_eq!(gathered.len(), 2);
    }
}
