//! What the CLI asks the daemon over the control API, and the JSON it gets back. The views'
//! field names are the `--json` contract of DESIGN.md (extra fields are allowed).

use natter_proto::Status;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Lookup {
        name: String,
    },
    Netcheck,
    SetStatus {
        status: Status,
    },
    Down,
    Send {
        to: String,
        text: String,
        /// Wait (up to 5 s) for the recipient's acknowledgement before answering.
        #[serde(default = "yes")]
        wait: bool,
    },
    Inbox {
        follow: bool,
    },
    Ping {
        name: String,
        count: u32,
        /// Time between probes in milliseconds (default 1,000).
        #[serde(default)]
        interval_ms: Option<u64>,
    },
    ContactsAdd {
        name: String,
    },
    ContactsRemove {
        name: String,
    },
    ContactsList,
    /// Deletes messages, or changes whom the inbox takes messages from.
    Edit {
        #[serde(flatten)]
        edit: InboxEdit,
    },
}

impl ControlRequest {
    /// Requests answered at once from the daemon's own state, with no store or network work:
    /// they take the control socket's quick lane, so `natter status` does not queue behind a
    /// burst of `send`s.
    pub fn is_quick(&self) -> bool {
        matches!(self, Self::Status | Self::Netcheck)
    }
}

/// A change to the inbox or to whom it takes messages from, done by the daemon when it runs
/// and by the CLI on the store when it does not, with the same checks and sentences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "edit", rename_all = "snake_case")]
pub enum InboxEdit {
    /// Deletes these messages (ids as `inbox --json` shows them).
    Delete { ids: Vec<String> },
    /// Deletes every message, or every message of `from`.
    Clear { from: Option<String> },
    /// Takes `name`'s messages without the contact-request quota: a contact (unblocked).
    Accept { name: String },
    /// Refuses `name`'s messages from now on.
    Block { name: String },
    /// Takes these messages out of the outbox (ids as `outbox --json` shows them): refused
    /// for good, or queued and no longer wanted (one already on its way may still arrive).
    Drop { ids: Vec<String> },
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlResponse {
    Status(StatusView),
    Lookup(LookupView),
    Netcheck(NetcheckView),
    Done {
        message: String,
    },
    Sent(SendView),
    Inbox(Vec<InboxItem>),
    /// One line of `inbox --follow`.
    Event(FollowEvent),
    Ping(PingProbe),
    Contacts(Vec<String>),
}

/// `natter send --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendView {
    pub id: String,
    /// "delivered" (stored by the recipient's node), "queued" (will be retried) or "refused"
    /// (the recipient's node refused it for good, `reason` says why; it stays in the outbox,
    /// not tried again, until `outbox drop`).
    pub status: String,
    /// "direct" or "relayed" when delivered.
    pub path: Option<String>,
    pub to: String,
    /// Why a queued message was not delivered yet, when the recipient said (its inbox quota),
    /// or why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One message of `natter inbox --json`. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    pub id: String,
    pub from: String,
    pub text: String,
    pub sent_at: u64,
    pub received_at: u64,
}

/// What `inbox --follow` streams: new messages and contacts' presence changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FollowEvent {
    Message(InboxItem),
    Presence {
        user: String,
        status: String,
        last_seen: Option<u64>,
    },
}

/// One probe of `natter ping --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingProbe {
    pub seq: u32,
    /// Round trip in milliseconds; absent when the probe failed.
    pub rtt_ms: Option<f64>,
    /// "direct" or "relayed".
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `natter status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub user: String,
    pub peer_id: String,
    /// "leaf" or "superpeer".
    pub role: String,
    /// Why the node has the role it has (e.g. "no public address confirmed by AutoNAT").
    pub role_reason: String,
    /// "public", "private" or "unknown".
    pub reachability: String,
    /// Leaves: the superpeers attached to, primary first. Superpeers: empty.
    pub superpeers: Vec<String>,
    pub primary: Option<String>,
    pub standby: Option<String>,
    /// Leaves: when (Unix ms) this node attached to its primary and to its standby.
    #[serde(default)]
    pub primary_since: Option<u64>,
    #[serde(default)]
    pub standby_since: Option<u64>,
    /// Leaves: the superpeer holding this device's presence record in the directory (its
    /// home, the primary once it acknowledged a publication), and since when (Unix ms).
    #[serde(default)]
    pub home: Option<String>,
    #[serde(default)]
    pub home_since: Option<u64>,
    /// Leaves attached to this node (superpeers only; 0 for leaves).
    pub leaves: usize,
    pub max_leaves: usize,
    pub presence: String,
    pub listen_addrs: Vec<String>,
    pub external_addrs: Vec<String>,
    pub records_stored: u64,
    pub records_refused: u64,
    pub lookups: u64,
    pub cert_expires_at: u64,
    pub uptime_secs: u64,
}

/// `natter lookup NAME --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupView {
    pub user: String,
    /// "online", "away", "busy", "offline" or "unknown".
    pub status: String,
    pub peer_id: Option<String>,
    /// Relay addresses through the user's superpeers.
    pub superpeers: Vec<String>,
    pub direct_addrs: Vec<String>,
    /// Unix seconds; absent when never seen (or unknown).
    pub last_seen: Option<u64>,
    /// The superpeer the user is attached to, which confirmed (or not) the device is there.
    #[serde(default)]
    pub home: Option<String>,
    #[serde(default)]
    pub confirmed: bool,
    /// Sequence of the record this answer is from.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Each of the user's devices in the directory, the one shown above first.
    #[serde(default)]
    pub devices: Vec<DeviceView>,
}

/// One device of a user, in `natter lookup NAME --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub peer_id: String,
    /// The device's own status while its lease runs, else "offline".
    pub status: String,
    /// Whether its home superpeer confirmed the device is attached (asked of the device shown
    /// as the user's presence; the others read false).
    pub confirmed: bool,
    /// Unix seconds.
    pub last_seen: u64,
    pub home: Option<String>,
    pub direct_addrs: Vec<String>,
    pub seq: u64,
}

/// `natter netcheck --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetcheckView {
    pub reachability: String,
    /// Addresses other peers observed us at (identify), per observer.
    pub observed_addrs: Vec<Observation>,
    /// Addresses confirmed reachable by AutoNAT v2.
    pub external_addrs: Vec<String>,
    pub listen_addrs: Vec<String>,
    /// Recent AutoNAT v2 probes.
    pub probes: Vec<Probe>,
    /// Best guess at the NAT's mapping behaviour.
    pub nat: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub observer: String,
    pub observed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub addr: String,
    pub server: String,
    pub reachable: bool,
}
