//! JSON wire types of the direct message protocol ([`crate::protocol::MSG`]).
//!
//! Every request carries the sender's certificate; the recipient checks it against the issuer
//! key and checks that it names the connection's PeerId, so a name is never taken from an
//! unauthenticated field. The answer to a batch of messages means "stored by the recipient's
//! node".

use serde::{Deserialize, Serialize};

use crate::cert::{Certificate, IssuerKey};
use crate::limits::MAX_MESSAGE_TEXT_BYTES;
use crate::presence::PresenceRecord;

/// Most messages in one request: batches keep order and amortise round trips.
pub const MAX_BATCH: usize = 64;
/// Largest request or response on the wire (a full batch of maximal texts would exceed this;
/// senders cut batches by size too).
pub const MAX_MSG_WIRE_BYTES: u64 = 1024 * 1024 + 64 * 1024;
/// Text bytes a sender puts in one batch at most.
pub const MAX_BATCH_TEXT_BYTES: usize = 512 * 1024;

/// One direct message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// ULID: unique, and sortable by creation time.
    pub id: String,
    /// The recipient's user name.
    pub to: String,
    pub text: String,
    /// When the sender accepted it (milliseconds since the epoch).
    pub sent_at_ms: u64,
    /// Per-conversation sequence (sender → recipient), from 1.
    pub conv_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // one request per exchange, moved once
pub enum MsgRequest {
    /// Messages in conversation order.
    Deliver {
        cert: Certificate,
        messages: Vec<DirectMessage>,
    },
    /// A probe for `natter ping`.
    Ping { cert: Certificate, nonce: u64 },
    /// A contact's new presence, pushed directly so a status change shows at once.
    Presence { record: PresenceRecord },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MsgResponse {
    /// Every message of the batch is stored (`duplicates` of them were already).
    Stored {
        stored: u32,
        duplicates: u32,
    },
    /// The first `accepted` messages of the batch are stored (`duplicates` of them were
    /// already); the rest are refused for `message` (`code` says why, e.g. the recipient's
    /// inbox quota): the sender keeps them queued and tries again later.
    Partial {
        accepted: u32,
        duplicates: u32,
        code: MsgRefusal,
        message: String,
    },
    Pong {
        nonce: u64,
    },
    Noted,
    Refused {
        code: MsgRefusal,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgRefusal {
    /// The certificate is invalid or does not name the sending connection.
    NotAuthenticated,
    /// The message is for another user (the recipient's device changed hands?).
    WrongRecipient,
    /// Empty, too long, badly formed id, too many in one batch.
    BadMessage,
    /// The recipient cannot store it now (disk); retry later.
    Unavailable,
    /// Over a quota of the recipient's inbox (a contact request's, the sender's share, the
    /// whole inbox) or blocked; retry later, after the recipient accepts or deletes.
    InboxFull,
}

/// Why a message text is refused before it is queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("message is empty")]
    Empty,
    #[error("message is {len} bytes; at most {MAX_MESSAGE_TEXT_BYTES} bytes are allowed")]
    TooLong { len: usize },
    #[error("message contains a NUL character")]
    Nul,
}

/// The rules a text must pass, on the sender (before queueing) and on the recipient.
pub fn check_text(text: &str) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    if text.len() > MAX_MESSAGE_TEXT_BYTES {
        return Err(TextError::TooLong { len: text.len() });
    }
    if text.contains('\0') {
        return Err(TextError::Nul);
    }
    Ok(())
}

/// Canonical ULID text: 26 Crockford base32 characters, the first at most '7'.
pub fn is_ulid(id: &str) -> bool {
    id.len() == 26
        && id.as_bytes()[0] <= b'7'
        && id.bytes().all(|b| {
            b.is_ascii_digit()
                || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
        })
}

/// Largest sequence number and send time a message may carry (`i64::MAX`).
pub const MAX_FIELD: u64 = i64::MAX as u64;

/// Checks a message received from a sender already authenticated by its certificate.
pub fn check_message(m: &DirectMessage, own_name: &str) -> Result<(), (MsgRefusal, String)> {
    if m.to != own_name {
        return Err((
            MsgRefusal::WrongRecipient,
            format!("this device belongs to {own_name}, not {}", m.to),
        ));
    }
    if !is_ulid(&m.id) {
        return Err((MsgRefusal::BadMessage, "message id is not a ULID".into()));
    }
    if m.conv_seq == 0 {
        return Err((MsgRefusal::BadMessage, "sequence starts at 1".into()));
    }
    // Beyond what any store keeps (SQLite integers): refused for good here, rather than
    // failing the store and being answered "retry later" forever.
    if m.conv_seq > MAX_FIELD || m.sent_at_ms > MAX_FIELD {
        return Err((
            MsgRefusal::BadMessage,
            format!("sequence and send time are at most {MAX_FIELD}"),
        ));
    }
    check_text(&m.text).map_err(|e| (MsgRefusal::BadMessage, e.to_string()))
}

/// The sender check: a valid certificate from our issuer that names the connection's peer.
pub fn authenticate(
    cert: &Certificate,
    issuer: &IssuerKey,
    remote: &libp2p_identity::PeerId,
    now: u64,
) -> Result<(), (MsgRefusal, String)> {
    cert.verify(issuer, now)
        .map_err(|e| (MsgRefusal::NotAuthenticated, e.to_string()))?;
    if cert.peer_id() != *remote {
        return Err((
            MsgRefusal::NotAuthenticated,
            "certificate does not belong to the sending device".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IssuerSigningKey, UserName};

    #[test]
    fn text_rules() {
        assert_eq!(check_text(""), Err(TextError::Empty));
        assert_eq!(check_text("  \n"), Err(TextError::Empty));
        assert!(check_text("hi").is_ok());
        assert!(check_text(&"x".repeat(MAX_MESSAGE_TEXT_BYTES)).is_ok());
        assert_eq!(
            check_text(&"x".repeat(MAX_MESSAGE_TEXT_BYTES + 1)),
            Err(TextError::TooLong {
                len: MAX_MESSAGE_TEXT_BYTES + 1
            })
        );
        assert_eq!(check_text("a\0b"), Err(TextError::Nul));
    }

    #[test]
    fn ulid_shape() {
        assert!(is_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!is_ulid("01ARZ3NDEKTSV4RRFFQ69G5FA"));
        assert!(!is_ulid("81ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!is_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAu"));
        assert!(!is_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAL"));
    }

    #[test]
    fn spoofed_sender_is_refused() {
        let issuer = IssuerSigningKey::from_bytes(&[3; 32]);
        let alice = libp2p_identity::Keypair::ed25519_from_bytes([1; 32]).unwrap();
        let mallory = libp2p_identity::Keypair::ed25519_from_bytes([2; 32]).unwrap();
        let device = alice
            .clone()
            .try_into_ed25519()
            .unwrap()
            .public()
            .to_bytes();
        let cert = issuer
            .issue(UserName::parse("alice").unwrap(), device, 1, 1000, 3600)
            .unwrap();
        let pk = issuer.public();
        assert!(authenticate(&cert, &pk, &alice.public().to_peer_id(), 1001).is_ok());
        let (code, _) = authenticate(&cert, &pk, &mallory.public().to_peer_id(), 1001).unwrap_err();
        assert_eq!(code, MsgRefusal::NotAuthenticated);
        assert!(authenticate(&cert, &pk, &alice.public().to_peer_id(), 99_999).is_err());
    }

    #[test]
    fn message_checks() {
        let m = DirectMessage {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            to: "bob".into(),
            text: "hi".into(),
            sent_at_ms: 1,
            conv_seq: 1,
        };
        assert!(check_message(&m, "bob").is_ok());
        assert_eq!(
            check_message(&m, "carol").unwrap_err().0,
            MsgRefusal::WrongRecipient
        );
        let bad = DirectMessage {
            id: "x".into(),
            ..m.clone()
        };
        assert_eq!(
            check_message(&bad, "bob").unwrap_err().0,
            MsgRefusal::BadMessage
        );
    }
}
