//! The inbox: received messages, stored before the ack is sent (the ack means "stored by the
//! recipient's node"), deduplicated by sender and message id because a sender retries until it
//! sees an ack, and an ack can be lost.
//!
//! Two orders are kept: arrival order ([`Store::inbox`], what `natter inbox --follow` pages
//! through with a cursor), and conversation order ([`Store::conversation`], by the sender's
//! sequence numbers, which retries and path changes can deliver out of order).

use rusqlite::{Row, params};

pub use super::quota::{InboxLimits, OverQuota};
use super::quota::{exists, over_quota, usage};
use super::{Store, StoreError, check_message_id, check_name, check_text, int, sql_limit};

/// A message as it arrived from the network, validated by the protocol layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// ULID, canonical text form; with the sender, the dedup key (ids are the sender's choice).
    pub id: String,
    /// Sender user name (from its certificate), canonical.
    pub from: String,
    pub text: String,
    /// The sender's clock (unix milliseconds).
    pub sent_at_ms: u64,
    /// The sender's per-conversation sequence number.
    pub conv_seq: u64,
    /// This node's clock (unix milliseconds).
    pub received_at_ms: u64,
}

/// What [`Store::receive`] did. `Stored` and `Duplicate` mean "now stored": ack either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First time this id arrived; it was stored.
    Stored,
    /// This id was already stored (the sender retried); nothing changed.
    Duplicate,
    /// Not stored: over a quota. The sender keeps it queued and tries again later.
    Refused(OverQuota),
}

/// A stored received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Arrival order, increasing, never reused: a cursor for [`Store::inbox`].
    pub rowid: i64,
    pub id: String,
    pub from: String,
    pub text: String,
    pub sent_at_ms: u64,
    pub received_at_ms: u64,
    pub conv_seq: u64,
}

const ENTRY_COLUMNS: &str = "arrival, id, sender, text, sent_at_ms, received_at_ms, conv_seq";

impl InboxEntry {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            rowid: r.get(0)?,
            id: r.get(1)?,
            from: r.get(2)?,
            text: r.get(3)?,
            sent_at_ms: r.get(4)?,
            received_at_ms: r.get(5)?,
            conv_seq: r.get(6)?,
        })
    }
}

impl Store {
    /// Stores `msg` unless a message with its id is already stored.
    pub fn receive(&self, msg: &IncomingMessage) -> Result<Receipt, StoreError> {
        let mut receipts = self.receive_all(std::slice::from_ref(msg))?;
        Ok(receipts.pop().unwrap_or(Receipt::Duplicate))
    }

    /// Stores a batch in arrival order, in one transaction (one disk sync for the batch),
    /// with a receipt per message. Nothing is stored if any message is invalid. From the
    /// first message over a quota ([`InboxLimits`]) on, the rest of the batch is refused, so
    /// that what is stored stays in the sender's order.
    pub fn receive_all(&self, msgs: &[IncomingMessage]) -> Result<Vec<Receipt>, StoreError> {
        let mut rows = Vec::with_capacity(msgs.len());
        for msg in msgs {
            check_message_id(&msg.id)?;
            check_name(&msg.from)?;
            check_text(&msg.text)?;
            rows.push((
                msg,
                int("sent-at time", msg.sent_at_ms)?,
                int("conversation sequence", msg.conv_seq)?,
                int("received-at time", msg.received_at_ms)?,
            ));
        }
        let limits = self.inbox_limits;
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO inbox (id, sender, text, sent_at_ms, conv_seq, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (sender, id) DO NOTHING",
            )?;
            let mut receipts = Vec::with_capacity(rows.len());
            let mut refused = None;
            for (msg, sent_at, conv_seq, received_at) in &rows {
                let known = "SELECT 1 FROM inbox WHERE sender = ?1 AND id = ?2";
                if exists(tx, known, params![msg.from, msg.id])? {
                    receipts.push(Receipt::Duplicate);
                    continue;
                }
                if refused.is_none() {
                    refused = over_quota(tx, &limits, &msg.from, msg.text.len() as u64)?;
                }
                if let Some(quota) = refused {
                    receipts.push(Receipt::Refused(quota));
                    continue;
                }
                let n = stmt.execute(params![
                    msg.id,
                    msg.from,
                    msg.text,
                    sent_at,
                    conv_seq,
                    received_at
                ])?;
                receipts.push(if n == 1 {
                    Receipt::Stored
                } else {
                    Receipt::Duplicate
                });
            }
            Ok(receipts)
        })
    }

    /// Up to `limit` messages that arrived after the one with `after_rowid` (from the first
    /// when `None`), in arrival order.
    pub fn inbox(
        &self,
        after_rowid: Option<i64>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM inbox WHERE arrival > ?1 ORDER BY arrival LIMIT ?2"
        ))?;
        let rows = stmt.query_map(
            params![after_rowid.unwrap_or(i64::MIN), sql_limit(limit)],
            InboxEntry::from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last `limit` messages, in arrival order.
    pub fn inbox_tail(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT * FROM (SELECT {ENTRY_COLUMNS} FROM inbox ORDER BY arrival DESC LIMIT ?1)
             ORDER BY arrival"
        ))?;
        let rows = stmt.query_map(params![sql_limit(limit)], InboxEntry::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the messages with these ids (from any sender); how many there were.
    pub fn delete_messages(&self, ids: &[String]) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached("DELETE FROM inbox WHERE id = ?1")?;
            let mut deleted = 0;
            for id in ids {
                deleted += stmt.execute(params![id])?;
            }
            Ok(deleted)
        })
    }

    /// Deletes every message, or every message of `from`; how many there were.
    pub fn clear_inbox(&self, from: Option<&str>) -> Result<usize, StoreError> {
        self.write(|tx| {
            Ok(match from {
                Some(from) => tx.execute("DELETE FROM inbox WHERE sender = ?1", params![from])?,
                None => tx.execute("DELETE FROM inbox", [])?,
            })
        })
    }

    /// Deletes the messages received before `before_ms` (unix milliseconds): retention.
    pub fn prune_inbox(&self, before_ms: u64) -> Result<usize, StoreError> {
        let before = int("retention time", before_ms)?;
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM inbox WHERE received_at_ms < ?1",
                params![before],
            )?)
        })
    }

    /// Messages and text bytes stored from `from`, or in all for `None`.
    pub fn inbox_usage(&self, from: Option<&str>) -> Result<(u64, u64), StoreError> {
        Ok(usage(&self.conn(), from.unwrap_or(""))?)
    }

    /// Up to `limit` messages from `from` with a sequence number above `after_seq` (from the
    /// first when `None`), in conversation order: by the sender's sequence number, then
    /// arrival.
    pub fn conversation(
        &self,
        from: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let after = match after_seq {
            // Past i64::MAX nothing can follow.
            Some(seq) => match i64::try_from(seq) {
                Ok(seq) => seq,
                Err(_) => return Ok(Vec::new()),
            },
            None => i64::MIN,
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM inbox WHERE sender = ?1 AND conv_seq > ?2
             ORDER BY conv_seq, arrival LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![from, after, sql_limit(limit)], InboxEntry::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::limits::MAX_MESSAGE_TEXT_BYTES;

    use super::super::test_util::*;
    use super::*;

    fn batch(from: &str, first: u32, n: u32) -> Vec<IncomingMessage> {
        (first..first + n)
            .map(|i| incoming(i, from, u64::from(i)))
            .collect()
    }

    fn stored(receipts: &[Receipt]) -> usize {
        receipts.iter().filter(|r| **r == Receipt::Stored).count()
    }

    #[test]
    fn a_stranger_gets_a_requests_quota_a_contact_more_and_a_blocked_sender_nothing() {
        let (dir, mut store) = fresh();
        let limits = InboxLimits {
            request_messages: 3,
            request_bytes: 1024,
            sender_messages: 5,
            sender_bytes: 1024,
            total_messages: 9,
            total_bytes: 1024 * 1024,
        };
        store.set_inbox_limits(limits);
        // A stranger's flood stops at the request quota, in order; the rest is refused.
        let r = store.receive_all(&batch("mallory", 1, 5)).unwrap();
        assert_eq!(&r[..3], [Receipt::Stored; 3]);
        let request = OverQuota::Request {
            messages: 3,
            bytes: 1024,
        };
        assert_eq!(&r[3..], [Receipt::Refused(request); 2]);
        // A retry of what was stored is still acknowledged.
        let r = store.receive_all(&batch("mallory", 1, 1)).unwrap();
        assert_eq!(r, [Receipt::Duplicate]);
        // A contact gets its larger share; someone this user wrote to counts as accepted.
        store.add_contact("alice").unwrap();
        let r = store.receive_all(&batch("alice", 100, 6)).unwrap();
        assert_eq!(stored(&r), 5);
        assert!(matches!(r[5], Receipt::Refused(OverQuota::Sender { .. })));
        store
            .enqueue(&crate::store::OutgoingMessage {
                id: ulid(900),
                to: "carol".into(),
                text: "hi".into(),
                sent_at_ms: 1,
            })
            .unwrap();
        // 8 of 9 are stored: carol's second is over the whole inbox's bound.
        let r = store.receive_all(&batch("carol", 200, 2)).unwrap();
        assert_eq!(r[0], Receipt::Stored);
        assert!(matches!(r[1], Receipt::Refused(OverQuota::Total { .. })));
        assert_eq!(store.inbox_usage(None).unwrap().0, 9);
        // Deleting makes room again, and the usage survives a restart.
        assert_eq!(store.clear_inbox(Some("alice")).unwrap(), 5);
        let mut store = reopen(&dir, store);
        store.set_inbox_limits(limits);
        assert_eq!(store.inbox_usage(None).unwrap().0, 4);
        assert_eq!(store.inbox_usage(Some("mallory")).unwrap().0, 3);
        assert_eq!(store.inbox_usage(Some("alice")).unwrap(), (0, 0));
        let r = store.receive_all(&batch("carol", 201, 1)).unwrap();
        assert_eq!(r, [Receipt::Stored]);
        // Blocked: nothing more, whatever the quota.
        store.block("carol").unwrap();
        let r = store.receive_all(&batch("carol", 300, 1)).unwrap();
        assert_eq!(r, [Receipt::Refused(OverQuota::Blocked)]);
        assert!(store.unblock("carol").unwrap());
        assert_eq!(store.blocked().unwrap(), Vec::<String>::new());
        // One message by id, and retention by age.
        assert_eq!(store.delete_messages(&[ulid(1)]).unwrap(), 1);
        assert_eq!(store.delete_messages(&[ulid(1)]).unwrap(), 0);
        assert_eq!(store.prune_inbox(u64::MAX / 2).unwrap(), 4);
        assert_eq!(store.inbox_usage(None).unwrap(), (0, 0));
    }

    #[test]
    fn the_usage_counts_text_bytes() {
        let (_dir, store) = fresh();
        let mut m = incoming(1, "alice", 1);
        m.text = "héllo".into();
        store.receive(&m).unwrap();
        assert_eq!(store.inbox_usage(Some("alice")).unwrap(), (1, 6));
        assert_eq!(store.inbox_usage(None).unwrap(), (1, 6));
    }

    fn seqs(entries: &[InboxEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.conv_seq).collect()
    }

    #[test]
    fn one_senders_id_does_not_swallow_anothers_message() {
        let (_dir, store) = fresh();
        let from_alice = incoming(1, "alice", 1);
        assert_eq!(store.receive(&from_alice).unwrap(), Receipt::Stored);
        // Mallory sends with alice's id (ids are the sender's choice): stored, as hers.
        let from_mallory = IncomingMessage {
            from: "mallory".into(),
            text: "mine".into(),
            ..from_alice.clone()
        };
        assert_eq!(store.receive(&from_mallory).unwrap(), Receipt::Stored);
        // And the other way round: alice's message after mallory's copy of its id.
        let (_dir, store) = fresh();
        assert_eq!(store.receive(&from_mallory).unwrap(), Receipt::Stored);
        assert_eq!(store.receive(&from_alice).unwrap(), Receipt::Stored);
        let senders: Vec<String> = store
            .inbox(None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.from)
            .collect();
        assert_eq!(senders, ["mallory", "alice"]);
    }

    #[test]
    fn dedup_by_id() {
        let (dir, store) = fresh();
        let m = incoming(1, "alice", 1);
        assert_eq!(store.receive(&m).unwrap(), Receipt::Stored);
        // A retry, even one whose other fields differ, stores nothing.
        let retry = IncomingMessage {
            text: "changed".into(),
            received_at_ms: 9_999,
            ..m.clone()
        };
        assert_eq!(store.receive(&retry).unwrap(), Receipt::Duplicate);
        let store = reopen(&dir, store);
        assert_eq!(store.receive(&m).unwrap(), Receipt::Duplicate);
        let all = store.inbox(None, 10).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].text, "hello 1");
        assert_eq!(all[0].received_at_ms, 2_001);
    }

    #[test]
    fn arrival_and_conversation_order_survive_reopen() {
        let (dir, store) = fresh();
        // Bob's 2 overtakes his 1 (retry on another path); alice interleaves.
        for m in [
            incoming(1, "bob", 2),
            incoming(2, "alice", 1),
            incoming(3, "bob", 1),
            incoming(4, "alice", 2),
            incoming(5, "bob", 3),
        ] {
            assert_eq!(store.receive(&m).unwrap(), Receipt::Stored);
        }
        let store = reopen(&dir, store);
        let arrival = store.inbox(None, 100).unwrap();
        let ids: Vec<&str> = arrival.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [ulid(1), ulid(2), ulid(3), ulid(4), ulid(5)]);
        assert!(arrival.windows(2).all(|w| w[0].rowid < w[1].rowid));
        assert_eq!(
            arrival[0],
            InboxEntry {
                rowid: arrival[0].rowid,
                id: ulid(1),
                from: "bob".into(),
                text: "hello 1".into(),
                sent_at_ms: 1_001,
                received_at_ms: 2_001,
                conv_seq: 2,
            }
        );
        assert_eq!(
            seqs(&store.conversation("bob", None, 100).unwrap()),
            [1, 2, 3]
        );
        assert_eq!(
            seqs(&store.conversation("alice", None, 100).unwrap()),
            [1, 2]
        );
        assert_eq!(
            seqs(&store.conversation("bob", Some(1), 100).unwrap()),
            [2, 3]
        );
        assert_eq!(seqs(&store.conversation("bob", None, 2).unwrap()), [1, 2]);
        assert!(
            store
                .conversation("bob", Some(u64::MAX), 10)
                .unwrap()
                .is_empty()
        );
        assert!(store.conversation("carol", None, 10).unwrap().is_empty());
    }

    #[test]
    fn inbox_pages_with_a_cursor() {
        let (_dir, store) = fresh();
        store.add_contact("alice").unwrap();
        for n in 0..25 {
            store
                .receive(&incoming(n, "alice", u64::from(n) + 1))
                .unwrap();
        }
        let mut cursor = None;
        let mut seen = Vec::new();
        loop {
            let page = store.inbox(cursor, 10).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            cursor = page.last().map(|e| e.rowid);
            seen.extend(page.into_iter().map(|e| e.conv_seq));
        }
        assert_eq!(seen, (1..=25).collect::<Vec<_>>());
        assert!(store.inbox(None, 0).unwrap().is_empty());
        assert!(store.inbox(Some(i64::MAX), 10).unwrap().is_empty());
        assert_eq!(store.inbox(Some(i64::MIN), 1).unwrap().len(), 1);
    }

    #[test]
    fn text_up_to_64_kib_and_bad_input() {
        let (_dir, store) = fresh();
        let mut m = incoming(1, "alice", 1);
        m.text = "x".repeat(MAX_MESSAGE_TEXT_BYTES);
        assert_eq!(store.receive(&m).unwrap(), Receipt::Stored);
        assert_eq!(store.inbox(None, 1).unwrap()[0].text, m.text);

        let mut big = incoming(2, "alice", 2);
        big.text.push_str(&"x".repeat(MAX_MESSAGE_TEXT_BYTES));
        assert!(matches!(
            store.receive(&big),
            Err(StoreError::TooLarge { .. })
        ));
        let mut bad = incoming(3, "ALICE", 3);
        assert!(matches!(
            store.receive(&bad),
            Err(StoreError::BadName { .. })
        ));
        bad.from = "alice".into();
        bad.id = ulid(3).to_lowercase();
        assert!(matches!(
            store.receive(&bad),
            Err(StoreError::Invalid { .. })
        ));
        bad.id = ulid(3);
        bad.conv_seq = u64::MAX;
        assert!(matches!(
            store.receive(&bad),
            Err(StoreError::Invalid { .. })
        ));
        bad.conv_seq = 3;
        bad.received_at_ms = u64::MAX;
        assert!(store.receive(&bad).is_err());
        assert_eq!(
            store.inbox(None, 10).unwrap().len(),
            1,
            "nothing bad stored"
        );
    }
}
