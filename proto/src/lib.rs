//! Natter's pure core: user names, identity certificates, wire messages, protocol ids and
//! limits.
//!
//! Nothing in this crate touches a socket, a clock or a runtime: callers pass `now` in, so
//! every rule here is unit-testable and behaves the same on every peer.

pub mod cert;
pub mod devices;
pub mod limits;
pub mod login;
pub mod msg;
pub mod name;
pub mod overlay;
pub mod presence;
pub mod protocol;
pub mod revocation;

pub use cert::{CertError, Certificate, IssuerKey, IssuerSigningKey, KeyId};
pub use devices::DeviceRecords;
pub use name::{NameError, UserName};
pub use presence::{PresenceBody, PresenceRecord, RecordError, Status};
pub use revocation::{RevocationList, Revocations};
