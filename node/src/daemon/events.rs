//! What the network task reports, dispatched: listen and external addresses, connections,
//! identify (which peers are superpeers; see `kad_add_vouched` for what enters the routing
//! table), AutoNAT probes, inbound requests, and the answers to this node's own requests,
//! each handed to the part of the daemon it is for.

use std::time::Instant;

use libp2p::PeerId;

use super::{Current, Daemon, MAX_OBSERVED, api, is_relayed};
use crate::net::{self, Command, InResponse, NetEvent, Token};

impl Daemon {
    pub(super) fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::NewListenAddr(address) => {
                self.listeners.insert(address.clone());
                if is_relayed(&address) {
                    let full = address.clone().with_p2p(self.me).unwrap_or(address);
                    self.relay_addrs.insert(full);
                    self.last_publish = None;
                } else {
                    tracing::info!(%address, "listening");
                }
            }
            NetEvent::ExpiredListenAddr(address) => {
                self.listeners.remove(&address);
                let full = address.clone().with_p2p(self.me).unwrap_or(address);
                self.relay_addrs.remove(&full);
            }
            NetEvent::ExternalAddrConfirmed(address) => {
                if !is_relayed(&address) {
                    tracing::info!(%address, "public address confirmed");
                    if self.confirmed.insert(address) && self.role == Current::Superpeer {
                        // Tell the login server (and so new leaves) at once.
                        self.last_announce = None;
                    }
                    self.evaluate_role();
                }
            }
            NetEvent::ExternalAddrExpired(address) => {
                self.confirmed.remove(&address);
                self.evaluate_role();
            }
            NetEvent::Connected { peer } => {
                if peer == self.login_peer {
                    self.login_connected = true;
                }
            }
            NetEvent::DialFailed(peer)
                if self.superpeers_seen.contains_key(&peer) || self.role == Current::Superpeer =>
            {
                // A superpeer that cannot be dialled must not slow every directory query
                // down by a dial timeout; identify adds it back when it returns.
                self.net.send(Command::KadRemovePeer(peer));
            }
            NetEvent::DialFailed(_) => {}
            NetEvent::Disconnected { peer, error } => {
                if error && self.superpeers_seen.contains_key(&peer) {
                    self.net.send(Command::KadRemovePeer(peer));
                }
                if peer == self.login_peer {
                    self.login_connected = false;
                }
                self.on_peer_gone(peer);
            }
            NetEvent::Identified { peer, info } => {
                // Peers connected now (forgotten when they go), and a bounded number of them:
                // anyone can connect and tell this node an address.
                if self.observed.len() < MAX_OBSERVED || self.observed.contains_key(&peer) {
                    self.observed.insert(peer, info.observed_addr.clone());
                }
                let is_superpeer = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == natter_proto::protocol::KAD);
                if is_superpeer {
                    self.superpeers_seen
                        .entry(peer)
                        .or_insert_with(Instant::now);
                    if self.role == Current::Superpeer {
                        self.kad_add_vouched(peer);
                    }
                } else {
                    self.superpeers_seen.remove(&peer);
                    self.net.send(Command::KadRemovePeer(peer));
                }
            }
            NetEvent::AutonatProbe {
                addr,
                server,
                reachable,
            } => {
                tracing::debug!(%addr, %server, reachable, "AutoNAT probe");
                if self.probes.len() >= 16 {
                    self.probes.pop_front();
                }
                self.probes.push_back(api::Probe {
                    addr: addr.to_string(),
                    server: server.to_string(),
                    reachable,
                });
            }
            NetEvent::Response {
                token,
                result,
                path,
            } => self.on_response(token, result, path),
            NetEvent::OverlayRequest {
                peer,
                request,
                channel,
            } => self.on_overlay_request(peer, request, channel),
            NetEvent::MsgRequest {
                peer,
                request,
                channel,
            } => self.on_msg_request(peer, request, channel),
            NetEvent::KadPut { source, record } => self.on_kad_put(source, record),
            NetEvent::KadFound { token, value } => self.on_kad_found(token, value),
            NetEvent::KadDone(token) => {
                self.on_kad_done(token);
            }
            NetEvent::RelayReservation(peer) => self.on_relay_reservation(peer),
            NetEvent::Reserved(relay_peer_id) => {
                // The relay may not know its own public address to tell us; the circuit
                // address we asked for is reachable all the same.
                if let Some(circuit) = self.reserving.get(&relay_peer_id) {
                    let full = circuit
                        .clone()
                        .with(libp2p::multiaddr::Protocol::P2p(self.me));
                    if self.relay_addrs.insert(full) {
                        self.last_publish = None;
                    }
                }
            }
        }
    }

    /// An answer (or failure) to one of this node's requests, to whoever sent it.
    pub(super) fn on_response(
        &mut self,
        token: Token,
        result: Result<InResponse, String>,
        path: net::Path,
    ) {
        if let Some(pending) = self.login_pending.remove(&token) {
            let response = match result {
                Ok(InResponse::Login(r)) => Ok(r),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => {
                    tracing::warn!(error = %e, "login server request failed");
                    Err(e)
                }
            };
            self.on_login_response(pending, response);
        } else if let Some(pending) = self.overlay_pending.remove(&token) {
            let response = match result {
                Ok(InResponse::Overlay(r)) => Ok(r),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            };
            self.on_overlay_response(pending, response);
        } else if let Some(pending) = self.msg.take_pending(token) {
            let response = match result {
                Ok(InResponse::Msg(r)) => Ok((r, path.as_str())),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            };
            self.on_msg_response(pending, response);
        }
    }
    pub(super) fn on_peer_gone(&mut self, peer: PeerId) {
        self.observed.remove(&peer);
        if self.leaves.remove(&peer).is_some() {
            tracing::info!(%peer, "leaf detached");
        }
        self.superpeers_seen.remove(&peer);
        if self.attach.holds(peer) {
            self.lost_superpeer(peer);
        }
    }
}
