//! The CLI's end of the control socket: one connection per request, the token read afresh
//! each time (it changes at every daemon start).

use std::fmt;
use std::path::{Path, PathBuf};

use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use super::wire::{self, LineError, ReplyLine, RequestLine};
use super::{BAD_TOKEN, ControlError, MAX_REPLY_BYTES, MAX_REQUEST_BYTES, socket_path, token_path};

/// A client of the daemon running for one home.
///
/// The daemon answers one request per connection, so each [`ControlClient::call`] after the
/// first opens a new connection; `connect` opens the first one to report at once when the
/// daemon is not running.
pub struct ControlClient {
    home: PathBuf,
    /// The connection opened by `connect` and not yet used.
    fresh: Option<Connection>,
}

impl fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlClient")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl ControlClient {
    /// Connects to the daemon of `home`; [`ControlError::NotRunning`] (which says how to start
    /// it) when there is none.
    pub async fn connect(home: &Path) -> Result<ControlClient, ControlError> {
        let connection = Connection::open(home).await?;
        Ok(ControlClient {
            home: home.to_owned(),
            fresh: Some(connection),
        })
    }

    /// The home this client talks to.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Sends `req` and returns the daemon's one reply; the daemon's error sentence comes back
    /// as [`ControlError::Remote`].
    pub async fn call<Req, Resp>(&mut self, req: &Req) -> Result<Resp, ControlError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let mut connection = self.connection().await?;
        connection.send(req).await?;
        connection.next_reply().await.unwrap_or_else(|| {
            Err(ControlError::Protocol(
                "the daemon closed the connection without answering".to_owned(),
            ))
        })
    }

    /// Sends `req` and returns its replies as they come, ending when the daemon closes the
    /// connection (done, or stopping). A daemon error line is yielded as
    /// [`ControlError::Remote`] and the stream goes on; any other error ends it. Dropping the
    /// stream disconnects, which tells the daemon to stop streaming.
    pub async fn stream<Req, Resp>(
        mut self,
        req: &Req,
    ) -> Result<impl Stream<Item = Result<Resp, ControlError>> + Send + 'static, ControlError>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Send + 'static,
    {
        let mut connection = self.connection().await?;
        connection.send(req).await?;
        Ok(futures::stream::unfold(
            Some(connection),
            |connection| async move {
                let mut connection = connection?;
                let item = connection.next_reply().await?;
                let go_on = matches!(item, Ok(_) | Err(ControlError::Remote(_)));
                Some((item, go_on.then_some(connection)))
            },
        ))
    }

    async fn connection(&mut self) -> Result<Connection, ControlError> {
        match self.fresh.take() {
            Some(connection) => Ok(connection),
            None => Connection::open(&self.home).await,
        }
    }
}

/// One connection, carrying one request.
///
/// The stream is kept whole (not split) on purpose: dropping a write half would half-close the
/// socket, and the daemon takes end-of-stream as "the client has gone".
struct Connection {
    stream: BufReader<UnixStream>,
    token: String,
    line: Vec<u8>,
}

impl Connection {
    async fn open(home: &Path) -> Result<Self, ControlError> {
        let socket = socket_path(home);
        let stream = match UnixStream::connect(&socket).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NotRunning {
                    home: home.to_owned(),
                });
            }
            Err(e) => {
                return Err(ControlError::io(
                    format!("cannot connect to {}", socket.display()),
                    e,
                ));
            }
        };
        // Read after connecting: the daemon writes its token before it creates the socket.
        let path = token_path(home);
        let token = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| ControlError::io(format!("cannot read {}", path.display()), e))?
            .trim()
            .to_owned();
        Ok(Self {
            stream: BufReader::new(stream),
            token,
            line: Vec::new(),
        })
    }

    async fn send<Req: Serialize>(&mut self, req: &Req) -> Result<(), ControlError> {
        let line = wire::encode_line(&RequestLine {
            token: &self.token,
            request: req,
        })
        .map_err(|e| ControlError::Protocol(format!("cannot encode the request: {e}")))?;
        // Checked here too: the daemon would refuse it, but we might only see a broken pipe.
        if line.len() > MAX_REQUEST_BYTES + 1 {
            return Err(ControlError::Protocol(format!(
                "the request is larger than {MAX_REQUEST_BYTES} bytes"
            )));
        }
        let socket = self.stream.get_mut();
        socket
            .write_all(&line)
            .await
            .map_err(|e| ControlError::io("cannot send the request to the daemon", e))
    }

    /// The next reply, or `None` once the daemon has closed the connection.
    async fn next_reply<Resp: DeserializeOwned>(&mut self) -> Option<Result<Resp, ControlError>> {
        match wire::read_line(&mut self.stream, MAX_REPLY_BYTES, &mut self.line).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(LineError::TooLong) => {
                return Some(Err(ControlError::Protocol(format!(
                    "a reply from the daemon is larger than {MAX_REPLY_BYTES} bytes"
                ))));
            }
            Err(LineError::Io(e)) => {
                return Some(Err(ControlError::io("cannot read the daemon's reply", e)));
            }
        }
        Some(
            match serde_json::from_slice::<ReplyLine<Resp>>(&self.line) {
                Ok(ReplyLine::Ok(resp)) => Ok(resp),
                Ok(ReplyLine::Error(sentence)) if sentence == BAD_TOKEN => {
                    Err(ControlError::BadToken)
                }
                Ok(ReplyLine::Error(sentence)) => Err(ControlError::Remote(sentence)),
                Err(e) => Err(ControlError::Protocol(format!(
                    "unreadable reply from the daemon: {e}"
                ))),
            },
        )
    }
}
