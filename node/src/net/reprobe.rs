//! AutoNAT v2's client, made restartable.
//!
//! libp2p's client tests each candidate address once. A test that fails (a dial-back lost on a
//! loaded host, say) marks the address failed for good, and a test whose connection closes
//! before the answer stays pending for good: either way the address is never tried again, so a
//! node whose first probes went wrong never learns it is reachable and never promotes, for the
//! life of the process. The client offers no way to test again.
//!
//! [`Reprobing`] wraps it and can replace it with a fresh one ([`Reprobing::restart`]): the new
//! client is told of every open connection (so that late events from the old one's handlers
//! find the state they expect) and of the candidates seen so far, and tests them afresh. The
//! handlers of open connections stay the old ones, which told the old client whether their peer
//! serves AutoNAT; the new client learns of servers on connections opened after the restart, so
//! the caller opens one (the daemon dials its login server again).

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use libp2p::autonat::v2::client::{Behaviour, Config, Event};
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NewExternalAddrCandidate,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Candidates remembered for a restart (the most recent ones).
const MAX_CANDIDATES: usize = 16;

/// See the module docs.
pub(crate) struct Reprobing {
    inner: Behaviour,
    config: Config,
    connections: HashMap<ConnectionId, (PeerId, ConnectedPoint)>,
    candidates: VecDeque<Multiaddr>,
}

impl Reprobing {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            inner: Self::client(config),
            config,
            connections: HashMap::new(),
            candidates: VecDeque::new(),
        }
    }

    fn client(config: Config) -> Behaviour {
        Behaviour::new(rand::make_rng::<rand::rngs::StdRng>(), config)
    }

    /// Replaces the client with a fresh one that tests every known candidate again.
    pub(crate) fn restart(&mut self) {
        self.inner = Self::client(self.config);
        for (&connection_id, (peer_id, endpoint)) in &self.connections {
            self.inner
                .on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                    peer_id: *peer_id,
                    connection_id,
                    endpoint,
                    failed_addresses: &[],
                    other_established: 0,
                }));
        }
        for addr in &self.candidates {
            self.inner
                .on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                    NewExternalAddrCandidate { addr },
                ));
        }
    }

    /// Candidates remembered for the next restart.
    pub(crate) fn candidates(&self) -> usize {
        self.candidates.len()
    }
}

impl NetworkBehaviour for Reprobing {
    type ConnectionHandler = <Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = Event;

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
        match &event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .insert(e.connection_id, (e.peer_id, e.endpoint.clone()));
            }
            FromSwarm::ConnectionClosed(e) => {
                self.connections.remove(&e.connection_id);
            }
            FromSwarm::NewExternalAddrCandidate(e) => {
                self.candidates.retain(|a| a != e.addr);
                if self.candidates.len() >= MAX_CANDIDATES {
                    self.candidates.pop_front();
                }
                self.candidates.push_back(e.addr.clone());
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer, connection, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use libp2p::swarm::{Swarm, SwarmEvent};
    use libp2p::{autonat, identify};
    use libp2p_swarm_test::SwarmExt as _;

    use super::*;

    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Client {
        reprobe: Reprobing,
        identify: identify::Behaviour,
    }

    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Server {
        autonat: autonat::v2::server::Behaviour,
        identify: identify::Behaviour,
    }

    fn identify(key: &libp2p::identity::Keypair) -> identify::Behaviour {
        identify::Behaviour::new(identify::Config::new("/test/1".into(), key.public()))
    }

    /// Drives both swarms until the client's AutoNAT client reports a test of `addr`.
    async fn tested(
        client: &mut Swarm<Client>,
        server: &mut Swarm<Server>,
        addr: &Multiaddr,
    ) -> bool {
        loop {
            tokio::select! {
                event = client.select_next_some() => {
                    if let SwarmEvent::Behaviour(ClientEvent::Reprobe(e)) = event
                        && &e.tested_addr == addr
                    {
                        return e.result.is_ok();
                    }
                }
                _ = server.select_next_some() => {}
            }
        }
    }

    /// A candidate whose first test failed (nothing listened there yet) is confirmed after a
    /// restart and a new connection to the server. libp2p's client alone never tests it again.
    #[tokio::test]
    async fn a_failed_address_is_tested_again_after_a_restart() {
        let mut server = Swarm::new_ephemeral_tokio(|key| Server {
            autonat: autonat::v2::server::Behaviour::default(),
            identify: identify(&key),
        });
        let (_, server_addr) = server.listen().with_tcp_addr_external().await;
        let server_id = *server.local_peer_id();
        let mut client = Swarm::new_ephemeral_tokio(|key| Client {
            reprobe: Reprobing::new(
                Config::default().with_probe_interval(Duration::from_millis(200)),
            ),
            identify: identify(&key),
        });
        // The address the client will listen on, once the first test has failed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        client
            .behaviour_mut()
            .reprobe
            .on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                NewExternalAddrCandidate { addr: &addr },
            ));
        client.dial(server_addr.clone()).unwrap();
        let bound = Duration::from_secs(60);
        let first = tokio::time::timeout(bound, tested(&mut client, &mut server, &addr)).await;
        assert_eq!(first, Ok(false), "the first test reaches nobody");

        client.listen_on(addr.clone()).unwrap();
        client
            .wait(|e| matches!(e, SwarmEvent::NewListenAddr { .. }).then_some(()))
            .await;
        client.behaviour_mut().reprobe.restart();
        client
            .dial(
                DialOpts::peer_id(server_id)
                    .addresses(vec![server_addr])
                    .condition(PeerCondition::Always)
                    .build(),
            )
            .unwrap();
        let again = tokio::time::timeout(bound, tested(&mut client, &mut server, &addr)).await;
        assert_eq!(again, Ok(true), "tested again, and reachable now");
    }
}
