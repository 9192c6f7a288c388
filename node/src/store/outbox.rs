//! The outbox and the sent log (DESIGN: "Messaging", durability).
//!
//! `send` calls [`Store::enqueue`] before touching the network, so a message the user was told
//! is queued survives a crash. The delivery loop takes [`Store::due`] messages, and on failure
//! [`Store::reschedule`]s them with its backoff; the recipient's ack ("stored by the recipient's
//! node") makes [`Store::mark_delivered`] move the message to `sent` in one transaction, so it
//! is in exactly one of the two tables at any instant.
//!
//! Each message carries a per-conversation sequence number, assigned here in the enqueue
//! transaction: increasing per recipient, never reused, so the recipient can order the
//! conversation whatever path or retry delivered each message. It is a Lamport clock over the
//! pair of users: past every number this device sent to the recipient, received from them, or
//! learned that its user's other devices sent them, so the devices of one user interleave in
//! one order.

use rusqlite::{OptionalExtension as _, Row, params};

use super::fanout::{FanoutTarget, insert_targets};
use super::sql::Cached as _;
use super::{Store, StoreError, check_message_id, check_name, check_text, int, sql_limit};

/// Most messages waiting for delivery, over all recipients: the outbox must not fill the disk
/// while a recipient stays offline. [`Store::enqueue`] fails with [`StoreError::OutboxFull`]
/// beyond it.
pub const MAX_OUTBOX: usize = 10_000;
/// How far what others sent can move a conversation's sequence on, per message sent.
pub(super) const MAX_SEQ_JUMP: i64 = 1 << 20;
/// Longest delivery error kept, in bytes; longer ones are cut (at a character boundary).
pub(super) const MAX_ERROR_BYTES: usize = 1024;

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
        self.enqueue_with_copies(msg, &[])
    }

    /// [`Store::enqueue`], adding in the same transaction the further devices that get a copy
    /// at once, whether or not the recipient is reachable: this user's other devices
    /// (`copies`, see `fanout.rs`).
    pub fn enqueue_with_copies(
        &self,
        msg: &OutgoingMessage,
        copies: &[FanoutTarget],
    ) -> Result<QueuedMessage, StoreError> {
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
            // One order per pair of users across devices (a Lamport clock): past everything
            // this device sent to `to`, received from `to`, or learned its user's other
            // devices sent `to`. What others sent moves it on by at most `MAX_SEQ_JUMP`, so
            // a peer that sends a huge number cannot use up the numbers of the conversation.
            let (sent, seen): (i64, i64) = tx.row(
                "SELECT COALESCE((SELECT last_sent_seq FROM conversations WHERE peer = ?1), 0),
                        MAX(COALESCE((SELECT MAX(conv_seq) FROM inbox WHERE sender = ?1), 0),
                            COALESCE((SELECT MAX(conv_seq) FROM copies WHERE recipient = ?1), 0))",
                params![msg.to],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let next = sent.saturating_add(1).max(
                seen.min(sent.saturating_add(MAX_SEQ_JUMP))
                    .saturating_add(1),
            );
            let conv_seq: u64 = tx.row(
                "INSERT INTO conversations (peer, last_sent_seq) VALUES (?1, ?2)
                 ON CONFLICT (peer) DO UPDATE SET last_sent_seq = excluded.last_sent_seq
                 RETURNING last_sent_seq",
                params![msg.to, next],
                |r| r.get(0),
            )?;
            tx.run(
                "INSERT INTO outbox (id, recipient, text, sent_at_ms, conv_seq, next_attempt_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?4)",
                params![msg.id, msg.to, msg.text, sent_at, conv_seq],
            )?;
            insert_targets(tx, &msg.id, copies, sent_at)?;
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
                let gone = tx.run("DELETE FROM outbox WHERE id = ?1", params![id])?;
                if gone == 1 {
                    tx.run("DELETE FROM fanout WHERE id = ?1", params![id])?;
                }
                n += gone;
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
        self.mark_delivered_to(ids, path, at_ms, None, &[])
    }

    /// [`Store::mark_all_delivered`], recording the recipient's `device` that stored the
    /// messages, and adding for each message moved the further devices it goes to
    /// (`targets`, see `fanout.rs`), in the same transaction.
    pub fn mark_delivered_to(
        &self,
        ids: &[&str],
        path: &str,
        at_ms: u64,
        device: Option<&str>,
        targets: &[FanoutTarget],
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
                                       delivered_at_ms, device)
                     SELECT id, recipient, text, sent_at_ms, conv_seq, attempts, ?2, ?3, ?4
                     FROM outbox WHERE id = ?1",
                    params![id, path, at, device],
                )?;
                if moved == 0 {
                    continue;
                }
                tx.run("DELETE FROM outbox WHERE id = ?1", params![id])?;
                insert_targets(tx, id, targets, at)?;
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
pub(super) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests;
