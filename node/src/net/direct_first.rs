//! Direct first: a message to a peer that has both direct and relay addresses is dialled at
//! its direct addresses alone. Dialled together, a relay circuit (over a connection this node
//! already holds to the relay) can connect before a direct dial does, and the message then
//! takes the relay to a peer that is reachable directly: relay traffic for nothing, and a
//! public user reached "relayed". Only when that direct dial fails does the next request to
//! the peer race every address, for [`RACE_FOR`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId};

/// After a failed direct dial, how long requests to that peer dial every address at once.
pub(crate) const RACE_FOR: Duration = Duration::from_secs(300);
/// Dials in flight and failures remembered, each at most.
const MAX_REMEMBERED: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct DirectFirst {
    /// Direct-only dials in flight.
    dials: HashMap<ConnectionId, PeerId>,
    /// Peers whose direct-only dial failed, and when.
    failed: HashMap<PeerId, Instant>,
}

impl DirectFirst {
    /// The dial to start before a request to `peer` (not connected) at `addrs`: its direct
    /// addresses alone, when it has relay addresses too and no direct dial to it failed
    /// lately. `None`: let the request dial as usual.
    pub(crate) fn dial(
        &mut self,
        peer: PeerId,
        addrs: &[Multiaddr],
        now: Instant,
    ) -> Option<DialOpts> {
        let direct: Vec<Multiaddr> = addrs.iter().filter(|a| !is_relayed(a)).cloned().collect();
        if direct.is_empty() || direct.len() == addrs.len() {
            return None;
        }
        if self
            .failed
            .get(&peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < RACE_FOR)
        {
            return None;
        }
        if self.dials.len() >= MAX_REMEMBERED {
            // Dials end with an event each; this only guards against losing them.
            self.dials.clear();
        }
        let opts = DialOpts::peer_id(peer).addresses(direct).build();
        self.dials.insert(opts.connection_id(), peer);
        Some(opts)
    }

    /// A dial could not start, or its connection failed: a direct-only one makes the next
    /// requests to its peer race every address.
    pub(crate) fn failed(&mut self, id: ConnectionId, now: Instant) {
        let Some(peer) = self.dials.remove(&id) else {
            return;
        };
        if self.failed.len() >= MAX_REMEMBERED {
            self.failed
                .retain(|_, at| now.saturating_duration_since(*at) < RACE_FOR);
            if self.failed.len() >= MAX_REMEMBERED {
                self.failed.clear();
            }
        }
        self.failed.insert(peer, now);
    }

    /// A connection was established.
    pub(crate) fn established(&mut self, id: ConnectionId) {
        self.dials.remove(&id);
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addrs(peer: PeerId) -> (Multiaddr, Multiaddr) {
        let relay = PeerId::random();
        let direct: Multiaddr = "/ip4/198.18.1.5/tcp/4001".parse().unwrap();
        let relayed: Multiaddr =
            format!("/ip4/198.18.1.3/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .unwrap();
        (direct, relayed)
    }

    #[test]
    fn a_peer_with_both_kinds_is_dialled_directly_until_that_fails() {
        let peer = PeerId::random();
        let (direct, relayed) = addrs(peer);
        let mut d = DirectFirst::default();
        let now = Instant::now();
        let opts = d
            .dial(peer, &[direct.clone(), relayed.clone()], now)
            .expect("direct alone");
        assert_eq!(opts.get_peer_id(), Some(peer));
        // Only one kind: nothing to hold back, the request dials as usual.
        assert!(d.dial(peer, std::slice::from_ref(&direct), now).is_none());
        assert!(d.dial(peer, std::slice::from_ref(&relayed), now).is_none());
        // The direct dial fails: every address races, for a while.
        d.failed(opts.connection_id(), now);
        assert!(
            d.dial(peer, &[direct.clone(), relayed.clone()], now)
                .is_none()
        );
        assert!(d.dial(peer, &[direct, relayed], now + RACE_FOR).is_some());
    }

    #[test]
    fn an_established_dial_leaves_no_failure_behind() {
        let peer = PeerId::random();
        let (direct, relayed) = addrs(peer);
        let mut d = DirectFirst::default();
        let now = Instant::now();
        let opts = d
            .dial(peer, &[direct.clone(), relayed.clone()], now)
            .unwrap();
        d.established(opts.connection_id());
        // A later failure of some other connection is not this dial's.
        d.failed(opts.connection_id(), now);
        assert!(d.dial(peer, &[direct, relayed], now).is_some());
    }
}
