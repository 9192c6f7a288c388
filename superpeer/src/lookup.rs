//! A superpeer's lookups as a state machine: cache → directory (Kademlia GET) → liveness at
//! the record's home superpeer → answer.
//!
//! It decides; the node carries out its [`LookupAction`]s (a DHT query, asking a home
//! superpeer, answering whoever asked) and feeds the results back. No I/O and no clock of its
//! own: the caller passes the time, so it is tested without sockets.
//!
//! - The freshest record wins, whoever answers first: once a valid record is in, the lookup
//!   gathers for [`GATHER`] more (or until [`ENOUGH`] valid records are in, or the query
//!   ends), then the valid record with the highest sequence answers and the DHT query is
//!   finished early (a dead peer further in the query would cost a dial timeout). A directory
//!   node that replays an old record, however validly signed, loses to any replica that holds
//!   the newer one and answers within the window.
//! - A record only reads as live when its lease runs and its home superpeer confirms that the
//!   device is attached there, so a crashed user reads offline within the lease.
//! - At most [`MAX_LOOKUPS`] run at once; answers are cached briefly, so a burst of lookups for
//!   one user costs one query.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use natter_proto::presence::directory_key;
use natter_proto::{IssuerKey, PresenceRecord, UserName};

use crate::directory::{LookupCache, best_record};

/// Lookups in progress at once on one superpeer; more are refused as busy.
pub const MAX_LOOKUPS: usize = 4096;
/// How long an answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(3);
/// How long a lookup keeps gathering answers after its first valid record.
pub const GATHER: Duration = Duration::from_millis(200);
/// Valid records that end the gathering at once.
pub const ENOUGH: usize = 3;

/// Identifies one lookup in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupId(pub u64);

/// What the lookups ask of the node. `R` is whoever asked (a leaf's request, or the node
/// itself).
#[derive(Debug)]
pub enum LookupAction<R> {
    /// Start a Kademlia GET for `key`; feed its values to [`Lookups::found`] and its end to
    /// [`Lookups::query_done`].
    Query { id: LookupId, key: Vec<u8> },
    /// Stop that GET: the lookup has its answer.
    Finish(LookupId),
    /// Ask `home` whether `device` is attached there; answer with [`Lookups::liveness`].
    AskHome {
        id: LookupId,
        home: PeerId,
        device: PeerId,
    },
    /// The lookup is over: `record` (if any) and whether its home confirmed the device.
    Answer {
        requester: R,
        name: UserName,
        record: Option<PresenceRecord>,
        confirmed: bool,
    },
}

/// Why a lookup could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupRefused {
    #[error("this superpeer is busy: {0} lookups are running")]
    Busy(usize),
}

#[derive(Debug)]
struct Lookup<R> {
    name: UserName,
    requester: R,
    values: Vec<Vec<u8>>,
    record: Option<PresenceRecord>,
    /// Valid records among `values`.
    valid: usize,
    /// Set by the first valid record: when the lookup stops gathering.
    gather_until: Option<Instant>,
    /// Waiting for the home superpeer's answer (the query is over).
    asking_home: bool,
}

impl<R> Lookup<R> {
    /// Keeps one answer (bounded: a query's answers are; see the caller's query).
    fn add(&mut self, value: Vec<u8>, issuer: &IssuerKey, now_unix: u64, now: Instant) {
        let valid = PresenceRecord::from_json(&value)
            .is_ok_and(|r| r.username() == &self.name && r.verify(issuer, now_unix).is_ok());
        if valid {
            self.valid += 1;
            self.gather_until.get_or_insert(now + GATHER);
        }
        self.values.push(value);
    }
}

/// A superpeer's lookups. See the module docs.
#[derive(Debug)]
pub struct Lookups<R> {
    me: PeerId,
    issuer: IssuerKey,
    cache: LookupCache,
    running: HashMap<LookupId, Lookup<R>>,
    next: u64,
    actions: VecDeque<LookupAction<R>>,
    /// Lookups started, cached answers included (an operator's counter).
    pub started: u64,
}

impl<R> Lookups<R> {
    /// `me` is this superpeer; `issuer` the key every record's certificate must verify with.
    pub fn new(me: PeerId, issuer: IssuerKey) -> Self {
        Self {
            me,
            issuer,
            cache: LookupCache::new(CACHE_TTL, 10_000),
            running: HashMap::new(),
            next: 0,
            actions: VecDeque::new(),
            started: 0,
        }
    }

    /// The next thing to do, in order.
    pub fn next_action(&mut self) -> Option<LookupAction<R>> {
        self.actions.pop_front()
    }

    /// Lookups in progress.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// A newer record for `name` passed through this superpeer: do not answer from the cache.
    pub fn invalidate(&mut self, name: &UserName) {
        self.cache.invalidate(name);
    }

    /// Looks `name` up for `requester`. `local` is the value this superpeer stores under the
    /// name's key, if any. A fresh cached answer is given at once. Refused (the requester
    /// handed back) when too many lookups run.
    pub fn start(
        &mut self,
        name: UserName,
        requester: R,
        local: Option<Vec<u8>>,
        now_unix: u64,
        now: Instant,
    ) -> Result<(), (LookupRefused, R)> {
        // A cached record whose lease ended meanwhile is no answer any more.
        let cached = self
            .cache
            .get(&name, now)
            .filter(|(record, _)| record.as_ref().is_none_or(|r| now_unix < r.body.expires_at));
        if let Some((record, confirmed)) = cached {
            self.started += 1;
            self.actions.push_back(LookupAction::Answer {
                requester,
                name,
                record,
                confirmed,
            });
            return Ok(());
        }
        if self.running.len() >= MAX_LOOKUPS {
            return Err((LookupRefused::Busy(self.running.len()), requester));
        }
        self.started += 1;
        self.next += 1;
        let id = LookupId(self.next);
        let key = directory_key(&name);
        let mut lookup = Lookup {
            name,
            requester,
            values: vec![],
            record: None,
            valid: 0,
            gather_until: None,
            asking_home: false,
        };
        // The local copy counts as one answer: it may be a stale replica too.
        if let Some(local) = local {
            lookup.add(local, &self.issuer, now_unix, now);
        }
        self.running.insert(id, lookup);
        self.actions.push_back(LookupAction::Query { id, key });
        Ok(())
    }

    /// When the next gathering window ends, if any lookup is gathering: call
    /// [`Lookups::gathered`] then.
    pub fn deadline(&self) -> Option<Instant> {
        self.running
            .values()
            .filter(|l| !l.asking_home)
            .filter_map(|l| l.gather_until)
            .min()
    }

    /// Time passes: lookups whose gathering window is over answer with the best they have.
    pub fn gathered(
        &mut self,
        now_unix: u64,
        attached_here: impl Fn(&PeerId) -> bool,
        now: Instant,
    ) {
        let over: Vec<LookupId> = self
            .running
            .iter()
            .filter(|(_, l)| !l.asking_home && l.gather_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            self.actions.push_back(LookupAction::Finish(id));
            self.resolve(id, now_unix, &attached_here, now);
        }
    }

    /// A value the query found. The first valid record opens the gathering window;
    /// [`ENOUGH`] of them end it at once.
    pub fn found(
        &mut self,
        id: LookupId,
        value: Vec<u8>,
        now_unix: u64,
        attached_here: impl Fn(&PeerId) -> bool,
        now: Instant,
    ) {
        let Some(l) = self.running.get_mut(&id).filter(|l| !l.asking_home) else {
            return;
        };
        l.add(value, &self.issuer, now_unix, now);
        if l.valid >= ENOUGH {
            self.actions.push_back(LookupAction::Finish(id));
            self.resolve(id, now_unix, attached_here, now);
        }
    }

    /// The query ended (all answers in, or none).
    pub fn query_done(
        &mut self,
        id: LookupId,
        now_unix: u64,
        attached_here: impl Fn(&PeerId) -> bool,
        now: Instant,
    ) {
        if self.running.get(&id).is_some_and(|l| !l.asking_home) {
            self.resolve(id, now_unix, attached_here, now);
        }
    }

    /// The home superpeer's answer (`None`: it could not be asked).
    pub fn liveness(&mut self, id: LookupId, attached: Option<bool>, now: Instant) {
        if self.running.get(&id).is_some_and(|l| l.asking_home) {
            self.finish(id, attached.unwrap_or(false), now);
        }
    }

    /// All answers are in: the best record, then its liveness.
    fn resolve(
        &mut self,
        id: LookupId,
        now_unix: u64,
        attached_here: impl Fn(&PeerId) -> bool,
        now: Instant,
    ) {
        let Some(l) = self.running.get_mut(&id) else {
            return;
        };
        let record = best_record(
            &l.name,
            l.values.iter().map(Vec::as_slice),
            &self.issuer,
            now_unix,
        );
        l.record = record.clone();
        let Some(record) = record else {
            return self.finish(id, false, now);
        };
        if !record.is_live(now_unix) {
            return self.finish(id, false, now);
        }
        let device = record.body.cert.peer_id();
        let home = record
            .body
            .home
            .as_deref()
            .and_then(|h| h.parse::<PeerId>().ok());
        match home {
            Some(home) if home == self.me => {
                let attached = attached_here(&device) || device == self.me;
                self.finish(id, attached, now);
            }
            Some(home) => {
                l.asking_home = true;
                self.actions
                    .push_back(LookupAction::AskHome { id, home, device });
            }
            None => self.finish(id, false, now),
        }
    }

    fn finish(&mut self, id: LookupId, confirmed: bool, now: Instant) {
        let Some(l) = self.running.remove(&id) else {
            return;
        };
        self.cache
            .put(l.name.clone(), l.record.clone(), confirmed, now);
        self.actions.push_back(LookupAction::Answer {
            requester: l.requester,
            name: l.name,
            record: l.record,
            confirmed,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use natter_proto::IssuerSigningKey;

    use super::*;
    use crate::test_support::{NOW, issuer, peer, record_by};

    /// `name`'s record (device key from `seed`), sequence `seq`, at home on `home`, as stored.
    fn record(name: &str, seed: u8, seq: u64, home: PeerId, signer: &IssuerSigningKey) -> Vec<u8> {
        record_by(name, seed, seq, Some(home), signer).to_json()
    }

    fn drain(l: &mut Lookups<u32>) -> Vec<LookupAction<u32>> {
        std::iter::from_fn(|| l.next_action()).collect()
    }

    fn bob() -> UserName {
        UserName::parse("bob").unwrap()
    }

    #[test]
    fn a_valid_record_ends_the_query_and_the_home_is_asked() {
        let me = peer(9);
        let home = peer(8);
        let mut l = Lookups::new(me, issuer().public());
        let t = Instant::now();
        l.start(bob(), 7, None, NOW, t).unwrap();
        let Some(LookupAction::Query { id, key }) = l.next_action() else {
            panic!("a query first");
        };
        assert_eq!(key, directory_key(&bob()));
        // Garbage and a forged record (another issuer) do not end it.
        l.found(id, b"garbage".to_vec(), NOW, |_| false, t);
        l.found(
            id,
            record("bob", 2, 5, home, &IssuerSigningKey::from_bytes(&[2; 32])),
            NOW,
            |_| false,
            t,
        );
        assert!(drain(&mut l).is_empty());
        l.found(id, record("bob", 2, 3, home, &issuer()), NOW, |_| false, t);
        // A valid record opens the gathering window; it answers when the window ends.
        assert!(drain(&mut l).is_empty());
        assert_eq!(l.deadline(), Some(t + GATHER));
        l.gathered(NOW, |_| false, t + GATHER - Duration::from_millis(1));
        assert!(drain(&mut l).is_empty());
        l.gathered(NOW, |_| false, t + GATHER);
        let actions = drain(&mut l);
        assert!(
            matches!(actions[0], LookupAction::Finish(i) if i == id),
            "{actions:?}"
        );
        let LookupAction::AskHome {
            home: asked,
            device,
            ..
        } = &actions[1]
        else {
            panic!("the home is asked: {actions:?}");
        };
        assert_eq!((*asked, *device), (home, peer(2)));
        l.liveness(id, Some(true), t);
        let LookupAction::Answer {
            requester,
            record,
            confirmed,
            ..
        } = l.next_action().unwrap()
        else {
            panic!("answered");
        };
        assert_eq!((requester, confirmed), (7, true));
        assert_eq!(record.unwrap().body.seq, 3);
        assert_eq!(l.running(), 0);
    }

    #[test]
    fn the_highest_valid_sequence_wins_and_answers_are_cached() {
        let me = peer(9);
        let mut l = Lookups::new(me, issuer().public());
        let t = Instant::now();
        // This superpeer is the home: no question to ask, the leaf table answers.
        let local = record("bob", 2, 4, me, &issuer());
        l.start(bob(), 1, Some(local), NOW, t).unwrap();
        let Some(LookupAction::Query { id, .. }) = l.next_action() else {
            panic!("a query first");
        };
        l.query_done(id, NOW, |p| *p == peer(2), t);
        let actions = drain(&mut l);
        assert!(
            matches!(&actions[..], [LookupAction::Answer { confirmed: true, record: Some(r), .. }] if r.body.seq == 4),
            "{actions:?}"
        );
        // Within the cache's life: answered at once, no query.
        l.start(bob(), 2, None, NOW, t + Duration::from_secs(2))
            .unwrap();
        assert!(matches!(
            drain(&mut l)[..],
            [LookupAction::Answer {
                requester: 2,
                confirmed: true,
                ..
            }]
        ));
        // After it, and after an invalidation: a query again.
        l.start(bob(), 3, None, NOW, t + CACHE_TTL).unwrap();
        assert!(matches!(drain(&mut l)[..], [LookupAction::Query { .. }]));
        assert_eq!(l.started, 3);
    }

    /// A directory node replays an old, validly signed record of bob's and answers first:
    /// the newer record that arrives within the window wins all the same.
    #[test]
    fn a_replayed_old_record_loses_to_a_newer_one_answering_later() {
        let me = peer(9);
        let home = peer(8);
        let mut l = Lookups::new(me, issuer().public());
        let t = Instant::now();
        l.start(bob(), 1, None, NOW, t).unwrap();
        let Some(LookupAction::Query { id, .. }) = l.next_action() else {
            panic!("a query first");
        };
        l.found(
            id,
            record("bob", 2, 100, home, &issuer()),
            NOW,
            |_| false,
            t,
        );
        assert!(drain(&mut l).is_empty(), "the first answer does not decide");
        let later = t + GATHER / 2;
        l.found(
            id,
            record("bob", 2, 200, home, &issuer()),
            NOW,
            |_| false,
            later,
        );
        l.gathered(NOW, |_| false, t + GATHER);
        drain(&mut l);
        l.liveness(id, Some(true), t + GATHER);
        let Some(LookupAction::Answer { record, .. }) = l.next_action() else {
            panic!("answered");
        };
        assert_eq!(record.unwrap().body.seq, 200);
    }

    #[test]
    fn enough_valid_answers_end_the_gathering_at_once() {
        let me = peer(9);
        let home = peer(8);
        let mut l = Lookups::new(me, issuer().public());
        let t = Instant::now();
        // The local copy counts as one.
        let local = record("bob", 2, 5, home, &issuer());
        l.start(bob(), 1, Some(local), NOW, t).unwrap();
        let Some(LookupAction::Query { id, .. }) = l.next_action() else {
            panic!("a query first");
        };
        l.found(id, record("bob", 2, 7, home, &issuer()), NOW, |_| false, t);
        assert!(drain(&mut l).is_empty());
        l.found(id, record("bob", 2, 6, home, &issuer()), NOW, |_| false, t);
        let actions = drain(&mut l);
        assert!(
            matches!(actions[0], LookupAction::Finish(i) if i == id),
            "{actions:?}"
        );
        assert!(
            matches!(actions[1], LookupAction::AskHome { .. }),
            "{actions:?}"
        );
        l.liveness(id, Some(true), t);
        let Some(LookupAction::Answer { record, .. }) = l.next_action() else {
            panic!("answered");
        };
        assert_eq!(record.unwrap().body.seq, 7);
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn no_record_and_dead_homes_read_unconfirmed() {
        let me = peer(9);
        let mut l = Lookups::new(me, issuer().public());
        let t = Instant::now();
        l.start(bob(), 1, None, NOW, t).unwrap();
        let Some(LookupAction::Query { id, .. }) = l.next_action() else {
            panic!();
        };
        l.query_done(id, NOW, |_| false, t);
        assert!(matches!(
            drain(&mut l)[..],
            [LookupAction::Answer {
                record: None,
                confirmed: false,
                ..
            }]
        ));
        let carol = UserName::parse("carol").unwrap();
        l.start(carol, 2, None, NOW, t).unwrap();
        let Some(LookupAction::Query { id, .. }) = l.next_action() else {
            panic!();
        };
        l.found(
            id,
            record("carol", 3, 1, peer(8), &issuer()),
            NOW,
            |_| false,
            t,
        );
        l.query_done(id, NOW, |_| false, t);
        drain(&mut l);
        // The home could not be asked: offline, not online.
        l.liveness(id, None, t);
        assert!(matches!(
            drain(&mut l)[..],
            [LookupAction::Answer {
                record: Some(_),
                confirmed: false,
                ..
            }]
        ));
    }

    #[test]
    fn lookups_are_bounded() {
        let mut l = Lookups::new(peer(9), issuer().public());
        let t = Instant::now();
        for i in 0..MAX_LOOKUPS {
            let name = UserName::parse(&format!("user{i}")).unwrap();
            l.start(name, 0, None, NOW, t).unwrap();
        }
        assert_eq!(
            l.start(bob(), 0, None, NOW, t),
            Err((LookupRefused::Busy(MAX_LOOKUPS), 0))
        );
    }
}
