//! A superpeer's lookups as a state machine: cache → directory (Kademlia GET) → liveness at
//! the record's home superpeer → answer.
//!
//! It decides; the node carries out its [`LookupAction`]s (a DHT query, asking a home
//! superpeer, answering whoever asked) and feeds the results back. No I/O and no clock of its
//! own: the caller passes the time, so it is tested without sockets.
//!
//! - The freshest record of each device wins, whoever answers first: once a valid record is
//!   in, the lookup gathers for [`GATHER`] more (or until [`ENOUGH`] valid answers are in, or
//!   the query ends), then the answers are merged per device (the highest sequence of each)
//!   and the DHT query is finished early (a dead peer further in the query would cost a dial
//!   timeout). A directory node that replays an old record, however validly signed, loses to
//!   any replica that holds the newer one and answers within the window.
//! - A record only reads as live when its lease runs and its home superpeer confirms that the
//!   device is attached there, so a crashed device reads offline within the lease. The live
//!   devices are confirmed in order of availability, up to [`MAX_HOME_ASKS`], and the first
//!   confirmed one answers as the user's presence, the other devices beside it.
//! - At most [`MAX_LOOKUPS`] run at once; answers are cached briefly, so a burst of lookups for
//!   one user costs one query.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use natter_proto::presence::directory_key;
use natter_proto::{IssuerKey, PresenceRecord, UserName};

use natter_proto::DeviceRecords;

use crate::directory::{Answer, LookupCache};

/// Lookups in progress at once on one superpeer; more are refused as busy.
pub const MAX_LOOKUPS: usize = 4096;
/// How long an answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(3);
/// How long a lookup keeps gathering answers after its first valid record.
pub const GATHER: Duration = Duration::from_millis(200);
/// Valid records that end the gathering at once.
pub const ENOUGH: usize = 3;
/// Live devices of one user whose home superpeers a lookup asks, one after the other, until
/// one confirms its device.
pub const MAX_HOME_ASKS: usize = 3;

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
    /// The lookup is over: the most available device's `record` (if any), whether its home
    /// confirmed the device, and the user's other devices' records.
    Answer {
        requester: R,
        name: UserName,
        record: Option<PresenceRecord>,
        confirmed: bool,
        others: Vec<PresenceRecord>,
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
    /// The user's devices once the answers are in, the most available first.
    devices: Vec<PresenceRecord>,
    /// Devices still to confirm, by index in `devices`, and the one being asked.
    to_confirm: VecDeque<(usize, Confirm)>,
    asking: usize,
    /// Valid records among `values`.
    valid: usize,
    /// Set by the first valid record: when the lookup stops gathering.
    gather_until: Option<Instant>,
    /// Waiting for the home superpeer's answer (the query is over).
    asking_home: bool,
}

/// How a device's liveness is confirmed.
#[derive(Debug, Clone, Copy)]
enum Confirm {
    /// At home on this superpeer: attached here or not.
    Here(bool),
    /// Ask its home superpeer.
    Ask { home: PeerId, device: PeerId },
}

impl<R> Lookup<R> {
    /// Keeps one answer (bounded: a query's answers are; see the caller's query).
    fn add(&mut self, value: Vec<u8>, issuer: &IssuerKey, now_unix: u64, now: Instant) {
        let valid = DeviceRecords::from_json(&value).is_ok_and(|set| {
            set.records()
                .any(|r| r.username() == &self.name && r.verify(issuer, now_unix).is_ok())
        });
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
        let cached = self.cache.get(&name, now).filter(|a| {
            a.record
                .as_ref()
                .is_none_or(|r| now_unix < r.body.expires_at)
        });
        if let Some(answer) = cached {
            self.started += 1;
            self.actions.push_back(LookupAction::Answer {
                requester,
                name,
                record: answer.record,
                confirmed: answer.confirmed,
                others: answer.others,
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
            devices: vec![],
            to_confirm: VecDeque::new(),
            asking: 0,
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

    /// The home superpeer's answer (`None`: it could not be asked). Unconfirmed, the next
    /// live device is tried.
    pub fn liveness(&mut self, id: LookupId, attached: Option<bool>, now: Instant) {
        let Some(l) = self.running.get_mut(&id).filter(|l| l.asking_home) else {
            return;
        };
        if attached == Some(true) {
            let device = l.asking;
            return self.finish(id, Some(device), now);
        }
        l.asking_home = false;
        self.confirm_next(id, now);
    }

    /// All answers are in: the user's devices, most available first, then the liveness of
    /// the live ones in that order until one is confirmed.
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
        let devices = DeviceRecords::gather(
            &l.name,
            l.values.iter().map(Vec::as_slice),
            &self.issuer,
            now_unix,
        );
        l.devices = devices
            .by_availability(now_unix)
            .into_iter()
            .cloned()
            .collect();
        l.to_confirm = l
            .devices
            .iter()
            .enumerate()
            .take_while(|(_, r)| r.is_live(now_unix))
            .filter_map(|(i, record)| {
                let device = record.body.cert.peer_id();
                let home = record.body.home.as_deref()?.parse::<PeerId>().ok()?;
                let how = if home == self.me {
                    Confirm::Here(attached_here(&device) || device == self.me)
                } else {
                    Confirm::Ask { home, device }
                };
                Some((i, how))
            })
            .take(MAX_HOME_ASKS)
            .collect();
        self.confirm_next(id, now);
    }

    /// Confirms the next device in line, or answers unconfirmed when none is left.
    fn confirm_next(&mut self, id: LookupId, now: Instant) {
        let Some(l) = self.running.get_mut(&id) else {
            return;
        };
        while let Some((i, how)) = l.to_confirm.pop_front() {
            match how {
                Confirm::Here(true) => return self.finish(id, Some(i), now),
                Confirm::Here(false) => {}
                Confirm::Ask { home, device } => {
                    l.asking_home = true;
                    l.asking = i;
                    self.actions
                        .push_back(LookupAction::AskHome { id, home, device });
                    return;
                }
            }
        }
        self.finish(id, None, now);
    }

    /// Answers with device `confirmed` (confirmed by its home) or, if none, the most
    /// available device unconfirmed.
    fn finish(&mut self, id: LookupId, confirmed: Option<usize>, now: Instant) {
        let Some(mut l) = self.running.remove(&id) else {
            return;
        };
        let best = confirmed.unwrap_or(0);
        let record = (best < l.devices.len()).then(|| l.devices.remove(best));
        let answer = Answer {
            record,
            confirmed: confirmed.is_some(),
            others: l.devices,
        };
        self.cache.put(l.name.clone(), answer.clone(), now);
        self.actions.push_back(LookupAction::Answer {
            requester: l.requester,
            name: l.name,
            record: answer.record,
            confirmed: answer.confirmed,
            others: answer.others,
        });
    }
}

#[cfg(test)]
mod tests;
