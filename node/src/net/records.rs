//! The directory's record store, shared between the network task (Kademlia reads and writes
//! it while serving queries) and the superpeer service (which validates every record before
//! it goes in, and reads the stored one to compare sequence numbers).
//!
//! Kademlia is built with `StoreInserts::FilterBoth`, so it never stores a record by itself:
//! only the service's [`DirectoryRecords::put`] does, after validation.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

/// A cloneable handle to one [`MemoryStore`]; every clone sees the same records.
#[derive(Clone)]
pub(crate) struct DirectoryRecords {
    inner: Arc<Mutex<MemoryStore>>,
}

impl std::fmt::Debug for DirectoryRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryRecords").finish_non_exhaustive()
    }
}

impl DirectoryRecords {
    pub(crate) fn new(local: PeerId, config: MemoryStoreConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryStore::with_config(local, config))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryStore> {
        // The store holds plain data; a panic elsewhere leaves it consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored value under `key`, if any.
    pub(crate) fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock()
            .get(&RecordKey::new(&key))
            .map(|r| r.value.clone())
    }
}

impl RecordStore for DirectoryRecords {
    type RecordsIter<'a> = std::vec::IntoIter<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::vec::IntoIter<Cow<'a, ProviderRecord>>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.lock().get(k).map(|r| Cow::Owned(r.into_owned()))
    }

    fn put(&mut self, r: Record) -> Result<()> {
        self.lock().put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.lock().remove(k);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        let records: Vec<Cow<'_, Record>> = self
            .lock()
            .records()
            .map(|r| Cow::Owned(r.into_owned()))
            .collect();
        records.into_iter()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        self.lock().add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.lock().providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        let provided: Vec<Cow<'_, ProviderRecord>> = self
            .lock()
            .provided()
            .map(|r| Cow::Owned(r.into_owned()))
            .collect();
        provided.into_iter()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.lock().remove_provider(k, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_records() {
        let peer = PeerId::random();
        let a = DirectoryRecords::new(peer, MemoryStoreConfig::default());
        let mut b = a.clone();
        let record = Record::new(RecordKey::new(&b"k"), b"v".to_vec());
        assert!(b.put(record).is_ok());
        assert_eq!(a.value(b"k"), Some(b"v".to_vec()));
        b.remove(&RecordKey::new(&b"k"));
        assert_eq!(a.value(b"k"), None);
        assert_eq!(a.records().count(), 0);
    }
}
