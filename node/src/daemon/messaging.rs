//! Direct messages: `send` writes the outbox before any network I/O, delivery retries with
//! backoff until the recipient's node acknowledges storage, in conversation order, in batches;
//! the receiver authenticates the sender, deduplicates by id and streams new messages to
//! `inbox --follow`. Also `ping` probes and presence pushed to contacts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use natter_proto::msg::{
    self, DirectMessage, MAX_BATCH, MAX_BATCH_TEXT_BYTES, MsgRefusal, MsgRequest, MsgResponse,
};
use natter_proto::{PresenceRecord, UserName};

use super::api::{ControlResponse, FollowEvent, InboxItem, PingProbe, SendView};
use super::leaf::lookup_view;
use super::{Daemon, LookupFor, LookupOutcome, unix_now};
use crate::control::Replier;
use crate::net::{Command, OutRequest, Token};
use crate::store::{IncomingMessage, OutgoingMessage, QueuedMessage, Receipt};

/// How long `send` waits for the recipient's acknowledgement before answering "queued".
const SEND_WAIT: Duration = Duration::from_secs(5);
/// A route (peer id and addresses from a lookup) is trusted this long.
const ROUTE_TTL: Duration = Duration::from_secs(60);
/// Retry backoff: 1 s doubling to at most 30 s.
const MAX_BACKOFF_MS: u64 = 30_000;

/// Where a user's device can be reached.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    at: Instant,
}

#[derive(Debug)]
pub(crate) enum MsgPending {
    Deliver { to: UserName, ids: Vec<String> },
    Ping { run: u64, sent: Instant },
    Presence,
}

/// A `natter ping` in progress.
#[derive(Debug)]
struct PingRun {
    id: u64,
    name: UserName,
    count: u32,
    seq: u32,
    reply: Replier<ControlResponse>,
    next_at: Instant,
    waiting: bool,
}

/// Messaging state of the daemon.
#[derive(Debug, Default)]
pub(crate) struct Messaging {
    pending: HashMap<Token, MsgPending>,
    in_flight: HashSet<UserName>,
    routes: HashMap<UserName, Route>,
    resolving: HashSet<UserName>,
    /// `send` commands waiting for their message's acknowledgement, by message id.
    waiters: HashMap<String, (Replier<ControlResponse>, Instant, UserName)>,
    followers: Vec<(Replier<ControlResponse>, i64)>,
    pings: Vec<PingRun>,
    next_ping: u64,
    last_ulid: (u64, u128),
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn backoff_ms(attempts: u32) -> u64 {
    1000u64
        .saturating_mul(1u64 << attempts.min(16))
        .min(MAX_BACKOFF_MS)
}

impl Messaging {
    /// A new ULID: 48 bits of milliseconds, 80 random bits, monotonic within a millisecond.
    fn ulid(&mut self) -> String {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let ms = now_ms() & ((1 << 48) - 1);
        let random = if ms == self.last_ulid.0 {
            self.last_ulid.1.wrapping_add(1) & ((1u128 << 80) - 1)
        } else {
            rand::random::<u128>() & ((1u128 << 80) - 1)
        };
        self.last_ulid = (ms, random);
        let value = (u128::from(ms) << 80) | random;
        (0..26)
            .rev()
            .map(|i| ALPHABET[((value >> (i * 5)) & 0x1f) as usize] as char)
            .collect()
    }

    /// The message request `token` was, if it was one.
    pub(crate) fn take_pending(&mut self, token: Token) -> Option<MsgPending> {
        self.pending.remove(&token)
    }
}

fn item(m: &crate::store::InboxEntry) -> InboxItem {
    InboxItem {
        id: m.id.clone(),
        from: m.from.clone(),
        text: m.text.clone(),
        sent_at: m.sent_at_ms,
        received_at: m.received_at_ms,
    }
}

impl Daemon {
    /// `natter send`: checks name and text, writes the message to the outbox (before any
    /// network I/O), then checks in the background that the user exists (an unknown user is
    /// an error, and the message is taken out of the outbox again) while delivery starts.
    pub(super) fn cmd_send(
        &mut self,
        to: String,
        text: String,
        wait: bool,
        reply: Replier<ControlResponse>,
    ) {
        let to = match UserName::parse(&to) {
            Ok(n) => n,
            Err(e) => {
                let _ = reply.try_send(Err(format!("invalid name {to:?}: {e}")));
                return;
            }
        };
        if let Err(e) = msg::check_text(&text) {
            let _ = reply.try_send(Err(format!("{e}; nothing was queued")));
            return;
        }
        if to == self.identity.user {
            let _ = reply.try_send(Err("cannot send a message to yourself".into()));
            return;
        }
        let Some(id) = self.enqueue(to.clone(), text, wait, reply) else {
            return;
        };
        self.lookup(to, LookupFor::Send { id });
    }

    /// Every lookup ends here, whatever it was for.
    pub(super) fn on_lookup_result(
        &mut self,
        name: UserName,
        purpose: LookupFor,
        outcome: LookupOutcome,
    ) {
        match purpose {
            LookupFor::Control(reply) => {
                let view = match outcome {
                    LookupOutcome::Found { record, confirmed } => {
                        Ok(lookup_view(&record, confirmed))
                    }
                    LookupOutcome::NotFound { exists } => Ok(super::api::LookupView {
                        user: name.to_string(),
                        status: if exists == Some(true) {
                            "offline"
                        } else {
                            "unknown"
                        }
                        .into(),
                        peer_id: None,
                        superpeers: vec![],
                        direct_addrs: vec![],
                        last_seen: None,
                        home: None,
                        confirmed: false,
                        seq: None,
                    }),
                    LookupOutcome::Failed(e) => Err(e),
                };
                let _ = reply.try_send(view.map(ControlResponse::Lookup));
            }
            LookupFor::Send { id } => match &outcome {
                LookupOutcome::NotFound {
                    exists: Some(false),
                } => {
                    match self.store.cancel(&id) {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(%id, "message to an unknown user already gone"),
                        Err(e) => tracing::error!(error = %e, %id, "cannot cancel a message"),
                    }
                    if let Some((reply, _, _)) = self.msg.waiters.remove(&id) {
                        let _ = reply
                            .try_send(Err(format!("no user named {name}; nothing was queued")));
                    }
                }
                LookupOutcome::Found { record, .. } => {
                    self.learn_route(&name, record);
                    self.pump_outbox();
                }
                _ => {}
            },
            LookupFor::Route => {
                self.msg.resolving.remove(&name);
                match outcome {
                    LookupOutcome::Found { record, confirmed }
                        if confirmed && record.is_live(unix_now()) =>
                    {
                        self.learn_route(&name, &record);
                        self.pump_outbox();
                    }
                    _ => {
                        self.msg.routes.remove(&name);
                        self.postpone(&name, "recipient is offline");
                    }
                }
            }
            LookupFor::Push => {
                if let LookupOutcome::Found {
                    record,
                    confirmed: true,
                } = outcome
                {
                    self.learn_route(&name, &record);
                    self.push_presence_to(&name);
                }
            }
        }
    }

    fn learn_route(&mut self, name: &UserName, record: &PresenceRecord) {
        let addrs = record
            .body
            .direct_addrs
            .iter()
            .chain(&record.body.relay_addrs)
            .filter_map(|a| a.parse().ok())
            .collect();
        self.msg.routes.insert(
            name.clone(),
            Route {
                peer: record.body.cert.peer_id(),
                addrs,
                at: Instant::now(),
            },
        );
    }

    /// Writes the message to the outbox and registers the `send` waiting for it; the id, or
    /// `None` when it could not be stored (the command has its error then).
    fn enqueue(
        &mut self,
        to: UserName,
        text: String,
        wait: bool,
        reply: Replier<ControlResponse>,
    ) -> Option<String> {
        let id = self.msg.ulid();
        let outgoing = OutgoingMessage {
            id: id.clone(),
            to: to.to_string(),
            text,
            sent_at_ms: now_ms(),
        };
        // Durable before any network I/O: from here on the message is delivered or queued.
        if let Err(e) = self.store.enqueue(&outgoing) {
            let _ = reply.try_send(Err(format!("cannot queue the message: {e}")));
            return None;
        }
        if wait {
            self.msg
                .waiters
                .insert(id.clone(), (reply, Instant::now() + SEND_WAIT, to));
        } else {
            let _ = reply.try_send(Ok(ControlResponse::Sent(SendView {
                id: id.clone(),
                status: "queued".into(),
                path: None,
                to: to.to_string(),
            })));
        }
        Some(id)
    }

    /// Sends the next batch for every recipient that has due messages and nothing in flight.
    pub(super) fn pump_outbox(&mut self) {
        if self.going_down.is_some() {
            return;
        }
        let due = match self.store.due(now_ms(), 4 * MAX_BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return;
            }
        };
        let mut batches: Vec<(UserName, Vec<QueuedMessage>)> = Vec::new();
        for m in due {
            let Ok(to) = UserName::parse_canonical(&m.to) else {
                continue;
            };
            match batches.last_mut() {
                Some((last, batch)) if *last == to => batch.push(m),
                _ => batches.push((to, vec![m])),
            }
        }
        let now = now_ms();
        for (to, _) in batches {
            if self.msg.in_flight.contains(&to) {
                continue;
            }
            // Conversation order: only a run of due messages from the head of the queue. A
            // message waiting out a backoff holds back the ones after it.
            let queued: Vec<QueuedMessage> = match self.store.queued_for(to.as_str()) {
                Ok(q) => q
                    .into_iter()
                    .take_while(|m| m.next_attempt_at_ms <= now)
                    .take(MAX_BATCH)
                    .collect(),
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed");
                    continue;
                }
            };
            if queued.is_empty() {
                continue;
            }
            let route = self
                .msg
                .routes
                .get(&to)
                .filter(|r| r.at.elapsed() < ROUTE_TTL)
                .cloned();
            let Some(route) = route else {
                if self.msg.resolving.insert(to.clone()) {
                    self.lookup(to, LookupFor::Route);
                }
                continue;
            };
            let mut size = 0;
            let batch: Vec<DirectMessage> = queued
                .into_iter()
                .take(MAX_BATCH)
                .take_while(|m| {
                    size += m.text.len();
                    size <= MAX_BATCH_TEXT_BYTES || size == m.text.len()
                })
                .map(|m| DirectMessage {
                    id: m.id,
                    to: m.to,
                    text: m.text,
                    sent_at_ms: m.sent_at_ms,
                    conv_seq: m.conv_seq,
                })
                .collect();
            let ids = batch.iter().map(|m| m.id.clone()).collect();
            let request = MsgRequest::Deliver {
                cert: self.identity.cert.clone(),
                messages: batch,
            };
            let token = self.token();
            self.net.request(
                token,
                route.peer,
                route.addrs.clone(),
                OutRequest::Msg(request),
            );
            self.msg.in_flight.insert(to.clone());
            self.msg
                .pending
                .insert(token, MsgPending::Deliver { to, ids });
        }
    }

    /// Pushes every due message of `to` back by its backoff.
    fn postpone(&mut self, to: &UserName, why: &str) {
        let Ok(queued) = self.store.queued_for(to.as_str()) else {
            return;
        };
        let now = now_ms();
        for m in queued.into_iter().filter(|m| m.next_attempt_at_ms <= now) {
            let attempts = m.attempts.saturating_add(1);
            let _ =
                self.store
                    .reschedule(&m.id, attempts, now + backoff_ms(attempts - 1), Some(why));
        }
    }

    /// Answers `send` commands whose wait is over with "queued".
    pub(super) fn messaging_tick(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .msg
            .waiters
            .iter()
            .filter(|(_, (_, deadline, _))| now >= *deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some((reply, _, to)) = self.msg.waiters.remove(&id) {
                let _ = reply.try_send(Ok(ControlResponse::Sent(SendView {
                    id,
                    status: "queued".into(),
                    path: None,
                    to: to.to_string(),
                })));
            }
        }
        self.pump_outbox();
        self.ping_tick();
        self.feed_followers();
    }

    pub(super) fn on_msg_response(
        &mut self,
        pending: MsgPending,
        answer: Result<(MsgResponse, &'static str), String>,
    ) {
        match pending {
            MsgPending::Deliver { to, ids } => {
                self.msg.in_flight.remove(&to);
                match answer {
                    Ok((MsgResponse::Stored { .. }, path)) => {
                        let at = now_ms();
                        if let Some(m) = &self.metrics {
                            m.delivered.inc_by(ids.len() as u64);
                        }
                        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                        if let Err(e) = self.store.mark_all_delivered(&refs, path, at) {
                            tracing::error!(error = %e, "recording deliveries failed");
                        }
                        for id in ids {
                            if let Some((reply, _, to)) = self.msg.waiters.remove(&id) {
                                let _ = reply.try_send(Ok(ControlResponse::Sent(SendView {
                                    id,
                                    status: "delivered".into(),
                                    path: Some(path.into()),
                                    to: to.to_string(),
                                })));
                            }
                        }
                        self.pump_outbox();
                    }
                    other => {
                        let why = match other {
                            Ok((MsgResponse::Refused { message, .. }, _)) => message,
                            Ok((other, _)) => format!("unexpected answer {other:?}"),
                            Err(e) => e,
                        };
                        tracing::info!(%to, error = %why, "delivery failed; will retry");
                        self.msg.routes.remove(&to);
                        self.postpone(&to, &why);
                    }
                }
            }
            MsgPending::Ping { run, sent } => {
                let (rtt_ms, path, error) = match answer {
                    Ok((MsgResponse::Pong { .. }, path)) => (
                        Some(sent.elapsed().as_secs_f64() * 1000.0),
                        Some(path.to_string()),
                        None,
                    ),
                    Ok((other, _)) => (None, None, Some(format!("unexpected answer {other:?}"))),
                    Err(e) => (None, None, Some(e)),
                };
                if let Some(run) = self.msg.pings.iter_mut().find(|r| r.id == run) {
                    run.waiting = false;
                    run.next_at = Instant::now() + Duration::from_secs(1);
                    let failed = rtt_ms.is_none();
                    let _ = run.reply.try_send(Ok(ControlResponse::Ping(PingProbe {
                        seq: run.seq,
                        rtt_ms,
                        path,
                        error,
                    })));
                    if failed {
                        let name = run.name.clone();
                        self.msg.routes.remove(&name);
                    }
                }
            }
            MsgPending::Presence => {}
        }
    }

    fn refuse_msg(
        &mut self,
        channel: ResponseChannel<MsgResponse>,
        (code, message): (MsgRefusal, String),
    ) {
        self.net.send(Command::RespondMsg {
            channel,
            response: MsgResponse::Refused { code, message },
        });
    }

    pub(super) fn on_msg_request(
        &mut self,
        peer: PeerId,
        request: MsgRequest,
        channel: ResponseChannel<MsgResponse>,
    ) {
        let now = unix_now();
        match request {
            MsgRequest::Deliver { cert, messages } => {
                if let Err(refusal) = msg::authenticate(&cert, &self.issuer, &peer, now) {
                    tracing::warn!(%peer, reason = %refusal.1, "unauthenticated message refused");
                    return self.refuse_msg(channel, refusal);
                }
                if messages.is_empty() || messages.len() > MAX_BATCH {
                    return self.refuse_msg(
                        channel,
                        (
                            MsgRefusal::BadMessage,
                            format!("1 to {MAX_BATCH} messages per request"),
                        ),
                    );
                }
                let own = self.identity.user.to_string();
                if let Some(refusal) = messages
                    .iter()
                    .find_map(|m| msg::check_message(m, &own).err())
                {
                    return self.refuse_msg(channel, refusal);
                }
                let from = cert.username().to_string();
                let received_at_ms = now_ms();
                let batch: Vec<IncomingMessage> = messages
                    .into_iter()
                    .map(|m| IncomingMessage {
                        id: m.id,
                        from: from.clone(),
                        text: m.text,
                        sent_at_ms: m.sent_at_ms,
                        conv_seq: m.conv_seq,
                        received_at_ms,
                    })
                    .collect();
                // One transaction (one disk sync) for the whole batch, in order.
                let receipts = match self.store.receive_all(&batch) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "storing messages failed");
                        return self.refuse_msg(
                            channel,
                            (
                                MsgRefusal::Unavailable,
                                "recipient cannot store messages now".into(),
                            ),
                        );
                    }
                };
                let stored = receipts.iter().filter(|r| **r == Receipt::Stored).count() as u32;
                let duplicates = receipts.len() as u32 - stored;
                self.net.send(Command::RespondMsg {
                    channel,
                    response: MsgResponse::Stored { stored, duplicates },
                });
                if let Some(m) = &self.metrics {
                    m.received.inc_by(u64::from(stored));
                }
                if stored > 0 {
                    self.feed_followers();
                }
            }
            MsgRequest::Ping { cert, nonce } => {
                if let Err(refusal) = msg::authenticate(&cert, &self.issuer, &peer, now) {
                    return self.refuse_msg(channel, refusal);
                }
                self.net.send(Command::RespondMsg {
                    channel,
                    response: MsgResponse::Pong { nonce },
                });
            }
            MsgRequest::Presence { record } => {
                if let Err(e) = record.verify(&self.issuer, now) {
                    return self.refuse_msg(channel, (MsgRefusal::NotAuthenticated, e.to_string()));
                }
                if record.body.cert.peer_id() != peer {
                    return self.refuse_msg(
                        channel,
                        (
                            MsgRefusal::NotAuthenticated,
                            "record is not the sender's own".into(),
                        ),
                    );
                }
                self.net.send(Command::RespondMsg {
                    channel,
                    response: MsgResponse::Noted,
                });
                let name = record.username().clone();
                self.learn_route(&name, &record);
                let event = FollowEvent::Presence {
                    user: name.to_string(),
                    status: record.body.status.to_string(),
                    last_seen: Some(record.body.last_seen),
                };
                for (reply, _) in &self.msg.followers {
                    let _ = reply.try_send(Ok(ControlResponse::Event(event.clone())));
                }
            }
        }
    }

    /// Streams messages stored since each follower's last one.
    fn feed_followers(&mut self) {
        let mut followers = std::mem::take(&mut self.msg.followers);
        for (reply, last) in &mut followers {
            let Ok(new) = self.store.inbox(Some(*last), 1000) else {
                continue;
            };
            for m in new {
                // On a full buffer, stop here: the rest goes out at the next tick.
                if reply
                    .try_send(Ok(ControlResponse::Event(FollowEvent::Message(item(&m)))))
                    .is_err()
                {
                    break;
                }
                *last = m.rowid;
            }
        }
        followers.retain(|(r, _)| !r.is_closed());
        self.msg.followers = followers;
    }

    pub(super) fn cmd_inbox(&mut self, follow: bool, reply: Replier<ControlResponse>) {
        let all = match self.store.inbox(None, 100_000) {
            Ok(all) => all,
            Err(e) => {
                let _ = reply.try_send(Err(format!("cannot read the inbox: {e}")));
                return;
            }
        };
        if !follow {
            let _ = reply.try_send(Ok(ControlResponse::Inbox(all.iter().map(item).collect())));
            return;
        }
        // History first (the last ones that fit the reply buffer), then new messages as they
        // come; a slow follower is dropped rather than blocking the daemon.
        let last = all.last().map(|m| m.rowid).unwrap_or(0);
        for m in all.iter().rev().take(16).rev() {
            let _ = reply.try_send(Ok(ControlResponse::Event(FollowEvent::Message(item(m)))));
        }
        if self.msg.followers.len() < 16 {
            self.msg.followers.push((reply, last));
        } else {
            let _ = reply.try_send(Err("too many inbox followers".into()));
        }
    }

    pub(super) fn cmd_ping(&mut self, name: String, count: u32, reply: Replier<ControlResponse>) {
        let name = match UserName::parse(&name) {
            Ok(n) => n,
            Err(e) => {
                let _ = reply.try_send(Err(format!("invalid name {name:?}: {e}")));
                return;
            }
        };
        if self.msg.pings.len() >= 8 {
            let _ = reply.try_send(Err("too many pings running".into()));
            return;
        }
        self.msg.next_ping += 1;
        self.msg.pings.push(PingRun {
            id: self.msg.next_ping,
            name,
            count: count.clamp(1, 1000),
            seq: 0,
            reply,
            next_at: Instant::now(),
            waiting: false,
        });
        self.ping_tick();
    }

    fn ping_tick(&mut self) {
        let now = Instant::now();
        // Finished or abandoned runs end their stream by dropping the replier.
        self.msg
            .pings
            .retain(|r| !r.reply.is_closed() && (r.seq < r.count || r.waiting));
        for index in 0..self.msg.pings.len() {
            let run = &self.msg.pings[index];
            if run.waiting || run.next_at > now {
                continue;
            }
            let name = run.name.clone();
            let route = self
                .msg
                .routes
                .get(&name)
                .filter(|r| r.at.elapsed() < ROUTE_TTL)
                .cloned();
            let Some(route) = route else {
                if self.msg.resolving.insert(name.clone()) {
                    self.lookup(name, LookupFor::Route);
                }
                continue;
            };
            let token = self.token();
            let run = &mut self.msg.pings[index];
            run.seq += 1;
            run.waiting = true;
            let request = MsgRequest::Ping {
                cert: self.identity.cert.clone(),
                nonce: u64::from(run.seq),
            };
            let run_id = run.id;
            self.net
                .request(token, route.peer, route.addrs, OutRequest::Msg(request));
            self.msg.pending.insert(
                token,
                MsgPending::Ping {
                    run: run_id,
                    sent: Instant::now(),
                },
            );
        }
    }

    pub(super) fn cmd_contacts(
        &mut self,
        add: Option<String>,
        remove: Option<String>,
        reply: Replier<ControlResponse>,
    ) {
        let parse = |n: String| UserName::parse(&n).map_err(|e| format!("invalid name {n:?}: {e}"));
        let result = match (add, remove) {
            (Some(n), _) => parse(n).and_then(|n| {
                self.store
                    .add_contact(n.as_str())
                    .map(|_| format!("{n} added to contacts"))
                    .map_err(|e| e.to_string())
            }),
            (_, Some(n)) => parse(n).and_then(|n| match self.store.remove_contact(n.as_str()) {
                Ok(true) => Ok(format!("{n} removed from contacts")),
                Ok(false) => Err(format!("{n} is not a contact")),
                Err(e) => Err(e.to_string()),
            }),
            (None, None) => {
                let _ = reply.try_send(
                    self.store
                        .contacts()
                        .map(ControlResponse::Contacts)
                        .map_err(|e| e.to_string()),
                );
                return;
            }
        };
        let _ = reply.try_send(result.map(|message| ControlResponse::Done { message }));
    }

    /// Tells online contacts of this node's new status directly (best effort; crashes are
    /// caught by the presence lease instead).
    pub(super) fn push_presence(&mut self) {
        let Ok(contacts) = self.store.contacts() else {
            return;
        };
        for c in contacts.into_iter().take(1000) {
            let Ok(name) = UserName::parse_canonical(&c) else {
                continue;
            };
            if self
                .msg
                .routes
                .get(&name)
                .is_some_and(|r| r.at.elapsed() < ROUTE_TTL)
            {
                self.push_presence_to(&name);
            } else {
                self.lookup(name, LookupFor::Push);
            }
        }
    }

    fn push_presence_to(&mut self, name: &UserName) {
        let Some(route) = self.msg.routes.get(name).cloned() else {
            return;
        };
        let status = if self.going_down.is_some() {
            natter_proto::Status::Offline
        } else {
            self.presence
        };
        let home = match self.role {
            super::Current::Leaf => self.primary,
            super::Current::Superpeer => Some(self.peer_id()),
        };
        let Some(record) = self.own_record(status, home) else {
            return;
        };
        let token = self.token();
        self.net.request(
            token,
            route.peer,
            route.addrs,
            OutRequest::Msg(MsgRequest::Presence { record }),
        );
        self.msg.pending.insert(token, MsgPending::Presence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_valid_and_increasing() {
        let mut m = Messaging::default();
        let ids: Vec<String> = (0..1000).map(|_| m.ulid()).collect();
        assert!(ids.iter().all(|id| msg::is_ulid(id)), "{:?}", &ids[..3]);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(1), 2000);
        assert_eq!(backoff_ms(4), 16_000);
        assert_eq!(backoff_ms(5), 30_000);
        assert_eq!(backoff_ms(1000), 30_000);
    }
}
