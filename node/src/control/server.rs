//! The daemon's end of the control socket: accepts clients, checks their token and hands each
//! request to the daemon's event loop, then writes whatever the event loop replies.
//!
//! Only the event loop decides anything; this module only moves lines. Each connection is one
//! task owned by the server's `JoinSet`, and every queue between them is bounded.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::lanes::Lanes;
use super::wire::{self, LineError, RawRequestLine, ReplyLine};
use super::{
    BAD_TOKEN, ControlError, LOCK_FILE, MAX_CLIENTS, MAX_REQUEST_BYTES, REPLY_BUFFER,
    REQUEST_TIMEOUT, socket_path, token_path,
};

/// How long `bind` waits for a daemon found on an existing socket to accept the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connection tasks may take to flush their last lines once the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One request from a control client, as handed to the daemon's event loop.
#[derive(Debug)]
pub struct Incoming<Req, Resp> {
    pub request: Req,
    /// Where the answer goes: once for an ordinary request, many times for a stream.
    pub reply: Replier<Resp>,
}

/// The daemon's handle on one client connection. Each `send` becomes one reply line; dropping
/// every clone of the `Replier` ends the reply and closes the connection.
pub struct Replier<Resp> {
    lines: mpsc::Sender<Result<Resp, String>>,
}

/// The client has disconnected (or the daemon is stopping): stop producing replies for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the control client has disconnected")]
pub struct ClientGone;

/// Why [`Replier::try_send`] did not queue a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryReplyError {
    /// The client reads slower than the daemon replies; [`super::REPLY_BUFFER`] lines wait.
    #[error("the control client is not keeping up with replies")]
    Full,
    #[error("the control client has disconnected")]
    ClientGone,
}

impl<Resp> Replier<Resp> {
    /// Queues one reply line (`Ok` → `{"ok": …}`, `Err(sentence)` → `{"error": sentence}`).
    /// Waits while [`super::REPLY_BUFFER`] lines are queued, so an event loop that must never
    /// block should use [`Replier::try_send`] for streams instead.
    pub async fn send(&self, reply: Result<Resp, String>) -> Result<(), ClientGone> {
        self.lines.send(reply).await.map_err(|_| ClientGone)
    }

    /// Queues one reply line without waiting.
    pub fn try_send(&self, reply: Result<Resp, String>) -> Result<(), TryReplyError> {
        self.lines.try_send(reply).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TryReplyError::Full,
            mpsc::error::TrySendError::Closed(_) => TryReplyError::ClientGone,
        })
    }

    /// Completes when the client has disconnected (or the daemon is stopping), so a stream can
    /// be dropped without waiting for its next line.
    pub async fn closed(&self) {
        self.lines.closed().await;
    }

    /// Whether the client has disconnected.
    pub fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }
}

// Manual impls: deriving would require `Resp: Clone` / `Resp: Debug` for no reason.
impl<Resp> Clone for Replier<Resp> {
    fn clone(&self) -> Self {
        Self {
            lines: self.lines.clone(),
        }
    }
}

impl<Resp> fmt::Debug for Replier<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replier")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The bound control socket of a daemon, not yet serving.
///
/// Holding it means owning the home: the daemon lock is held and the socket exists until the
/// server is dropped or [`ControlServer::serve`] returns, whatever happens in between.
pub struct ControlServer {
    listener: UnixListener,
    token: String,
    guard: SocketGuard,
}

impl fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlServer")
            .field("socket", &self.guard.socket)
            .finish_non_exhaustive()
    }
}

/// Removes the socket file when dropped and holds the home's daemon lock until then, so that a
/// crashed or failed start leaves nothing that looks alive, and removal never races a newer
/// daemon (which cannot bind while the lock is held).
struct SocketGuard {
    socket: PathBuf,
    removed: bool,
    /// Released (by closing the file) only after the socket is gone.
    _lock: std::fs::File,
}

impl SocketGuard {
    fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove control socket");
            }
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

impl ControlServer {
    /// Takes the daemon's place in `home` (creating it 0700 if missing): refuses if another
    /// daemon runs there, removes a stale socket left by a crash, writes a fresh token, and
    /// binds `control.sock` with mode 0600.
    pub async fn bind(home: &Path) -> Result<ControlServer, ControlError> {
        let home = home.to_owned();
        let lock = {
            let home = home.clone();
            tokio::task::spawn_blocking(move || lock_home(&home))
                .await
                .map_err(|e| ControlError::Protocol(format!("lock task failed: {e}")))??
        };

        let socket = socket_path(&home);
        probe(&home, &socket).await?;

        // The token is in place before the socket exists, so a client that connects never
        // reads a previous daemon's token.
        let token = wire::new_token();
        {
            let (path, token) = (token_path(&home), token.clone());
            tokio::task::spawn_blocking(move || write_private(&path, token.as_bytes()))
                .await
                .map_err(|e| ControlError::Protocol(format!("token task failed: {e}")))??;
        }

        let listener = UnixListener::bind(&socket).map_err(|e| {
            ControlError::io(
                format!("cannot create control socket {}", socket.display()),
                e,
            )
        })?;
        let guard = SocketGuard {
            socket,
            removed: false,
            _lock: lock,
        };
        // The socket appears with the umask's mode; the 0700 home keeps others out until here.
        set_mode(&guard.socket, 0o600)?;
        tracing::debug!(socket = %guard.socket.display(), "control socket bound");
        Ok(ControlServer {
            listener,
            token,
            guard,
        })
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.guard.socket
    }

    /// Serves clients until `shutdown` is cancelled, forwarding each authenticated request to
    /// `requests` (the daemon's event loop). On shutdown the socket is removed at once, open
    /// connections get a short grace period (1 s) to flush replies already queued, then are closed.
    pub async fn serve<Req, Resp>(
        self,
        requests: impl Into<Lanes<Req, Resp>>,
        shutdown: CancellationToken,
    ) where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        let ControlServer {
            listener,
            token,
            mut guard,
        } = self;
        let token: Arc<str> = token.into();
        let requests = requests.into();
        let mut connections = JoinSet::new();
        let mut next_id: u64 = 0;

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    log_join(done);
                }
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!(error = %e, "control socket accept failed");
                            tokio::select! {
                                () = shutdown.cancelled() => break,
                                () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                            }
                        }
                    };
                    while let Some(done) = connections.try_join_next() {
                        log_join(done);
                    }
                    if connections.len() >= MAX_CLIENTS {
                        tracing::warn!(max = MAX_CLIENTS, "too many control clients, refusing one");
                        refuse(&stream);
                        continue;
                    }
                    next_id += 1;
                    let span = tracing::debug_span!("control_conn", conn = next_id);
                    connections.spawn(
                        connection(stream, token.clone(), requests.clone(), shutdown.clone())
                            .instrument(span),
                    );
                }
            }
        }

        // New clients now see "not running" instead of a socket nobody accepts on.
        drop(listener);
        guard.remove();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = connections.join_next().await {
                log_join(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                left = connections.len(),
                "closing control connections still writing"
            );
            connections.shutdown().await;
        }
        // The lock is released here, after every connection is gone.
        drop(guard);
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "control connection task panicked");
    }
}

/// Tells a client over the limit why it is dropped, without ever blocking the accept loop: the
/// line fits in an empty socket buffer, and if it does not, the client only sees the close.
fn refuse(stream: &UnixStream) {
    let line = wire::error_line(&format!(
        "the daemon is serving too many control clients ({MAX_CLIENTS}); try again later"
    ));
    let _ = stream.try_write(&line);
}

/// Why a connection produced no request for the daemon.
enum Refusal {
    /// The client left (or broke the socket) before asking anything; nobody to answer.
    Gone,
    /// Answer with this sentence, then close.
    Answer(String),
}

/// One client connection: request line, token check, hand-off, then reply lines.
async fn connection<Req, Resp>(
    stream: UnixStream,
    token: Arc<str>,
    requests: Lanes<Req, Resp>,
    shutdown: CancellationToken,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);

    let request = tokio::select! {
        read = tokio::time::timeout(REQUEST_TIMEOUT, read_request::<Req>(&mut reader, &token)) => {
            read.unwrap_or_else(|_| Err(Refusal::Answer(format!(
                "no control request within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))))
        }
        () = shutdown.cancelled() => return,
    };
    let request = match request {
        Ok(request) => request,
        Err(Refusal::Gone) => return,
        Err(Refusal::Answer(sentence)) => {
            tracing::debug!(%sentence, "control request refused");
            let _ = write.write_all(&wire::error_line(&sentence)).await;
            return;
        }
    };

    let (lines, replies) = mpsc::channel(REPLY_BUFFER);
    let requests = requests.lane_for(&request);
    let incoming = Incoming {
        request,
        reply: Replier { lines },
    };
    tokio::select! {
        sent = requests.send(incoming) => {
            if sent.is_err() {
                let _ = write.write_all(&wire::error_line("the daemon is shutting down")).await;
                return;
            }
        }
        () = shutdown.cancelled() => return,
    }
    pump(reader, write, replies, shutdown).await;
}

/// Reads and authenticates the request line.
async fn read_request<Req: DeserializeOwned>(
    reader: &mut BufReader<OwnedReadHalf>,
    token: &str,
) -> Result<Req, Refusal> {
    let mut line = Vec::new();
    match wire::read_line(reader, MAX_REQUEST_BYTES, &mut line).await {
        Ok(true) => {}
        Ok(false) => return Err(Refusal::Gone),
        Err(LineError::TooLong) => {
            return Err(Refusal::Answer(format!(
                "control request is larger than {MAX_REQUEST_BYTES} bytes"
            )));
        }
        Err(LineError::Io(e)) => {
            tracing::debug!(error = %e, "control client read failed");
            return Err(Refusal::Gone);
        }
    }
    let raw: RawRequestLine = serde_json::from_slice(&line)
        .map_err(|e| Refusal::Answer(format!("malformed control request: {e}")))?;
    if !wire::tokens_match(&raw.token, token) {
        return Err(Refusal::Answer(BAD_TOKEN.to_owned()));
    }
    serde_json::from_value(raw.request).map_err(|e| {
        Refusal::Answer(format!(
            "unknown control request (is this natter the same version as the daemon?): {e}"
        ))
    })
}

/// Writes the daemon's replies until it drops every `Replier` (done), the client disconnects,
/// or the daemon stops. Returning drops `replies`, which is what [`Replier::closed`] observes.
async fn pump<Resp: Serialize>(
    mut reader: BufReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    mut replies: mpsc::Receiver<Result<Resp, String>>,
    shutdown: CancellationToken,
) {
    // The client sends nothing after its request, so any read completing means it is gone;
    // stray bytes are read and ignored.
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                // Flush what the daemon already answered (e.g. the reply to `natter down`).
                for _ in 0..REPLY_BUFFER {
                    let Ok(reply) = replies.try_recv() else { break };
                    if write_reply(&mut write, reply).await.is_err() {
                        break;
                    }
                }
                return;
            }
            reply = replies.recv() => match reply {
                Some(reply) => {
                    if let Err(e) = write_reply(&mut write, reply).await {
                        tracing::debug!(error = %e, "control client gone while writing");
                        return;
                    }
                }
                None => return,
            },
            read = reader.read(&mut scratch) => match read {
                Ok(0) | Err(_) => {
                    tracing::debug!("control client disconnected");
                    return;
                }
                Ok(_) => {}
            },
        }
    }
}

async fn write_reply<Resp: Serialize>(
    write: &mut OwnedWriteHalf,
    reply: Result<Resp, String>,
) -> std::io::Result<()> {
    let line = wire::encode_line(&ReplyLine::from(reply)).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode a control reply");
        wire::error_line(&format!("the daemon could not encode its reply: {e}"))
    });
    write.write_all(&line).await
}

/// Creates `home` if needed and takes the daemon lock, or says who holds it.
fn lock_home(home: &Path) -> Result<std::fs::File, ControlError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|e| ControlError::io(format!("cannot create {}", home.display()), e))?;
    let path = home.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ControlError::io(format!("cannot open {}", path.display()), e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(ControlError::AlreadyRunning {
            home: home.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(ControlError::io(
            format!("cannot lock {}", path.display()),
            e,
        )),
    }
}

/// Looks at an existing socket file: a live daemon is an error, a stale one is removed.
async fn probe(home: &Path, socket: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::FileTypeExt as _;
    match tokio::fs::symlink_metadata(socket).await {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::io(
                format!("{} exists and is not a socket", socket.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ControlError::io(
                format!("cannot inspect {}", socket.display()),
                e,
            ));
        }
    }
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(socket)).await {
        // Something accepts (or is too busy to): it is alive.
        Ok(Ok(_)) | Err(_) => Err(ControlError::AlreadyRunning {
            home: home.to_owned(),
        }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "removing stale control socket");
            match tokio::fs::remove_file(socket).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ControlError::io(
                    format!("cannot remove stale {}", socket.display()),
                    e,
                )),
            }
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(Err(e)) => Err(ControlError::io(
            format!("cannot probe {}", socket.display()),
            e,
        )),
    }
}

/// Writes a file that is 0600 from its first byte, atomically (temporary file, fsync, rename),
/// so a client never reads half a token.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ControlError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let err = |p: &Path, e| ControlError::io(format!("cannot write {}", p.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(&tmp, e))?;
    file.write_all(bytes).map_err(|e| err(&tmp, e))?;
    file.sync_all().map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))?;
    // An existing temp file created with a wider mode would keep it through `open`.
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ControlError::io(format!("cannot set the mode of {}", path.display()), e))
}
