//! JSON wire types of the overlay protocol ([`crate::protocol::OVERLAY`]): leaves attaching to
//! superpeers, publishing their presence and looking users up, and superpeers confirming each
//! other's leaves are still attached.

use serde::{Deserialize, Serialize};

use crate::cert::Certificate;
use crate::login::SuperpeerInfo;
use crate::presence::PresenceRecord;
use crate::revocation::RevocationList;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OverlayRequest {
    /// A leaf asks to attach, presenting its certificate (which must name the connection's key).
    Attach { cert: Certificate },
    /// A leaf hands its signed presence record to its primary superpeer, which stores it in the
    /// directory. Sent again before each lease runs out; this is the leaf's heartbeat.
    Publish { record: PresenceRecord },
    /// A leaf (or a superpeer's own user) looks a user up.
    Lookup { name: String },
    /// A leaf leaves gracefully (after publishing an offline record).
    Detach,
    /// A superpeer asks a record's home superpeer whether the user's device is still attached.
    IsAttached { peer_id: String },
    /// An attached leaf asks for the login server's revocation list, if newer than the one
    /// issued at `since`. The list is signed: the superpeer can only withhold it.
    Revocations { since: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one response per request, moved once
pub enum OverlayResponse {
    /// Attached: publish within `lease_secs`. `superpeers` are others worth keeping as standby.
    Attached {
        lease_secs: u64,
        superpeers: Vec<SuperpeerInfo>,
    },
    /// This superpeer holds as many leaves as it accepts; try one of `alternatives`.
    Full {
        alternatives: Vec<SuperpeerInfo>,
    },
    Published,
    /// The record of the user's most available device, whether its home superpeer confirms
    /// that device, and the records of the user's other devices (none for one device, and
    /// absent from the JSON then, as before users had several).
    Found {
        record: PresenceRecord,
        confirmed: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        others: Vec<PresenceRecord>,
    },
    /// No record: the user has not been online since records expired, or does not exist.
    NotFound,
    Detached,
    Attachment {
        attached: bool,
    },
    /// The newest revocation list the superpeer holds; none if the asker's is as new.
    Revocations {
        list: Option<RevocationList>,
    },
    Refused {
        code: OverlayRefusal,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlayRefusal {
    /// The node asked is not a superpeer (any more).
    NotSuperpeer,
    /// No valid certificate for this connection.
    NotAttached,
    InvalidCertificate,
    InvalidRecord,
    InvalidName,
    /// The directory could not be asked (no other superpeers, timeout).
    Unavailable,
    BadRequest,
}

/// A node's certificate, sent on every new connection ([`crate::protocol::INTRODUCE`]). It
/// must name the connection's key (Noise authenticated it) and verify under the issuer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introduction {
    pub cert: Certificate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IntroductionResponse {
    /// The certificate is valid for this connection's key.
    Admitted,
    /// It is not; the peer will be served nothing that needs an account.
    Refused { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let req = OverlayRequest::Lookup {
            name: "alice".into(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"type":"lookup","name":"alice"}"#
        );
        let resp = OverlayResponse::Refused {
            code: OverlayRefusal::NotSuperpeer,
            message: "not a superpeer".into(),
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            serde_json::from_str::<OverlayResponse>(&json).unwrap(),
            resp
        );
        assert!(
            serde_json::from_str::<OverlayRequest>(r#"{"type":"lookup","name":"a","x":1}"#)
                .is_err()
        );
    }
}
