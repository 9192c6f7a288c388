//! Presence between contacts, and what this node remembers of it: a status change is pushed
//! to the online contacts directly (best effort; the lease catches crashes), and every
//! verified record leaves its last-seen time in the store, so that "last seen" outlives the
//! directory record (`store/seen.rs`).

use natter_proto::msg::MsgRequest;
use natter_proto::{PresenceRecord, UserName};
use tokio::time::Instant as TokioInstant;

use super::api::FollowEvent;
use super::messaging::MsgPending;
use super::{Daemon, LookupFor, unix_now};
use crate::net::OutRequest;

impl Daemon {
    /// Tells online contacts of this node's new status directly (best effort; crashes are
    /// caught by the presence lease instead).
    pub(super) fn push_presence(&mut self) {
        self.store_then(
            |s| s.contacts(),
            |d, contacts| {
                if let Ok(contacts) = contacts {
                    d.push_presence_to_contacts(contacts);
                }
            },
        );
    }

    /// The first time this run's presence is in the directory, contacts hear of it: their
    /// nodes then know this device is back (and deliver what waited for it) without looking.
    pub(super) fn announce_online(&mut self) {
        if !std::mem::replace(&mut self.msg.announced, true) {
            self.push_presence();
        }
    }

    fn push_presence_to_contacts(&mut self, contacts: Vec<String>) {
        for c in contacts.into_iter().take(1000) {
            let Ok(name) = UserName::parse_canonical(&c) else {
                continue;
            };
            if self.msg.outbox.route(&name, TokioInstant::now()).is_some() {
                self.push_presence_to(&name);
            } else {
                self.lookup(name, LookupFor::Push);
            }
        }
    }

    /// A contact's device pushed its presence (verified by the msg handler): remembered as
    /// seen, its route learnt while it is live, and streamed to `inbox --follow`.
    pub(super) fn on_presence_push(&mut self, record: PresenceRecord) {
        let name = record.username().clone();
        self.note_seen(&record);
        if record.is_live(unix_now()) {
            self.learn_route(&name, &record);
        } else if self
            .msg
            .outbox
            .route(&name, TokioInstant::now())
            .is_some_and(|r| r.peer == record.body.cert.peer_id())
        {
            // That device signed off, and the user may be on another one: the next message
            // looks the user up instead of trying it.
            self.msg.outbox.forget_route(&name);
        }
        // The user is as available as their most available device: one of two signing off
        // leaves them on the other.
        let others = self.msg.fanout.device_seen(
            &name,
            super::devices::device_route(&record, unix_now()),
            TokioInstant::now(),
        );
        let status = match others {
            Some(other) if !record.is_live(unix_now()) => other,
            _ => record.body.status,
        };
        let event = FollowEvent::Presence {
            user: name.to_string(),
            status: status.to_string(),
            last_seen: Some(record.body.last_seen),
        };
        self.msg.follow.presence(&event);
    }

    /// Remembers when a verified record says its user was last seen: "last seen" outlives
    /// the record, which ends with its lease.
    pub(super) fn note_seen(&mut self, record: &PresenceRecord) {
        let at = record.body.last_seen;
        let noted = &mut self.msg.seen_noted;
        if noted.get(record.username()).is_some_and(|t| *t >= at) {
            return;
        }
        if noted.len() >= crate::store::MAX_LAST_SEEN {
            noted.clear();
        }
        noted.insert(record.username().clone(), at);
        let name = record.username().to_string();
        self.store_write_lazy("remembering last seen", move |s| s.note_seen(&name, at));
    }

    pub(super) fn push_presence_to(&mut self, name: &UserName) {
        let Some(route) = self.msg.outbox.route(name, TokioInstant::now()).cloned() else {
            return;
        };
        let status = if self.going_down.is_some() {
            natter_proto::Status::Offline
        } else {
            self.presence
        };
        let home = match self.role {
            super::Current::Leaf => self.attach.primary(),
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

/// A lookup's answer without a record: `status` "offline" (the user exists) or "unknown".
pub(super) fn not_found_view(
    name: &UserName,
    status: &str,
    last_seen: Option<u64>,
) -> super::api::LookupView {
    super::api::LookupView {
        user: name.to_string(),
        status: status.into(),
        peer_id: None,
        superpeers: vec![],
        direct_addrs: vec![],
        last_seen,
        home: None,
        confirmed: false,
        seq: None,
        devices: vec![],
    }
}
