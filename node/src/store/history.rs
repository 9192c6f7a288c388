//! A conversation with one user, both ways and from every device of this user: what
//! `natter history NAME` shows.

use rusqlite::params;

use super::{DeviceDelivery, Store, StoreError, sql_limit};

/// Where a message of a conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// From the other user.
    Received,
    /// Sent by this device, still in the outbox.
    Queued,
    /// Sent by this device, refused for good by the recipient's node (parked in the outbox).
    Refused,
    /// Sent by this device and stored by a device of the recipient.
    Delivered,
    /// Sent by another device of this user (a copy it sent here).
    SentElsewhere,
}

impl HistoryKind {
    fn parse(s: &str) -> rusqlite::Result<Self> {
        Ok(match s {
            "received" => Self::Received,
            "queued" => Self::Queued,
            "refused" => Self::Refused,
            "delivered" => Self::Delivered,
            "copy" => Self::SentElsewhere,
            other => {
                return Err(rusqlite::Error::InvalidColumnType(
                    0,
                    other.to_owned(),
                    rusqlite::types::Type::Text,
                ));
            }
        })
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub kind: HistoryKind,
    pub id: String,
    pub text: String,
    pub sent_at_ms: u64,
    pub conv_seq: u64,
    /// `"direct"` or `"relayed"` for a delivered message.
    pub path: Option<String>,
    /// When it was delivered, received, or its copy arrived.
    pub at_ms: Option<u64>,
    /// The recipient's device that stored it first (delivered), or this user's device that
    /// sent it (a copy).
    pub device: Option<String>,
    /// Why the last attempt failed (queued or refused).
    pub last_error: Option<String>,
    /// A sent message's further devices (see `fanout.rs`).
    pub devices: Vec<DeviceDelivery>,
}

impl Store {
    /// The last `limit` messages exchanged with `peer`, oldest first, in conversation order
    /// (sequence, then send time).
    pub fn history(&self, peer: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut entries = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT kind, id, text, sent_at_ms, conv_seq, path, at, device, last_error FROM (
                     SELECT 'received' AS kind, id, text, sent_at_ms, conv_seq, NULL AS path,
                            received_at_ms AS at, NULL AS device, NULL AS last_error
                     FROM inbox WHERE sender = ?1
                     UNION ALL
                     SELECT CASE refused WHEN 1 THEN 'refused' ELSE 'queued' END, id, text,
                            sent_at_ms, conv_seq, NULL, NULL, NULL, last_error
                     FROM outbox WHERE recipient = ?1
                     UNION ALL
                     SELECT 'delivered', id, text, sent_at_ms, conv_seq, path, delivered_at_ms,
                            device, NULL
                     FROM sent WHERE recipient = ?1
                     UNION ALL
                     SELECT 'copy', id, text, sent_at_ms, conv_seq, NULL, received_at_ms,
                            device, NULL
                     FROM copies WHERE recipient = ?1)
                 ORDER BY conv_seq DESC, sent_at_ms DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![peer, sql_limit(limit)], |r| {
                Ok(HistoryEntry {
                    kind: HistoryKind::parse(&r.get::<_, String>(0)?)?,
                    id: r.get(1)?,
                    text: r.get(2)?,
                    sent_at_ms: r.get(3)?,
                    conv_seq: r.get(4)?,
                    path: r.get(5)?,
                    at_ms: r.get(6)?,
                    device: r.get(7)?,
                    last_error: r.get(8)?,
                    devices: Vec::new(),
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        entries.reverse();
        for entry in &mut entries {
            if matches!(entry.kind, HistoryKind::Delivered | HistoryKind::Queued) {
                entry.devices = self.deliveries(&entry.id)?;
            }
        }
        Ok(entries)
    }
}
