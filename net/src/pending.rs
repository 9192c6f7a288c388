//! A cap on the inbound connections one source address may have in their handshake at once.
//!
//! libp2p's `connection-limits` caps pending inbound connections in total (the login server
//! and nodes allow 256). Alone, that lets one host hold every slot with idle TCP sockets that
//! never start Noise, and lock everyone else out until its sockets time out. This behaviour,
//! placed before the total cap, refuses a source address's connections beyond
//! [`PendingPerAddress::new`]'s `max` while they are still in their handshake. A source
//! address is an IPv4 address or an IPv6 /64 ([`address_key`]); relayed connections have no
//! address of their own and are not counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// The key limits per source address use: an IPv4 address, or the /64 prefix of an IPv6 one
/// (a host usually has a whole /64, so its single addresses would walk around a limit).
/// IPv4-mapped IPv6 addresses count as the IPv4 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

/// The source address of a direct connection; `None` for a relayed one.
pub fn remote_address(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{address} already has {max} connections in their handshake")]
pub struct TooManyPending {
    pub address: IpAddr,
    pub max: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct PendingPerAddress {
    max: u32,
    pending: HashMap<IpAddr, u32>,
    counted: HashMap<ConnectionId, IpAddr>,
}

impl PendingPerAddress {
    /// At most `max` (at least 1) connections in their handshake per source address.
    pub fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            pending: HashMap::new(),
            counted: HashMap::new(),
        }
    }

    fn release(&mut self, connection: ConnectionId) {
        if let Some(address) = self.counted.remove(&connection)
            && let Some(n) = self.pending.get_mut(&address)
        {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&address);
            }
        }
    }
}

impl NetworkBehaviour for PendingPerAddress {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(address) = remote_address(remote).map(address_key) else {
            return Ok(());
        };
        let n = self.pending.entry(address).or_insert(0);
        if *n >= self.max {
            return Err(ConnectionDenied::new(TooManyPending {
                address,
                max: self.max,
            }));
        }
        *n += 1;
        self.counted.insert(connection, address);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.release(connection);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // The handshake ended: failed, denied by another behaviour, or established.
        match event {
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::ConnectionEstablished(ConnectionEstablished { connection_id, .. }) => {
                self.release(connection_id);
            }
            _ => {}
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
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ipv4_or_ipv6_64() {
        let key = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8::1"), "2001:db8::");
        assert_eq!(key("2001:db8::ffff:1:2"), "2001:db8::");
        assert_eq!(key("2001:db8:0:1::1"), "2001:db8:0:1::");
        assert_eq!(key("::ffff:192.0.2.9"), "192.0.2.9");
        let relayed: Multiaddr = "/ip4/192.0.2.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
            .parse()
            .unwrap();
        assert_eq!(remote_address(&relayed), None);
        let direct: Multiaddr = "/ip6/::1/udp/5/quic-v1".parse().unwrap();
        assert_eq!(remote_address(&direct), Some("::1".parse().unwrap()));
    }

    #[test]
    fn a_source_address_gets_at_most_its_share_of_handshakes() {
        let mut gate = PendingPerAddress::new(2);
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let from = |ip: &str| -> Multiaddr { format!("/ip4/{ip}/tcp/5").parse().unwrap() };
        let (a, b, c) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        assert!(
            gate.handle_pending_inbound_connection(a, &local, &from("192.0.2.1"))
                .is_ok()
        );
        assert!(
            gate.handle_pending_inbound_connection(b, &local, &from("192.0.2.1"))
                .is_ok()
        );
        assert!(
            gate.handle_pending_inbound_connection(c, &local, &from("192.0.2.1"))
                .is_err()
        );
        assert!(
            gate.handle_pending_inbound_connection(c, &local, &from("192.0.2.2"))
                .is_ok()
        );
        // One handshake ends: room for another from that address.
        let _ = gate.handle_established_inbound_connection(a, PeerId::random(), &local, &local);
        let d = ConnectionId::new_unchecked(4);
        assert!(
            gate.handle_pending_inbound_connection(d, &local, &from("192.0.2.1"))
                .is_ok()
        );
    }
}
