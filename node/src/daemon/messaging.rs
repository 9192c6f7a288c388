//! Direct messages: `send` writes the outbox before any network I/O, and the outbox service
//! ([`super::outbox`], a state machine) decides delivery; this file carries its actions out
//! (store jobs, lookups, requests, answers). The receiver authenticates the sender,
//! deduplicates by sender and id and streams new messages to `inbox --follow` (`follow.rs`).
//! Also `ping` probes; presence pushed to contacts is in `presence.rs`.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::time::Instant as TokioInstant;

use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use natter_proto::UserName;
use natter_proto::msg::{self, MAX_BATCH, MsgRefusal, MsgRequest, MsgResponse};

use super::api::{ControlResponse, SendView};
use super::fanout::Fanout;
use super::follow::Followers;
use super::inbox::{self, MsgDecision};
use super::outbox::{self, Action, Outbox, SendOutcome};
use super::ping::PingRun;
use super::{Daemon, LookupFor, unix_now};
use crate::control::Replier;
use crate::net::{Command, OutRequest, Token};
use crate::store::{OutgoingMessage, QueuedMessage, Store, StoreError};

#[derive(Debug)]
pub(crate) enum MsgPending {
    Deliver {
        to: UserName,
    },
    /// A batch to a further device (see `fanout.rs`).
    Fanout {
        peer: PeerId,
    },
    Ping {
        run: u64,
        sent: Instant,
    },
    Presence,
}

/// Messaging state of the daemon.
#[derive(Debug)]
pub(crate) struct Messaging {
    pub(super) pending: HashMap<Token, MsgPending>,
    /// Senders' certificates, verified once per sender and certificate.
    certs: inbox::VerifiedCerts,
    /// Delivery decisions; `send` commands waiting for their message wait in it.
    pub(super) outbox: Outbox<Replier<ControlResponse>>,
    /// Delivered messages on to the further devices.
    pub(super) fanout: Fanout,
    /// `inbox --follow` streams (see `follow.rs`).
    pub(super) follow: Followers,
    /// Whether contacts were told this run's presence (`presence.rs`, `announce_online`).
    pub(super) announced: bool,
    /// `natter ping` runs in progress (see `ping.rs`).
    pub(super) pings: Vec<PingRun>,
    pub(super) next_ping: u64,
    ids: crate::ulid::UlidGenerator,
    /// When the inbox was last pruned by the retention setting.
    pruned_at: Option<Instant>,
    /// The last-seen times already written to the store, so that a lookup per `send` does
    /// not write one each (bounded: cleared when full).
    pub(super) seen_noted: HashMap<UserName, u64>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Messaging {
    /// Senders are verified under `issuer`, the pinned key.
    pub(crate) fn new(issuer: natter_proto::IssuerKey, me: PeerId) -> Self {
        Self {
            fanout: Fanout::new(me),
            announced: false,
            pending: HashMap::new(),
            certs: inbox::VerifiedCerts::new(issuer),
            seen_noted: HashMap::new(),
            outbox: Outbox::default(),
            follow: Followers::default(),
            pings: Vec::new(),
            next_ping: 0,
            ids: crate::ulid::UlidGenerator::default(),
            pruned_at: None,
        }
    }

    /// The message request `token` was, if it was one.
    pub(crate) fn take_pending(&mut self, token: Token) -> Option<MsgPending> {
        self.pending.remove(&token)
    }
}

/// Recipients an outbox pass sends to at most; the next pass takes the others.
const MAX_RECIPIENTS_PER_PASS: usize = 64;
/// How often received messages past the retention are deleted.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// On the store thread: for every recipient with due messages and nothing in flight (`busy`),
/// the run of due messages from the head of its queue, in conversation order (a message
/// waiting out a backoff holds back the ones after it), at most a batch.
fn due_batches(
    store: &Store,
    now: u64,
    busy: &HashSet<String>,
) -> Result<Vec<(String, Vec<QueuedMessage>)>, StoreError> {
    // The busy ones are skipped here rather than in SQL: few recipients are busy at once.
    let recipients: Vec<String> = store
        .due_recipients(now, MAX_RECIPIENTS_PER_PASS + busy.len())?
        .into_iter()
        .filter(|to| !busy.contains(to))
        .take(MAX_RECIPIENTS_PER_PASS)
        .collect();
    let mut batches = Vec::with_capacity(recipients.len());
    for to in recipients {
        let queued: Vec<QueuedMessage> = store
            .queued_head(&to, MAX_BATCH)?
            .into_iter()
            .take_while(|m| m.next_attempt_at_ms <= now)
            .collect();
        if !queued.is_empty() {
            batches.push((to, queued));
        }
    }
    Ok(batches)
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
        let id = self.msg.ids.next();
        let outgoing = OutgoingMessage {
            id: id.clone(),
            to: to.to_string(),
            text,
            sent_at_ms: now_ms(),
        };
        // Durable before any network I/O and before the answer: from here on the message is
        // delivered or queued. This user's other devices get their copy whatever becomes of
        // the delivery.
        let copies = self.further_targets(&self.identity.user, None);
        let rows = !copies.is_empty();
        self.store_then(
            move |s| s.enqueue_with_copies(&outgoing, &copies),
            move |d, stored| {
                if rows && stored.is_ok() {
                    d.msg.fanout.poke(TokioInstant::now());
                    d.run_fanout();
                }
                d.on_enqueued(to, id, wait, reply, stored.map(drop));
            },
        );
        // The read that delivers it joins the write's group; see `Outbox::queueing`.
        self.msg.outbox.queueing();
        self.run_outbox();
    }

    /// The message `id` is in the outbox (or could not be stored).
    fn on_enqueued(
        &mut self,
        to: UserName,
        id: String,
        wait: bool,
        reply: Replier<ControlResponse>,
        stored: Result<(), crate::store::StoreError>,
    ) {
        if let Err(e) = stored {
            let _ = reply.try_send(Err(format!("cannot queue the message: {e}")));
            return;
        }
        let waiter = if wait {
            Some(reply)
        } else {
            let _ = reply.try_send(Ok(ControlResponse::Sent(SendView {
                id: id.clone(),
                status: "queued".into(),
                path: None,
                to: to.to_string(),
                reason: None,
            })));
            None
        };
        self.msg.outbox.queued(to, id, waiter, TokioInstant::now());
        self.run_outbox();
    }

    /// Carries out what the outbox decided.
    pub(super) fn run_outbox(&mut self) {
        while let Some(action) = self.msg.outbox.next_action() {
            match action {
                Action::ReadDue { busy } => {
                    let now = now_ms();
                    self.store_then(
                        move |s| due_batches(s, now, &busy),
                        |d, batches| {
                            let batches = batches
                                .map_err(
                                    |e| tracing::error!(error = %e, "reading the outbox failed"),
                                )
                                .ok();
                            d.msg.outbox.due_read(batches, TokioInstant::now());
                            d.run_outbox();
                        },
                    );
                }
                Action::Lookup(name) => self.lookup(name, LookupFor::Route),
                Action::CheckUser(name) => self.lookup(name, LookupFor::Send),
                Action::Deliver {
                    to,
                    peer,
                    addrs,
                    messages,
                } => self.deliver(peer, addrs, messages, MsgPending::Deliver { to }),
                Action::MarkDelivered {
                    to,
                    device,
                    ids,
                    path,
                } => {
                    if let Some(m) = &self.metrics {
                        m.delivered.inc_by(ids.len() as u64);
                    }
                    let at = now_ms();
                    let targets = self.further_targets(&to, Some(device));
                    let further = !targets.is_empty();
                    self.store_write_lazy("recording deliveries", move |s| {
                        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                        let device = device.to_string();
                        s.mark_delivered_to(&refs, path, at, Some(&device), &targets)
                            .map(drop)
                    });
                    if further {
                        self.msg.fanout.poke(TokioInstant::now());
                        self.run_fanout();
                    }
                }
                Action::Postpone { to, why } => self.postpone(&to, &why),
                Action::Cancel { ids } => {
                    self.store_write("taking messages to an unknown user out", move |s| {
                        for id in &ids {
                            if !s.cancel(id)? {
                                tracing::warn!(%id, "message to an unknown user already gone");
                            }
                        }
                        Ok(())
                    });
                }
                Action::RefuseForGood { id, why } => {
                    tracing::warn!(%id, reason = %why, "message refused for good; kept in the outbox");
                    self.store_write("parking a refused message", move |s| {
                        s.refuse_for_good(&id, &why).map(drop)
                    });
                }
                Action::Answer {
                    waiter,
                    id,
                    to,
                    outcome,
                } => {
                    let answer = match outcome {
                        SendOutcome::Delivered(path) => Ok(ControlResponse::Sent(SendView {
                            id,
                            status: "delivered".into(),
                            path: Some(path.into()),
                            to: to.to_string(),
                            reason: None,
                        })),
                        SendOutcome::Queued => Ok(ControlResponse::Sent(SendView {
                            id,
                            status: "queued".into(),
                            path: None,
                            to: to.to_string(),
                            reason: None,
                        })),
                        SendOutcome::Refused(reason) => Ok(ControlResponse::Sent(SendView {
                            id,
                            status: "queued".into(),
                            path: None,
                            to: to.to_string(),
                            reason: Some(reason),
                        })),
                        SendOutcome::RefusedForGood(reason) => {
                            Ok(ControlResponse::Sent(SendView {
                                id,
                                status: "refused".into(),
                                path: None,
                                to: to.to_string(),
                                reason: Some(reason),
                            }))
                        }
                        SendOutcome::UnknownUser => {
                            Err(format!("no user named {to}; nothing was queued"))
                        }
                    };
                    let _ = waiter.try_send(answer);
                }
            }
        }
    }

    /// Sends a batch to `peer`, under this device's certificate; its answer goes to
    /// `pending`'s owner.
    pub(super) fn deliver(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        messages: Vec<msg::DirectMessage>,
        pending: MsgPending,
    ) {
        let request = MsgRequest::Deliver {
            cert: self.identity.cert.clone(),
            messages,
        };
        let token = self.token();
        self.net
            .request(token, peer, addrs, OutRequest::Msg(request));
        self.msg.pending.insert(token, pending);
    }

    /// Pushes every due message of `to` back by its backoff.
    fn postpone(&mut self, to: &UserName, why: &str) {
        let (to, why) = (to.to_string(), why.to_owned());
        self.store_write_lazy("postponing messages", move |s| {
            s.postpone(&to, now_ms(), outbox::BACKOFF, &why).map(drop)
        });
    }

    /// With a retention setting, deletes what it no longer keeps: at start, then hourly.
    fn prune_inbox(&mut self) {
        let Some(keep) = self.config.retention else {
            return;
        };
        if self
            .msg
            .pruned_at
            .is_some_and(|at| at.elapsed() < PRUNE_INTERVAL)
        {
            return;
        }
        self.msg.pruned_at = Some(Instant::now());
        let before = now_ms().saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
        self.store_write("deleting messages past the retention", move |s| {
            let n = s.prune_inbox(before)?;
            if n > 0 {
                tracing::info!(deleted = n, "received messages past the retention deleted");
            }
            Ok(())
        });
    }

    /// Time passes: `send`s whose wait is over hear "queued", held-back recipients are tried
    /// again, followers get what they missed.
    pub(super) fn messaging_tick(&mut self) {
        self.prune_inbox();
        self.msg.outbox.tick(TokioInstant::now());
        self.run_outbox();
        self.msg.fanout.tick(TokioInstant::now());
        self.run_fanout();
        self.ping_tick();
        self.feed_followers();
    }

    pub(super) fn on_msg_response(
        &mut self,
        pending: MsgPending,
        answer: Result<(MsgResponse, &'static str), String>,
    ) {
        match pending {
            MsgPending::Deliver { to } => {
                match answer {
                    Ok((MsgResponse::Stored { .. }, path)) => self.msg.outbox.delivered(&to, path),
                    Ok((
                        MsgResponse::Partial {
                            accepted, message, ..
                        },
                        path,
                    )) => {
                        tracing::info!(%to, accepted, reason = %message, "part of a batch refused; will retry");
                        let now = TokioInstant::now();
                        self.msg
                            .outbox
                            .refused(to, accepted as usize, path, message, now);
                    }
                    Ok((
                        MsgResponse::Refused {
                            code: MsgRefusal::InboxFull,
                            message,
                        },
                        path,
                    )) => {
                        tracing::info!(%to, reason = %message, "batch refused; will retry");
                        let now = TokioInstant::now();
                        self.msg.outbox.refused(to, 0, path, message, now);
                    }
                    Ok((
                        MsgResponse::Refused {
                            code: MsgRefusal::BadMessage,
                            message,
                        },
                        _,
                    )) => {
                        tracing::warn!(%to, reason = %message, "batch refused as malformed");
                        self.msg.outbox.refused_for_good(to, message);
                    }
                    other => {
                        let why = match other {
                            Ok((MsgResponse::Refused { message, .. }, _)) => message,
                            Ok((other, _)) => format!("unexpected answer {other:?}"),
                            Err(e) => e,
                        };
                        tracing::info!(%to, error = %why, "delivery failed; will retry");
                        self.msg.outbox.failed(to, why, TokioInstant::now());
                    }
                }
                self.run_outbox();
            }
            MsgPending::Fanout { peer } => self.on_fanout_response(peer, answer),
            MsgPending::Ping { run, sent } => self.on_pong(run, sent, answer),
            MsgPending::Presence => {}
        }
    }

    /// A request of the msg protocol: decided by the inbox handler, carried out here.
    pub(super) fn on_msg_request(
        &mut self,
        peer: PeerId,
        request: MsgRequest,
        channel: ResponseChannel<MsgResponse>,
    ) {
        let own = self.identity.user.clone();
        match inbox::handle_request(
            peer,
            request,
            &mut self.msg.certs,
            &self.revocations,
            &own,
            unix_now(),
            now_ms(),
        ) {
            MsgDecision::Answer(response) => {
                self.net.send(Command::RespondMsg { channel, response });
            }
            MsgDecision::Store(batch) => {
                // One transaction for the whole batch, in order, committed together with
                // whatever else reached the store meanwhile; acknowledged once durable. The
                // same job reads what `inbox --follow` streams, saving a store round trip.
                let follow = self.start_feeding();
                self.store_then(
                    move |s| {
                        let receipts = s.receive_all(&batch)?;
                        let new = follow.map(|from| s.inbox(from, super::follow::FEED_READ));
                        Ok((receipts, new))
                    },
                    move |d, done| {
                        let (receipts, new) = match done {
                            Ok((receipts, new)) => (Ok(receipts), new),
                            Err(e) => (Err(e), None),
                        };
                        let (response, stored) = inbox::stored_answer(&receipts);
                        d.net.send(Command::RespondMsg { channel, response });
                        if let Some(m) = &d.metrics {
                            m.received.inc_by(u64::from(stored));
                        }
                        match new {
                            Some(new) => d.fed(new),
                            None if follow.is_some() => d.fed(Ok(Vec::new())),
                            None if stored > 0 => d.feed_followers(),
                            None => {}
                        }
                    },
                );
            }
            MsgDecision::Copies(copies) => self.keep_copies(peer, copies, channel),
            MsgDecision::Presence(record) => {
                self.net.send(Command::RespondMsg {
                    channel,
                    response: MsgResponse::Noted,
                });
                self.on_presence_push(record);
            }
        }
    }
}
