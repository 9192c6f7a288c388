//! `inbox --follow`: the followers of the inbox and what they are streamed (new messages as
//! they are stored, contacts' presence changes), and `inbox` over the control API.

use super::Daemon;
use super::api::{ControlResponse, FollowEvent, InboxItem};
use crate::control::Replier;
use crate::store::{InboxEntry, StoreError};

/// Messages `inbox` answers over the control API at most (the newest): 100 of the largest
/// fit the reply limit even escaped.
const CONTROL_INBOX: usize = 100;
/// Most messages one feeding read of `inbox --follow` takes (the rest at the next pass).
pub(super) const FEED_READ: usize = 1000;

/// The control clients following the inbox, each with the last row it was sent.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    followers: Vec<(Replier<ControlResponse>, i64)>,
    /// An inbox read for the followers is running; another pass is wanted after it.
    feeding: bool,
    feed_again: bool,
}

impl Followers {
    /// Sends each follower the entries past its last one; a full buffer stops that follower
    /// here (the rest goes out at the next pass).
    pub(super) fn feed(&mut self, new: &[InboxEntry]) {
        for (reply, last) in &mut self.followers {
            let from = *last;
            for m in new.iter().filter(|m| m.rowid > from) {
                if reply
                    .try_send(Ok(ControlResponse::Event(FollowEvent::Message(item(m)))))
                    .is_err()
                {
                    break;
                }
                *last = m.rowid;
            }
        }
        self.followers.retain(|(r, _)| !r.is_closed());
    }

    /// Streams a contact's presence change to every follower.
    pub(super) fn presence(&self, event: &FollowEvent) {
        for (reply, _) in &self.followers {
            let _ = reply.try_send(Ok(ControlResponse::Event(event.clone())));
        }
    }
}

fn item(m: &InboxEntry) -> InboxItem {
    InboxItem {
        id: m.id.clone(),
        from: m.from.clone(),
        text: m.text.clone(),
        sent_at: m.sent_at_ms,
        received_at: m.received_at_ms,
    }
}

impl Daemon {
    /// Streams messages stored since each follower's last one: one read for all of them on
    /// the store thread, one at a time (a call meanwhile asks for another pass after it).
    pub(super) fn feed_followers(&mut self) {
        if let Some(from) = self.start_feeding() {
            self.store_then(move |s| s.inbox(from, FEED_READ), |d, new| d.fed(new));
        } else if self.msg.follow.feeding {
            self.msg.follow.feed_again = true;
        }
    }

    /// Takes the one feeding read there may be at a time, if someone follows and no read
    /// runs: the row after which the read starts (the followers' earliest last one). The
    /// read's result goes to [`Daemon::fed`].
    pub(super) fn start_feeding(&mut self) -> Option<Option<i64>> {
        self.msg.follow.followers.retain(|(r, _)| !r.is_closed());
        if self.msg.follow.followers.is_empty() || self.msg.follow.feeding {
            return None;
        }
        self.msg.follow.feeding = true;
        Some(
            self.msg
                .follow
                .followers
                .iter()
                .map(|(_, last)| *last)
                .min(),
        )
    }

    /// A feeding read's result: streamed to the followers; another pass if one was asked
    /// for meanwhile.
    pub(super) fn fed(&mut self, new: Result<Vec<InboxEntry>, StoreError>) {
        self.msg.follow.feeding = false;
        match new {
            Ok(new) => self.msg.follow.feed(&new),
            Err(e) => tracing::warn!(error = %e, "reading the inbox failed"),
        }
        if std::mem::take(&mut self.msg.follow.feed_again) {
            self.feed_followers();
        }
    }

    /// `inbox` over the control API: the newest [`CONTROL_INBOX`] messages (the CLI reads
    /// the whole inbox from the store itself, page by page); with `follow`, the last 16, then
    /// new ones as they come.
    pub(super) fn cmd_inbox(&mut self, follow: bool, reply: Replier<ControlResponse>) {
        let last = if follow { 16 } else { CONTROL_INBOX };
        self.store_then(
            move |s| s.inbox_tail(last),
            move |d, all| d.answer_inbox(follow, reply, all),
        );
    }

    fn answer_inbox(
        &mut self,
        follow: bool,
        reply: Replier<ControlResponse>,
        all: Result<Vec<InboxEntry>, StoreError>,
    ) {
        let all = match all {
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
        // History first (the last ones, which fit the reply buffer), then new messages as
        // they come; a slow follower is dropped rather than blocking the daemon.
        let last = all.last().map(|m| m.rowid).unwrap_or(0);
        for m in &all {
            let _ = reply.try_send(Ok(ControlResponse::Event(FollowEvent::Message(item(m)))));
        }
        if self.msg.follow.followers.len() < 16 {
            self.msg.follow.followers.push((reply, last));
            // Anything stored while the history was read.
            self.feed_followers();
        } else {
            let _ = reply.try_send(Err("too many inbox followers".into()));
        }
    }
}
