//! The outbox and the sent log (DESIGN: "Messaging", durability).
//!
//! `send` calls [`Store::enqueue`] before touching the network, so a message the user was told
//! is queued survives a crash. The delivery loop takes [`Store::due`] messages, and on failure
//! [`Store::reschedule`]s them with its backoff; the recipient's ack ("stored by the recipient's
//! node") makes [`Store::mark_delivered`] move the message to `sent` in one transaction, so it
//! is in exactly one of the two tables at any instant.
//!
//! Each message carries a per-conversation sequence number, assigned here in the enqueue
//! transaction: 1, 2, 3, … per recipient, never reused, so the recipient can order the
//! conversation whatever path or retry delivered each message.

use rusqlite::{OptionalExtension as _, Row, params};

use super::sql::Cached as _;
use super::{Store, StoreError, check_message_id, check_name, check_text, int, sql_limit};

/// Most messages waiting for delivery, over all recipients: the outbox must not fill the disk
/// while a recipient stays offline. [`Store::enqueue`] fails with [`StoreError::OutboxFull`]
/// beyond it.
pub const MAX_OUTBOX: usize = 10_000;
/// Longest delivery error kept, in bytes; longer ones are cut (at a character boundary).
const MAX_ERROR_BYTES: usize = 1024;

/// A message `send` accepted, before the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// ULID, canonical text form; the recipient deduplicates by it.
    pub id: String,
    /// Recipient user name, canonical.
    pub to: String,
    /// At most 64 KiB of UTF-8.
    pub text: String,
    /// When the user sent it (unix milliseconds); shown to the recipient.
    pub sent_at_ms: u64,
}

/// A message in the outbox, waiting for the recipient's ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: String,
    pub to: String,
    pub text: String,
    pub sent_at_ms: u64,
    /// Position in the conversation with `to`, from 1.
    pub conv_seq: u64,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Not to be tried before this (unix milliseconds). A new message is due at `sent_at_ms`.
    pub next_attempt_at_ms: u64,
    /// Why the last attempt failed, for `status` and logs.
    pub last_error: Option<String>,
    /// The recipient's node refused it for good (`last_error` says why): kept until the user
    /// drops it, never tried again, and it does not hold back the messages after it.
    pub refused: bool,
}

/// A message the recipient's node acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub id: String,
    pub to: String,
    pub text: String,
    pub sent_at_ms: u64,
    pub conv_seq: u64,
    /// Failed attempts before the one that was acked.
    pub attempts: u32,
    /// How the acked attempt went: `"direct"` or `"relayed"` (the `send --json` `path` field).
    pub path: String,
    /// When the ack arrived (unix milliseconds).
    pub delivered_at_ms: u64,
}

const QUEUED_COLUMNS: &str =
    "id, recipient, text, sent_at_ms, conv_seq, attempts, next_attempt_at_ms, last_error, refused";

impl QueuedMessage {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            to: r.get(1)?,
            text: r.get(2)?,
            sent_at_ms: r.get(3)?,
            conv_seq: r.get(4)?,
            attempts: r.get(5)?,
            next_attempt_at_ms: r.get(6)?,
            last_error: r.get(7)?,
            refused: r.get(8)?,
        })
    }
}

impl Store {
    /// Puts `msg` in the outbox, numbered next in its conversation, due at once.
    ///
    /// Fails with [`StoreError::DuplicateId`] if the id is already in the outbox or the sent
    /// log, and [`StoreError::OutboxFull`] past [`MAX_OUTBOX`]; a failed enqueue uses up no
    /// sequence number.
    pub fn enqueue(&self, msg: &OutgoingMessage) -> Result<QueuedMessage, StoreError> {
        check_message_id(&msg.id)?;
        check_name(&msg.to)?;
        check_text(&msg.text)?;
        let sent_at = int("sent-at time", msg.sent_at_ms)?;
        let max = self.max_outbox;
        self.write(|tx| {
            let known = tx
                .row(
                    "SELECT 1 FROM outbox WHERE id = ?1 UNION ALL SELECT 1 FROM sent WHERE id = ?1",
                    params![msg.id],
                    |_| Ok(()),
                )
                .optional()?;
            if known.is_some() {
                return Err(StoreError::DuplicateId(msg.id.clone()));
            }
            let waiting: i64 = tx.row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
            if waiting >= sql_limit(max) {
                return Err(StoreError::OutboxFull { max });
            }
            let conv_seq: u64 = tx.row(
                "INSERT INTO conversations (peer, last_sent_seq) VALUES (?1, 1)
                 ON CONFLICT (peer) DO UPDATE SET last_sent_seq = last_sent_seq + 1
                 RETURNING last_sent_seq",
                params![msg.to],
                |r| r.get(0),
            )?;
            tx.run(
                "INSERT INTO outbox (id, recipient, text, sent_at_ms, conv_seq, next_attempt_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?4)",
                params![msg.id, msg.to, msg.text, sent_at, conv_seq],
            )?;
            Ok(QueuedMessage {
                id: msg.id.clone(),
                to: msg.to.clone(),
                text: msg.text.clone(),
                sent_at_ms: msg.sent_at_ms,
                conv_seq,
                attempts: 0,
                next_attempt_at_ms: msg.sent_at_ms,
                last_error: None,
                refused: false,
            })
        })
    }

    /// Up to `limit` messages due at `now_ms` (`next_attempt_at_ms <= now_ms`), by recipient,
    /// then sequence: each conversation is tried in order.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        // Past i64::MAX everything is due.
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {QUEUED_COLUMNS} FROM outbox WHERE next_attempt_at_ms <= ?1 AND refused = 0
             ORDER BY recipient, conv_seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now, sql_limit(limit)], QueuedMessage::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` recipients with a message due at `now_ms`, in name order, without reading
    /// the messages themselves.
    pub fn due_recipients(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT recipient FROM outbox WHERE next_attempt_at_ms <= ?1 AND refused = 0
             ORDER BY recipient LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, sql_limit(limit)], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a failed attempt: the caller's attempt count and backoff, and why.
    /// `Ok(false)` if the message is no longer queued (delivered meanwhile).
    pub fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at_ms: u64,
        last_error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let next = int("next attempt time", next_attempt_at_ms)?;
        let last_error = last_error.map(|e| truncate(e, MAX_ERROR_BYTES));
        self.write(|tx| {
            let n = tx.run(
                "UPDATE outbox SET attempts = ?2, next_attempt_at_ms = ?3, last_error = ?4
                 WHERE id = ?1",
                params![id, attempts, next, last_error],
            )?;
            Ok(n == 1)
        })
    }

    /// Pushes every message due for `to` at `now_ms` back by its backoff and records `why`,
    /// in one statement, without reading the queue (which may hold thousands). The backoff
    /// after a message's `n`-th failed attempt is `first_ms` doubled `n - 1` times (at most
    /// 16), capped at `max_ms`. Returns how many were pushed back.
    pub fn postpone(
        &self,
        to: &str,
        now_ms: u64,
        (first_ms, max_ms): (u64, u64),
        why: &str,
    ) -> Result<usize, StoreError> {
        let now = int("postpone time", now_ms)?;
        let first = int("backoff", first_ms)?;
        let max = int("backoff", max_ms)?;
        let why = truncate(why, MAX_ERROR_BYTES);
        self.write(|tx| {
            Ok(tx.run(
                "UPDATE outbox SET attempts = attempts + 1,
                        next_attempt_at_ms = ?2 + MIN(?5, ?4 << MIN(attempts, 16)),
                        last_error = ?3
                 WHERE recipient = ?1 AND next_attempt_at_ms <= ?2 AND refused = 0",
                params![to, now, why, first, max],
            )?)
        })
    }

    /// Parks a queued message the recipient's node refused for good (malformed by its rules:
    /// the same message would be refused again): kept with `why`, never tried again, until
    /// [`Store::cancel`] drops it. `Ok(false)` if it is not queued.
    pub fn refuse_for_good(&self, id: &str, why: &str) -> Result<bool, StoreError> {
        let why = truncate(why, MAX_ERROR_BYTES);
        self.write(|tx| {
            let n = tx.run(
                "UPDATE outbox SET refused = 1, attempts = attempts + 1, last_error = ?2
                 WHERE id = ?1",
                params![id, why],
            )?;
            Ok(n == 1)
        })
    }

    /// Up to `limit` messages of the outbox, refused for good or not, by recipient then
    /// conversation order: what `natter outbox` shows.
    pub fn outbox(&self, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {QUEUED_COLUMNS} FROM outbox ORDER BY recipient, conv_seq LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![sql_limit(limit)], QueuedMessage::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes a queued message that must not be sent after all (its recipient turned out
    /// not to exist). `Ok(false)` if it is not queued.
    pub fn cancel(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.cancel_all(&[id.to_owned()])? == 1)
    }

    /// [`Store::cancel`] for several messages, in one transaction: how many were queued.
    pub fn cancel_all(&self, ids: &[String]) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut n = 0;
            for id in ids {
                n += tx.run("DELETE FROM outbox WHERE id = ?1", params![id])?;
            }
            Ok(n)
        })
    }

    /// Moves a queued message to the sent log: the recipient's node acked it at `at_ms`,
    /// over `path` (`"direct"` or `"relayed"`). Atomic: the message is never in both tables,
    /// nor in neither. `Ok(false)` if it is not queued (a second ack for the same message).
    pub fn mark_delivered(&self, id: &str, path: &str, at_ms: u64) -> Result<bool, StoreError> {
        Ok(self.mark_all_delivered(&[id], path, at_ms)? == 1)
    }

    /// [`Store::mark_delivered`] for a whole acknowledged batch, in one transaction. Returns
    /// how many were moved.
    pub fn mark_all_delivered(
        &self,
        ids: &[&str],
        path: &str,
        at_ms: u64,
    ) -> Result<usize, StoreError> {
        if !matches!(path, "direct" | "relayed") {
            return Err(StoreError::Invalid {
                what: "delivery path",
                reason: format!("{path:?} is neither \"direct\" nor \"relayed\""),
            });
        }
        let at = int("delivery time", at_ms)?;
        self.write(|tx| {
            let mut moved_total = 0;
            for id in ids {
                let moved = tx.run(
                    "INSERT INTO sent (id, recipient, text, sent_at_ms, conv_seq, attempts, path,
                                       delivered_at_ms)
                     SELECT id, recipient, text, sent_at_ms, conv_seq, attempts, ?2, ?3
                     FROM outbox WHERE id = ?1",
                    params![id, path, at],
                )?;
                if moved == 0 {
                    continue;
                }
                tx.run("DELETE FROM outbox WHERE id = ?1", params![id])?;
                moved_total += 1;
            }
            Ok(moved_total)
        })
    }

    /// Everything queued for `to`, refused for good or not, in conversation order (bounded by
    /// [`MAX_OUTBOX`]).
    pub fn queued_for(&self, to: &str) -> Result<Vec<QueuedMessage>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {QUEUED_COLUMNS} FROM outbox WHERE recipient = ?1 ORDER BY conv_seq"
        ))?;
        let rows = stmt.query_map(params![to], QueuedMessage::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The first `limit` messages queued for `to` and not refused for good, in conversation
    /// order: the head of the queue, without reading the rest of it.
    pub fn queued_head(&self, to: &str, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {QUEUED_COLUMNS} FROM outbox WHERE recipient = ?1 AND refused = 0
             ORDER BY conv_seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![to, sql_limit(limit)], QueuedMessage::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many messages wait for delivery.
    pub fn outbox_len(&self) -> Result<usize, StoreError> {
        let n: usize = self
            .conn()
            .row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n)
    }

    /// A delivered message, by id.
    pub fn get_sent(&self, id: &str) -> Result<Option<SentMessage>, StoreError> {
        let sent = self
            .conn()
            .row(
                "SELECT id, recipient, text, sent_at_ms, conv_seq, attempts, path, delivered_at_ms
                 FROM sent WHERE id = ?1",
                params![id],
                |r| {
                    Ok(SentMessage {
                        id: r.get(0)?,
                        to: r.get(1)?,
                        text: r.get(2)?,
                        sent_at_ms: r.get(3)?,
                        conv_seq: r.get(4)?,
                        attempts: r.get(5)?,
                        path: r.get(6)?,
                        delivered_at_ms: r.get(7)?,
                    })
                },
            )
            .optional()?;
        Ok(sent)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use natter_proto::limits::MAX_MESSAGE_TEXT_BYTES;

    use super::super::test_util::*;
    use super::*;

    fn msg(n: u32, to: &str) -> OutgoingMessage {
        OutgoingMessage {
            id: ulid(n),
            to: to.into(),
            text: format!("message {n}"),
            sent_at_ms: 1_000 + u64::from(n),
        }
    }

    fn seqs(queued: &[QueuedMessage]) -> Vec<u64> {
        queued.iter().map(|m| m.conv_seq).collect()
    }

    #[test]
    fn sequences_are_per_recipient_and_survive_reopen() {
        let (dir, store) = fresh();
        let a1 = store.enqueue(&msg(1, "alice")).unwrap();
        let b1 = store.enqueue(&msg(2, "bob")).unwrap();
        let a2 = store.enqueue(&msg(3, "alice")).unwrap();
        let a3 = store.enqueue(&msg(4, "alice")).unwrap();
        assert_eq!(
            [a1.conv_seq, a2.conv_seq, a3.conv_seq, b1.conv_seq],
            [1, 2, 3, 1]
        );
        assert_eq!(a1.attempts, 0);
        assert_eq!(a1.next_attempt_at_ms, a1.sent_at_ms);
        assert_eq!(a1.last_error, None);

        // Delivering everything does not reset the counter, nor does a restart.
        for id in [&a1.id, &a2.id, &a3.id] {
            assert!(store.mark_delivered(id, "direct", 5_000).unwrap());
        }
        let store = reopen(&dir, store);
        assert_eq!(store.queued_for("bob").unwrap(), [b1]);
        assert_eq!(store.enqueue(&msg(5, "alice")).unwrap().conv_seq, 4);
        assert_eq!(store.enqueue(&msg(6, "bob")).unwrap().conv_seq, 2);
        assert_eq!(store.enqueue(&msg(7, "carol")).unwrap().conv_seq, 1);
    }

    /// One statement pushes back every due message of a recipient by its own backoff, and
    /// leaves other recipients, messages not yet due and parked ones alone.
    #[test]
    fn postpone_backs_off_each_due_message_without_reading_the_queue() {
        let (_dir, store) = fresh();
        let a1 = store.enqueue(&msg(1, "alice")).unwrap();
        let a2 = store.enqueue(&msg(2, "alice")).unwrap();
        let a3 = store.enqueue(&msg(3, "alice")).unwrap();
        let b1 = store.enqueue(&msg(4, "bob")).unwrap();
        store.reschedule(&a2.id, 5, 1_500, None).unwrap();
        store.reschedule(&a3.id, 0, 90_000, None).unwrap();
        assert_eq!(
            store
                .postpone("alice", 2_000, (1_000, 30_000), "down")
                .unwrap(),
            2
        );
        let queued = store.queued_for("alice").unwrap();
        // a1: first failure, 1 s; a2: its sixth, 32 s capped at 30 s; a3 was not due.
        assert_eq!(
            queued
                .iter()
                .map(|m| (m.attempts, m.next_attempt_at_ms, m.last_error.as_deref()))
                .collect::<Vec<_>>(),
            [
                (1, 3_000, Some("down")),
                (6, 32_000, Some("down")),
                (0, 90_000, None)
            ]
        );
        assert_eq!(queued[0].id, a1.id);
        assert_eq!(store.queued_for("bob").unwrap(), [b1]);
    }

    /// A message refused for good stays in the outbox, shown, not due, not at the head of
    /// its queue (so it holds nothing back), and is taken out only by the user.
    #[test]
    fn a_message_refused_for_good_is_parked_until_dropped() {
        let (dir, store) = fresh();
        let a1 = store.enqueue(&msg(1, "alice")).unwrap();
        let a2 = store.enqueue(&msg(2, "alice")).unwrap();
        assert!(
            store
                .refuse_for_good(&a1.id, "too large for alice")
                .unwrap()
        );
        assert!(!store.refuse_for_good(&ulid(99), "not queued").unwrap());
        let store = reopen(&dir, store);
        assert_eq!(seqs(&store.due(u64::MAX, 100).unwrap()), [2]);
        assert_eq!(seqs(&store.queued_head("alice", 10).unwrap()), [2]);
        assert_eq!(
            store.postpone("alice", u64::MAX / 4, (1, 1), "x").unwrap(),
            1
        );
        assert!(store.due_recipients(u64::MAX / 4, 10).unwrap().is_empty());
        let all = store.outbox(100).unwrap();
        assert_eq!(seqs(&all), [1, 2]);
        assert!(all[0].refused && !all[1].refused);
        assert_eq!(all[0].last_error.as_deref(), Some("too large for alice"));
        assert_eq!(all[0].attempts, 1);
        assert_eq!(
            store
                .cancel_all(&[a1.id.clone(), a2.id.clone(), ulid(99)])
                .unwrap(),
            2
        );
        assert_eq!(store.outbox_len().unwrap(), 0);
    }

    #[test]
    fn outbox_state_survives_reopen() {
        let (dir, store) = fresh();
        let q = store.enqueue(&msg(1, "alice")).unwrap();
        assert!(
            store
                .reschedule(&q.id, 3, 9_000, Some("no route to alice"))
                .unwrap()
        );
        let store = reopen(&dir, store);
        let expected = QueuedMessage {
            attempts: 3,
            next_attempt_at_ms: 9_000,
            last_error: Some("no route to alice".into()),
            ..q
        };
        assert_eq!(
            store.queued_for("alice").unwrap(),
            std::slice::from_ref(&expected)
        );
        assert_eq!(store.outbox_len().unwrap(), 1);
        assert!(store.due(8_999, 10).unwrap().is_empty());
        assert_eq!(store.due(9_000, 10).unwrap(), [expected]);
    }

    #[test]
    fn delivered_moves_to_sent_and_survives_reopen() {
        let (dir, store) = fresh();
        let q = store.enqueue(&msg(1, "alice")).unwrap();
        store.reschedule(&q.id, 2, 1_500, Some("timeout")).unwrap();
        assert!(store.mark_delivered(&q.id, "relayed", 7_000).unwrap());
        assert_eq!(store.outbox_len().unwrap(), 0);
        assert!(store.queued_for("alice").unwrap().is_empty());
        assert!(store.due(u64::MAX, 10).unwrap().is_empty());
        let expected = SentMessage {
            id: q.id.clone(),
            to: "alice".into(),
            text: q.text.clone(),
            sent_at_ms: q.sent_at_ms,
            conv_seq: 1,
            attempts: 2,
            path: "relayed".into(),
            delivered_at_ms: 7_000,
        };
        assert_eq!(store.get_sent(&q.id).unwrap(), Some(expected.clone()));
        // A second ack changes nothing.
        assert!(!store.mark_delivered(&q.id, "direct", 8_000).unwrap());
        assert!(!store.reschedule(&q.id, 3, 1, None).unwrap());
        let store = reopen(&dir, store);
        assert_eq!(store.get_sent(&q.id).unwrap(), Some(expected));
        assert_eq!(store.get_sent(&ulid(99)).unwrap(), None);
        assert_eq!(store.outbox_len().unwrap(), 0);
    }

    #[test]
    fn move_to_sent_is_atomic() {
        let (dir, store) = fresh();
        let q = store.enqueue(&msg(1, "alice")).unwrap();
        // Make the DELETE half fail after the INSERT half succeeded.
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER fail_delete BEFORE DELETE ON outbox
                 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
            .unwrap();
        let err = store.mark_delivered(&q.id, "direct", 2_000).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(store.get_sent(&q.id).unwrap(), None, "insert rolled back");
        assert_eq!(store.queued_for("alice").unwrap(), std::slice::from_ref(&q));
        // And the other way round: the INSERT half fails.
        store
            .conn()
            .execute_batch("DROP TRIGGER fail_delete")
            .unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO sent (id, recipient, text, sent_at_ms, conv_seq, attempts, path,
                                   delivered_at_ms)
                 VALUES (?1, 'zed', 'other', 0, 1, 0, 'direct', 0)",
                params![q.id],
            )
            .unwrap();
        assert!(store.mark_delivered(&q.id, "direct", 2_000).is_err());
        assert_eq!(store.queued_for("alice").unwrap(), std::slice::from_ref(&q));
        assert_eq!(store.get_sent(&q.id).unwrap().unwrap().to, "zed");
        // Nothing half-done reappears after a restart either.
        let store = reopen(&dir, store);
        assert_eq!(store.queued_for("alice").unwrap(), [q]);
    }

    #[test]
    fn burst_of_1000_then_due_in_order() {
        let (dir, store) = fresh();
        let recipients = ["carol", "alice", "bob"];
        for n in 0..1_000u32 {
            store
                .enqueue(&msg(n, recipients[n as usize % recipients.len()]))
                .unwrap();
        }
        assert_eq!(store.outbox_len().unwrap(), 1_000);
        let due = store.due(u64::MAX, 5_000).unwrap();
        assert_eq!(due.len(), 1_000);
        let keys: Vec<(&str, u64)> = due.iter().map(|m| (m.to.as_str(), m.conv_seq)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "ordered by recipient then sequence");
        assert_eq!(due.iter().filter(|m| m.to == "alice").count(), 333);
        assert_eq!(
            seqs(&store.queued_for("alice").unwrap()),
            (1..=333).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&store.queued_for("carol").unwrap()),
            (1..=334).collect::<Vec<_>>()
        );
        assert_eq!(
            store.due_recipients(u64::MAX, 10).unwrap(),
            ["alice", "bob", "carol"]
        );
        assert_eq!(store.due_recipients(u64::MAX, 2).unwrap(), ["alice", "bob"]);
        assert!(store.due_recipients(0, 10).unwrap().is_empty());
        // The head of a queue alone, in order.
        assert_eq!(
            seqs(&store.queued_head("carol", 64).unwrap()),
            (1..=64).collect::<Vec<_>>()
        );
        // Within a conversation, sequence follows enqueue order.
        let carol = store.queued_for("carol").unwrap();
        assert!(carol.windows(2).all(|w| w[0].id < w[1].id));
        // `limit` bounds, and `now` filters (message n is due at 1_000 + n).
        assert_eq!(store.due(u64::MAX, 10).unwrap(), due[..10]);
        assert_eq!(store.due(1_009, 1_000).unwrap().len(), 10);
        assert!(store.due(999, 1_000).unwrap().is_empty());
        let store = reopen(&dir, store);
        assert_eq!(store.due(u64::MAX, 5_000).unwrap(), due);
    }

    #[test]
    fn duplicate_ids_are_refused_without_using_a_sequence() {
        let (_dir, store) = fresh();
        let q = store.enqueue(&msg(1, "alice")).unwrap();
        assert!(matches!(
            store.enqueue(&msg(1, "alice")),
            Err(StoreError::DuplicateId(id)) if id == q.id
        ));
        store.mark_delivered(&q.id, "direct", 1).unwrap();
        assert!(matches!(
            store.enqueue(&msg(1, "bob")),
            Err(StoreError::DuplicateId(_))
        ));
        assert_eq!(store.enqueue(&msg(2, "alice")).unwrap().conv_seq, 2);
    }

    #[test]
    fn outbox_is_bounded() {
        let (_dir, mut store) = fresh();
        store.max_outbox = 3;
        for n in 0..3 {
            store.enqueue(&msg(n, "alice")).unwrap();
        }
        assert!(matches!(
            store.enqueue(&msg(3, "bob")),
            Err(StoreError::OutboxFull { max: 3 })
        ));
        store.mark_delivered(&ulid(0), "direct", 1).unwrap();
        assert_eq!(store.enqueue(&msg(3, "bob")).unwrap().conv_seq, 1);
    }

    #[test]
    fn text_up_to_64_kib_and_no_more() {
        let (dir, store) = fresh();
        let mut m = msg(1, "alice");
        // Multi-byte characters, exactly at the limit.
        m.text = "é".repeat(MAX_MESSAGE_TEXT_BYTES / 2);
        assert_eq!(m.text.len(), MAX_MESSAGE_TEXT_BYTES);
        store.enqueue(&m).unwrap();
        let store = reopen(&dir, store);
        assert_eq!(store.queued_for("alice").unwrap()[0].text, m.text);
        let mut big = msg(2, "alice");
        big.text = "x".repeat(MAX_MESSAGE_TEXT_BYTES + 1);
        assert!(matches!(
            store.enqueue(&big),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_input_is_refused_not_panicked_on() {
        let (_dir, store) = fresh();
        let mut m = msg(1, "Alice");
        assert!(matches!(store.enqueue(&m), Err(StoreError::BadName { .. })));
        m.to = "al".into();
        assert!(matches!(store.enqueue(&m), Err(StoreError::BadName { .. })));
        m.to = "alice".into();
        m.id = "not-a-ulid".into();
        assert!(matches!(store.enqueue(&m), Err(StoreError::Invalid { .. })));
        m.id = ulid(1);
        m.sent_at_ms = u64::MAX;
        assert!(matches!(store.enqueue(&m), Err(StoreError::Invalid { .. })));
        m.sent_at_ms = 0;
        m.text = "\u{0}nul and 'quotes'; DROP TABLE outbox;--".into();
        let q = store.enqueue(&m).unwrap();
        assert!(matches!(
            store.mark_delivered(&q.id, "carrier pigeon", 1),
            Err(StoreError::Invalid { .. })
        ));
        assert!(store.mark_delivered(&q.id, "direct", u64::MAX).is_err());
        assert!(store.reschedule(&q.id, 1, u64::MAX, None).is_err());
        assert_eq!(store.queued_for("alice").unwrap(), std::slice::from_ref(&q));
        // Unknown ids and names are simply absent.
        assert!(!store.mark_delivered("nope", "direct", 1).unwrap());
        assert!(!store.reschedule("nope", 1, 1, None).unwrap());
        assert!(store.queued_for("nobody at all").unwrap().is_empty());
        assert_eq!(store.due(0, 0).unwrap(), []);
        // Huge errors are cut at a character boundary.
        let long = "é".repeat(MAX_ERROR_BYTES);
        store.reschedule(&q.id, u32::MAX, 5, Some(&long)).unwrap();
        let q = &store.queued_for("alice").unwrap()[0];
        assert_eq!(q.attempts, u32::MAX);
        let err = q.last_error.as_deref().unwrap();
        assert_eq!(err.len(), MAX_ERROR_BYTES);
        assert!(long.starts_with(err));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("", 0), "");
    }
}
