//! `natter history NAME`: a conversation with one user, both ways, from every device of this
//! user, in conversation order. Read from the local store, whether the daemon runs or not.

use serde::{Deserialize, Serialize};

use crate::store::{DeviceDelivery, HistoryEntry, HistoryKind};

/// One message of `natter history NAME --json`. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub id: String,
    pub from: String,
    pub to: String,
    pub text: String,
    pub sent_at: u64,
    /// Position in the conversation (one order for the pair of users, across devices).
    pub conv_seq: u64,
    /// "received", "queued", "refused", "delivered" (sent from this device), or
    /// "sent_elsewhere" (sent from another device of this user).
    pub state: String,
    /// "direct" or "relayed", for a delivered message.
    pub path: Option<String>,
    /// When it was delivered, received, or its copy arrived.
    pub at: Option<u64>,
    /// The recipient's device that stored it first (delivered), or the device of this user
    /// that sent it (sent elsewhere).
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// A sent message's further devices: this user's own, and once delivered the recipient's
    /// others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceItem>,
}

/// Where a delivered message stands on one further device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceItem {
    /// The user the device belongs to.
    pub user: String,
    /// Its peer id; absent while the user's devices are not known yet.
    pub peer_id: Option<String>,
    /// "delivered" or "pending".
    pub state: String,
    pub path: Option<String>,
    pub delivered_at: Option<u64>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<DeviceDelivery> for DeviceItem {
    fn from(d: DeviceDelivery) -> Self {
        Self {
            user: d.owner,
            peer_id: (!d.device.is_empty()).then_some(d.device),
            state: if d.delivered_at_ms.is_some() {
                "delivered"
            } else {
                "pending"
            }
            .into(),
            path: d.path,
            delivered_at: d.delivered_at_ms,
            attempts: d.attempts,
            last_error: d.last_error,
        }
    }
}

impl HistoryItem {
    /// `entry` of the conversation between `me` and `peer`.
    pub fn new(entry: HistoryEntry, me: &str, peer: &str) -> Self {
        let (from, to) = if entry.kind == HistoryKind::Received {
            (peer, me)
        } else {
            (me, peer)
        };
        let state = match entry.kind {
            HistoryKind::Received => "received",
            HistoryKind::Queued => "queued",
            HistoryKind::Refused => "refused",
            HistoryKind::Delivered => "delivered",
            HistoryKind::SentElsewhere => "sent_elsewhere",
        };
        Self {
            id: entry.id,
            from: from.into(),
            to: to.into(),
            text: entry.text,
            sent_at: entry.sent_at_ms,
            conv_seq: entry.conv_seq,
            state: state.into(),
            path: entry.path,
            at: entry.at_ms,
            device: entry.device,
            last_error: entry.last_error,
            devices: entry.devices.into_iter().map(DeviceItem::from).collect(),
        }
    }
}
