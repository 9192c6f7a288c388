//! The inbox's quotas: how much one sender, a contact request and the whole inbox may hold,
//! counted in `inbox_usage` (kept by triggers, schema v4), and blocked senders.

use rusqlite::params;

/// How much the inbox takes: from a contact (or someone this user wrote to), from anyone
/// else (a contact request), and in all. Counted in messages and text bytes while stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    pub request_messages: u64,
    pub request_bytes: u64,
    pub sender_messages: u64,
    pub sender_bytes: u64,
    pub total_messages: u64,
    pub total_bytes: u64,
}

impl Default for InboxLimits {
    fn default() -> Self {
        Self {
            request_messages: 20,
            // One message of the largest size fits.
            request_bytes: 64 * 1024,
            sender_messages: 10_000,
            sender_bytes: 32 * 1024 * 1024,
            total_messages: 100_000,
            total_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Which quota a message is over, with its bounds, for the sender's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    /// The user blocked the sender.
    Blocked,
    /// The sender is not a contact, and has sent as much as a request may hold.
    Request { messages: u64, bytes: u64 },
    /// A contact has filled its share of the inbox.
    Sender { messages: u64, bytes: u64 },
    /// The inbox is full.
    Total { messages: u64, bytes: u64 },
}

impl std::fmt::Display for OverQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverQuota::Blocked => write!(f, "the recipient does not accept messages from you"),
            OverQuota::Request { messages, bytes } => write!(
                f,
                "you are not in the recipient's contacts: at most {messages} messages ({} KiB) \
                 wait for them until they accept you",
                bytes / 1024
            ),
            OverQuota::Sender { messages, bytes } => write!(
                f,
                "the recipient's inbox holds as much from you as it takes ({messages} messages, \
                 {} MiB) until they delete some",
                bytes / (1024 * 1024)
            ),
            OverQuota::Total { messages, bytes } => write!(
                f,
                "the recipient's inbox is full ({messages} messages, {} MiB)",
                bytes / (1024 * 1024)
            ),
        }
    }
}

/// A sender's (or, for `''`, the whole inbox's) messages and text bytes.
pub(super) fn usage(tx: &rusqlite::Connection, sender: &str) -> rusqlite::Result<(u64, u64)> {
    use rusqlite::OptionalExtension as _;
    Ok(tx
        .prepare_cached("SELECT messages, bytes FROM inbox_usage WHERE sender = ?1")?
        .query_row(params![sender], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0)))
}

pub(super) fn exists(
    tx: &rusqlite::Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<bool> {
    use rusqlite::OptionalExtension as _;
    Ok(tx
        .prepare_cached(sql)?
        .query_row(args, |_| Ok(()))
        .optional()?
        .is_some())
}

/// The quota `sender`'s next message of `bytes` would go over, if any.
pub(super) fn over_quota(
    tx: &rusqlite::Connection,
    limits: &InboxLimits,
    sender: &str,
    bytes: u64,
) -> rusqlite::Result<Option<OverQuota>> {
    if exists(tx, "SELECT 1 FROM blocked WHERE name = ?1", params![sender])? {
        return Ok(Some(OverQuota::Blocked));
    }
    let over = |(messages, stored): (u64, u64), max_messages: u64, max_bytes: u64| {
        messages >= max_messages || stored.saturating_add(bytes) > max_bytes
    };
    if over(usage(tx, "")?, limits.total_messages, limits.total_bytes) {
        return Ok(Some(OverQuota::Total {
            messages: limits.total_messages,
            bytes: limits.total_bytes,
        }));
    }
    // Accepted: a contact, or someone this user wrote to.
    let accepted = exists(
        tx,
        "SELECT 1 FROM contacts WHERE name = ?1",
        params![sender],
    )? || exists(
        tx,
        "SELECT 1 FROM conversations WHERE peer = ?1",
        params![sender],
    )?;
    let from = usage(tx, sender)?;
    Ok(if accepted {
        over(from, limits.sender_messages, limits.sender_bytes).then_some(OverQuota::Sender {
            messages: limits.sender_messages,
            bytes: limits.sender_bytes,
        })
    } else {
        over(from, limits.request_messages, limits.request_bytes).then_some(OverQuota::Request {
            messages: limits.request_messages,
            bytes: limits.request_bytes,
        })
    })
}
