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
mod tests;
