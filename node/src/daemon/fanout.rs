//! The fan-out service: a delivered message on to the further devices, as a state machine.
//!
//! The outbox delivers a message once, to the recipient's most available device; that device's
//! ack makes it "delivered". The store then keeps a row per further device it must reach (the
//! recipient's other devices, and this user's own other devices, which keep a copy of what
//! this one sent; `store/fanout.rs`). This machine decides what to do with the rows that are
//! due: learn an owner's devices by a lookup, resolve rows that name no device yet, deliver a
//! batch per device, record the outcome, back off. Like the outbox it has no I/O and no clock.
//!
//! What it guarantees:
//! - one batch (≤ 64 messages) in flight per device, in conversation order;
//! - an owner's devices come from a lookup, trusted for [`ROUTE_TTL`]; one lookup per owner at
//!   a time, whatever the number of rows waiting for it;
//! - a device the directory lists as offline, or no longer lists, is not dialled: its rows wait
//!   out their backoff (kept in the store, so it holds across restarts) and are given up after
//!   `FANOUT_TTL_MS`;
//! - reads of the due rows are coalesced like the outbox's, and happen at least every
//!   [`READ_EVERY`] while the node runs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use natter_proto::msg::DirectMessage;
use natter_proto::{Status, UserName};
use tokio::time::Instant;

use super::outbox::{ROUTE_TTL, fill_batch};
use crate::store::{FanoutBatch, FanoutMessage};

/// Due rows are read at least this often (new ones also start a read).
pub(crate) const READ_EVERY: Duration = Duration::from_secs(5);
/// Rows past their time are given up this often.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// A device of a user, as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceRoute {
    pub(crate) peer: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
    /// Its record's lease runs and it is not signed off.
    pub(crate) live: bool,
    /// What its record says.
    pub(crate) status: Status,
}

#[derive(Debug)]
struct Known {
    devices: Vec<DeviceRoute>,
    at: Instant,
}

/// How a delivery to a further device went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FanOutcome {
    /// The device stored the whole batch, over this path.
    Stored(&'static str),
    /// It stored the first `accepted` and refused the rest for now (its quota).
    Partial {
        accepted: usize,
        path: &'static str,
        why: String,
    },
    /// It refused the batch as malformed: it would again.
    RefusedForGood(String),
    /// No answer, or a refusal that may pass.
    Failed(String),
}

/// What the fan-out asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FanAction {
    /// Read the due rows; answer with [`Fanout::due_read`].
    ReadDue,
    /// Learn `owner`'s devices; answer with [`Fanout::learned`] or [`Fanout::lookup_failed`].
    Lookup(UserName),
    /// `owner`'s rows that name no device become one per device of these.
    Resolve {
        owner: UserName,
        devices: Vec<PeerId>,
    },
    /// Send a batch to a device; answer with [`Fanout::answered`].
    Deliver {
        owner: UserName,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        messages: Vec<DirectMessage>,
    },
    /// The device stored these.
    Done {
        owner: UserName,
        peer: PeerId,
        ids: Vec<String>,
        path: &'static str,
    },
    /// Push what is due for `device` of `owner` (`""`: the rows naming no device) back by its
    /// backoff, recording why.
    Postpone {
        owner: UserName,
        device: String,
        why: String,
    },
    /// `device` of `owner` is back: what waits for it is due now, whatever its backoff.
    Wake { owner: UserName, device: String },
    /// Give up the rows of further devices not reached within `FANOUT_TTL_MS`.
    Expire,
    /// Give these up for the device: it refused them for good.
    Drop {
        owner: UserName,
        peer: PeerId,
        ids: Vec<String>,
        why: String,
    },
}

/// The fan-out's state. See the module docs.
#[derive(Debug)]
pub(crate) struct Fanout {
    /// This device: never a further device of its own messages.
    me: PeerId,
    known: HashMap<UserName, Known>,
    /// Lookups in flight, with the devices (`""`: unresolved rows) whose rows wait for them.
    resolving: HashMap<UserName, HashSet<String>>,
    /// The batch in flight per device.
    in_flight: HashMap<PeerId, (UserName, Vec<String>)>,
    reading: bool,
    read_again: bool,
    last_read: Option<Instant>,
    expired_at: Option<Instant>,
    stopped: bool,
    actions: VecDeque<FanAction>,
}

impl Fanout {
    pub(crate) fn new(me: PeerId) -> Self {
        Self {
            me,
            known: HashMap::new(),
            resolving: HashMap::new(),
            in_flight: HashMap::new(),
            reading: false,
            read_again: false,
            last_read: None,
            expired_at: None,
            stopped: false,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do, in order.
    pub(crate) fn next_action(&mut self) -> Option<FanAction> {
        self.actions.pop_front()
    }

    /// No more deliveries (the node signs off); the rows stay for the next run.
    pub(crate) fn stop(&mut self) {
        self.stopped = true;
    }

    /// `owner`'s devices other than `except` and this one, if known and fresh (`None`: not
    /// known; the rows then name no device until they are).
    pub(crate) fn further_devices(
        &self,
        owner: &UserName,
        except: Option<PeerId>,
        now: Instant,
    ) -> Option<Vec<PeerId>> {
        let known = self.fresh(owner, now)?;
        Some(
            known
                .devices
                .iter()
                .map(|d| d.peer)
                .filter(|p| *p != self.me && Some(*p) != except)
                .collect(),
        )
    }

    fn fresh(&self, owner: &UserName, now: Instant) -> Option<&Known> {
        self.known
            .get(owner)
            .filter(|k| now.saturating_duration_since(k.at) < ROUTE_TTL)
    }

    /// A lookup found `owner`'s record: these are their devices (a lookup without a record
    /// tells nothing about them: see [`Fanout::lookup_failed`]).
    pub(crate) fn learned(&mut self, owner: UserName, devices: Vec<DeviceRoute>, now: Instant) {
        let waited = self.resolving.remove(&owner).is_some();
        self.known.insert(owner, Known { devices, at: now });
        if waited {
            self.pump(now);
        }
    }

    /// A device of `owner` told its presence itself: what is known of it changes. Returns
    /// the most available status among `owner`'s other devices known to be live, if any.
    pub(crate) fn device_seen(
        &mut self,
        owner: &UserName,
        device: DeviceRoute,
        now: Instant,
    ) -> Option<Status> {
        let known = self
            .known
            .get_mut(owner)
            .filter(|k| now.saturating_duration_since(k.at) < ROUTE_TTL)?;
        let peer = device.peer;
        let live = device.live;
        let was_live = match known.devices.iter_mut().find(|d| d.peer == peer) {
            Some(slot) => std::mem::replace(slot, device).live,
            None => {
                known.devices.push(device);
                false
            }
        };
        let back = live && !was_live;
        if back {
            self.actions.push_back(FanAction::Wake {
                owner: owner.clone(),
                device: peer.to_string(),
            });
        }
        let known = self.known.get(owner)?;
        let status = known
            .devices
            .iter()
            .filter(|d| d.peer != peer && d.live)
            .map(|d| d.status)
            .min_by_key(|s| match s {
                Status::Online => 0,
                Status::Away => 1,
                Status::Busy => 2,
                Status::Offline => 3,
            });
        if back {
            self.pump(now);
        }
        status
    }

    /// A lookup of `owner` failed (not attached, no answer): what waited for it waits out its
    /// backoff.
    pub(crate) fn lookup_failed(&mut self, owner: &UserName, why: &str) {
        for device in self.resolving.remove(owner).unwrap_or_default() {
            self.actions.push_back(FanAction::Postpone {
                owner: owner.clone(),
                device,
                why: format!("cannot learn {owner}'s devices: {why}"),
            });
        }
    }

    /// New rows may be due (a message was just delivered): read soon.
    pub(crate) fn poke(&mut self, now: Instant) {
        self.pump(now);
    }

    fn pump(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        if self.reading {
            self.read_again = true;
            return;
        }
        self.reading = true;
        self.last_read = Some(now);
        self.actions.push_back(FanAction::ReadDue);
    }

    /// The answer of [`FanAction::ReadDue`] (`None`: the read failed).
    pub(crate) fn due_read(&mut self, batches: Option<Vec<FanoutBatch>>, now: Instant) {
        self.reading = false;
        let mut resolved = false;
        for batch in batches.unwrap_or_default() {
            resolved |= self.consider(batch, now);
        }
        if std::mem::take(&mut self.read_again) || resolved {
            self.pump(now);
        }
    }

    /// What to do with one device's due rows; whether rows were resolved (read again).
    fn consider(&mut self, batch: FanoutBatch, now: Instant) -> bool {
        let Ok(owner) = UserName::parse_canonical(&batch.owner) else {
            return false;
        };
        if self.stopped || batch.messages.is_empty() {
            return false;
        }
        if batch.device.is_empty() {
            if let Some(devices) = self.fresh(&owner, now) {
                let devices = devices.devices.iter().map(|d| d.peer).collect();
                self.actions
                    .push_back(FanAction::Resolve { owner, devices });
                return true;
            }
            self.look_up(owner, batch.device);
            return false;
        }
        let Ok(peer) = batch.device.parse::<PeerId>() else {
            // Not written by this build; given up with the rest when its time is over.
            return false;
        };
        if self.in_flight.contains_key(&peer) {
            return false;
        }
        let Some(known) = self.fresh(&owner, now) else {
            self.look_up(owner, batch.device);
            return false;
        };
        let why = match known.devices.iter().find(|d| d.peer == peer) {
            Some(device) if device.live => {
                let addrs = device.addrs.clone();
                self.deliver(owner, peer, addrs, batch.messages);
                return false;
            }
            Some(_) => "the device is offline",
            None => "the directory does not list the device",
        };
        self.actions.push_back(FanAction::Postpone {
            owner,
            device: batch.device,
            why: why.into(),
        });
        false
    }

    fn look_up(&mut self, owner: UserName, device: String) {
        match self.resolving.entry(owner.clone()) {
            std::collections::hash_map::Entry::Occupied(mut waiting) => {
                waiting.get_mut().insert(device);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(HashSet::from([device]));
                self.actions.push_back(FanAction::Lookup(owner));
            }
        }
    }

    fn deliver(
        &mut self,
        owner: UserName,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        messages: Vec<FanoutMessage>,
    ) {
        let messages = fill_batch(messages.into_iter().map(|m| DirectMessage {
            id: m.id,
            to: m.to,
            text: m.text,
            sent_at_ms: m.sent_at_ms,
            conv_seq: m.conv_seq,
        }));
        let ids = messages.iter().map(|m| m.id.clone()).collect();
        self.in_flight.insert(peer, (owner.clone(), ids));
        self.actions.push_back(FanAction::Deliver {
            owner,
            peer,
            addrs,
            messages,
        });
    }

    /// The device `peer` answered the batch in flight to it.
    pub(crate) fn answered(&mut self, peer: PeerId, outcome: FanOutcome, now: Instant) {
        let Some((owner, mut ids)) = self.in_flight.remove(&peer) else {
            return;
        };
        let postpone = |owner: &UserName, why: String| FanAction::Postpone {
            owner: owner.clone(),
            device: peer.to_string(),
            why,
        };
        match outcome {
            FanOutcome::Stored(path) => {
                self.actions.push_back(FanAction::Done {
                    owner,
                    peer,
                    ids,
                    path,
                });
            }
            FanOutcome::Partial {
                accepted,
                path,
                why,
            } => {
                ids.truncate(accepted);
                if !ids.is_empty() {
                    self.actions.push_back(FanAction::Done {
                        owner: owner.clone(),
                        peer,
                        ids,
                        path,
                    });
                }
                self.actions.push_back(postpone(&owner, why));
            }
            FanOutcome::RefusedForGood(why) => {
                self.actions.push_back(FanAction::Drop {
                    owner,
                    peer,
                    ids,
                    why,
                });
            }
            FanOutcome::Failed(why) => {
                // Its addresses may have changed: ask the directory again next time.
                self.known.remove(&owner);
                self.actions.push_back(postpone(&owner, why));
            }
        }
        self.pump(now);
    }

    /// Time passes: read the due rows now and then; forget stale device lists.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.known
            .retain(|_, k| now.saturating_duration_since(k.at) < ROUTE_TTL);
        if self
            .expired_at
            .is_none_or(|at| now.saturating_duration_since(at) >= EXPIRE_EVERY)
        {
            self.expired_at = Some(now);
            self.actions.push_back(FanAction::Expire);
        }
        if self
            .last_read
            .is_none_or(|at| now.saturating_duration_since(at) >= READ_EVERY)
        {
            self.pump(now);
        }
    }
}

#[cfg(test)]
mod tests;
