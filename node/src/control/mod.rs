//! The local control API of the node daemon: how `natter status`, `send`, `inbox --follow`, …
//! talk to the running `natter up`.
//!
//! # Transport
//!
//! A Unix domain socket, `control.sock` in the home directory (mode 0600, in a 0700 directory),
//! guarded in addition by `control.token`: 32 random bytes, hex, mode 0600, rewritten atomically
//! at each daemon start. File modes alone would let any process of the same user in; the token
//! at least ties a client to the daemon generation it read the token from, and it keeps the
//! protocol safe should the socket ever be exposed elsewhere.
//!
//! # Framing
//!
//! Newline-delimited JSON. The client connects and sends one line,
//! `{"token": "<hex>", "request": <Req>}`. The daemon answers with one or more lines, each
//! `{"ok": <Resp>}` or `{"error": "<one clear sentence>"}`, and closes the connection when it is
//! done. A streaming request (`inbox --follow`) keeps receiving lines until the client
//! disconnects or the daemon stops. One request per connection: there is no request id to
//! correlate, and "the client went away" is simply the end of its connection.
//!
//! # Layout
//!
//! - `wire`: bytes ↔ lines (envelopes, capped line reads, the token).
//! - `server`: [`ControlServer`], which hands each request to the daemon's event loop as an
//!   [`Incoming`] with a [`Replier`], on one of its [`Lanes`] (`lanes`).
//! - `client`: [`ControlClient`], used by every subcommand other than `up`.
//!
//! Both ends are generic over the request and response types, so the daemon defines its own
//! enums without this module knowing them.

mod client;
mod lanes;
mod server;
mod wire;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use client::ControlClient;
pub use lanes::Lanes;
pub use server::{ClientGone, ControlServer, Incoming, Replier, TryReplyError};

/// File name of the control socket inside the home directory.
pub const SOCKET_FILE: &str = "control.sock";
/// File name of the control token inside the home directory.
pub const TOKEN_FILE: &str = "control.token";
/// File name of the lock a running daemon holds, so that two daemons never share a home.
///
/// The socket alone cannot decide this race-free: two daemons starting together could both
/// find a stale socket, and the second would delete the first one's fresh socket.
pub const LOCK_FILE: &str = "control.lock";

/// At most this many clients are served at once; more are told so and disconnected, so that a
/// runaway script cannot exhaust the daemon's file descriptors or memory.
pub const MAX_CLIENTS: usize = 64;
/// Largest request line (without its newline) the daemon reads; requests are small commands,
/// and an unbounded line would let any local process make the daemon allocate without limit.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest reply line a client reads. Replies come from the trusted daemon and may carry a
/// whole inbox, so this is generous; it only stops a broken daemon from exhausting the client.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// How long the daemon waits for the request line after accepting a connection, so that an
/// idle connection cannot hold one of the [`MAX_CLIENTS`] slots for ever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Reply lines queued per connection before [`Replier::send`] waits for the client to read.
pub const REPLY_BUFFER: usize = 32;

/// The error sentence the daemon sends for a wrong token; the client maps it to
/// [`ControlError::BadToken`].
const BAD_TOKEN: &str = "bad control token";

/// Where the control socket of `home` lives.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// Where the control token of `home` lives.
pub fn token_path(home: &Path) -> PathBuf {
    home.join(TOKEN_FILE)
}

/// Why a control operation failed. Every variant displays as one sentence a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon answers on the socket: the CLI prints this and exits 1.
    #[error(
        "natter is not running for {home}: start it with `natter --home {home} up`",
        home = home.display()
    )]
    NotRunning { home: PathBuf },
    /// `bind` found a live daemon (or its lock) for the same home.
    #[error("another natter daemon is already running for this home ({})", home.display())]
    AlreadyRunning { home: PathBuf },
    /// The daemon refused our token: the token file changed under us (daemon restarted) or
    /// belongs to another daemon.
    #[error(
        "bad control token: the daemon refused the token in control.token; if it was just restarted, try again"
    )]
    BadToken,
    /// The daemon's own error sentence, shown as is.
    #[error("{0}")]
    Remote(String),
    /// A local I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The other end broke the framing (malformed or oversized line, early close, …).
    #[error("control protocol error: {0}")]
    Protocol(String),
}

impl ControlError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
