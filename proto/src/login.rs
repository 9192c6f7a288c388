//! JSON wire types of the login protocol ([`crate::protocol::LOGIN`]).
//!
//! The device key of `register`, `login` and `renew` is never a field: it is the PeerId of the
//! Noise-authenticated connection the request arrives on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cert::{Certificate, IssuerKey};
use crate::limits::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
use crate::revocation::RevocationList;

/// A password in transit. Its `Debug` never shows the secret, so it cannot end up in a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Checks the length rules; the error text is shown to users as is.
    pub fn check(&self) -> Result<(), String> {
        if self.0.len() > MAX_PASSWORD_BYTES {
            return Err(format!(
                "password is too long: at most {MAX_PASSWORD_BYTES} bytes"
            ));
        }
        if self.0.chars().count() < MIN_PASSWORD_CHARS {
            return Err(format!(
                "password is too short: at least {MIN_PASSWORD_CHARS} characters"
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A request from a node to the login server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoginRequest {
    /// Create an account and certify the connection's device key for it.
    Register { name: String, password: Password },
    /// Certify the connection's device key for an existing account.
    Login { name: String, password: Password },
    /// Re-certify without a password: the old certificate must name the connection's key.
    Renew { cert: Certificate },
    /// Does an account with this name exist? (`send` to a name nobody registered fails clearly.)
    Exists { name: String },
    /// A superpeer says it is alive and where it can be reached, to appear in bootstrap lists.
    Announce {
        cert: Certificate,
        addrs: Vec<String>,
        /// Leaves currently attached, so the list can favour lightly loaded superpeers.
        leaves: u32,
        /// Leaves it accepts at most.
        capacity: u32,
    },
    /// The revocation list, if newer than the one issued at `since` (superpeers ask often).
    Revocations { since: u64 },
    /// A bootstrap list and the network's supply, without a new certificate: what an
    /// unattached node polls for (a renewal only when the certificate is due).
    Bootstrap { cert: Certificate },
    /// The connection's device is no longer a superpeer (it demoted or signs off): take it
    /// out of the bootstrap lists now rather than when its announcement expires.
    Withdraw { cert: Certificate },
}

impl LoginRequest {
    /// Short name for logs and metrics; never includes a secret.
    pub fn kind(&self) -> &'static str {
        match self {
            LoginRequest::Register { .. } => "register",
            LoginRequest::Login { .. } => "login",
            LoginRequest::Renew { .. } => "renew",
            LoginRequest::Exists { .. } => "exists",
            LoginRequest::Announce { .. } => "announce",
            LoginRequest::Revocations { .. } => "revocations",
            LoginRequest::Bootstrap { .. } => "bootstrap",
            LoginRequest::Withdraw { .. } => "withdraw",
        }
    }
}

/// A live superpeer in a bootstrap list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuperpeerInfo {
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub leaves: u32,
    pub capacity: u32,
}

/// The network's superpeers as the login server's registry counts them: how many are listed
/// (live and reached back) and the load they claim. What promotion by need decides on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supply {
    pub superpeers: u32,
    /// Leaves attached, and leaves accepted at most, summed over the listed superpeers (each
    /// superpeer's own claim, capacity capped by the registry).
    pub leaves: u64,
    pub capacity: u64,
}

/// The login server's answer.
// One response per request, moved once: boxing the certificate would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LoginResponse {
    /// A fresh certificate for the connection's device key.
    Issued {
        cert: Certificate,
        issuer_key: IssuerKey,
        superpeers: Vec<SuperpeerInfo>,
        #[serde(default)]
        supply: Supply,
    },
    Exists {
        name: String,
        exists: bool,
    },
    /// The announcement was accepted; announce again within `refresh_secs`. `superpeers` are
    /// the other live superpeers, so superpeers find each other for the directory.
    Announced {
        refresh_secs: u64,
        #[serde(default)]
        superpeers: Vec<SuperpeerInfo>,
        #[serde(default)]
        supply: Supply,
    },
    /// The answer to [`LoginRequest::Withdraw`]: no longer listed.
    Withdrawn,
    /// The answer to [`LoginRequest::Bootstrap`].
    Bootstrap {
        superpeers: Vec<SuperpeerInfo>,
        supply: Supply,
    },
    /// The signed revocation list; none if the one the asker holds is current.
    Revocations {
        list: Option<RevocationList>,
    },
    Refused(Refusal),
}

/// Why the login server refused a request: a code for programs, a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
    /// Set with [`RefusalCode::RateLimited`] and [`RefusalCode::Busy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn retry_after(code: RefusalCode, secs: u64) -> Self {
        Self {
            code,
            message: format!("rate limited, retry in {secs} s"),
            retry_after_secs: Some(secs),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    InvalidName,
    InvalidPassword,
    NameTaken,
    UnknownUser,
    WrongPassword,
    AccountDisabled,
    RegistrationClosed,
    InvalidCertificate,
    NotAuthorized,
    RateLimited,
    Busy,
    BadRequest,
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_never_in_debug_output() {
        let req = LoginRequest::Login {
            name: "alice".into(),
            password: Password::new("hunter2hunter2"),
        };
        assert!(!format!("{req:?}").contains("hunter2"));
    }

    #[test]
    fn wire_shape_is_tagged_json() {
        let req = LoginRequest::Exists { name: "bob".into() };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"type":"exists","name":"bob"}"#
        );
        let resp = LoginResponse::Refused(Refusal::retry_after(RefusalCode::RateLimited, 7));
        let json = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            json,
            r#"{"type":"refused","code":"rate_limited","message":"rate limited, retry in 7 s","retry_after_secs":7}"#
        );
        assert_eq!(serde_json::from_str::<LoginResponse>(&json).unwrap(), resp);
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(
            serde_json::from_str::<LoginRequest>(r#"{"type":"exists","name":"bob","x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<LoginRequest>(r#"{"type":"drop_tables"}"#).is_err());
    }

    #[test]
    fn password_rules() {
        assert!(Password::new("short").check().is_err());
        assert!(Password::new("long enough").check().is_ok());
        assert!(
            Password::new("x".repeat(MAX_PASSWORD_BYTES + 1))
                .check()
                .is_err()
        );
    }
}
