//! The directory as a superpeer keeps it: which records to store (every one validated first,
//! refusals counted; each user's devices side by side) and a short lookup cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use natter_proto::{DeviceRecords, IssuerKey, PresenceRecord, RecordError, UserName};

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DirectoryStats {
    pub records_stored: u64,
    pub records_refused: u64,
    pub lookups: u64,
}

/// Validates a directory value offered for `key` (a superpeer's PUT: one device's record or
/// several devices' of one user) and merges it into what is stored there now; the merged
/// value to store. See [`DeviceRecords::admit`].
pub fn admit_record(
    key: &[u8],
    value: &[u8],
    issuer: &IssuerKey,
    now: u64,
    stored: Option<&[u8]>,
) -> Result<DeviceRecords, RecordError> {
    DeviceRecords::admit(value, key, issuer, now, stored)
}

/// A lookup's answer: the most available device's record (none: no record at all), whether
/// that device's home superpeer confirmed it is attached, and the user's other devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub record: Option<PresenceRecord>,
    pub confirmed: bool,
    pub others: Vec<PresenceRecord>,
}

/// Recent lookup results, so a burst of lookups for one user costs one DHT query. Bounded;
/// entries live `ttl` (a few seconds: presence must not lag).
#[derive(Debug)]
pub struct LookupCache {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<UserName, (Instant, Answer)>,
}

impl LookupCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: HashMap::new(),
        }
    }

    /// The answer, if a fresh one is cached.
    pub fn get(&self, name: &UserName, now: Instant) -> Option<Answer> {
        self.entries
            .get(name)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, answer)| answer.clone())
    }

    pub fn put(&mut self, name: UserName, answer: Answer, now: Instant) {
        if self.entries.len() >= self.max_entries {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.max_entries {
                self.entries.clear();
            }
        }
        self.entries.insert(name, (now, answer));
    }

    /// Forgets a user, e.g. when a newer record for them passes through this superpeer.
    pub fn invalidate(&mut self, name: &UserName) {
        self.entries.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_expires_and_is_bounded() {
        let t0 = Instant::now();
        let mut c = LookupCache::new(Duration::from_secs(5), 2);
        let a = UserName::parse("alice").unwrap();
        c.put(a.clone(), Answer::default(), t0);
        assert_eq!(
            c.get(&a, t0 + Duration::from_secs(4)),
            Some(Answer::default())
        );
        assert_eq!(c.get(&a, t0 + Duration::from_secs(5)), None);
        let confirmed = Answer {
            confirmed: true,
            ..Answer::default()
        };
        for n in ["bob", "carol", "dave"] {
            c.put(UserName::parse(n).unwrap(), confirmed.clone(), t0);
            assert!(c.entries.len() <= 2);
        }
        c.invalidate(&UserName::parse("dave").unwrap());
        assert_eq!(c.get(&UserName::parse("dave").unwrap(), t0), None);
    }

    #[test]
    fn garbage_is_refused_not_stored() {
        let issuer = natter_proto::IssuerSigningKey::from_bytes(&[1; 32]).public();
        assert!(admit_record(b"k", b"not json", &issuer, 0, None).is_err());
        assert!(
            DeviceRecords::gather(
                &UserName::parse("alice").unwrap(),
                [b"{}".as_slice()],
                &issuer,
                0
            )
            .is_empty()
        );
    }
}
