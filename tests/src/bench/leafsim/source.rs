//! TCP that dials from a chosen local address: each simulated leaf connects from its own
//! loopback address (`127.1.x.y`), as leaves on the Internet come from many. libp2p's TCP
//! transport binds its dials to the unspecified address, so the kernel would pick 127.0.0.1
//! for every leaf. Dial only: a simulated leaf listens through its relay reservation alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Pending};
use libp2p::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::tcp::tokio::TcpStream;

/// Dials `/ip4/…/tcp/…` addresses from `source` (any port).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FromSource {
    pub(crate) source: Ipv4Addr,
}

impl Transport for FromSource {
    type Output = TcpStream;
    type Error = std::io::Error;
    type ListenerUpgrade = Pending<Result<TcpStream, std::io::Error>>;
    type Dial = BoxFuture<'static, Result<TcpStream, std::io::Error>>;

    fn listen_on(
        &mut self,
        _: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(to) = tcp_socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let from = SocketAddr::new(self.source.into(), 0);
        Ok(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(from)?;
            let stream = socket.connect(to).await?;
            stream.set_nodelay(true)?;
            Ok(TcpStream(stream))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Poll::Pending
    }
}

/// `/ip4/A/tcp/P` with an optional `/p2p/…` after it; nothing else (no circuits).
fn tcp_socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => ip,
        _ => return None,
    };
    let port = match parts.next()? {
        Protocol::Tcp(port) if port != 0 => port,
        _ => return None,
    };
    match parts.next() {
        None | Some(Protocol::P2p(_)) if parts.next().is_none() => {
            Some(SocketAddr::new(ip.into(), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_tcp_addresses_are_dialled() {
        let peer = libp2p::PeerId::random();
        let ok: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("addr");
        assert!(tcp_socket_addr(&ok).is_some());
        assert!(tcp_socket_addr(&ok.clone().with(Protocol::P2p(peer))).is_some());
        let circuit = ok
            .with(Protocol::P2p(peer))
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(peer));
        assert!(tcp_socket_addr(&circuit).is_none());
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/4001/quic-v1".parse().expect("addr");
        assert!(tcp_socket_addr(&quic).is_none());
    }
}
