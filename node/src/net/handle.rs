//! What the daemon and the network task say to each other: [`Command`]s in, [`NetEvent`]s
//! out, and the daemon's end of the command channel ([`Net`]), which never waits.

use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId, identify, kad};
use natter_proto::login::{LoginRequest, LoginResponse};
use natter_proto::msg::{MsgRequest, MsgResponse};
use natter_proto::overlay::{OverlayRequest, OverlayResponse};
use tokio::sync::mpsc;

/// Chosen by whoever sends a request; comes back with its answer.
pub(crate) type Token = u64;

/// A request this node sends, on one of its request-response protocols.
#[derive(Debug)]
pub(crate) enum OutRequest {
    Login(LoginRequest),
    Overlay(OverlayRequest),
    Msg(MsgRequest),
}

/// The answer to an [`OutRequest`].
#[derive(Debug)]
pub(crate) enum InResponse {
    Login(LoginResponse),
    Overlay(OverlayResponse),
    Msg(MsgResponse),
}

/// How a request reached its peer, as reported for messages and pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Direct,
    Relayed,
}

impl Path {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relayed => "relayed",
        }
    }
}

/// What the daemon asks of the network.
#[derive(Debug)]
pub(crate) enum Command {
    /// Sends `request` to `peer` (dialling `addrs` if not connected); the answer comes back as
    /// [`NetEvent::Response`] with the same token.
    Request {
        token: Token,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: OutRequest,
    },
    RespondOverlay {
        channel: ResponseChannel<OverlayResponse>,
        response: OverlayResponse,
    },
    RespondMsg {
        channel: ResponseChannel<MsgResponse>,
        response: MsgResponse,
    },
    /// Remembers addresses to dial `peer` at.
    AddAddresses(PeerId, Vec<Multiaddr>),
    /// Dials `peer` unless already connected.
    Dial(PeerId),
    /// Listens on an address (a `/p2p-circuit` one asks for a relay reservation).
    ListenOn(Multiaddr),
    Disconnect(PeerId),
    /// This node's certificate was renewed: introduce it to every peer.
    SetCertificate(Box<natter_proto::Certificate>),
    /// A newer revocation list: revoked certificates are refused from now on, and peers
    /// admitted with one are disconnected.
    SetRevocations(natter_proto::Revocations),
    /// Refuses `peer`'s connections for a while and closes the open ones.
    Ban(PeerId, std::time::Duration),
    AddExternalAddress(Multiaddr),
    /// Restarts the AutoNAT client (see [`super::reprobe`]) and opens a new connection to
    /// `server` at `addr`, an AutoNAT server, to test the candidates on.
    Reprobe {
        server: PeerId,
        addr: Multiaddr,
    },
    /// Kademlia server mode and relay HOP on (`true`) or off: promotion and demotion.
    SetSuperpeer(bool),
    KadAddAddress(PeerId, Multiaddr),
    KadRemovePeer(PeerId),
    KadBootstrap,
    KadPut(kad::Record),
    /// Starts a GET for `key`; every value found comes back as [`NetEvent::KadFound`], then
    /// [`NetEvent::KadDone`].
    KadGet {
        token: Token,
        key: kad::RecordKey,
    },
    /// Ends a GET early (one valid record is enough); nothing more comes for its token.
    KadFinish(Token),
}

/// What the network tells the daemon.
#[derive(Debug)]
pub(crate) enum NetEvent {
    NewListenAddr(Multiaddr),
    ExpiredListenAddr(Multiaddr),
    ExternalAddrConfirmed(Multiaddr),
    ExternalAddrExpired(Multiaddr),
    Connected {
        peer: PeerId,
    },
    /// The last connection to `peer` closed (`error`: it did not close cleanly).
    Disconnected {
        peer: PeerId,
        error: bool,
    },
    DialFailed(PeerId),
    Identified {
        peer: PeerId,
        info: Box<identify::Info>,
    },
    AutonatProbe {
        addr: Multiaddr,
        server: PeerId,
        reachable: bool,
    },
    Response {
        token: Token,
        result: Result<InResponse, String>,
        path: Path,
    },
    OverlayRequest {
        peer: PeerId,
        request: OverlayRequest,
        channel: ResponseChannel<OverlayResponse>,
    },
    MsgRequest {
        peer: PeerId,
        request: MsgRequest,
        channel: ResponseChannel<MsgResponse>,
    },
    /// A peer asks this node to store a directory record (validate before storing).
    KadPut {
        source: PeerId,
        record: kad::Record,
    },
    KadFound {
        token: Token,
        value: Vec<u8>,
    },
    KadDone(Token),
    /// A peer holds a relay reservation on this node now.
    RelayReservation(PeerId),
    /// This node's reservation on `relay` was accepted.
    Reserved(PeerId),
}

/// The daemon's side of the network: a cloneable sender of commands.
#[derive(Debug, Clone)]
pub(crate) struct NetHandle {
    commands: mpsc::Sender<Command>,
}

impl NetHandle {
    pub(super) fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }
}

/// What the daemon holds: the handle plus a backlog for the moments the command buffer is
/// full. The daemon never waits to send a command (the network task may itself be waiting
/// for the daemon to take an event); its loop flushes the backlog as room frees up.
#[derive(Debug)]
pub(crate) struct Net {
    handle: NetHandle,
    backlog: std::collections::VecDeque<Command>,
}

impl Net {
    pub(crate) fn new(handle: NetHandle) -> Self {
        Self {
            handle,
            backlog: Default::default(),
        }
    }

    pub(crate) fn send(&mut self, command: Command) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(command);
            return;
        }
        match self.handle.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(command)) => self.backlog.push_back(command),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("network task gone; command dropped");
            }
        }
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Moves backlogged commands into the channel as far as it has room; waits for room for
    /// the first one (use in a `select!` arm guarded by [`Net::has_backlog`]).
    pub(crate) async fn flush(&mut self) {
        let Ok(permit) = self.handle.commands.reserve().await else {
            self.backlog.clear();
            return;
        };
        if let Some(command) = self.backlog.pop_front() {
            permit.send(command);
        }
        while let Some(command) = self.backlog.pop_front() {
            match self.handle.commands.try_send(command) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(command)) => {
                    self.backlog.push_front(command);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// Sends everything still backlogged, waiting as needed (at shutdown).
    pub(crate) async fn drain(&mut self) {
        while let Some(command) = self.backlog.pop_front() {
            if self.handle.commands.send(command).await.is_err() {
                return;
            }
        }
    }

    pub(crate) fn request(
        &mut self,
        token: Token,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: OutRequest,
    ) {
        self.send(Command::Request {
            token,
            peer,
            addrs,
            request,
        });
    }
}
