//! Size and count limits shared by every component. Every input from the network or a user is
//! checked against one of these before it is used.

/// Shortest accepted user name, in bytes (names are ASCII).
pub const MIN_NAME_LEN: usize = 3;
/// Longest accepted user name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// Devices of one account a superpeer serves at once: one account cannot fill its leaf table.
pub const MAX_LEAVES_PER_ACCOUNT: usize = 8;
/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes: bounds the work argon2 does for one request.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Largest login request accepted by the server (JSON bytes on the stream).
pub const MAX_LOGIN_REQUEST_BYTES: u64 = 16 * 1024;
/// Largest revocation list (JSON bytes): [`crate::revocation::MAX_REVOKED`] entries of the
/// longest names with a device each fit.
pub const MAX_REVOCATION_LIST_BYTES: u64 = 1024 * 1024;
/// Largest login response accepted by a client (JSON bytes on the stream): a revocation list
/// and its envelope.
pub const MAX_LOGIN_RESPONSE_BYTES: u64 = MAX_REVOCATION_LIST_BYTES + 64 * 1024;
/// Most superpeers the login server returns in a bootstrap list.
pub const MAX_BOOTSTRAP_SUPERPEERS: usize = 20;
/// Most addresses a superpeer may announce.
pub const MAX_ANNOUNCED_ADDRS: usize = 16;
/// Longest multiaddr accepted in text form.
pub const MAX_ADDR_LEN: usize = 256;
/// Largest text of a direct message, in bytes of UTF-8.
pub const MAX_MESSAGE_TEXT_BYTES: usize = 64 * 1024;
/// Largest presence record, as stored in the directory (JSON bytes).
pub const MAX_RECORD_BYTES: usize = 4 * 1024;
/// Most devices of one user the directory keeps a record of (login servers may certify more
/// devices; the directory keeps those the user was seen on most recently).
pub const MAX_DEVICES_PER_USER: usize = 8;
/// Largest directory value: the records of [`MAX_DEVICES_PER_USER`] devices.
pub const MAX_DEVICE_SET_BYTES: usize = MAX_DEVICES_PER_USER * MAX_RECORD_BYTES + 64;
/// Most relay addresses in a presence record (primary and standby superpeer, TCP and QUIC).
pub const MAX_RECORD_RELAY_ADDRS: usize = 8;
/// Most direct addresses in a presence record.
pub const MAX_RECORD_DIRECT_ADDRS: usize = 8;
/// Longest lease a presence record may claim: `expires_at - last_seen`.
pub const MAX_RECORD_LEASE_SECS: u64 = 120;
/// Largest overlay request or response (JSON bytes), but for a revocation list.
pub const MAX_OVERLAY_MESSAGE_BYTES: u64 = 16 * 1024;
/// Largest overlay response a leaf reads: a revocation list and its envelope. Only answers
/// to its own requests, from the superpeers it chose.
pub const MAX_OVERLAY_RESPONSE_BYTES: u64 = MAX_REVOCATION_LIST_BYTES + 16 * 1024;

/// A configured value checked against its range, for the error an operator reads:
/// "max_inflight must be from 1 to 65536, not 0". `name` is the setting as the
/// configuration file spells it.
pub fn within<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("{name} must be from {min} to {max}, not {value}"));
    }
    Ok(())
}
