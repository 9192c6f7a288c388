//! Live superpeers, as they announce themselves, for bootstrap lists. Entries expire unless
//! refreshed; the table is bounded. This is not a presence table: it holds superpeers only,
//! never users' status.
//!
//! A bootstrap list decides which superpeers a new leaf tries first, so the registry trusts
//! nothing an announcement says about itself (issue 11, item 2: one account announced four
//! fake superpeers claiming no load and unlimited capacity, and a fresh leaf picked two of
//! them):
//!
//! - **One entry per account.** Entries are keyed by the user name of the verified
//!   certificate. An announcement from another device of the same account *replaces* the
//!   entry (it is not refused): a seed moved to a new machine is listed at once instead of
//!   after the old entry's TTL, and an account still gets one slot however many devices it
//!   runs. Two devices of one account that are both superpeers take turns in that slot.
//! - **Listed only once reached back.** A new entry, or one whose addresses changed, is
//!   checked by a dial-back ([`DialBack`], run by [`crate::dialback`]): the login server
//!   connects to each announced address expecting the announcer's peer id (which Noise
//!   proves). Only the addresses that answered are listed, and an entry none of whose
//!   addresses answered is not listed at all. A refresh with the same addresses keeps what
//!   was proved; the proof is renewed every `reverify` and an unreachable entry is tried
//!   again after `retry_unreached`.
//! - **No ranking by claims.** A list is a uniformly random sample of the listed entries.
//!   `leaves` and `capacity` stay on the wire for compatibility, clamped to
//!   [`MAX_CAPACITY`]: leaves learn a superpeer's real load from its attach answers (a full
//!   one refuses with `Full` and names others).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use natter_proto::UserName;
use natter_proto::limits::MAX_BOOTSTRAP_SUPERPEERS;
use natter_proto::login::{SuperpeerInfo, Supply};
use rand::seq::{IteratorRandom as _, SliceRandom as _};

/// The largest leaf capacity a listed superpeer is shown with (and `leaves` never exceeds
/// `capacity`). Ten times the node's default `max_leaves` (1,000): anything above is a
/// misconfiguration or a lie, and nothing may advertise `u32::MAX`.
pub const MAX_CAPACITY: u32 = 10_000;

/// A dial-back the registry wants run: reach `peer` on each of `addrs` and report which
/// answered ([`Registry::reached`], [`Registry::finished`]). `generation` ties the report
/// to this announcement: a report for an entry that changed since is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialBack {
    pub account: UserName,
    pub peer: PeerId,
    pub generation: u64,
    /// Plausible addresses only (see [`crate::dialback::plausible`]), without `/p2p/`.
    pub addrs: Vec<Multiaddr>,
}

/// The table holds `max_entries` live accounts already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the superpeer table is full")]
pub struct Full;

/// When an entry is checked again although its addresses did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recheck {
    /// An entry none of whose addresses answered is tried again at a refresh this long after
    /// its last check.
    pub retry_unreached: Duration,
    /// A listed entry's proof is renewed at a refresh this long after its last check (it
    /// stays listed meanwhile).
    pub reverify: Duration,
    /// A dial-back that reported nothing for this long is taken as lost and handed out again.
    pub stale: Duration,
}

impl Default for Recheck {
    fn default() -> Self {
        Self {
            retry_unreached: Duration::from_secs(60),
            reverify: Duration::from_secs(30 * 60),
            stale: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Handed out at this time, no result yet.
    Running(Instant),
    /// Could not be started (dial-backs at their limit): hand it out at the next refresh.
    Waiting,
    /// Last result at this time.
    Done(Instant),
}

#[derive(Debug, Clone)]
struct Entry {
    peer: PeerId,
    /// Plausible announced addresses, in announced order.
    addrs: Vec<Multiaddr>,
    /// Those that answered the latest dial-back (or, while one runs, the previous one or this
    /// one): what is listed. Empty: not listed.
    reached: Vec<Multiaddr>,
    check: Check,
    generation: u64,
    leaves: u32,
    capacity: u32,
    expires: Instant,
}

impl Entry {
    fn listed(&self, now: Instant) -> bool {
        self.expires > now && !self.reached.is_empty()
    }

    fn job(&self, account: &UserName) -> DialBack {
        DialBack {
            account: account.clone(),
            peer: self.peer,
            generation: self.generation,
            addrs: self.addrs.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Registry {
    ttl: Duration,
    max_entries: usize,
    recheck: Recheck,
    next_generation: u64,
    entries: HashMap<UserName, Entry>,
}

fn same_set(a: &[Multiaddr], b: &[Multiaddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

impl Registry {
    pub fn new(ttl: Duration, max_entries: usize, recheck: Recheck) -> Self {
        Self {
            ttl,
            max_entries,
            recheck,
            next_generation: 0,
            entries: HashMap::new(),
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Records an announcement by `peer`, a device of `account`, of `addrs` (plausible
    /// addresses, at least one). Returns the dial-back to run, if this announcement needs
    /// one: a new entry, another device of the account, changed addresses, or a recheck
    /// that is due. `leaves` and `capacity` are clamped (see [`MAX_CAPACITY`]).
    pub fn announce(
        &mut self,
        account: &UserName,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        (leaves, capacity): (u32, u32),
        now: Instant,
    ) -> Result<Option<DialBack>, Full> {
        let capacity = capacity.min(MAX_CAPACITY);
        let leaves = leaves.min(capacity);
        let expires = now + self.ttl;
        let recheck = self.recheck;
        if let Some(entry) = self.entries.get_mut(account)
            && entry.peer == peer
            && entry.expires > now
        {
            entry.leaves = leaves;
            entry.capacity = capacity;
            entry.expires = expires;
            if !same_set(&entry.addrs, &addrs) {
                // Addresses already proved and still announced stay listed while the new set
                // is checked.
                entry.reached.retain(|a| addrs.contains(a));
                entry.addrs = addrs;
                self.next_generation += 1;
                entry.generation = self.next_generation;
                entry.check = Check::Running(now);
                return Ok(Some(entry.job(account)));
            }
            let due = match entry.check {
                Check::Waiting => true,
                Check::Running(since) => now.saturating_duration_since(since) >= recheck.stale,
                Check::Done(at) => {
                    let after = if entry.reached.is_empty() {
                        recheck.retry_unreached
                    } else {
                        recheck.reverify
                    };
                    now.saturating_duration_since(at) >= after
                }
            };
            if !due {
                return Ok(None);
            }
            entry.check = Check::Running(now);
            return Ok(Some(entry.job(account)));
        }
        if !self.entries.contains_key(account) && self.entries.len() >= self.max_entries {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.max_entries {
                return Err(Full);
            }
        }
        if let Some(old) = self.entries.get(account)
            && old.peer != peer
            && old.expires > now
        {
            tracing::info!(user = %account, old = %old.peer, new = %peer,
                "another device of the account announces: it replaces the listed superpeer");
        }
        let entry = Entry {
            peer,
            addrs,
            reached: Vec::new(),
            check: Check::Running(now),
            generation: self.generation(),
            leaves,
            capacity,
            expires,
        };
        let job = entry.job(account);
        self.entries.insert(account.clone(), entry);
        Ok(Some(job))
    }

    fn current(&mut self, job: &DialBack) -> Option<&mut Entry> {
        self.entries
            .get_mut(&job.account)
            .filter(|e| e.generation == job.generation && e.peer == job.peer)
    }

    /// `addr` of `job` answered with the right peer id: listed from now on. `true` if the
    /// entry became listed by it.
    pub fn reached(&mut self, job: &DialBack, addr: &Multiaddr) -> bool {
        let Some(entry) = self.current(job) else {
            return false;
        };
        if !entry.addrs.contains(addr) || entry.reached.contains(addr) {
            return false;
        }
        let was_listed = !entry.reached.is_empty();
        let mut reached = std::mem::take(&mut entry.reached);
        reached.push(addr.clone());
        // Listed in announced order.
        entry.reached = entry
            .addrs
            .iter()
            .filter(|a| reached.contains(a))
            .cloned()
            .collect();
        !was_listed
    }

    /// `job` is over: `reached` (of its addresses) answered, the others did not and are not
    /// listed. `None` if the entry changed since (the result is stale and ignored), else
    /// whether the entry is listed.
    pub fn finished(
        &mut self,
        job: &DialBack,
        reached: &[Multiaddr],
        now: Instant,
    ) -> Option<bool> {
        let entry = self.current(job)?;
        entry.reached = entry
            .addrs
            .iter()
            .filter(|a| reached.contains(a))
            .cloned()
            .collect();
        entry.check = Check::Done(now);
        Some(!entry.reached.is_empty())
    }

    /// `job` could not be started: it is handed out again at the entry's next refresh.
    pub fn dropped(&mut self, job: &DialBack) {
        if let Some(entry) = self.current(job) {
            entry.check = Check::Waiting;
        }
    }

    /// Forgets the entry of `peer` (its certificate no longer holds). By peer, never by the
    /// name a certificate claims: a refused certificate proves no name.
    pub fn remove(&mut self, peer: &PeerId) {
        self.entries.retain(|_, e| e.peer != *peer);
    }

    /// Up to [`MAX_BOOTSTRAP_SUPERPEERS`] listed superpeers (live and reached back), a
    /// uniformly random sample in random order, excluding `except` (a superpeer need not be
    /// told about itself). Random rather than least loaded first: the load is the
    /// superpeers' own claim, and leaves arriving together spread over the superpeers.
    pub fn bootstrap(&self, now: Instant, except: Option<&PeerId>) -> Vec<SuperpeerInfo> {
        let mut rng = rand::rng();
        let mut sample = self
            .entries
            .values()
            .filter(|e| e.listed(now) && Some(&e.peer) != except)
            .sample(&mut rng, MAX_BOOTSTRAP_SUPERPEERS);
        // The reservoir's order is not random by itself.
        sample.shuffle(&mut rng);
        sample
            .into_iter()
            .map(|e| SuperpeerInfo {
                peer_id: e.peer.to_string(),
                addrs: e.reached.iter().map(|a| a.to_string()).collect(),
                leaves: e.leaves,
                capacity: e.capacity,
            })
            .collect()
    }

    /// Is `peer` one bootstrap lists are drawn from?
    pub fn is_listed(&self, peer: &PeerId, now: Instant) -> bool {
        self.entries
            .values()
            .any(|e| e.peer == *peer && e.listed(now))
    }

    /// Superpeers bootstrap lists are drawn from: live and reached back.
    pub fn listed_count(&self, now: Instant) -> usize {
        self.entries.values().filter(|e| e.listed(now)).count()
    }

    /// The listed superpeers, and new ones whose first dial-back is under way, with their
    /// claimed load, summed: what nodes decide promotion by need on. A superpeer being
    /// checked counts already, so that nodes asking meanwhile do not all promote too (one
    /// entry per account: a hostile account adds one at most). One pass over the entries.
    pub fn supply(&self, now: Instant) -> Supply {
        self.entries
            .values()
            .filter(|e| {
                e.listed(now)
                    || (e.expires > now
                        && e.reached.is_empty()
                        && matches!(e.check, Check::Running(_) | Check::Waiting))
            })
            .fold(Supply::default(), |s, e| Supply {
                superpeers: s.superpeers.saturating_add(1),
                leaves: s.leaves + u64::from(e.leaves),
                capacity: s.capacity + u64::from(e.capacity),
            })
    }
}

#[cfg(test)]
mod tests;
