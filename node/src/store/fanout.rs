//! Users on several devices (DESIGN: "Users and devices"): the further devices a delivered
//! message goes to, and what this user's other devices sent.
//!
//! A message is delivered, for `send` and the outbox, once one device of its recipient stored
//! it ([`Store::mark_delivered_to`] moves it to `sent` and records that device). In the same
//! transaction it gets a `fanout` row for every further device of the recipient it must
//! reach. This user's own other devices, which keep a copy of what this one sent, get their
//! rows when the message is queued ([`Store::enqueue_with_copies`]), so the copy does not wait
//! for the recipient.
//! While the daemon does not know a user's devices, the row names no device (`''`) and
//! [`Store::fanout_resolve`] later replaces it with one row per device. Each row keeps its own
//! attempts, backoff and outcome: the per-device state `history --json` shows.
//!
//! Copies this device receives from its user's other devices go to `copies`, deduplicated by
//! the sending device and id, and bounded ([`MAX_COPIES`], the oldest go first).

use rusqlite::{Connection, params};

use super::sql::Cached as _;
use super::{Receipt, Store, StoreError, check_message_id, check_name, check_text, int, sql_limit};

/// Most copies of other devices' messages kept; beyond it the oldest are deleted.
pub const MAX_COPIES: usize = 100_000;
/// A further device not reached within this long is given up (its row is deleted).
pub const FANOUT_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A further device a delivered message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutTarget {
    /// The user the device belongs to: the recipient, or this user.
    pub owner: String,
    /// Its peer id; `None` while the daemon does not know the owner's devices.
    pub device: Option<String>,
}

/// A message on its way to a further device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutMessage {
    pub id: String,
    /// The message's recipient (for a copy to this user's device, not that device's user).
    pub to: String,
    pub text: String,
    pub sent_at_ms: u64,
    pub conv_seq: u64,
}

/// What is due for one further device, or for one owner whose devices are not known yet
/// (`device` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutBatch {
    pub owner: String,
    pub device: String,
    pub messages: Vec<FanoutMessage>,
}

/// Where a delivered message stands on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDelivery {
    pub owner: String,
    /// Peer id; empty while the owner's devices are not known.
    pub device: String,
    /// `"direct"` or `"relayed"` once delivered.
    pub path: Option<String>,
    pub delivered_at_ms: Option<u64>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A copy of a message this user's other device sent, as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyMessage {
    pub id: String,
    /// The recipient the other device sent it to.
    pub to: String,
    pub text: String,
    pub sent_at_ms: u64,
    pub conv_seq: u64,
    pub received_at_ms: u64,
}

/// Adds `id`'s further devices, due at `at`, in the caller's transaction.
pub(super) fn insert_targets(
    tx: &Connection,
    id: &str,
    targets: &[FanoutTarget],
    at: i64,
) -> Result<(), StoreError> {
    for t in targets {
        tx.run(
            "INSERT INTO fanout (id, owner, device, next_attempt_at_ms, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING",
            params![id, t.owner, t.device.as_deref().unwrap_or(""), at],
        )?;
    }
    Ok(())
}

impl Store {
    /// Up to `max_devices` devices (or owners with unknown devices) with something due at
    /// `now_ms`, each with at most `per_device` messages in conversation order.
    pub fn fanout_due(
        &self,
        now_ms: u64,
        max_devices: usize,
        per_device: usize,
    ) -> Result<Vec<FanoutBatch>, StoreError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT owner, device FROM fanout
             WHERE delivered_at_ms IS NULL AND next_attempt_at_ms <= ?1 LIMIT ?2",
        )?;
        let due: Vec<(String, String)> = stmt
            .query_map(params![now, sql_limit(max_devices)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        // A copy for this user's devices may go before the message is delivered: it is then
        // still in the outbox.
        let mut stmt = conn.prepare_cached(
            "SELECT f.id, COALESCE(s.recipient, o.recipient), COALESCE(s.text, o.text),
                    COALESCE(s.sent_at_ms, o.sent_at_ms), COALESCE(s.conv_seq, o.conv_seq) AS seq
             FROM fanout f LEFT JOIN sent s ON s.id = f.id LEFT JOIN outbox o ON o.id = f.id
             WHERE f.owner = ?1 AND f.device = ?2 AND f.delivered_at_ms IS NULL
               AND f.next_attempt_at_ms <= ?3 AND (s.id IS NOT NULL OR o.id IS NOT NULL)
             ORDER BY 2, seq LIMIT ?4",
        )?;
        let mut batches = Vec::with_capacity(due.len());
        for (owner, device) in due {
            let messages = stmt
                .query_map(params![owner, device, now, sql_limit(per_device)], |r| {
                    Ok(FanoutMessage {
                        id: r.get(0)?,
                        to: r.get(1)?,
                        text: r.get(2)?,
                        sent_at_ms: r.get(3)?,
                        conv_seq: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            batches.push(FanoutBatch {
                owner,
                device,
                messages,
            });
        }
        Ok(batches)
    }

    /// `owner`'s devices are now known: each of `owner`'s rows that named no device becomes
    /// one row per device in `devices`, but for this device (`me`) and the device that stored
    /// the message first. Returns how many rows were added.
    pub fn fanout_resolve(
        &self,
        owner: &str,
        devices: &[String],
        me: &str,
    ) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut added = 0;
            for device in devices.iter().filter(|d| !d.is_empty() && *d != me) {
                added += tx.run(
                    "INSERT INTO fanout (id, owner, device, next_attempt_at_ms, created_at_ms)
                     SELECT f.id, f.owner, ?2, f.next_attempt_at_ms, f.created_at_ms
                     FROM fanout f LEFT JOIN sent s ON s.id = f.id
                     WHERE f.owner = ?1 AND f.device = '' AND COALESCE(s.device, '') != ?2
                     ON CONFLICT DO NOTHING",
                    params![owner, device],
                )?;
            }
            tx.run(
                "DELETE FROM fanout WHERE owner = ?1 AND device = ''",
                params![owner],
            )?;
            Ok(added)
        })
    }

    /// `device` of `owner` stored these messages at `at_ms` over `path`. Returns how many
    /// were still on their way.
    pub fn fanout_done(
        &self,
        owner: &str,
        device: &str,
        ids: &[String],
        path: &str,
        at_ms: u64,
    ) -> Result<usize, StoreError> {
        let at = int("delivery time", at_ms)?;
        self.write(|tx| {
            let mut n = 0;
            for id in ids {
                n += tx.run(
                    "UPDATE fanout SET path = ?4, delivered_at_ms = ?5
                     WHERE id = ?1 AND owner = ?2 AND device = ?3 AND delivered_at_ms IS NULL",
                    params![id, owner, device, path, at],
                )?;
            }
            Ok(n)
        })
    }

    /// Pushes what is due for `device` of `owner` at `now_ms` back by its backoff, as
    /// [`Store::postpone`] does for a recipient.
    pub fn fanout_postpone(
        &self,
        owner: &str,
        device: &str,
        now_ms: u64,
        (first_ms, max_ms): (u64, u64),
        why: &str,
    ) -> Result<usize, StoreError> {
        let now = int("postpone time", now_ms)?;
        let first = int("backoff", first_ms)?;
        let max = int("backoff", max_ms)?;
        let why = super::outbox::truncate(why, super::outbox::MAX_ERROR_BYTES);
        self.write(|tx| {
            Ok(tx.run(
                "UPDATE fanout SET attempts = attempts + 1,
                        next_attempt_at_ms = ?3 + MIN(?6, ?5 << MIN(attempts, 16)),
                        last_error = ?4
                 WHERE owner = ?1 AND device = ?2 AND delivered_at_ms IS NULL
                   AND next_attempt_at_ms <= ?3",
                params![owner, device, now, why, first, max],
            )?)
        })
    }

    /// What waits for `device` of `owner` is due at `now_ms`, whatever its backoff (the
    /// device just came back).
    pub fn fanout_wake(&self, owner: &str, device: &str, now_ms: u64) -> Result<usize, StoreError> {
        let now = int("wake time", now_ms)?;
        self.write(|tx| {
            Ok(tx.run(
                "UPDATE fanout SET next_attempt_at_ms = ?3
                 WHERE owner = ?1 AND device = ?2 AND delivered_at_ms IS NULL
                   AND next_attempt_at_ms > ?3",
                params![owner, device, now],
            )?)
        })
    }

    /// Gives up on these messages for `device` of `owner` (it refused them for good).
    pub fn fanout_drop(
        &self,
        owner: &str,
        device: &str,
        ids: &[String],
    ) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut n = 0;
            for id in ids {
                n += tx.run(
                    "DELETE FROM fanout WHERE id = ?1 AND owner = ?2 AND device = ?3
                       AND delivered_at_ms IS NULL",
                    params![id, owner, device],
                )?;
            }
            Ok(n)
        })
    }

    /// Gives up on further devices not reached since before `before_ms`.
    pub fn fanout_expire(&self, before_ms: u64) -> Result<usize, StoreError> {
        let before = int("expiry time", before_ms)?;
        self.write(|tx| {
            Ok(tx.run(
                "DELETE FROM fanout WHERE delivered_at_ms IS NULL AND created_at_ms < ?1",
                params![before],
            )?)
        })
    }

    /// Where message `id` stands on each further device (none for a user on one device).
    pub fn deliveries(&self, id: &str) -> Result<Vec<DeviceDelivery>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT owner, device, path, delivered_at_ms, attempts, last_error FROM fanout
             WHERE id = ?1 ORDER BY owner, device",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok(DeviceDelivery {
                owner: r.get(0)?,
                device: r.get(1)?,
                path: r.get(2)?,
                delivered_at_ms: r.get(3)?,
                attempts: r.get(4)?,
                last_error: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps copies of what `device`, another device of this user, sent; a receipt each
    /// (`Duplicate` for one kept already). Nothing is kept if any copy is invalid.
    pub fn receive_copies(
        &self,
        device: &str,
        copies: &[CopyMessage],
    ) -> Result<Vec<Receipt>, StoreError> {
        let mut rows = Vec::with_capacity(copies.len());
        for c in copies {
            check_message_id(&c.id)?;
            check_name(&c.to)?;
            check_text(&c.text)?;
            rows.push((
                c,
                int("sent-at time", c.sent_at_ms)?,
                int("conversation sequence", c.conv_seq)?,
                int("received-at time", c.received_at_ms)?,
            ));
        }
        let max = sql_limit(self.max_copies);
        self.write(|tx| {
            let mut receipts = Vec::with_capacity(rows.len());
            for (c, sent_at, conv_seq, received_at) in &rows {
                let n = tx.run(
                    "INSERT INTO copies (device, id, recipient, text, sent_at_ms, conv_seq,
                                         received_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    params![device, c.id, c.to, c.text, sent_at, conv_seq, received_at],
                )?;
                receipts.push(if n == 1 {
                    Receipt::Stored
                } else {
                    Receipt::Duplicate
                });
            }
            tx.run(
                "DELETE FROM copies WHERE rowid IN (
                     SELECT rowid FROM copies ORDER BY received_at_ms, rowid
                     LIMIT MAX(0, (SELECT COUNT(*) FROM copies) - ?1))",
                params![max],
            )?;
            Ok(receipts)
        })
    }
}

#[cfg(test)]
mod tests;
