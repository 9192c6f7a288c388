//! Admission: only peers that proved an account get what an account is needed for.
//!
//! Every node introduces itself on each new connection with its certificate
//! ([`natter_proto::protocol::INTRODUCE`]); the network task checks it against the pinned
//! issuer key and the connection's Noise-authenticated peer id, and records the peer in
//! [`Admissions`]. Behaviours that serve accounts only (Kademlia, the relay server, the
//! overlay) are wrapped in [`Admitted`], which passes a peer's requests to them only once the
//! peer is admitted:
//!
//! - requests that arrive before the introduction (both leave together on a new connection)
//!   are held, in order, and passed on as soon as it is accepted;
//! - a peer that never introduces itself, or with a certificate that does not verify, is
//!   served nothing: after [`HOLD_FOR`] its held events are dropped (for the overlay, whose
//!   own requests would otherwise wait forever for an answer that was dropped, the connection
//!   they came on is closed too, which ends them as failed). Kademlia and the relay only drop:
//!   peers without accounts that this node does talk to (the login server) stay connected;
//! - what is held is bounded per peer and in all ([`MAX_HELD_PER_PEER`], [`MAX_HELD`]).
//!
//! Holding rather than refusing at once is what lets a relay client open a circuit, or a
//! superpeer send a Kademlia query, in the same round trip as its introduction. Because the
//! wrapped behaviour never sees an unadmitted peer's events, Kademlia never puts one in its
//! routing table (insertion follows the handler's "protocol confirmed" event).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use natter_proto::{Certificate, Revocations};

use crate::daemon::unix_now;

/// How long a peer's requests wait for its introduction.
pub(crate) const HOLD_FOR: Duration = Duration::from_secs(10);
/// Requests held per peer, and in all, per wrapped behaviour.
pub(crate) const MAX_HELD_PER_PEER: usize = 32;
pub(crate) const MAX_HELD: usize = 2048;

/// The peers admitted on their current connections, with the certificate each proved (valid
/// until its expiry, unless revoked). Shared by the network task, which admits, and the
/// wrappers, which ask. Bounded by the connections: a peer is forgotten when its last
/// connection closes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Admissions(Arc<RwLock<HashMap<PeerId, Certificate>>>);

impl Admissions {
    pub(crate) fn admit(&self, peer: PeerId, cert: &Certificate) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, cert.clone());
    }

    /// Forgets the peers whose certificate `revocations` revokes, and names them.
    pub(crate) fn revoked(&self, revocations: &Revocations) -> Vec<PeerId> {
        let mut admitted = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let revoked: Vec<PeerId> = admitted
            .iter()
            .filter(|(_, cert)| revocations.revokes(cert))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &revoked {
            admitted.remove(peer);
        }
        revoked
    }

    pub(crate) fn forget(&self, peer: &PeerId) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(peer);
    }

    /// Admitted, with a certificate valid at `now` (unix seconds).
    pub(crate) fn is_admitted(&self, peer: &PeerId, now: u64) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .is_some_and(|cert| now < cert.expires_at())
    }
}

/// One handler event waiting for its peer's introduction.
struct Held<E> {
    peer: PeerId,
    connection: ConnectionId,
    event: E,
    since: Instant,
}

/// `B`, serving only admitted peers. Derefs to `B`.
pub(crate) struct Admitted<B: NetworkBehaviour> {
    inner: B,
    admissions: Admissions,
    held: VecDeque<Held<THandlerOutEvent<B>>>,
    held_per_peer: HashMap<PeerId, usize>,
    /// Connections of peers that never proved an account, to close.
    to_close: VecDeque<(PeerId, ConnectionId)>,
    /// Whether to close those connections, or only drop what they sent.
    close_unadmitted: bool,
    /// Which behaviour, for the logs.
    what: &'static str,
}

impl<B: NetworkBehaviour> Admitted<B> {
    pub(crate) fn new(
        inner: B,
        admissions: Admissions,
        what: &'static str,
        close_unadmitted: bool,
    ) -> Self {
        Self {
            inner,
            admissions,
            held: VecDeque::new(),
            held_per_peer: HashMap::new(),
            to_close: VecDeque::new(),
            close_unadmitted,
            what,
        }
    }

    fn hold(&mut self, peer: PeerId, connection: ConnectionId, event: THandlerOutEvent<B>) {
        let count = self.held_per_peer.entry(peer).or_default();
        if *count >= MAX_HELD_PER_PEER || self.held.len() >= MAX_HELD {
            tracing::debug!(%peer, what = self.what, "request of a peer not admitted dropped");
            return;
        }
        *count += 1;
        self.held.push_back(Held {
            peer,
            connection,
            event,
            since: Instant::now(),
        });
    }

    /// Passes on what admitted peers sent meanwhile; drops what waited too long.
    fn release(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let now = unix_now();
        let mut waiting = VecDeque::with_capacity(self.held.len());
        for h in std::mem::take(&mut self.held) {
            if self.admissions.is_admitted(&h.peer, now) {
                self.unheld(&h.peer);
                self.inner
                    .on_connection_handler_event(h.peer, h.connection, h.event);
            } else if h.since.elapsed() >= HOLD_FOR {
                self.unheld(&h.peer);
                if !self.close_unadmitted {
                    tracing::debug!(peer = %h.peer, what = self.what, "request of a peer without an account dropped");
                } else if !self.to_close.contains(&(h.peer, h.connection)) {
                    tracing::info!(peer = %h.peer, what = self.what, "peer never proved an account: closing its connection");
                    self.to_close.push_back((h.peer, h.connection));
                }
            } else {
                waiting.push_back(h);
            }
        }
        self.held = waiting;
    }

    fn unheld(&mut self, peer: &PeerId) {
        if let Some(n) = self.held_per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.held_per_peer.remove(peer);
            }
        }
    }
}

impl<B: NetworkBehaviour> std::ops::Deref for Admitted<B> {
    type Target = B;

    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B: NetworkBehaviour> std::ops::DerefMut for Admitted<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Admitted<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            // Nothing of a closed connection may reach the behaviour after it heard of the
            // close.
            let gone = closed.connection_id;
            let (dropped, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|h| h.connection == gone);
            self.held = kept;
            for h in dropped {
                self.unheld(&h.peer);
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if self.admissions.is_admitted(&peer, unix_now()) {
            if self.held_per_peer.contains_key(&peer) {
                // What the peer sent before its introduction goes first.
                self.release();
            }
            self.inner
                .on_connection_handler_event(peer, connection, event);
        } else {
            self.hold(peer, connection, event);
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.release();
        if let Some((peer_id, connection)) = self.to_close.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(connection),
            });
        }
        self.inner.poll(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use libp2p::StreamProtocol;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::{Swarm, SwarmEvent};
    use libp2p_swarm_test::SwarmExt as _;
    use natter_proto::{IssuerSigningKey, UserName};

    use super::*;

    type Echo = request_response::json::Behaviour<String, String>;

    fn echo() -> Echo {
        request_response::json::Behaviour::new(
            [(StreamProtocol::new("/test/echo"), ProtocolSupport::Full)],
            request_response::Config::default(),
        )
    }

    /// A certificate valid for the next hour (admission only looks at the expiry; the
    /// network task checks the rest before it admits).
    fn cert() -> Certificate {
        IssuerSigningKey::from_bytes(&[1; 32])
            .issue(
                UserName::parse("alice").unwrap(),
                libp2p::identity::Keypair::generate_ed25519()
                    .try_into_ed25519()
                    .unwrap()
                    .public()
                    .to_bytes(),
                1,
                unix_now(),
                3600,
            )
            .unwrap()
    }

    /// An echo server behind admission and a client connected to it, not admitted yet.
    async fn connected() -> (Admissions, Swarm<Admitted<Echo>>, Swarm<Echo>) {
        let admissions = Admissions::default();
        let mut server = Swarm::new_ephemeral_tokio(|_| {
            Admitted::new(echo(), admissions.clone(), "test echo", false)
        });
        server.listen().with_memory_addr_external().await;
        let mut client = Swarm::new_ephemeral_tokio(|_| echo());
        client.connect(&mut server).await;
        (admissions, server, client)
    }

    /// The requests the server's echo behaviour was handed, in order, until `until` passes
    /// or `enough` came, while the client is driven too.
    async fn served(
        server: &mut Swarm<Admitted<Echo>>,
        client: &mut Swarm<Echo>,
        until: Duration,
        enough: usize,
    ) -> Vec<String> {
        let mut heard = Vec::new();
        let deadline = tokio::time::sleep(until);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return heard,
                event = server.next_swarm_event() => {
                    if let SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Request { request, .. },
                        ..
                    }) = event
                    {
                        heard.push(request);
                        if heard.len() >= enough {
                            return heard;
                        }
                    }
                }
                _ = client.next_swarm_event() => {}
            }
        }
    }

    /// A peer's requests reach the wrapped behaviour only once it is admitted: before, they
    /// are held (nothing is served); on admission they are passed on in the order they came.
    #[tokio::test]
    async fn requests_wait_for_admission_and_then_go_through_in_order() {
        let (admissions, mut server, mut client) = connected().await;
        let server_id = *server.local_peer_id();
        let client_id = *client.local_peer_id();
        for text in ["first", "second", "third"] {
            client
                .behaviour_mut()
                .send_request(&server_id, text.to_owned());
        }
        let before = served(&mut server, &mut client, Duration::from_millis(500), 1).await;
        assert!(before.is_empty(), "served before admission: {before:?}");

        admissions.admit(client_id, &cert());
        let after = served(&mut server, &mut client, Duration::from_secs(10), 3).await;
        assert_eq!(after, ["first", "second", "third"]);
    }

    /// A peer whose admission ends (revoked, or forgotten when it left) is held again.
    #[tokio::test]
    async fn a_forgotten_peer_is_not_served() {
        let (admissions, mut server, mut client) = connected().await;
        let server_id = *server.local_peer_id();
        let client_id = *client.local_peer_id();
        admissions.admit(client_id, &cert());
        client
            .behaviour_mut()
            .send_request(&server_id, "admitted".to_owned());
        let heard = served(&mut server, &mut client, Duration::from_secs(10), 1).await;
        assert_eq!(heard, ["admitted"]);

        admissions.forget(&client_id);
        client
            .behaviour_mut()
            .send_request(&server_id, "forgotten".to_owned());
        let heard = served(&mut server, &mut client, Duration::from_millis(500), 1).await;
        assert!(heard.is_empty(), "served after being forgotten: {heard:?}");
    }
}
