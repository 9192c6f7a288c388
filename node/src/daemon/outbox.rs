//! The outbox service: delivery of queued messages as a state machine.
//!
//! It decides; the daemon carries out. Inputs are method calls with the time (`queued` after a
//! message is durable in the outbox, the answer of an outbox read, a lookup's outcome, a
//! delivery's answer, the tick); outputs are [`Action`]s the daemon takes with
//! [`Outbox::next_action`]: store jobs, lookups, requests and answers to `send` commands. No
//! I/O and no clock of its own, so it is tested with tokio's paused time.
//!
//! What it guarantees:
//! - conversation order: one batch (≤ 64 messages, the head of the recipient's queue) in flight
//!   per recipient;
//! - routes are cached for [`ROUTE_TTL`]: a burst to a user with a fresh route makes no lookup,
//!   and sends to a user without one share one lookup;
//! - after a failed delivery, the recipient is held back by a backoff (1 s doubling to 30 s,
//!   reset by a delivery), here and durably in the store (so it holds across restarts);
//! - outbox reads are coalesced: one at a time, and any number of calls meanwhile make one
//!   more pass after it;
//! - a message the recipient refuses as malformed (`BadMessage`: the same message would be
//!   refused again) is not retried for ever: the recipient's next batches carry one message
//!   each until the refused one is found, which is parked in the outbox for the user
//!   ([`Action::RefuseForGood`]); only a batch of one is ever parked, so a good message
//!   never is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use natter_proto::UserName;
use natter_proto::msg::{DirectMessage, MAX_BATCH, MAX_BATCH_TEXT_BYTES};
use tokio::time::Instant;

use crate::store::QueuedMessage;

/// How long `send` waits for the recipient's acknowledgement before answering "queued".
pub(crate) const SEND_WAIT: Duration = Duration::from_secs(5);
/// A route (peer id and addresses from a lookup) is trusted this long.
pub(crate) const ROUTE_TTL: Duration = Duration::from_secs(60);
/// Retry backoff: 1 s doubling to at most 30 s.
const FIRST_BACKOFF_MS: u64 = 1000;
const MAX_BACKOFF_MS: u64 = 30_000;
/// The schedule as [`crate::store::Store::postpone`] takes it.
pub(crate) const BACKOFF: (u64, u64) = (FIRST_BACKOFF_MS, MAX_BACKOFF_MS);

pub(crate) fn backoff_ms(attempts: u32) -> u64 {
    FIRST_BACKOFF_MS
        .saturating_mul(1u64 << attempts.min(16))
        .min(MAX_BACKOFF_MS)
}

/// The head of `messages` that one request carries: all of them up to
/// [`MAX_BATCH_TEXT_BYTES`] of text, and always the first (a single message may be as large
/// as a message may be).
pub(crate) fn fill_batch(messages: impl IntoIterator<Item = DirectMessage>) -> Vec<DirectMessage> {
    let mut size = 0;
    messages
        .into_iter()
        .take_while(|m| {
            size += m.text.len();
            size <= MAX_BATCH_TEXT_BYTES || size == m.text.len()
        })
        .collect()
}

/// Where a user's device can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) peer: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
    at: Instant,
}

/// What a `send` command is told in the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendOutcome {
    /// Stored by the recipient's node, by this path.
    Delivered(&'static str),
    /// Still in the outbox; delivery goes on.
    Queued,
    /// No such user: the message was taken out of the outbox again.
    UnknownUser,
    /// The recipient's node refused it for this reason (its inbox quota); still queued.
    Refused(String),
    /// The recipient's node refused it for good (malformed by its rules); parked in the
    /// outbox, not tried again.
    RefusedForGood(String),
}

/// What the outbox asks of the daemon. `W` is whoever waits for a `send`'s outcome.
#[derive(Debug)]
pub(crate) enum Action<W> {
    /// Read the due batches of every recipient but `busy` ones; answer with
    /// [`Outbox::due_read`].
    ReadDue { busy: HashSet<String> },
    /// Find a route to `name`; answer with [`Outbox::route_found`] or
    /// [`Outbox::route_missing`].
    Lookup(UserName),
    /// Learn whether `name` exists at all; answer with [`Outbox::route_found`],
    /// [`Outbox::user_unknown`] or [`Outbox::check_done`].
    CheckUser(UserName),
    /// Send one batch; answer with [`Outbox::delivered`] or [`Outbox::failed`].
    Deliver {
        to: UserName,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        messages: Vec<DirectMessage>,
    },
    /// The recipient's `device` stored these: move them to the sent log (and on to the
    /// further devices, see `fanout.rs`).
    MarkDelivered {
        to: UserName,
        device: PeerId,
        ids: Vec<String>,
        path: &'static str,
    },
    /// Push `to`'s due messages back by their backoff, recording why.
    Postpone { to: UserName, why: String },
    /// Take these messages to a user who does not exist out of the outbox.
    Cancel { ids: Vec<String> },
    /// Park this message: its recipient refused it for good, for `why`.
    RefuseForGood { id: String, why: String },
    /// Tell a `send` what became of its message.
    Answer {
        waiter: W,
        id: String,
        to: UserName,
        outcome: SendOutcome,
    },
}

#[derive(Debug)]
struct Waiter<W> {
    waiter: W,
    to: UserName,
    deadline: Instant,
}

/// The outbox's state. See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox<W> {
    routes: HashMap<UserName, Route>,
    /// Route lookups in flight.
    resolving: HashSet<UserName>,
    /// Messages just queued for users whose existence is being checked, by user.
    checking: HashMap<UserName, Vec<String>>,
    /// The batch in flight per recipient, and the device it went to.
    in_flight: HashMap<UserName, Vec<String>>,
    in_flight_to: HashMap<UserName, PeerId>,
    /// Recipients held back after failures: until when, and how many failures in a row.
    held: HashMap<UserName, (Instant, u32)>,
    /// Recipients whose node refused a batch as malformed: sent one message at a time until
    /// the refused message is found, at most this many more (the refused batch's length).
    probing: HashMap<UserName, usize>,
    /// `send` commands waiting for their message, by message id.
    waiters: HashMap<String, Waiter<W>>,
    reading: bool,
    read_again: bool,
    stopped: bool,
    actions: VecDeque<Action<W>>,
}

impl<W> Default for Outbox<W> {
    fn default() -> Self {
        Self {
            routes: HashMap::new(),
            resolving: HashSet::new(),
            checking: HashMap::new(),
            in_flight: HashMap::new(),
            in_flight_to: HashMap::new(),
            held: HashMap::new(),
            probing: HashMap::new(),
            waiters: HashMap::new(),
            reading: false,
            read_again: false,
            stopped: false,
            actions: VecDeque::new(),
        }
    }
}

impl<W> Outbox<W> {
    /// The next thing to do, in order.
    pub(crate) fn next_action(&mut self) -> Option<Action<W>> {
        self.actions.pop_front()
    }

    /// No more deliveries (the node signs off); the outbox keeps what it has.
    pub(crate) fn stop(&mut self) {
        self.stopped = true;
    }

    /// A fresh route to `name`, if any.
    pub(crate) fn route(&self, name: &UserName, now: Instant) -> Option<&Route> {
        self.routes
            .get(name)
            .filter(|r| now.saturating_duration_since(r.at) < ROUTE_TTL)
    }

    /// Forgets the route to `name` (a request on it failed).
    pub(crate) fn forget_route(&mut self, name: &UserName) {
        self.routes.remove(name);
    }

    /// Remembers where `name`'s device is (from a lookup or the device's own presence push).
    pub(crate) fn learn_route(
        &mut self,
        name: UserName,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        now: Instant,
    ) {
        self.routes.insert(
            name,
            Route {
                peer,
                addrs,
                at: now,
            },
        );
    }

    /// Is a route lookup for `name` running? Starts one (and says so) if not.
    pub(crate) fn start_resolving(&mut self, name: &UserName) -> bool {
        self.resolving.insert(name.clone())
    }

    /// A message's write to the outbox was just handed to the store. The read that picks it
    /// up is asked for now, not once the write is durable: the store runs jobs in the order
    /// they came and answers none before its group's commit, so the read sees the message,
    /// and its batch leaves when the message is on disk, one store round trip sooner.
    pub(crate) fn queueing(&mut self) {
        self.pump();
    }

    /// Message `id` to `to` is durable in the outbox (the read that delivers it was asked for
    /// by [`Outbox::queueing`]). `waiter`, if any, hears the outcome (within [`SEND_WAIT`],
    /// else "queued").
    pub(crate) fn queued(&mut self, to: UserName, id: String, waiter: Option<W>, now: Instant) {
        if let Some(waiter) = waiter {
            self.waiters.insert(
                id.clone(),
                Waiter {
                    waiter,
                    to: to.clone(),
                    deadline: now + SEND_WAIT,
                },
            );
        }
        if self.route(&to, now).is_none() {
            // Does the user exist? One check per recipient at a time, whatever the burst.
            match self.checking.entry(to.clone()) {
                std::collections::hash_map::Entry::Occupied(mut ids) => ids.get_mut().push(id),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(vec![id]);
                    self.actions.push_back(Action::CheckUser(to));
                }
            }
        }
    }

    /// Asks for an outbox read, unless one is running (then for one more after it).
    pub(crate) fn pump(&mut self) {
        if self.stopped {
            return;
        }
        if self.reading {
            self.read_again = true;
            return;
        }
        self.reading = true;
        let busy = self.in_flight.keys().map(|u| u.to_string()).collect();
        self.actions.push_back(Action::ReadDue { busy });
    }

    /// The answer of [`Action::ReadDue`] (`None`: the read failed).
    pub(crate) fn due_read(
        &mut self,
        batches: Option<Vec<(String, Vec<QueuedMessage>)>>,
        now: Instant,
    ) {
        self.reading = false;
        for (to, queued) in batches.unwrap_or_default() {
            self.consider(to, queued, now);
        }
        if std::mem::take(&mut self.read_again) {
            self.pump();
        }
    }

    fn consider(&mut self, to: String, queued: Vec<QueuedMessage>, now: Instant) {
        let Ok(to) = UserName::parse_canonical(&to) else {
            return;
        };
        if self.stopped || self.in_flight.contains_key(&to) || queued.is_empty() {
            return;
        }
        if self.held.get(&to).is_some_and(|(until, _)| now < *until) {
            return;
        }
        let Some(route) = self.route(&to, now).cloned() else {
            if self.resolving.insert(to.clone()) {
                self.actions.push_back(Action::Lookup(to));
            }
            return;
        };
        let batch = if self.probing.contains_key(&to) {
            1
        } else {
            MAX_BATCH
        };
        let messages = fill_batch(queued.into_iter().take(batch).map(|m| DirectMessage {
            id: m.id,
            to: m.to,
            text: m.text,
            sent_at_ms: m.sent_at_ms,
            conv_seq: m.conv_seq,
        }));
        self.in_flight
            .insert(to.clone(), messages.iter().map(|m| m.id.clone()).collect());
        self.in_flight_to.insert(to.clone(), route.peer);
        self.actions.push_back(Action::Deliver {
            to,
            peer: route.peer,
            addrs: route.addrs,
            messages,
        });
    }

    /// A lookup found `name`'s device: deliver what waits for it. Also ends a check.
    pub(crate) fn route_found(
        &mut self,
        name: UserName,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        now: Instant,
    ) {
        self.resolving.remove(&name);
        self.checking.remove(&name);
        self.learn_route(name, peer, addrs, now);
        self.pump();
    }

    /// A route lookup found no reachable device: messages wait out their backoff.
    pub(crate) fn route_missing(&mut self, name: UserName, why: &str) {
        self.resolving.remove(&name);
        self.routes.remove(&name);
        self.actions.push_back(Action::Postpone {
            to: name,
            why: why.to_owned(),
        });
    }

    /// The user does not exist: the messages queued for them go, their senders are told.
    pub(crate) fn user_unknown(&mut self, name: &UserName) {
        let ids = self.checking.remove(name).unwrap_or_default();
        self.answer_waiters(&ids, SendOutcome::UnknownUser);
        if !ids.is_empty() {
            self.actions.push_back(Action::Cancel { ids });
        }
    }

    /// Tells the `send`s waiting for these messages what became of them.
    fn answer_waiters(&mut self, ids: &[String], outcome: SendOutcome) {
        for id in ids {
            if let Some(w) = self.waiters.remove(id) {
                self.actions.push_back(Action::Answer {
                    waiter: w.waiter,
                    id: id.clone(),
                    to: w.to,
                    outcome: outcome.clone(),
                });
            }
        }
    }

    /// A check ended without an answer either way (lookup failed, login server down): the
    /// messages stay queued.
    pub(crate) fn check_done(&mut self, name: &UserName) {
        self.checking.remove(name);
    }

    /// `to`'s node stored the batch in flight.
    pub(crate) fn delivered(&mut self, to: &UserName, path: &'static str) {
        let ids = self.in_flight.remove(to).unwrap_or_default();
        let device = self.in_flight_to.remove(to);
        self.held.remove(to);
        if let Some(left) = self.probing.get_mut(to) {
            *left = left.saturating_sub(ids.len());
            if *left == 0 {
                self.probing.remove(to);
            }
        }
        self.answer_waiters(&ids, SendOutcome::Delivered(path));
        // Before the next read, so that read no longer sees them.
        if let Some(device) = device {
            self.actions.push_back(Action::MarkDelivered {
                to: to.clone(),
                device,
                ids,
                path,
            });
        }
        self.pump();
    }

    /// `to`'s node stored the first `accepted` messages of the batch in flight and refused the
    /// rest (its inbox quota, `why`): those stay queued, and the recipient is held back as
    /// after a failure (its route stays: it answered).
    pub(crate) fn refused(
        &mut self,
        to: UserName,
        accepted: usize,
        path: &'static str,
        why: String,
        now: Instant,
    ) {
        let mut ids = self.in_flight.remove(&to).unwrap_or_default();
        let device = self.in_flight_to.remove(&to);
        let rest = ids.split_off(accepted.min(ids.len()));
        self.answer_waiters(&rest, SendOutcome::Refused(why.clone()));
        if let Some(device) = device.filter(|_| !ids.is_empty()) {
            self.answer_waiters(&ids, SendOutcome::Delivered(path));
            self.actions.push_back(Action::MarkDelivered {
                to: to.clone(),
                device,
                ids,
                path,
            });
        }
        let failures = self.held.get(&to).map_or(0, |(_, n)| *n);
        let wait = Duration::from_millis(backoff_ms(failures));
        self.held.insert(to.clone(), (now + wait, failures + 1));
        self.actions.push_back(Action::Postpone { to, why });
        self.pump();
    }

    /// `to`'s node refused the batch in flight as malformed (`why`), which it would do again.
    /// A batch of one is parked for good; a larger one is sent again one message at a time,
    /// at once (the refusal does not depend on time), until the refused one is found.
    pub(crate) fn refused_for_good(&mut self, to: UserName, why: String) {
        let ids = self.in_flight.remove(&to).unwrap_or_default();
        self.in_flight_to.remove(&to);
        if let [id] = ids.as_slice() {
            self.probing.remove(&to);
            self.answer_waiters(&ids, SendOutcome::RefusedForGood(why.clone()));
            self.actions.push_back(Action::RefuseForGood {
                id: id.clone(),
                why,
            });
        } else {
            self.probing.insert(to, ids.len());
        }
        self.pump();
    }

    /// The batch in flight to `to` failed: forget the route, hold the recipient back.
    pub(crate) fn failed(&mut self, to: UserName, why: String, now: Instant) {
        self.in_flight.remove(&to);
        self.in_flight_to.remove(&to);
        self.routes.remove(&to);
        let failures = self.held.get(&to).map_or(0, |(_, n)| *n);
        let wait = Duration::from_millis(backoff_ms(failures));
        self.held.insert(to.clone(), (now + wait, failures + 1));
        self.actions.push_back(Action::Postpone { to, why });
    }

    /// Time passes: `send`s whose wait is over hear "queued"; held-back recipients whose
    /// backoff ended are tried again.
    pub(crate) fn tick(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .waiters
            .iter()
            .filter(|(_, w)| now >= w.deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(w) = self.waiters.remove(&id) {
                self.actions.push_back(Action::Answer {
                    waiter: w.waiter,
                    id,
                    to: w.to,
                    outcome: SendOutcome::Queued,
                });
            }
        }
        // Bounded: forget routes and holds nobody needs any more.
        self.routes
            .retain(|_, r| now.saturating_duration_since(r.at) < ROUTE_TTL);
        self.held.retain(|_, (until, _)| {
            now.saturating_duration_since(*until) < Duration::from_millis(MAX_BACKOFF_MS)
        });

        self.pump();
    }
}

#[cfg(test)]
mod tests;
