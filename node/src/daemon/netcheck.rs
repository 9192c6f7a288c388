//! What can be told about this node's NAT from the addresses other peers observed it at.

use std::collections::BTreeSet;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Mapping behaviour, judged from QUIC observations (QUIC sends from its listening socket, so
/// one local port is seen by every observer; TCP dials use fresh ports and tell nothing).
pub(super) fn nat_behaviour<'a>(
    observed: impl IntoIterator<Item = &'a Multiaddr>,
    listen: &[Multiaddr],
    public: bool,
) -> String {
    if public {
        return "none or port-forwarded: reachable from the Internet".into();
    }
    let quic: BTreeSet<(String, u16)> = observed
        .into_iter()
        .filter(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)))
        .filter_map(ip_port)
        .collect();
    let local: BTreeSet<(String, u16)> = listen.iter().filter_map(ip_port).collect();
    match quic.len() {
        0 => "unknown: no QUIC observations yet".into(),
        _ if quic.iter().all(|o| local.contains(o)) => "no NAT seen (observed at a local address)".into(),
        1 => "endpoint-independent mapping (one public address for every peer): hole punching should work".into(),
        _ => "endpoint-dependent mapping (symmetric NAT): peers reach this node through relays".into(),
    }
}

fn ip_port(addr: &Multiaddr) -> Option<(String, u16)> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a.to_string()),
            Protocol::Ip6(a) => ip = Some(a.to_string()),
            Protocol::Udp(p) | Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some((ip?, port?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn judges_mapping_from_quic_observations() {
        let listen = [a("/ip4/10.0.0.2/udp/5000/quic-v1")];
        let eim = [
            a("/ip4/198.51.100.1/udp/6000/quic-v1"),
            a("/ip4/198.51.100.1/udp/6000/quic-v1"),
        ];
        assert!(nat_behaviour(&eim, &listen, false).starts_with("endpoint-independent"));
        let sym = [
            a("/ip4/198.51.100.1/udp/6000/quic-v1"),
            a("/ip4/198.51.100.1/udp/6001/quic-v1"),
        ];
        assert!(nat_behaviour(&sym, &listen, false).starts_with("endpoint-dependent"));
        let tcp_only = [a("/ip4/198.51.100.1/tcp/6000")];
        assert!(nat_behaviour(&tcp_only, &listen, false).starts_with("unknown"));
        let none = [a("/ip4/10.0.0.2/udp/5000/quic-v1")];
        assert!(nat_behaviour(&none, &listen, false).starts_with("no NAT"));
        assert!(nat_behaviour(&sym, &listen, true).starts_with("none"));
    }
}
