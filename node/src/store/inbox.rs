//! The inbox: received messages, stored before the ack is sent (the ack means "stored by the
//! recipient's node"), deduplicated by sender and message id because a sender retries until it
//! sees an ack, and an ack can be lost.
//!
//! Two orders are kept: arrival order ([`Store::inbox`], what `natter inbox --follow` pages
//! through with a cursor), and conversation order ([`Store::conversation`], by the sender's
//! sequence numbers, which retries and path changes can deliver out of order).

use rusqlite::{Row, params};

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

/// What [`Store::receive`] did. Both mean "now stored": ack either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First time this id arrived; it was stored.
    Stored,
    /// This id was already stored (the sender retried); nothing changed.
    Duplicate,
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
    /// with a receipt per message. Nothing is stored if any message is invalid.
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
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO inbox (id, sender, text, sent_at_ms, conv_seq, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (sender, id) DO NOTHING",
            )?;
            let mut receipts = Vec::with_capacity(rows.len());
            for (msg, sent_at, conv_seq, received_at) in &rows {
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
