//! The host cache: superpeers this node knows of, so it can find the overlay again after a
//! restart even when the login server is down (DESIGN: "Attach, host cache, failover").
//!
//! A host is **verified** once this node reached it itself (attached, or had an overlay answer
//! from it: [`Store::record_host`]); one it only heard of, from another superpeer's list or
//! the login server's ([`Store::learn_host`]), stays **unverified**. The distinction is the
//! defence against cache poisoning: a hostile superpeer can name any number of hosts that do
//! not exist, and if those counted as seen, a restarted leaf would try them before the real
//! ones for as long as they last. So only verified hosts count as seen; unverified ones rank
//! after them, are bounded apart ([`MAX_UNVERIFIED_HOSTS`]), never push a verified host out,
//! and are forgotten after [`UNVERIFIED_DROP_AFTER`] failures.
//!
//! It is bounded ([`MAX_HOSTS`]) by evicting unverified hosts first, then the least recently
//! seen, and ranked for attach: verified hosts that are not failing first (most recently
//! seen, then fastest), then unverified ones, then verified hosts that keep failing: those
//! stay, since a superpeer that is down now may be back later.

use natter_proto::limits::{MAX_ADDR_LEN, MAX_ANNOUNCED_ADDRS};
use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::sql::Cached as _;
use super::{Store, StoreError, int, sql_limit};

/// Most hosts kept; beyond this, unverified hosts are evicted first, then the least recently
/// seen.
pub const MAX_HOSTS: usize = 200;
/// Most unverified hosts kept (heard of, never reached): a few lists' worth, so what others
/// say can neither fill the cache nor bury the hosts this node reached.
pub const MAX_UNVERIFIED_HOSTS: usize = 32;
/// Most addresses kept per host: what a superpeer may announce.
pub const MAX_HOST_ADDRS: usize = MAX_ANNOUNCED_ADDRS;
/// Consecutive failures after which a host ranks below every host that is not failing.
pub const FAILING_AFTER: u32 = 3;
/// Consecutive failures after which an unverified host is forgotten: nothing but somebody's
/// word spoke for it, and it did not answer.
pub const UNVERIFIED_DROP_AFTER: u32 = 2;
/// Longest peer id accepted, in bytes (a base58 peer id is about 52).
const MAX_PEER_ID_LEN: usize = 128;

/// A superpeer as the host cache remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The superpeer's peer id, base58.
    pub peer_id: String,
    /// Where it was reachable, freshest first, at most [`MAX_HOST_ADDRS`]. For a verified
    /// host, the addresses heard second-hand come after those it was reached on.
    pub addrs: Vec<String>,
    /// Last measured round trip; ranks hosts seen equally recently.
    pub rtt_ms: Option<u32>,
    /// Last announced number of attached leaves, to prefer hosts with room.
    pub leaves: Option<u32>,
    /// Last announced leaf capacity.
    pub capacity: Option<u32>,
    /// Verified: when it last answered this node. Unverified: when this node last heard of
    /// it (the caller's clock, unix seconds).
    pub last_seen: u64,
    /// Consecutive failures since it last answered (or, unverified, since it was heard of).
    pub failures: u32,
    /// When it last failed, if it has failed since it last answered.
    pub last_failure: Option<u64>,
    /// This node reached it itself; otherwise it was only heard of.
    pub verified: bool,
}

impl Store {
    /// Records that this node reached `peer_id` itself at `now` (attached, or had an overlay
    /// answer from it): inserts it or refreshes it, marks it verified and clears its failures.
    ///
    /// `addrs` go first, then the addresses already known that are not among them, up to
    /// [`MAX_HOST_ADDRS`] (so an empty `addrs` keeps what was known). `rtt_ms` and `load`
    /// (`(leaves, capacity)`) replace the stored values when given and keep them when `None`:
    /// a sighting without a measurement does not erase the last one. Beyond [`MAX_HOSTS`]
    /// entries, unverified hosts and then the least recently seen are evicted (never this one).
    pub fn record_host(
        &self,
        peer_id: &str,
        addrs: &[String],
        rtt_ms: Option<u32>,
        load: Option<(u32, u32)>,
        now: u64,
    ) -> Result<(), StoreError> {
        check_host(peer_id, addrs)?;
        let now = int("last seen time", now)?;
        let (leaves, capacity) = load.unzip();
        self.write(|tx| {
            let known = known_addrs(tx, peer_id)?.map(|(addrs, _)| addrs);
            let merged = merge_addrs(addrs, &known.unwrap_or_default());
            tx.run(
                "INSERT INTO hosts (peer_id, addrs, rtt_ms, leaves, capacity, last_seen, verified)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
                 ON CONFLICT (peer_id) DO UPDATE SET
                     addrs = excluded.addrs,
                     rtt_ms = COALESCE(excluded.rtt_ms, rtt_ms),
                     leaves = COALESCE(excluded.leaves, leaves),
                     capacity = COALESCE(excluded.capacity, capacity),
                     last_seen = excluded.last_seen,
                     failures = 0,
                     last_failure = NULL,
                     verified = 1",
                params![
                    peer_id,
                    encode_addrs(&merged)?,
                    rtt_ms,
                    leaves,
                    capacity,
                    now
                ],
            )?;
            evict(tx, peer_id)
        })
    }

    /// Records that this node heard of superpeer `peer_id` at `now` from somebody else (the
    /// login server's bootstrap list, another superpeer's list): it is not evidence that the
    /// host exists, so it never makes a host verified nor clears its failures.
    ///
    /// An unknown host is added unverified; an unverified one gets `addrs` first and `load`,
    /// and counts as heard of at `now`. A verified host keeps its rank, its load and the
    /// addresses it was reached on: `addrs` only go after those, up to [`MAX_HOST_ADDRS`].
    /// Beyond [`MAX_UNVERIFIED_HOSTS`] unverified hosts, the least recently heard of is
    /// evicted (never this one); a verified host is never evicted for an unverified one.
    pub fn learn_host(
        &self,
        peer_id: &str,
        addrs: &[String],
        load: Option<(u32, u32)>,
        now: u64,
    ) -> Result<(), StoreError> {
        check_host(peer_id, addrs)?;
        let now = int("heard-of time", now)?;
        let (leaves, capacity) = load.unzip();
        self.write(|tx| {
            match known_addrs(tx, peer_id)? {
                Some((known, true)) => {
                    let merged = merge_addrs(&known, addrs);
                    tx.run(
                        "UPDATE hosts SET addrs = ?2 WHERE peer_id = ?1",
                        params![peer_id, encode_addrs(&merged)?],
                    )?;
                }
                Some((known, false)) => {
                    let merged = merge_addrs(addrs, &known);
                    tx.run(
                        "UPDATE hosts SET
                             addrs = ?2,
                             leaves = COALESCE(?3, leaves),
                             capacity = COALESCE(?4, capacity),
                             last_seen = MAX(last_seen, ?5)
                         WHERE peer_id = ?1",
                        params![peer_id, encode_addrs(&merged)?, leaves, capacity, now],
                    )?;
                }
                None => {
                    let merged = merge_addrs(addrs, &[]);
                    tx.run(
                        "INSERT INTO hosts (peer_id, addrs, leaves, capacity, last_seen, verified)
                         VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                        params![peer_id, encode_addrs(&merged)?, leaves, capacity, now],
                    )?;
                }
            }
            evict(tx, peer_id)
        })
    }

    /// Up to `limit` hosts, best first: verified hosts that are not failing
    /// ([`FAILING_AFTER`]), then unverified ones, then failing ones; within each, most
    /// recently seen first, then lowest round trip (unmeasured last).
    pub fn hosts(&self, limit: usize) -> Result<Vec<Host>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT peer_id, addrs, rtt_ms, leaves, capacity, last_seen, failures, last_failure,
                    verified
             FROM hosts
             ORDER BY failures >= ?1, verified DESC, last_seen DESC, rtt_ms IS NULL, rtt_ms,
                      peer_id
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![FAILING_AFTER, sql_limit(limit)], RawHost::from_row)?;
        let mut out = Vec::new();
        for row in rows {
            // One damaged row must not hide the rest of the cache from attach.
            match row?.decode() {
                Ok(host) => out.push(host),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable host cache entry"),
            }
        }
        Ok(out)
    }

    /// Records that `peer_id` failed to answer at `now` (dial, reservation or request failed).
    /// An unverified host that has now failed [`UNVERIFIED_DROP_AFTER`] times is forgotten.
    /// `Ok(false)` if it is not in the cache.
    pub fn host_failed(&self, peer_id: &str, now: u64) -> Result<bool, StoreError> {
        let now = int("failure time", now)?;
        self.write(|tx| {
            let n = tx.run(
                "UPDATE hosts SET failures = MIN(failures + 1, ?2), last_failure = ?3
                 WHERE peer_id = ?1",
                params![peer_id, u32::MAX, now],
            )?;
            tx.run(
                "DELETE FROM hosts WHERE peer_id = ?1 AND verified = 0 AND failures >= ?2",
                params![peer_id, UNVERIFIED_DROP_AFTER],
            )?;
            Ok(n == 1)
        })
    }

    /// Forgets `peer_id` (say, it turned out not to be a superpeer). `Ok(false)` if unknown.
    pub fn remove_host(&self, peer_id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx.run("DELETE FROM hosts WHERE peer_id = ?1", params![peer_id])?;
            Ok(n == 1)
        })
    }
}

/// Checks a host's peer id and addresses against the cache's limits.
fn check_host(peer_id: &str, addrs: &[String]) -> Result<(), StoreError> {
    check_peer_id(peer_id)?;
    for addr in addrs {
        if addr.len() > MAX_ADDR_LEN {
            return Err(StoreError::TooLarge {
                what: "host address",
                len: addr.len(),
                max: MAX_ADDR_LEN,
            });
        }
    }
    Ok(())
}

/// The stored addresses of `peer_id` and whether it is verified, if it is in the cache.
fn known_addrs(tx: &Connection, peer_id: &str) -> Result<Option<(Vec<String>, bool)>, StoreError> {
    let row = tx
        .row(
            "SELECT addrs, verified FROM hosts WHERE peer_id = ?1",
            params![peer_id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)),
        )
        .optional()?;
    Ok(row.map(|(json, verified)| {
        // The file was damaged or edited: what we hear now replaces it.
        let addrs = decode_addrs(peer_id, &json).unwrap_or_else(|e| {
            tracing::warn!(%peer_id, error = %e, "replacing unreadable host addresses");
            Vec::new()
        });
        (addrs, verified)
    }))
}

fn encode_addrs(addrs: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(addrs)
        .map_err(|e| StoreError::Corrupt(format!("encoding addresses: {e}")))
}

fn check_peer_id(peer_id: &str) -> Result<(), StoreError> {
    if peer_id.is_empty() {
        return Err(StoreError::Invalid {
            what: "peer id",
            reason: "empty".into(),
        });
    }
    if peer_id.len() > MAX_PEER_ID_LEN {
        return Err(StoreError::TooLarge {
            what: "peer id",
            len: peer_id.len(),
            max: MAX_PEER_ID_LEN,
        });
    }
    Ok(())
}

/// `fresh` first (in order, without repeats), then the `known` ones not among them, at most
/// [`MAX_HOST_ADDRS`].
fn merge_addrs(fresh: &[String], known: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(MAX_HOST_ADDRS);
    for addr in fresh.iter().chain(known) {
        if out.len() == MAX_HOST_ADDRS {
            break;
        }
        if !out.contains(addr) {
            out.push(addr.clone());
        }
    }
    out
}

fn decode_addrs(peer_id: &str, json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("addresses of host {peer_id}: {e}")))
}

/// Keeps the cache within its bounds after `keep` was written: unverified hosts beyond
/// [`MAX_UNVERIFIED_HOSTS`] (least recently heard of first), then any host beyond
/// [`MAX_HOSTS`] (unverified first, then least recently seen). `keep` goes last within its
/// kind, so a host just recorded is not its own victim when it ties with others on
/// `last_seen`, but an unverified newcomer is never kept at a verified host's expense.
fn evict(tx: &Connection, keep: &str) -> Result<(), StoreError> {
    let unverified: i64 = tx.row("SELECT COUNT(*) FROM hosts WHERE verified = 0", [], |r| {
        r.get(0)
    })?;
    let excess = unverified.saturating_sub(sql_limit(MAX_UNVERIFIED_HOSTS));
    if excess > 0 {
        tx.run(
            "DELETE FROM hosts WHERE peer_id IN (
                 SELECT peer_id FROM hosts WHERE verified = 0
                 ORDER BY peer_id = ?1, last_seen, failures DESC, peer_id
                 LIMIT ?2)",
            params![keep, excess],
        )?;
    }
    let count: i64 = tx.row("SELECT COUNT(*) FROM hosts", [], |r| r.get(0))?;
    let excess = count.saturating_sub(sql_limit(MAX_HOSTS));
    if excess > 0 {
        tx.run(
            "DELETE FROM hosts WHERE peer_id IN (
                 SELECT peer_id FROM hosts
                 ORDER BY verified, peer_id = ?1, last_seen, failures DESC, peer_id
                 LIMIT ?2)",
            params![keep, excess],
        )?;
    }
    Ok(())
}

/// A row before its JSON column is decoded (decoding errors are ours, not SQLite's).
struct RawHost {
    peer_id: String,
    addrs: String,
    rtt_ms: Option<u32>,
    leaves: Option<u32>,
    capacity: Option<u32>,
    last_seen: u64,
    failures: u32,
    last_failure: Option<u64>,
    verified: bool,
}

impl RawHost {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            peer_id: r.get(0)?,
            addrs: r.get(1)?,
            rtt_ms: r.get(2)?,
            leaves: r.get(3)?,
            capacity: r.get(4)?,
            last_seen: r.get(5)?,
            failures: r.get(6)?,
            last_failure: r.get(7)?,
            verified: r.get(8)?,
        })
    }

    fn decode(self) -> Result<Host, StoreError> {
        Ok(Host {
            addrs: decode_addrs(&self.peer_id, &self.addrs)?,
            peer_id: self.peer_id,
            rtt_ms: self.rtt_ms,
            leaves: self.leaves,
            capacity: self.capacity,
            last_seen: self.last_seen,
            failures: self.failures,
            last_failure: self.last_failure,
            verified: self.verified,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ids(hosts: &[Host]) -> Vec<&str> {
        hosts.iter().map(|h| h.peer_id.as_str()).collect()
    }

    #[test]
    fn record_and_read_back_survives_reopen() {
        let (dir, store) = fresh();
        let a = addrs(&["/ip4/1.2.3.4/tcp/4001", "/ip4/1.2.3.4/udp/4001/quic-v1"]);
        store
            .record_host("12D3KooWA", &a, Some(42), Some((10, 500)), 1_000)
            .unwrap();
        store.host_failed("12D3KooWA", 1_010).unwrap();
        let expected = Host {
            peer_id: "12D3KooWA".into(),
            addrs: a,
            rtt_ms: Some(42),
            leaves: Some(10),
            capacity: Some(500),
            last_seen: 1_000,
            failures: 1,
            last_failure: Some(1_010),
            verified: true,
        };
        assert_eq!(store.hosts(10).unwrap(), std::slice::from_ref(&expected));
        let store = reopen(&dir, store);
        assert_eq!(store.hosts(10).unwrap(), [expected]);
    }

    #[test]
    fn upsert_merges_addrs_keeps_measurements_and_clears_failures() {
        let (_dir, store) = fresh();
        store
            .record_host("p", &addrs(&["/a", "/b"]), Some(30), Some((1, 10)), 100)
            .unwrap();
        store.host_failed("p", 101).unwrap();
        store.host_failed("p", 102).unwrap();
        // A sighting without addresses, RTT or load (say, from a bootstrap list).
        store.record_host("p", &[], None, None, 200).unwrap();
        let h = &store.hosts(1).unwrap()[0];
        assert_eq!(h.addrs, ["/a", "/b"]);
        assert_eq!(
            (h.rtt_ms, h.leaves, h.capacity),
            (Some(30), Some(1), Some(10))
        );
        assert_eq!((h.last_seen, h.failures, h.last_failure), (200, 0, None));
        // New measurements replace; new addresses go first, known ones follow, no repeats.
        store
            .record_host(
                "p",
                &addrs(&["/c", "/b", "/c"]),
                Some(7),
                Some((2, 20)),
                300,
            )
            .unwrap();
        let h = &store.hosts(1).unwrap()[0];
        assert_eq!(h.addrs, ["/c", "/b", "/a"]);
        assert_eq!(
            (h.rtt_ms, h.leaves, h.capacity),
            (Some(7), Some(2), Some(20))
        );
    }

    #[test]
    fn at_most_16_addrs_freshest_kept() {
        let (_dir, store) = fresh();
        let old: Vec<String> = (0..10).map(|i| format!("/old/{i}")).collect();
        let new: Vec<String> = (0..20).map(|i| format!("/new/{i}")).collect();
        store.record_host("p", &old, None, None, 1).unwrap();
        store.record_host("p", &new[..10], None, None, 2).unwrap();
        let h = &store.hosts(1).unwrap()[0];
        assert_eq!(h.addrs.len(), MAX_HOST_ADDRS);
        assert_eq!(h.addrs[..10], new[..10]);
        assert_eq!(h.addrs[10..], old[..6]);
        store.record_host("p", &new, None, None, 3).unwrap();
        assert_eq!(store.hosts(1).unwrap()[0].addrs, new[..16]);
    }

    #[test]
    fn bounded_by_evicting_least_recently_seen() {
        let (dir, store) = fresh();
        for i in 1..=(MAX_HOSTS as u64 + 5) {
            store
                .record_host(&format!("peer{i:03}"), &[], None, None, i)
                .unwrap();
        }
        let all = store.hosts(usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_HOSTS);
        assert_eq!(all[0].peer_id, "peer205");
        assert_eq!(all[MAX_HOSTS - 1].peer_id, "peer006");
        // Refreshing an old host saves it; the next oldest goes instead.
        store
            .record_host("peer006", &[], None, None, 1_000)
            .unwrap();
        store
            .record_host("newcomer", &[], None, None, 1_001)
            .unwrap();
        let all = store.hosts(usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_HOSTS);
        assert_eq!(ids(&all[..2]), ["newcomer", "peer006"]);
        assert!(!ids(&all).contains(&"peer007"));
        // A newcomer is never its own victim, even when it ties with everything.
        let (_dir2, tie) = fresh();
        for i in 0..=MAX_HOSTS {
            tie.record_host(&format!("z{i:03}"), &[], None, None, 5)
                .unwrap();
        }
        let all = tie.hosts(usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_HOSTS);
        assert!(ids(&all).contains(&"z200"));
        let store = reopen(&dir, store);
        assert_eq!(store.hosts(usize::MAX).unwrap().len(), MAX_HOSTS);
    }

    #[test]
    fn ordering_recent_then_rtt_failing_last() {
        let (_dir, store) = fresh();
        store
            .record_host("old-fast", &[], Some(1), None, 10)
            .unwrap();
        store
            .record_host("new-slow", &[], Some(90), None, 20)
            .unwrap();
        store
            .record_host("new-fast", &[], Some(5), None, 20)
            .unwrap();
        store
            .record_host("new-unmeasured", &[], None, None, 20)
            .unwrap();
        store
            .record_host("newest-broken", &[], Some(1), None, 30)
            .unwrap();
        assert_eq!(
            ids(&store.hosts(10).unwrap()),
            [
                "newest-broken",
                "new-fast",
                "new-slow",
                "new-unmeasured",
                "old-fast"
            ]
        );
        // A failure or two does not demote; FAILING_AFTER consecutive ones do.
        for t in 0..FAILING_AFTER - 1 {
            assert!(
                store
                    .host_failed("newest-broken", 31 + u64::from(t))
                    .unwrap()
            );
        }
        assert_eq!(store.hosts(1).unwrap()[0].peer_id, "newest-broken");
        store.host_failed("newest-broken", 40).unwrap();
        let order = store.hosts(10).unwrap();
        assert_eq!(order[4].peer_id, "newest-broken");
        assert_eq!(order[4].failures, FAILING_AFTER);
        assert_eq!(ids(&store.hosts(2).unwrap()), ["new-fast", "new-slow"]);
        // Answering again restores its rank.
        store
            .record_host("newest-broken", &[], None, None, 50)
            .unwrap();
        assert_eq!(store.hosts(1).unwrap()[0].peer_id, "newest-broken");
    }

    #[test]
    fn remove_and_unknown_hosts() {
        let (_dir, store) = fresh();
        assert!(!store.host_failed("ghost", 1).unwrap());
        assert!(!store.remove_host("ghost").unwrap());
        store.record_host("p", &[], None, None, 1).unwrap();
        assert!(store.remove_host("p").unwrap());
        assert!(store.hosts(10).unwrap().is_empty());
        assert!(store.hosts(0).unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_refused_not_panicked_on() {
        let (_dir, store) = fresh();
        assert!(matches!(
            store.record_host("", &[], None, None, 1),
            Err(StoreError::Invalid { .. })
        ));
        assert!(matches!(
            store.record_host(&"p".repeat(129), &[], None, None, 1),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(
            store.record_host("p", &["/x".repeat(200)], None, None, 1),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(
            store.record_host("p", &[], None, None, u64::MAX),
            Err(StoreError::Invalid { .. })
        ));
        assert!(store.host_failed("p", u64::MAX).is_err());
        // Odd but bounded strings are stored verbatim.
        let odd = "pe\u{0}er'\"; DROP TABLE hosts;--\u{1F600}";
        let odd_addrs = addrs(&["\u{0}", "\"]", ""]);
        store
            .record_host(odd, &odd_addrs, Some(u32::MAX), Some((u32::MAX, 0)), 0)
            .unwrap();
        let h = &store.hosts(1).unwrap()[0];
        assert_eq!(h.peer_id, odd);
        assert_eq!(h.addrs, odd_addrs);
        assert_eq!(h.rtt_ms, Some(u32::MAX));
    }

    #[test]
    fn failure_counter_saturates() {
        let (_dir, store) = fresh();
        store.record_host("p", &[], None, None, 1).unwrap();
        store
            .conn()
            .execute("UPDATE hosts SET failures = ?1", params![u32::MAX])
            .unwrap();
        store.host_failed("p", 2).unwrap();
        assert_eq!(store.hosts(1).unwrap()[0].failures, u32::MAX);
    }

    #[test]
    fn damaged_row_is_skipped_then_repaired() {
        let (_dir, store) = fresh();
        store.record_host("p", &[], None, None, 1).unwrap();
        store
            .record_host("q", &addrs(&["/q"]), None, None, 2)
            .unwrap();
        store
            .conn()
            .execute(
                "UPDATE hosts SET addrs = 'not json' WHERE peer_id = 'p'",
                [],
            )
            .unwrap();
        assert_eq!(ids(&store.hosts(10).unwrap()), ["q"]);
        store
            .record_host("p", &addrs(&["/p"]), None, None, 3)
            .unwrap();
        let hosts = store.hosts(10).unwrap();
        assert_eq!(ids(&hosts), ["p", "q"]);
        assert_eq!(hosts[0].addrs, ["/p"]);
    }

    #[test]
    fn heard_of_hosts_stay_unverified_until_reached() {
        let (dir, store) = fresh();
        store
            .learn_host("p", &addrs(&["/told"]), Some((1, 10)), 100)
            .unwrap();
        let h = &store.hosts(1).unwrap()[0];
        assert!(!h.verified);
        assert_eq!((h.last_seen, h.failures), (100, 0));
        // Heard of again: fresher addresses and load, still unverified.
        store
            .learn_host("p", &addrs(&["/told2"]), Some((2, 10)), 150)
            .unwrap();
        let h = &store.hosts(1).unwrap()[0];
        assert!(!h.verified);
        assert_eq!(h.addrs, ["/told2", "/told"]);
        assert_eq!((h.leaves, h.last_seen), (Some(2), 150));
        // Reached: verified, the address it answered on first.
        store
            .record_host("p", &addrs(&["/real"]), None, None, 200)
            .unwrap();
        store.host_failed("p", 201).unwrap();
        let h = store.hosts(1).unwrap()[0].clone();
        assert!(h.verified);
        assert_eq!(h.addrs, ["/real", "/told2", "/told"]);
        // What others say of a verified host changes neither its rank nor its failures nor
        // its load; their addresses only go after the ones it was reached on.
        store
            .learn_host("p", &addrs(&["/lie", "/real"]), Some((999, 1000)), 300)
            .unwrap();
        let after = &store.hosts(1).unwrap()[0];
        assert_eq!(after.addrs, ["/real", "/told2", "/told", "/lie"]);
        assert_eq!(
            (
                after.last_seen,
                after.failures,
                after.leaves,
                after.verified
            ),
            (200, 1, Some(2), true)
        );
        let store = reopen(&dir, store);
        assert!(store.hosts(1).unwrap()[0].verified);
    }

    #[test]
    fn ordering_verified_then_unverified_then_failing() {
        let (_dir, store) = fresh();
        store
            .record_host("old-verified", &[], None, None, 10)
            .unwrap();
        store.learn_host("fresh-rumour", &[], None, 50).unwrap();
        store.learn_host("old-rumour", &[], None, 5).unwrap();
        store.record_host("broken", &[], None, None, 40).unwrap();
        for t in 0..FAILING_AFTER {
            store.host_failed("broken", 41 + u64::from(t)).unwrap();
        }
        // However fresh, a rumour ranks below every verified host that is not failing.
        assert_eq!(
            ids(&store.hosts(10).unwrap()),
            ["old-verified", "fresh-rumour", "old-rumour", "broken"]
        );
        // One failure does not move a rumour: at UNVERIFIED_DROP_AFTER it is gone instead.
        store.host_failed("fresh-rumour", 60).unwrap();
        assert_eq!(store.hosts(2).unwrap()[1].peer_id, "fresh-rumour");
    }

    #[test]
    fn unverified_hosts_that_fail_are_dropped_verified_ones_stay() {
        let (_dir, store) = fresh();
        store.learn_host("rumour", &[], None, 1).unwrap();
        store.record_host("real", &[], None, None, 1).unwrap();
        assert!(store.host_failed("rumour", 2).unwrap());
        assert_eq!(store.hosts(10).unwrap().len(), 2);
        // Being named again does not wipe the failure out.
        store.learn_host("rumour", &[], None, 3).unwrap();
        assert_eq!(
            store
                .hosts(10)
                .unwrap()
                .iter()
                .find(|h| h.peer_id == "rumour")
                .unwrap()
                .failures,
            1
        );
        for _ in 1..UNVERIFIED_DROP_AFTER {
            assert!(store.host_failed("rumour", 4).unwrap());
        }
        assert_eq!(ids(&store.hosts(10).unwrap()), ["real"]);
        for t in 0..10 {
            store.host_failed("real", 5 + t).unwrap();
        }
        let h = &store.hosts(10).unwrap()[0];
        assert_eq!((h.peer_id.as_str(), h.failures), ("real", 10));
        // Reaching a rumour before it failed out makes it verified, failures cleared.
        store.learn_host("lucky", &[], None, 20).unwrap();
        store.host_failed("lucky", 21).unwrap();
        store.record_host("lucky", &[], None, None, 22).unwrap();
        for t in 0..UNVERIFIED_DROP_AFTER {
            store.host_failed("lucky", 23 + u64::from(t)).unwrap();
        }
        assert!(ids(&store.hosts(10).unwrap()).contains(&"lucky"));
    }

    #[test]
    fn unverified_hosts_are_bounded_and_never_push_verified_ones_out() {
        let (_dir, store) = fresh();
        // A flood of names: only the MAX_UNVERIFIED_HOSTS most recently heard of stay.
        for i in 0..(MAX_UNVERIFIED_HOSTS as u64 + 50) {
            store
                .learn_host(&format!("fake{i:03}"), &[], None, i)
                .unwrap();
        }
        let all = store.hosts(usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_UNVERIFIED_HOSTS);
        assert_eq!(all[0].peer_id, "fake081");
        assert_eq!(all[MAX_UNVERIFIED_HOSTS - 1].peer_id, "fake050");
        // Names heard in the same second as every other: the newest one stays.
        store.learn_host("tie", &[], None, 81).unwrap();
        assert!(ids(&store.hosts(usize::MAX).unwrap()).contains(&"tie"));
        // A full cache of verified hosts: unverified ones go first, and a newcomer that is
        // only heard of cannot take a verified host's place.
        let (_dir, store) = fresh();
        store.learn_host("rumour", &[], None, 1_000).unwrap();
        for i in 0..MAX_HOSTS as u64 {
            store
                .record_host(&format!("real{i:03}"), &[], None, None, i)
                .unwrap();
        }
        let all = store.hosts(usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_HOSTS);
        assert!(all.iter().all(|h| h.verified));
        store.learn_host("newcomer", &[], None, 2_000).unwrap();
        let all = store.hosts(usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_HOSTS);
        assert!(all.iter().all(|h| h.verified), "{:?}", ids(&all));
        assert!(ids(&all).contains(&"real000"));
    }
}
