//! The connection gate: one place that decides whether a connection is admitted, in
//! `handle_established_*_connection`, by returning [`ConnectionDenied`].
//!
//! Today it refuses peers the daemon banned for a while (a peer that took a relay reservation
//! on a superpeer without being attached to it) and caps the inbound connections one remote IP
//! address may hold, so that one host cannot take every connection slot of a superpeer.
//! Relayed connections have no IP of their own and are not counted (the relay's own limits
//! apply to them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Most peers banned at once; past it, the ban that ends first is dropped.
const MAX_BANNED: usize = 4096;

/// Why the gate refused a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("peer {0} is banned for a while")]
    Banned(PeerId),
    #[error("{ip} already holds {max} inbound connections")]
    TooManyFromAddress { ip: IpAddr, max: u32 },
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ConnectionGate {
    banned: HashMap<PeerId, Instant>,
    /// Inbound, non-relayed connections per remote IP.
    per_ip: HashMap<IpAddr, u32>,
    counted: HashMap<ConnectionId, IpAddr>,
    max_per_ip: u32,
}

impl ConnectionGate {
    pub(crate) fn new(max_per_ip: u32) -> Self {
        Self {
            banned: HashMap::new(),
            per_ip: HashMap::new(),
            counted: HashMap::new(),
            max_per_ip,
        }
    }

    /// Refuses `peer`'s connections for `duration` (the caller closes the open ones).
    pub(crate) fn ban(&mut self, peer: PeerId, duration: Duration) {
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        if self.banned.len() >= MAX_BANNED
            && let Some(first) = self
                .banned
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(p, _)| *p)
        {
            self.banned.remove(&first);
        }
        self.banned.insert(peer, now + duration);
    }

    fn check_peer(&mut self, peer: PeerId) -> Result<(), ConnectionDenied> {
        match self.banned.get(&peer) {
            Some(until) if *until > Instant::now() => {
                Err(ConnectionDenied::new(Refused::Banned(peer)))
            }
            Some(_) => {
                self.banned.remove(&peer);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl NetworkBehaviour for ConnectionGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(peer)?;
        if let Some(ip) = natter_net::remote_address(remote) {
            let count = self.per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                return Err(ConnectionDenied::new(Refused::TooManyFromAddress {
                    ip,
                    max: self.max_per_ip,
                }));
            }
            *count += 1;
            self.counted.insert(connection, ip);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // Closed, or denied by a behaviour asked after this one: no longer counted.
        let connection_id = match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => connection_id,
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => connection_id,
            _ => return,
        };
        if let Some(ip) = self.counted.remove(&connection_id)
            && let Some(count) = self.per_ip.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use libp2p::swarm::{Swarm, SwarmEvent};
    use libp2p_swarm_test::SwarmExt as _;

    use super::*;

    fn gate(max_per_ip: u32) -> Swarm<ConnectionGate> {
        Swarm::new_ephemeral_tokio(|_| ConnectionGate::new(max_per_ip))
    }

    /// Dials `listener` from `dialer` and drives both until the listener admitted or refused
    /// the connection.
    async fn connect(
        dialer: &mut Swarm<ConnectionGate>,
        listener: &mut Swarm<ConnectionGate>,
    ) -> bool {
        let addr = listener.external_addresses().next().unwrap().clone();
        let dialer_id = *dialer.local_peer_id();
        dialer.dial(addr).unwrap();
        loop {
            tokio::select! {
                event = listener.next_swarm_event() => match event {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == dialer_id => {
                        return true;
                    }
                    SwarmEvent::IncomingConnectionError { .. } => return false,
                    _ => {}
                },
                _ = dialer.next_swarm_event() => {}
            }
        }
    }

    #[tokio::test]
    async fn a_banned_peer_is_refused_and_admitted_again_when_the_ban_ends() {
        let mut server = gate(16);
        server.listen().with_memory_addr_external().await;
        let mut client = gate(16);
        let client_id = *client.local_peer_id();
        server
            .behaviour_mut()
            .ban(client_id, Duration::from_millis(300));
        assert!(
            !connect(&mut client, &mut server).await,
            "banned peer admitted"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(connect(&mut client, &mut server).await, "ban did not end");
    }

    #[tokio::test]
    async fn one_address_holds_at_most_the_cap_of_inbound_connections() {
        let mut server = gate(2);
        server.listen().with_tcp_addr_external().await;
        let mut clients: Vec<_> = (0..3).map(|_| gate(16)).collect();
        let mut admitted = 0;
        for client in &mut clients {
            if connect(client, &mut server).await {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2, "all three came from 127.0.0.1");
        // One leaves: a slot frees up.
        let first = *clients[0].local_peer_id();
        server.disconnect_peer_id(first).unwrap();
        loop {
            tokio::select! {
                event = server.next_swarm_event() => if let SwarmEvent::ConnectionClosed { peer_id, .. } = event
                    && peer_id == first
                {
                    break;
                },
                _ = clients[0].next_swarm_event() => {}
            }
        }
        assert!(connect(&mut clients[2], &mut server).await);
    }
}
