//! The network task: the only owner of the node's `Swarm`.
//!
//! The daemon's services never touch the swarm. They hold a [`NetHandle`] and send it
//! [`Command`]s (fire and forget; a request carries a [`Token`] of the caller's choosing), and
//! they receive [`NetEvent`]s on one bounded channel: connections, addresses, inbound requests
//! (with the channel to answer on) and the answers to their own requests, tagged with their
//! token. This is the split of rust-libp2p's file-sharing example and of lighthouse's
//! `Network` vs its router.
//!
//! What is pure connection management stays here, next to the swarm: which connections are
//! relayed (so an answer can say which path it took), retiring relayed connections once a
//! direct one exists, the address book, Kademlia query bookkeeping and libp2p's metrics.

pub(crate) mod admission;
pub(crate) mod behaviour;
mod boxed;
pub(crate) mod codec;
mod direct_first;
pub(crate) mod gate;
mod handle;
mod introductions;
mod kad_events;
mod paths;
pub(crate) mod records;
pub(crate) mod reprobe;

use std::collections::HashMap;

use futures::StreamExt as _;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, kad, relay};
use tokio::sync::mpsc;

use admission::Admissions;
use behaviour::{Behaviour, BehaviourEvent};
pub(crate) use handle::{Command, InResponse, Net, NetEvent, NetHandle, OutRequest, Path, Token};
use natter_proto::{Certificate, IssuerKey};
pub(crate) use records::DirectoryRecords;

/// Events buffered between the network task and the daemon. When the daemon falls behind,
/// the network task waits (backpressure on the swarm) rather than drop anything.
const EVENT_BUFFER: usize = 1024;
/// Commands buffered towards the network task (see [`Net`] for what happens beyond it).
const COMMAND_BUFFER: usize = 1024;
/// How long a relayed connection stays open at most once a direct one to the same peer exists,
/// while requests with that peer are still in flight: they finish (messages keep flowing
/// during the upgrade) instead of failing and waiting out a retry. With none in flight, it is
/// closed at once.
const RELAY_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How many times an introduction is sent again to a peer that stays connected, after its
/// connection closed or its answer timed out.
pub(super) const MAX_REINTRODUCTIONS: u8 = 3;

/// The request-response exchanges whose answers the network task routes back by token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Exchange {
    Login,
    Overlay,
    Msg,
}

/// The task that owns the swarm. Build it with [`Network::new`], then `tokio::spawn` its
/// [`Network::run`]; it ends when every [`NetHandle`] is dropped.
pub(crate) struct Network {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    /// Our requests in flight, by exchange and libp2p's id, with the caller's token. Each
    /// request-response behaviour numbers its requests from 1 on its own, so the id alone
    /// would let a login request and an attach take each other's answers.
    outbound: HashMap<(Exchange, OutboundRequestId), Token>,
    queries: HashMap<kad::QueryId, Token>,
    /// Every open connection and whether it goes through a relay.
    conns: HashMap<ConnectionId, (PeerId, bool)>,
    /// The relayed connections a peer opened to this node (not those this node opened).
    accepted_relayed: std::collections::HashSet<ConnectionId>,
    metrics: Option<libp2p::metrics::Metrics>,
    /// Events produced by one swarm event, sent before the next is polled (at most two).
    ready: std::collections::VecDeque<NetEvent>,
    /// Relayed connections to close once their grace ends, in order of that time.
    retiring: std::collections::VecDeque<(tokio::time::Instant, ConnectionId)>,
    /// Requests in flight with each peer, both ways: a retired relayed connection closes as
    /// soon as its peer has none.
    busy: HashMap<PeerId, usize>,
    /// Peers that proved an account on their connections (see [`admission`]).
    admissions: Admissions,
    /// What certificates are checked against.
    issuer: IssuerKey,
    /// This node's certificate, sent on every new connection.
    cert: Certificate,
    /// The login server's newest revocation list: certificates it names are refused.
    revocations: natter_proto::Revocations,
    /// Messages' dials to direct addresses alone, and the peers where that failed.
    direct_first: direct_first::DirectFirst,
    /// Introductions sent again to a connected peer ([`MAX_REINTRODUCTIONS`] at most).
    reintroduced: HashMap<PeerId, u8>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("peer_id", self.swarm.local_peer_id())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Wraps `swarm`; returns the task, the handle to command it and its events.
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        metrics: Option<libp2p::metrics::Metrics>,
        admissions: Admissions,
        issuer: IssuerKey,
        cert: Certificate,
    ) -> (Self, NetHandle, mpsc::Receiver<NetEvent>) {
        let (command_tx, command_rx) = mpsc::channel(COMMAND_BUFFER);
        let (event_tx, event_rx) = mpsc::channel(EVENT_BUFFER);
        let network = Self {
            swarm,
            commands: command_rx,
            events: event_tx,
            outbound: HashMap::new(),
            queries: HashMap::new(),
            conns: HashMap::new(),
            metrics,
            ready: Default::default(),
            retiring: Default::default(),
            accepted_relayed: Default::default(),
            busy: HashMap::new(),
            direct_first: Default::default(),
            admissions,
            issuer,
            cert,
            revocations: natter_proto::Revocations::default(),
            reintroduced: HashMap::new(),
        };
        (network, NetHandle::new(command_tx), event_rx)
    }

    /// Listens on `addr` now, so that a bad or taken address is an error at start-up.
    pub(crate) fn listen_on(&mut self, addr: Multiaddr) -> anyhow::Result<()> {
        self.swarm.listen_on(addr.clone()).map(drop).map_err(|e| {
            let reason = natter_net::error_chain(&e);
            anyhow::anyhow!("cannot listen on {addr}: {reason}")
        })
    }

    pub(crate) async fn run(mut self) {
        let span = tracing::info_span!("network", peer = %self.swarm.local_peer_id());
        let _enter = span.enter();
        loop {
            let retire_at = self.retiring.front().map(|(at, _)| *at);
            tokio::select! {
                () = sleep_until_or_never(retire_at) => {
                    let now = tokio::time::Instant::now();
                    while let Some((_, id)) = self.retiring.front().filter(|(at, _)| *at <= now).copied() {
                        self.retiring.pop_front();
                        if self.conns.contains_key(&id) {
                            self.swarm.close_connection(id);
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => {
                    if let Some(event) = self.on_swarm_event(event) {
                        self.ready.push_back(event);
                    }
                    while let Some(event) = self.ready.pop_front() {
                        if self.events.send(event).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        tracing::debug!("network task ends");
    }

    fn on_command(&mut self, command: Command) {
        let swarm = &mut self.swarm;
        match command {
            Command::Request {
                token,
                peer,
                addrs,
                request,
            } => {
                // A message goes direct when its recipient has a direct address: see
                // `direct_first`. The request then waits for this dial.
                if matches!(request, OutRequest::Msg(_))
                    && !swarm.is_connected(&peer)
                    && let Some(dial) =
                        self.direct_first
                            .dial(peer, &addrs, std::time::Instant::now())
                {
                    let id = dial.connection_id();
                    if swarm.dial(dial).is_err() {
                        self.direct_first.failed(id, std::time::Instant::now());
                    }
                }
                for addr in addrs {
                    swarm.add_peer_address(peer, addr);
                }
                *self.busy.entry(peer).or_insert(0) += 1;
                let b = swarm.behaviour_mut();
                let id = match request {
                    OutRequest::Login(r) => (Exchange::Login, b.login.send_request(&peer, r)),
                    OutRequest::Overlay(r) => (Exchange::Overlay, b.overlay.send_request(&peer, r)),
                    OutRequest::Msg(r) => (Exchange::Msg, b.msg.send_request(&peer, r)),
                };
                self.outbound.insert(id, token);
            }
            Command::RespondOverlay { channel, response } => {
                let _ = swarm
                    .behaviour_mut()
                    .overlay
                    .send_response(channel, response);
            }
            Command::RespondMsg { channel, response } => {
                let _ = swarm.behaviour_mut().msg.send_response(channel, response);
            }
            Command::AddAddresses(peer, addrs) => {
                for addr in addrs {
                    swarm.add_peer_address(peer, addr);
                }
            }
            Command::Dial(peer) => {
                if !swarm.is_connected(&peer) {
                    let _ = swarm.dial(peer);
                }
            }
            Command::ListenOn(addr) => {
                if let Err(e) = swarm.listen_on(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "cannot listen");
                }
            }
            Command::Disconnect(peer) => {
                let _ = swarm.disconnect_peer_id(peer);
            }
            Command::SetRevocations(revocations) => {
                self.revocations = revocations;
                for peer in self.admissions.revoked(&self.revocations) {
                    tracing::info!(%peer, "peer's certificate revoked: disconnected");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::SetCertificate(cert) => {
                // Renewed: peers hear of the new one (the old one may expire before them).
                self.cert = *cert;
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in peers {
                    self.introduce(peer);
                }
            }
            Command::Ban(peer, duration) => {
                swarm.behaviour_mut().gate.ban(peer, duration);
                let _ = swarm.disconnect_peer_id(peer);
            }
            Command::AddExternalAddress(addr) => swarm.add_external_address(addr),
            Command::Reprobe { server, addr } => {
                let client = &mut swarm.behaviour_mut().autonat_client;
                client.restart();
                tracing::info!(
                    candidates = client.candidates(),
                    %server,
                    "no public address confirmed yet: probing reachability again"
                );
                // The new client learns of AutoNAT servers on new connections only.
                let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(server)
                    .addresses(vec![addr])
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .build();
                if let Err(e) = swarm.dial(dial) {
                    tracing::debug!(%server, error = %e, "cannot dial an AutoNAT server");
                }
            }
            Command::SetSuperpeer(on) => {
                let b = swarm.behaviour_mut();
                if on {
                    b.kad.set_mode(Some(kad::Mode::Server));
                    b.relay.set_status(Some(relay::Status::Enable));
                } else {
                    b.kad.set_mode(Some(kad::Mode::Client));
                    b.relay.set_status(Some(relay::Status::Disable));
                }
            }
            Command::KadAddAddress(peer, addr) => {
                swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            Command::KadRemovePeer(peer) => {
                swarm.behaviour_mut().kad.remove_peer(&peer);
            }
            Command::KadBootstrap => {
                let _ = swarm.behaviour_mut().kad.bootstrap();
            }
            Command::KadPut(record) => {
                if let Err(e) = swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    tracing::warn!(error = %e, "storing a record failed");
                }
            }
            Command::KadGet { token, key } => {
                let id = swarm.behaviour_mut().kad.get_record(key);
                self.queries.insert(id, token);
            }
            Command::KadFinish(token) => {
                let id = self
                    .queries
                    .iter()
                    .find(|(_, t)| **t == token)
                    .map(|(id, _)| *id);
                if let Some(id) = id {
                    self.queries.remove(&id);
                    // The query's remaining events find no token: the caller has decided.
                    if let Some(mut query) = swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
            }
        }
    }

    fn record_metrics(&self, event: &SwarmEvent<BehaviourEvent>) {
        let Some(m) = &self.metrics else {
            return;
        };
        use BehaviourEvent as B;
        use libp2p::metrics::Recorder as _;
        match event {
            SwarmEvent::Behaviour(B::Identify(e)) => m.record(e),
            SwarmEvent::Behaviour(B::Kad(e)) => m.record(e),
            SwarmEvent::Behaviour(B::Relay(e)) => m.record(e),
            SwarmEvent::Behaviour(B::Dcutr(e)) => m.record(e),
            SwarmEvent::Behaviour(B::Ping(e)) => m.record(e),
            _ => {}
        }
        m.record(event);
    }

    /// Handles what is the network's own business and turns the rest into a [`NetEvent`].
    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetEvent> {
        use BehaviourEvent as B;
        self.record_metrics(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => Some(NetEvent::NewListenAddr(address)),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                Some(NetEvent::ExpiredListenAddr(address))
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                Some(NetEvent::ExternalAddrConfirmed(address))
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                Some(NetEvent::ExternalAddrExpired(address))
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.direct_first.established(connection_id);
                if num_established.get() == 1 {
                    self.introduce(peer_id);
                }
                let relayed = endpoint.is_relayed();
                if relayed && endpoint.is_listener() {
                    self.accepted_relayed.insert(connection_id);
                }
                if relayed {
                    if self.has_direct(peer_id) {
                        // Already connected directly: the relay is not needed.
                        self.swarm.close_connection(connection_id);
                    }
                } else {
                    // A direct path exists (e.g. after hole punching): retire relayed ones
                    // after a grace period, so messages take the direct path without
                    // failing the requests already on the relayed one.
                    // Only the side that opened a relayed connection closes it at once when it
                    // has nothing in flight: the other side cannot see a request the peer has
                    // begun to send until it is read whole, and would cut it off.
                    let at = tokio::time::Instant::now() + RELAY_GRACE;
                    let idle = !self.busy.contains_key(&peer_id);
                    for old in self.relayed_to(peer_id) {
                        let idle = idle && !self.accepted_relayed.contains(&old);
                        tracing::info!(peer = %peer_id, idle, "direct connection established; retiring the relayed one");
                        if idle {
                            self.swarm.close_connection(old);
                        } else {
                            self.retiring.push_back((at, old));
                        }
                    }
                }
                self.conns.insert(connection_id, (peer_id, relayed));
                Some(NetEvent::Connected { peer: peer_id })
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.conns.remove(&connection_id);
                self.accepted_relayed.remove(&connection_id);
                if num_established == 0 {
                    self.admissions.forget(&peer_id);
                    self.reintroduced.remove(&peer_id);
                }
                (num_established == 0).then(|| NetEvent::Disconnected {
                    peer: peer_id,
                    error: cause.is_some(),
                })
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                connection_id,
                ..
            } => {
                self.direct_first
                    .failed(connection_id, std::time::Instant::now());
                Some(NetEvent::DialFailed(peer))
            }
            SwarmEvent::Behaviour(B::Identify(identify::Event::Received {
                peer_id, info, ..
            })) => Some(NetEvent::Identified {
                peer: peer_id,
                info: Box::new(info),
            }),
            SwarmEvent::Behaviour(B::AutonatClient(autonat::v2::client::Event {
                tested_addr,
                server,
                result,
                ..
            })) => Some(NetEvent::AutonatProbe {
                addr: tested_addr,
                server,
                reachable: result.is_ok(),
            }),
            SwarmEvent::Behaviour(B::Login(event)) => {
                self.on_response_event(event, Exchange::Login, InResponse::Login, |_, _, _| None)
            }
            SwarmEvent::Behaviour(B::Introduce(event)) => {
                self.on_introduce_event(event);
                None
            }
            SwarmEvent::Behaviour(B::Overlay(event)) => self.on_response_event(
                event,
                Exchange::Overlay,
                InResponse::Overlay,
                |peer, request, channel| {
                    Some(NetEvent::OverlayRequest {
                        peer,
                        request,
                        channel,
                    })
                },
            ),
            SwarmEvent::Behaviour(B::Msg(event)) => self.on_response_event(
                event,
                Exchange::Msg,
                InResponse::Msg,
                |peer, request, channel| {
                    Some(NetEvent::MsgRequest {
                        peer,
                        request,
                        channel,
                    })
                },
            ),
            SwarmEvent::Behaviour(B::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(B::Relay(relay::Event::ReservationReqAccepted {
                src_peer_id,
                ..
            })) => Some(NetEvent::RelayReservation(src_peer_id)),
            SwarmEvent::Behaviour(B::Relay(other)) => {
                tracing::debug!(?other, "relay");
                None
            }
            SwarmEvent::Behaviour(B::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => Some(NetEvent::Reserved(relay_peer_id)),
            SwarmEvent::Behaviour(B::Dcutr(event)) => {
                tracing::info!(peer = %event.remote_peer_id, result = ?event.result, "hole punch");
                None
            }
            other => {
                tracing::trace!(?other, "swarm event");
                None
            }
        }
    }

    /// One request-response protocol's event: answers to our requests go back with their
    /// token (and the path they took); requests to us go up through `inbound`.
    fn on_response_event<Req, Resp>(
        &mut self,
        event: request_response::Event<Req, Resp>,
        exchange: Exchange,
        wrap: fn(Resp) -> InResponse,
        inbound: impl FnOnce(PeerId, Req, ResponseChannel<Resp>) -> Option<NetEvent>,
    ) -> Option<NetEvent> {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message,
            } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    *self.busy.entry(peer).or_insert(0) += 1;
                    inbound(peer, request, channel)
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.done_with(peer);
                    let token = self.outbound.remove(&(exchange, request_id))?;
                    Some(NetEvent::Response {
                        token,
                        result: Ok(wrap(response)),
                        path: self.path(connection_id),
                    })
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                connection_id,
                peer,
            } => {
                self.done_with(peer);
                let token = self.outbound.remove(&(exchange, request_id))?;
                Some(NetEvent::Response {
                    token,
                    result: Err(error.to_string()),
                    path: self.path(connection_id),
                })
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.done_with(peer);
                tracing::debug!(%peer, %error, "inbound request failed");
                None
            }
            request_response::Event::ResponseSent { peer, .. } => {
                self.done_with(peer);
                None
            }
        }
    }
}

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
