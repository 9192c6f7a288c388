//! A leaf's attachment as a state machine: a primary and a standby superpeer, which candidate
//! to try next, how long to skip one that refused or failed, and failover when one is lost.
//!
//! It decides; the daemon carries out its [`AttachAction`]s (requests, relay reservations,
//! host-cache writes, progress lines). No I/O and no clock of its own (the time is passed in,
//! tokio's `Instant` so tests run on paused time).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// How long an attach attempt may take before the next candidate is tried.
pub(crate) const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a superpeer that refused (or was full) is skipped.
pub(crate) const SKIP_AFTER_REFUSAL: Duration = Duration::from_secs(60);
/// Failed attempts in a row, while unattached, after which the login server is asked for a
/// fresh list even though candidates are left: the ones left may all be names that lead
/// nowhere (issue 11), and the login server's list is the way out.
pub(crate) const FAILURES_BEFORE_BOOTSTRAP: u32 = 3;
/// Least time between two bootstrap requests while unattached (twice that with a primary),
/// after the first three doubling with each request since the leaf last attached, up to 8
/// times that: 10, 10, 10, 20, 40, 80 s, each spread by ±20% ([`bootstrap_every`]). The
/// first three keep a new leaf's first half minute as quick as before: a network's first
/// superpeer may be listed only seconds after the leaf's login.
const BOOTSTRAP_EVERY: Duration = Duration::from_secs(10);
const BOOTSTRAP_MAX_DOUBLINGS: u32 = 3;

/// The wait before the next bootstrap request, after `rounds` of them since this node last
/// attached: backed off so that a network without superpeers is not a polling storm on the
/// login server, and spread by ±20% by the node's own id, so that nodes started together do
/// not ask together.
fn bootstrap_every(rounds: u32, attached: bool, me: PeerId) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let doublings = rounds.saturating_sub(2).min(BOOTSTRAP_MAX_DOUBLINGS);
    let base = BOOTSTRAP_EVERY * (1 << doublings) * if attached { 2 } else { 1 };
    let mut h = std::hash::DefaultHasher::new();
    (me, rounds).hash(&mut h);
    // 0.8 to 1.2 of the base, in thousandths.
    let spread = 800 + h.finish() % 401;
    base * u32::try_from(spread).unwrap_or(1000) / 1000
}
/// Among how many of the best candidates one is picked at random: leaves that start together
/// must not all pick the same superpeers. Only candidates of the best tier left are picked
/// among ([`Ranked`]): chance must not put a name heard second-hand before one the login
/// server lists.
const PICK_AMONG: usize = 4;

/// A candidate superpeer with its tier: lower is better, and within a tier they are equals
/// (see `candidates::Candidates::tiered`). A bare peer id is tier 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ranked {
    pub(crate) peer: PeerId,
    pub(crate) tier: u8,
}

impl From<PeerId> for Ranked {
    fn from(peer: PeerId) -> Self {
        Ranked { peer, tier: 0 }
    }
}

/// Which slot a superpeer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Primary,
    Standby,
}

impl Slot {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Slot::Primary => "primary",
            Slot::Standby => "standby",
        }
    }
}

/// What the attachment asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttachAction {
    /// Send an attach request to this superpeer; answer with [`Attach::attached`],
    /// [`Attach::refused`] or [`Attach::failed`].
    Attach(PeerId),
    /// Attached in this slot: reserve a relay slot there, remember the host.
    Attached(PeerId, Slot),
    /// Nothing left to try: ask the login server for a fresh bootstrap list.
    Bootstrap,
    /// The primary changed (`None`: there is none): publish the record through the new one.
    PrimaryChanged { lost: PeerId, new: Option<PeerId> },
    /// The standby is gone; another is being looked for.
    StandbyLost(PeerId),
    /// Remember in the host cache that this superpeer failed.
    HostFailed(PeerId),
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Attach {
    primary: Option<PeerId>,
    standby: Option<PeerId>,
    /// The attempt in flight, since when.
    attaching: Option<(PeerId, Instant)>,
    /// Superpeers not to try again before the given time: 60 s after a refusal, a backoff
    /// (1 s doubling to 30 s) after a lost connection or failed attach.
    skip_until: HashMap<PeerId, Instant>,
    failures: HashMap<PeerId, u32>,
    /// Attempts failed while unattached since the last bootstrap request.
    failed_since_bootstrap: u32,
    /// Bootstrap requests since this node last attached a primary: the backoff.
    bootstrap_rounds: u32,
    /// When the login server was last asked for a bootstrap list.
    last_bootstrap: Option<Instant>,
    actions: VecDeque<AttachAction>,
}

impl Attach {
    pub(crate) fn next_action(&mut self) -> Option<AttachAction> {
        self.actions.pop_front()
    }

    pub(crate) fn primary(&self) -> Option<PeerId> {
        self.primary
    }

    pub(crate) fn standby(&self) -> Option<PeerId> {
        self.standby
    }

    /// Is `peer` the primary or the standby?
    pub(crate) fn holds(&self, peer: PeerId) -> bool {
        self.primary == Some(peer) || self.standby == Some(peer)
    }

    /// The login server was asked for a bootstrap list (at start, or by renewal).
    pub(crate) fn bootstrap_asked(&mut self, now: Instant) {
        self.last_bootstrap = Some(now);
        self.failed_since_bootstrap = 0;
    }

    /// Drops both slots (the node became a superpeer): the ones it held, to detach from.
    pub(crate) fn clear(&mut self) -> Vec<PeerId> {
        self.attaching = None;
        [self.primary.take(), self.standby.take()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Time passes: with a slot free and no attempt in flight (or one timed out), try the
    /// next candidate. `candidates` are superpeers in order of preference, with their tiers
    /// (see `candidates::Candidates`); `pick` chooses an index below its argument (random in
    /// the daemon).
    pub(crate) fn tick(
        &mut self,
        candidates: impl IntoIterator<Item = impl Into<Ranked>>,
        me: PeerId,
        now: Instant,
        pick: impl FnOnce(usize) -> usize,
    ) {
        if self.primary.is_some() && self.standby.is_some() {
            return;
        }
        if let Some((_, started)) = self.attaching {
            if now.saturating_duration_since(started) < ATTACH_TIMEOUT {
                return;
            }
            // Its failure is counted when the network gives up on the request.
            self.attaching = None;
        }
        self.skip_until.retain(|_, until| *until > now);
        let candidates: Vec<Ranked> = candidates
            .into_iter()
            .map(Into::into)
            .filter(|c| c.peer != me)
            .collect();
        let mut open = candidates
            .iter()
            .filter(|c| !self.holds(c.peer) && !self.skip_until.contains_key(&c.peer))
            .peekable();
        let best = open.peek().map(|c| c.tier);
        let eligible: Vec<PeerId> = open
            .take_while(|c| Some(c.tier) == best)
            .take(PICK_AMONG)
            .map(|c| c.peer)
            .collect();
        let candidates: Vec<PeerId> = candidates.iter().map(|c| c.peer).collect();
        let mut next = (!eligible.is_empty()).then(|| eligible[pick(eligible.len())]);
        // A fresh bootstrap list (the superpeers known may have moved to new addresses, or
        // never existed) when no fresh candidate is left, or when unattached and attempts keep
        // failing; every 10 s when unattached, every 20 s when only the standby is missing.
        let stuck =
            self.primary.is_none() && self.failed_since_bootstrap >= FAILURES_BEFORE_BOOTSTRAP;
        if next.is_none() || stuck {
            let every = bootstrap_every(self.bootstrap_rounds, self.primary.is_some(), me);
            if self
                .last_bootstrap
                .is_none_or(|t| now.saturating_duration_since(t) > every)
            {
                self.bootstrap_asked(now);
                self.bootstrap_rounds = self.bootstrap_rounds.saturating_add(1);
                self.actions.push_back(AttachAction::Bootstrap);
            }
        }
        if next.is_none() && self.primary.is_none() {
            // Unattached and every candidate is waiting out a backoff: meanwhile, try the one
            // whose wait ends first rather than stay unreachable (one still a candidate: a
            // name that failed out is not tried again).
            next = self
                .skip_until
                .iter()
                .filter(|(p, _)| Some(**p) != self.standby && candidates.contains(p))
                .min_by_key(|(_, until)| **until)
                .map(|(p, _)| *p);
        }
        if let Some(peer) = next {
            self.attaching = Some((peer, now));
            self.actions.push_back(AttachAction::Attach(peer));
        }
    }

    fn attempt_over(&mut self, peer: PeerId) {
        if self.attaching.is_some_and(|(p, _)| p == peer) {
            self.attaching = None;
        }
    }

    /// `peer` admitted this leaf: it takes the free slot (primary first).
    pub(crate) fn attached(&mut self, peer: PeerId) -> Option<Slot> {
        self.attempt_over(peer);
        let slot = if self.primary.is_none() {
            self.primary = Some(peer);
            self.bootstrap_rounds = 0;
            Slot::Primary
        } else if self.standby.is_none() && self.primary != Some(peer) {
            self.standby = Some(peer);
            Slot::Standby
        } else {
            return None;
        };
        self.failures.remove(&peer);
        self.actions.push_back(AttachAction::Attached(peer, slot));
        Some(slot)
    }

    /// `peer` refused (invalid certificate, full): skip it for a minute.
    pub(crate) fn refused(&mut self, peer: PeerId, now: Instant) {
        self.attempt_over(peer);
        self.skip_until.insert(peer, now + SKIP_AFTER_REFUSAL);
    }

    /// The attempt failed (no answer, connection failed): back off; unattached, count it
    /// towards asking the login server again.
    pub(crate) fn failed(&mut self, peer: PeerId, now: Instant) {
        self.attempt_over(peer);
        self.back_off(peer, now);
        if self.primary.is_none() {
            self.failed_since_bootstrap = self.failed_since_bootstrap.saturating_add(1);
        }
        self.actions.push_back(AttachAction::HostFailed(peer));
    }

    /// The connection to `peer` is gone: if it held a slot, the standby takes over the
    /// primary's place (or the standby slot frees up).
    pub(crate) fn lost(&mut self, peer: PeerId, now: Instant) {
        if self.primary == Some(peer) {
            self.primary = self.standby.take();
            self.actions.push_back(AttachAction::PrimaryChanged {
                lost: peer,
                new: self.primary,
            });
        } else if self.standby == Some(peer) {
            self.standby = None;
            self.actions.push_back(AttachAction::StandbyLost(peer));
        } else {
            return;
        }
        self.back_off(peer, now);
        // The superpeers known may be few, and this one gone: when no other is left to try,
        // the login server's current list is asked for at once, not after the usual wait.
        self.last_bootstrap = None;
    }

    /// Skips `peer` for 1 s, doubling with each failure up to 30 s.
    fn back_off(&mut self, peer: PeerId, now: Instant) {
        let failures = self.failures.entry(peer).or_insert(0);
        let wait = Duration::from_secs(1 << (*failures).min(5)).min(Duration::from_secs(30));
        *failures += 1;
        self.skip_until.insert(peer, now + wait);
        // Bounded: only superpeers that failed recently are remembered.
        if self.failures.len() > 1024 {
            let skipping: Vec<PeerId> = self.skip_until.keys().copied().collect();
            self.failures.retain(|p, _| skipping.contains(p));
        }
    }
}

#[cfg(test)]
mod tests;
