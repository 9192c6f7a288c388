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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn drain(a: &mut Attach) -> Vec<AttachAction> {
        std::iter::from_fn(|| a.next_action()).collect()
    }

    fn first(_: usize) -> usize {
        0
    }

    const NONE: [PeerId; 0] = [];

    #[test]
    fn the_pick_is_among_the_best_tier_left_only() {
        let me = PeerId::random();
        let (reached, listed, rumour) = (PeerId::random(), PeerId::random(), PeerId::random());
        let ranked = [
            Ranked {
                peer: reached,
                tier: 0,
            },
            Ranked {
                peer: listed,
                tier: 1,
            },
            Ranked {
                peer: rumour,
                tier: 2,
            },
        ];
        let last = |n: usize| n - 1;
        let mut s = Attach::default();
        s.bootstrap_asked(Instant::now());
        s.tick(ranked, me, Instant::now(), last);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(reached)]);
        s.failed(reached, Instant::now());
        drain(&mut s);
        // The one the login server lists comes before the rumour, whatever the pick.
        s.tick(ranked, me, Instant::now(), last);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(listed)]);
        s.failed(listed, Instant::now());
        drain(&mut s);
        s.tick(ranked, me, Instant::now(), last);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(rumour)]);
        // Equals are picked among.
        let (x, y) = (PeerId::random(), PeerId::random());
        let mut s = Attach::default();
        s.tick([x, y], me, Instant::now(), last);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(y)]);
    }

    #[tokio::test(start_paused = true)]
    async fn attaches_primary_then_standby_and_fails_over() {
        let me = PeerId::random();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = Attach::default();
        s.tick([a, b, c], me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(a)]);
        // One attempt at a time.
        s.tick([a, b, c], me, Instant::now(), first);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.attached(a), Some(Slot::Primary));
        s.tick([a, b, c], me, Instant::now(), first);
        assert_eq!(
            drain(&mut s),
            vec![
                AttachAction::Attached(a, Slot::Primary),
                AttachAction::Attach(b)
            ]
        );
        assert_eq!(s.attached(b), Some(Slot::Standby));
        drain(&mut s);
        // The primary dies: the standby takes over at once, and a new standby is sought
        // among the others (the lost one is backed off).
        s.lost(a, Instant::now());
        assert_eq!((s.primary(), s.standby()), (Some(b), None));
        s.tick([a, b, c], me, Instant::now(), first);
        assert_eq!(
            drain(&mut s),
            vec![
                AttachAction::PrimaryChanged {
                    lost: a,
                    new: Some(b)
                },
                AttachAction::Attach(c)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_skipped_for_a_minute_failures_back_off_doubling() {
        let me = PeerId::random();
        let a = PeerId::random();
        let mut s = Attach::default();
        s.bootstrap_asked(Instant::now());
        s.tick([a], me, Instant::now(), first);
        drain(&mut s);
        s.refused(a, Instant::now());
        // Unattached, and the only candidate is skipped: it is tried again all the same
        // rather than staying unreachable... after its refusal it is the one whose wait ends
        // first.
        s.tick([a], me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(a)]);
        // Failures: 1 s, then 2 s, then 4 s before the candidate list offers it again.
        let b = PeerId::random();
        let mut s = Attach::default();
        s.attached(a);
        drain(&mut s);
        s.bootstrap_asked(Instant::now());
        for wait in [1u64, 2, 4] {
            s.tick([b], me, Instant::now(), first);
            assert_eq!(drain(&mut s), vec![AttachAction::Attach(b)]);
            s.failed(b, Instant::now());
            assert_eq!(drain(&mut s), vec![AttachAction::HostFailed(b)]);
            tokio::time::advance(Duration::from_millis(wait * 1000 - 1)).await;
            s.tick([b], me, Instant::now(), first);
            assert!(
                drain(&mut s).is_empty(),
                "{b} offered again before {wait} s"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_without_answer_times_out_and_nothing_left_asks_the_login_server() {
        let me = PeerId::random();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = Attach::default();
        s.tick([a, b], me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(a)]);
        tokio::time::advance(ATTACH_TIMEOUT - Duration::from_millis(1)).await;
        s.tick([a, b], me, Instant::now(), |_| 1);
        assert!(drain(&mut s).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        s.tick([a, b], me, Instant::now(), |_| 1);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(b)]);
        // No candidates at all: a fresh bootstrap list, at most every 10 s (±20%).
        let mut s = Attach::default();
        s.tick(NONE, me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Bootstrap]);
        tokio::time::advance(Duration::from_secs(7)).await;
        s.tick(NONE, me, Instant::now(), first);
        assert!(drain(&mut s).is_empty());
        tokio::time::advance(Duration::from_secs(6)).await;
        s.tick(NONE, me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Bootstrap]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_superpeer_that_keeps_failing_does_not_stop_bootstrap_requests() {
        // Its only superpeer came back on another port: retrying the old address alone would
        // never reach it; the login server's list has the new one.
        let me = PeerId::random();
        let a = PeerId::random();
        let mut s = Attach::default();
        s.bootstrap_asked(Instant::now());
        let mut asked = 0;
        for _ in 0..80 {
            s.tick([a], me, Instant::now(), first);
            for action in drain(&mut s) {
                match action {
                    AttachAction::Attach(p) => s.failed(p, Instant::now()),
                    AttachAction::Bootstrap => asked += 1,
                    _ => {}
                }
            }
            drain(&mut s);
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // 40 s unattached: a fresh list about every 10 s, then backing off.
        assert!((3..=4).contains(&asked), "asked {asked} times in 40 s");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_attempts_ask_the_login_server_again_though_candidates_are_left() {
        // A poisoned list: more names than can be tried before the first backs off, none of
        // them answering. Attempts alone would go round them for ever.
        let me = PeerId::random();
        let fakes: Vec<PeerId> = (0..40).map(|_| PeerId::random()).collect();
        let mut s = Attach::default();
        s.bootstrap_asked(Instant::now());
        let start = Instant::now();
        let mut asked = Vec::new();
        for _ in 0..30 {
            s.tick(fakes.iter().copied(), me, Instant::now(), first);
            for action in drain(&mut s) {
                match action {
                    AttachAction::Attach(p) => s.failed(p, Instant::now()),
                    AttachAction::Bootstrap => asked.push(Instant::now() - start),
                    _ => {}
                }
            }
            drain(&mut s);
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // Once FAILURES_BEFORE_BOOTSTRAP attempts failed, as soon as the last list is 10 s
        // (±20%) old; not before, and once only in 15 s.
        assert_eq!(asked.len(), 1, "asked at {asked:?}");
        assert!(
            (BOOTSTRAP_EVERY * 4 / 5..=BOOTSTRAP_EVERY * 6 / 5 + Duration::from_millis(500))
                .contains(&asked[0]),
            "asked at {asked:?}"
        );
        // With a primary, failed standby attempts do not hurry the login server.
        let mut s = Attach::default();
        s.attached(PeerId::random());
        s.bootstrap_asked(Instant::now());
        for _ in 0..30 {
            s.tick(fakes.iter().copied(), me, Instant::now(), first);
            for action in drain(&mut s) {
                match action {
                    AttachAction::Attach(p) => s.failed(p, Instant::now()),
                    AttachAction::Bootstrap => panic!("asked with a primary and candidates left"),
                    _ => {}
                }
            }
            drain(&mut s);
            tokio::time::advance(Duration::from_millis(500)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_no_longer_listed_is_not_retried_while_it_backs_off() {
        // A name that failed out of the candidates (never reached, failed twice) is gone:
        // waiting out its backoff must not bring it back.
        let me = PeerId::random();
        let (gone, real) = (PeerId::random(), PeerId::random());
        let mut s = Attach::default();
        s.bootstrap_asked(Instant::now());
        s.tick([gone], me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(gone)]);
        s.failed(gone, Instant::now());
        drain(&mut s);
        s.tick(NONE, me, Instant::now(), first);
        assert!(drain(&mut s).is_empty());
        s.tick([real], me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(real)]);
    }

    /// Unattached with nothing to try, a node asks the login server less and less often, at
    /// times spread by its id; attaching resets the backoff. Before, every 10 s for ever.
    #[tokio::test(start_paused = true)]
    async fn bootstrap_requests_back_off_with_jitter_and_reset_on_attach() {
        let me = PeerId::random();
        let mut s = Attach::default();
        let start = Instant::now();
        let mut asked = Vec::new();
        for _ in 0..(600 * 2) {
            s.tick(NONE, me, Instant::now(), first);
            if drain(&mut s).contains(&AttachAction::Bootstrap) {
                asked.push((Instant::now() - start).as_secs_f64());
            }
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        let gaps: Vec<f64> = asked.windows(2).map(|w| w[1] - w[0]).collect();
        let bases = [10.0, 10.0, 20.0, 40.0, 80.0, 80.0];
        for (gap, base) in gaps.iter().zip(bases) {
            assert!(
                (base * 0.8..=base * 1.2 + 0.5).contains(gap),
                "gaps {gaps:?}"
            );
        }
        // 10 minutes: asked at about 10, 20, 30, 50, 90, 170, 250, 330, 410, 490, 570 s: 10
        // to 12 requests, not 60.
        assert!((10..=12).contains(&asked.len()), "asked at {asked:?}");
        // Two nodes started together do not keep asking together.
        let other = PeerId::random();
        let spread: Vec<Duration> = (1..5)
            .map(|r| bootstrap_every(r, false, me).abs_diff(bootstrap_every(r, false, other)))
            .collect();
        assert!(spread.iter().any(|d| *d > Duration::ZERO), "{spread:?}");
        // Attached: the backoff starts over.
        s.attached(PeerId::random());
        assert_eq!(s.bootstrap_rounds, 0);
    }

    #[test]
    fn clearing_hands_back_both_slots() {
        let mut s = Attach::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        s.attached(a);
        s.attached(b);
        assert_eq!(s.clear(), vec![a, b]);
        assert!(!s.holds(a) && !s.holds(b));
    }
}
