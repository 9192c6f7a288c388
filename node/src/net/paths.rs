//! Which path each connection takes (direct or through a relay), for answers to report it
//! and for retiring relayed connections once a direct one exists.

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

use super::{Network, Path};

impl Network {
    /// One request with `peer` is over; with none left, the retired relayed connections this
    /// node opened go (those the peer opened wait for their grace, see `ConnectionEstablished`).
    pub(super) fn done_with(&mut self, peer: PeerId) {
        let Some(n) = self.busy.get_mut(&peer) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return;
        }
        self.busy.remove(&peer);
        if self.has_direct(peer) {
            let retired: Vec<ConnectionId> = self
                .retiring
                .iter()
                .filter(|(_, id)| !self.accepted_relayed.contains(id))
                .filter(|(_, id)| self.conns.get(id).is_some_and(|(p, _)| *p == peer))
                .map(|(_, id)| *id)
                .collect();
            for id in retired {
                self.swarm.close_connection(id);
            }
        }
    }

    /// The path of an answer: how the connection it came on is made.
    pub(super) fn path(&self, id: ConnectionId) -> Path {
        match self.conns.get(&id) {
            Some((_, true)) => Path::Relayed,
            _ => Path::Direct,
        }
    }

    pub(super) fn has_direct(&self, peer: PeerId) -> bool {
        self.conns
            .values()
            .any(|(p, relayed)| *p == peer && !relayed)
    }

    /// Relayed connections to `peer`, to close once a direct one exists.
    pub(super) fn relayed_to(&self, peer: PeerId) -> Vec<ConnectionId> {
        self.conns
            .iter()
            .filter(|(_, (p, relayed))| *p == peer && *relayed)
            .map(|(id, _)| *id)
            .collect()
    }
}
