//! Refusing a listen port that another process holds.
//!
//! libp2p-tcp listens with `SO_REUSEPORT` (so that outgoing connections can leave from the
//! listen port, which hole punching needs). The catch: a second process that listens on a
//! port already in use is not refused; the kernel shares the port between the two and hands
//! each incoming connection to either. A plain bind, without `SO_REUSEPORT`, is refused while
//! such a listener exists: that is the check.

use std::io;
use std::net::{IpAddr, SocketAddr};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use socket2::{Domain, Socket, Type};

/// A listen address whose port cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {}", describe(.error))]
pub struct PortUnavailable {
    /// The address as it was asked for.
    pub addr: Multiaddr,
    /// What the system answered to the bind.
    pub error: io::Error,
}

impl PortUnavailable {
    /// Whether another socket holds the port (rather than, say, the address not being on any
    /// interface).
    pub fn in_use(&self) -> bool {
        self.error.kind() == io::ErrorKind::AddrInUse
    }
}

fn describe(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::AddrInUse {
        "the port is already in use (is another natter running?)".into()
    } else {
        error.to_string()
    }
}

/// `error` and its sources as one line, the empty ones skipped: libp2p's transport errors
/// keep the system's reason ("Cannot assign requested address") in their source only, and
/// `listen_on`'s error alone prints nothing.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        "unknown error".into()
    } else {
        parts.join(": ")
    }
}

/// Fails if another socket already holds `addr` (`/ip4|ip6/<ip>/tcp/<port>` or
/// `/ip4|ip6/<ip>/udp/<port>/quic-v1`), which libp2p's `SO_REUSEPORT` listeners would share.
/// Port 0 and every other kind of address pass unchecked, and so does an address that cannot
/// be bound for another reason (not an address of this host yet, say): libp2p reports that
/// itself, and a node configured for its public address may start before the interface has
/// it. Call it for every listen address before listening on any: the process's own listeners
/// would fail it.
///
/// The check and the listen that follows are two steps: a process that takes the port in
/// between is not noticed.
pub fn ensure_port_free(addr: &Multiaddr) -> Result<(), PortUnavailable> {
    let Some((socket_addr, kind)) = probe_target(addr) else {
        return Ok(());
    };
    match probe(socket_addr, kind) {
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => Err(PortUnavailable {
            addr: addr.clone(),
            error,
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
}

fn probe_target(addr: &Multiaddr) -> Option<(SocketAddr, Kind)> {
    let mut protocols = addr.iter();
    let ip = match protocols.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let (port, kind) = match protocols.next()? {
        Protocol::Tcp(port) => (port, Kind::Tcp),
        Protocol::Udp(port) if matches!(protocols.next()?, Protocol::QuicV1 | Protocol::Quic) => {
            (port, Kind::Udp)
        }
        _ => return None,
    };
    // Anything further but our own `/p2p/<id>` (a relay circuit, say) binds no local socket.
    let plain = protocols.all(|p| matches!(p, Protocol::P2p(_)));
    (plain && port != 0).then_some((SocketAddr::new(ip, port), kind))
}

/// Binds a socket as libp2p's listeners do, minus `SO_REUSEPORT`, and closes it again.
fn probe(addr: SocketAddr, kind: Kind) -> io::Result<()> {
    let socket = match kind {
        Kind::Tcp => {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            // As libp2p-tcp does: connections of an earlier run lingering in TIME_WAIT do not
            // hold the port.
            socket.set_reuse_address(true)?;
            socket
        }
        Kind::Udp => Socket::new(Domain::for_address(addr), Type::DGRAM, None)?,
    };
    if addr.is_ipv6() {
        // As libp2p does: an IPv6 listener leaves the IPv4 port to others.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;
    use libp2p::identity::Keypair;
    use libp2p::swarm::{Swarm, SwarmEvent, dummy};

    use super::*;
    use crate::{TransportConfig, build_swarm};

    fn swarm() -> Swarm<dummy::Behaviour> {
        build_swarm(
            Keypair::generate_ed25519(),
            &TransportConfig::default(),
            |_| dummy::Behaviour,
        )
        .expect("swarm")
    }

    async fn listen(swarm: &mut Swarm<dummy::Behaviour>, addr: &str) -> Multiaddr {
        swarm
            .listen_on(addr.parse().expect("addr"))
            .expect("listen");
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    return address;
                }
            }
        })
        .await
        .expect("a listen address")
    }

    #[tokio::test]
    async fn a_tcp_port_a_swarm_listens_on_is_in_use() {
        let mut first = swarm();
        let addr = listen(&mut first, "/ip4/127.0.0.1/tcp/0").await;

        // Why the check exists: libp2p lets a second listener share the port.
        let mut second = swarm();
        assert_eq!(listen(&mut second, &addr.to_string()).await, addr);

        let error = ensure_port_free(&addr).expect_err("port in use");
        assert!(error.in_use(), "{error}");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot listen on {addr}: the port is already in use (is another natter running?)"
            )
        );
    }

    #[tokio::test]
    async fn a_quic_port_a_swarm_listens_on_is_in_use() {
        let mut first = swarm();
        let addr = listen(&mut first, "/ip4/127.0.0.1/udp/0/quic-v1").await;
        let error = ensure_port_free(&addr).expect_err("port in use");
        assert!(error.in_use(), "{error}");
    }

    #[test]
    fn a_free_port_passes_and_leaves_it_free() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        ensure_port_free(&addr).expect("free");
        ensure_port_free(&addr).expect("still free: the probe closed its socket");
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("bindable after the probe");
    }

    #[test]
    fn only_plain_sockets_on_a_fixed_port_are_checked() {
        let checked: Multiaddr =
            "/ip6/::1/udp/4747/quic-v1/p2p/12D3KooWGpCAMb8xYW8RrwmFTYwmGKXzFMqbsi5LzJD1FJk2SVts"
                .parse()
                .expect("addr");
        assert_eq!(
            probe_target(&checked),
            Some(("[::1]:4747".parse().expect("socket addr"), Kind::Udp))
        );
        for addr in [
            "/ip4/0.0.0.0/tcp/0",
            "/ip6/::/udp/0/quic-v1",
            "/ip4/127.0.0.1/udp/4747",
            "/dns4/example.com/tcp/4747",
            "/ip4/127.0.0.1/tcp/4747/p2p/12D3KooWGpCAMb8xYW8RrwmFTYwmGKXzFMqbsi5LzJD1FJk2SVts/p2p-circuit",
        ] {
            let addr: Multiaddr = addr.parse().expect(addr);
            assert_eq!(probe_target(&addr), None, "{addr}");
        }
    }

    #[test]
    fn an_address_not_on_this_host_is_left_to_libp2p() {
        // 192.0.2.0/24 is reserved for documentation: on no interface. A node configured for
        // its public address may start before the interface has it; libp2p reports it then.
        let addr: Multiaddr = "/ip4/192.0.2.1/tcp/4747".parse().expect("addr");
        assert!(probe_target(&addr).is_some());
        assert!(ensure_port_free(&addr).is_ok());
    }
}
