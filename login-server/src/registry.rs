//! Live superpeers, as they announce themselves, for bootstrap lists. Entries expire unless
//! refreshed; the table is bounded. This is not a presence table: it holds superpeers only,
//! never users' status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use natter_proto::limits::MAX_BOOTSTRAP_SUPERPEERS;
use natter_proto::login::SuperpeerInfo;

#[derive(Debug, Clone)]
struct Entry {
    addrs: Vec<String>,
    leaves: u32,
    capacity: u32,
    expires: Instant,
}

#[derive(Debug)]
pub struct Registry {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<PeerId, Entry>,
}

impl Registry {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: HashMap::new(),
        }
    }

    /// Records an announcement. `false` if the table is full of live superpeers.
    pub fn announce(
        &mut self,
        peer: PeerId,
        addrs: Vec<String>,
        leaves: u32,
        capacity: u32,
        now: Instant,
    ) -> bool {
        if !self.entries.contains_key(&peer) && self.entries.len() >= self.max_entries {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.max_entries {
                return false;
            }
        }
        self.entries.insert(
            peer,
            Entry {
                addrs,
                leaves,
                capacity,
                expires: now + self.ttl,
            },
        );
        true
    }

    pub fn remove(&mut self, peer: &PeerId) {
        self.entries.remove(peer);
    }

    /// Up to [`MAX_BOOTSTRAP_SUPERPEERS`] live superpeers, least loaded first, excluding
    /// `except` (a superpeer need not be told about itself).
    pub fn bootstrap(&self, now: Instant, except: Option<&PeerId>) -> Vec<SuperpeerInfo> {
        let mut live: Vec<_> = self
            .entries
            .iter()
            .filter(|(p, e)| e.expires > now && Some(*p) != except)
            .collect();
        // Free capacity first: fraction of capacity in use, then absolute load; equals in a
        // random order, so that leaves arriving together spread over the superpeers.
        let salt: u64 = rand::random();
        let tie = |p: &PeerId| {
            use std::hash::{BuildHasher as _, BuildHasherDefault};
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one((salt, p))
        };
        live.sort_by(|(pa, a), (pb, b)| {
            let load = |e: &Entry| f64::from(e.leaves) / f64::from(e.capacity.max(1));
            load(a)
                .total_cmp(&load(b))
                .then(a.leaves.cmp(&b.leaves))
                .then(tie(pa).cmp(&tie(pb)))
        });
        live.into_iter()
            .take(MAX_BOOTSTRAP_SUPERPEERS)
            .map(|(p, e)| SuperpeerInfo {
                peer_id: p.to_string(),
                addrs: e.addrs.clone(),
                leaves: e.leaves,
                capacity: e.capacity,
            })
            .collect()
    }

    pub fn live_count(&self, now: Instant) -> usize {
        self.entries.values().filter(|e| e.expires > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_sorts_by_load_and_caps() {
        let t0 = Instant::now();
        let mut reg = Registry::new(Duration::from_secs(150), 1000);
        let busy = PeerId::random();
        let idle = PeerId::random();
        assert!(reg.announce(busy, vec!["/ip4/1.2.3.4/tcp/1".into()], 90, 100, t0));
        assert!(reg.announce(idle, vec![], 1, 100, t0));
        let list = reg.bootstrap(t0, None);
        assert_eq!(list[0].peer_id, idle.to_string());
        assert_eq!(list.len(), 2);
        assert_eq!(reg.bootstrap(t0, Some(&idle)).len(), 1);
        // Refreshing keeps one alive, the other expires.
        assert!(reg.announce(busy, vec![], 90, 100, t0 + Duration::from_secs(100)));
        let later = t0 + Duration::from_secs(200);
        let list = reg.bootstrap(later, None);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].peer_id, busy.to_string());
        for _ in 0..50 {
            reg.announce(PeerId::random(), vec![], 0, 10, later);
        }
        assert_eq!(reg.bootstrap(later, None).len(), MAX_BOOTSTRAP_SUPERPEERS);
    }

    #[test]
    fn table_is_bounded_but_expired_entries_make_room() {
        let t0 = Instant::now();
        let mut reg = Registry::new(Duration::from_secs(10), 2);
        assert!(reg.announce(PeerId::random(), vec![], 0, 1, t0));
        assert!(reg.announce(PeerId::random(), vec![], 0, 1, t0));
        assert!(!reg.announce(PeerId::random(), vec![], 0, 1, t0));
        assert!(reg.announce(PeerId::random(), vec![], 0, 1, t0 + Duration::from_secs(11)));
        assert_eq!(reg.live_count(t0 + Duration::from_secs(11)), 1);
    }
}
