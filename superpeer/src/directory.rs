//! The directory as a superpeer keeps it: which records to store (every one validated first,
//! refusals counted), which of several answers to believe, and a short lookup cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use natter_proto::{IssuerKey, PresenceRecord, RecordError, UserName};

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DirectoryStats {
    pub records_stored: u64,
    pub records_refused: u64,
    pub lookups: u64,
}

/// Validates a record offered for `key`, against what is stored there now.
pub fn admit_record(
    key: &[u8],
    value: &[u8],
    issuer: &IssuerKey,
    now: u64,
    stored: Option<&[u8]>,
) -> Result<PresenceRecord, RecordError> {
    let record = PresenceRecord::from_json(value)?;
    let stored = stored.and_then(|s| PresenceRecord::from_json(s).ok());
    record.validate_for_store(key, issuer, now, stored.as_ref())?;
    Ok(record)
}

/// Of the answers a lookup collected, the valid one with the highest sequence for `name`.
pub fn best_record<'a>(
    name: &UserName,
    values: impl IntoIterator<Item = &'a [u8]>,
    issuer: &IssuerKey,
    now: u64,
) -> Option<PresenceRecord> {
    values
        .into_iter()
        .filter_map(|v| PresenceRecord::from_json(v).ok())
        .filter(|r| r.username() == name && r.verify(issuer, now).is_ok())
        .max_by_key(|r| r.body.seq)
}

/// Recent lookup results, so a burst of lookups for one user costs one DHT query. Bounded;
/// entries live `ttl` (a few seconds: presence must not lag).
#[derive(Debug)]
pub struct LookupCache {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<UserName, (Instant, Option<PresenceRecord>, bool)>,
}

impl LookupCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: HashMap::new(),
        }
    }

    /// `Some((record, confirmed))` if a fresh answer is cached.
    pub fn get(&self, name: &UserName, now: Instant) -> Option<(Option<PresenceRecord>, bool)> {
        self.entries
            .get(name)
            .filter(|(at, _, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, r, c)| (r.clone(), *c))
    }

    pub fn put(
        &mut self,
        name: UserName,
        record: Option<PresenceRecord>,
        confirmed: bool,
        now: Instant,
    ) {
        if self.entries.len() >= self.max_entries {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.max_entries {
                self.entries.clear();
            }
        }
        self.entries.insert(name, (now, record, confirmed));
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
        c.put(a.clone(), None, false, t0);
        assert_eq!(c.get(&a, t0 + Duration::from_secs(4)), Some((None, false)));
        assert_eq!(c.get(&a, t0 + Duration::from_secs(5)), None);
        for n in ["bob", "carol", "dave"] {
            c.put(UserName::parse(n).unwrap(), None, true, t0);
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
            best_record(
                &UserName::parse("alice").unwrap(),
                [b"{}".as_slice()],
                &issuer,
                0
            )
            .is_none()
        );
    }
}
