//! The node's one swarm (owned by the network task): every behaviour a node may need is always present; promotion and
//! demotion only flip their status (Kademlia mode, relay HOP), never rebuild the swarm.

use std::num::NonZeroUsize;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::PeerAddresses;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, identify, kad,
    ping, relay,
};
use natter_proto::limits::{MAX_OVERLAY_MESSAGE_BYTES, MAX_OVERLAY_RESPONSE_BYTES};
use natter_proto::msg::{MAX_MSG_WIRE_BYTES, MsgRequest, MsgResponse};
use natter_proto::overlay::{Introduction, IntroductionResponse, OverlayRequest, OverlayResponse};
use natter_proto::protocol;
use natter_superpeer::relay::RelayLimits;

use super::admission::{Admissions, Admitted};
use super::boxed::Boxed;
use super::records::DirectoryRecords;
use crate::login_client::{self, LoginCodec};

/// Msg requests read at once on one connection.
pub(crate) const MSG_STREAMS_PER_CONNECTION: usize = 8;

pub(crate) type MsgCodec = super::codec::BudgetedJson<MsgRequest, MsgResponse>;
pub(crate) type OverlayCodec =
    request_response::json::codec::Codec<OverlayRequest, OverlayResponse>;
pub(crate) type IntroduceCodec =
    request_response::json::codec::Codec<Introduction, IntroductionResponse>;

/// Inbound connections one source address may have in their handshake at once (of 256 in
/// all).
const MAX_PENDING_PER_ADDRESS: u32 = 16;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// First: a refused connection is refused before any other behaviour sets up for it.
    pub(crate) gate: super::gate::ConnectionGate,
    /// Before the total cap on pending connections: one address cannot take all of it.
    pub(crate) pending: natter_net::PendingPerAddress,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) addresses: AddressBook,
    pub(crate) relay_client: Boxed<relay::client::Behaviour>,
    /// The relay server: reservations and circuits for admitted peers only.
    pub(crate) relay: Boxed<Admitted<relay::Behaviour>>,
    pub(crate) dcutr: Boxed<dcutr::Behaviour>,
    pub(crate) identify: Boxed<identify::Behaviour>,
    pub(crate) ping: Boxed<ping::Behaviour>,
    pub(crate) autonat_client: super::reprobe::Reprobing,
    pub(crate) autonat_server: Boxed<autonat::v2::server::Behaviour>,
    /// The directory, among admitted peers only.
    pub(crate) kad: Boxed<Admitted<kad::Behaviour<DirectoryRecords>>>,
    pub(crate) login: Boxed<request_response::Behaviour<LoginCodec>>,
    /// Each side's certificate, on every new connection: see [`super::admission`].
    pub(crate) introduce: Boxed<request_response::Behaviour<IntroduceCodec>>,
    pub(crate) overlay: Boxed<Admitted<request_response::Behaviour<OverlayCodec>>>,
    pub(crate) msg: Boxed<request_response::Behaviour<MsgCodec>>,
}

/// Settings the swarm is built with.
#[derive(Debug, Clone)]
pub(crate) struct SwarmSettings {
    pub(crate) max_leaves: usize,
    pub(crate) max_connections: u32,
    pub(crate) idle_timeout: Duration,
    /// Inbound connections one remote IP address may hold.
    pub(crate) max_per_ip: u32,
}

/// The swarm and the directory's record store, which the superpeer service shares with
/// Kademlia (see [`DirectoryRecords`]).
pub(crate) fn build(
    key: libp2p::identity::Keypair,
    settings: &SwarmSettings,
    admissions: &Admissions,
) -> anyhow::Result<(Swarm<Behaviour>, DirectoryRecords)> {
    let peer_id = key.public().to_peer_id();
    // Sized for a superpeer's share of the directory: a user's value holds at most 8 device
    // records of at most 4 KiB, and typically one of about 1 KiB; 200,000 values bound the
    // store, and a superpeer holds only the share closest to its id.
    let records = DirectoryRecords::new(
        peer_id,
        kad::store::MemoryStoreConfig {
            max_records: 200_000,
            max_value_bytes: natter_proto::limits::MAX_DEVICE_SET_BYTES,
            ..Default::default()
        },
    );
    let kad_records = records.clone();
    let transport_config = natter_net::TransportConfig {
        idle_timeout: settings.idle_timeout,
        ..Default::default()
    };
    let swarm =
        natter_net::build_swarm_with_relay_client(key, &transport_config, |key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(StreamProtocol::new(protocol::KAD));
            kad_config
                // Every record is validated before it is stored: see the superpeer service.
                .set_record_filtering(kad::StoreInserts::FilterBoth)
                // A value of 8 devices' records and its envelope.
                .set_max_packet_size(natter_proto::limits::MAX_DEVICE_SET_BYTES + 16 * 1024)
                .set_record_ttl(Some(Duration::from_secs(
                    natter_proto::limits::MAX_RECORD_LEASE_SECS,
                )))
                // Home superpeers republish their leaves' records every 30 s to the closest
                // peers of the moment: Kademlia's own publication and replication would only
                // add traffic (about 1 PUT per record per minute and superpeer).
                .set_publication_interval(None)
                .set_replication_interval(None)
                .set_query_timeout(Duration::from_secs(10));
            let mut kad = kad::Behaviour::with_config(peer_id, kad_records, kad_config);
            // Every node starts as a leaf: pinned, so libp2p never switches by itself.
            kad.set_mode(Some(kad::Mode::Client));
            let mut relay = relay::Behaviour::new(
                peer_id,
                RelayLimits::for_leaves(settings.max_leaves).to_config(),
            );
            relay.set_status(Some(relay::Status::Disable));
            let overlay_codec = OverlayCodec::default()
                .set_request_size_maximum(MAX_OVERLAY_MESSAGE_BYTES)
                .set_response_size_maximum(MAX_OVERLAY_RESPONSE_BYTES);
            Behaviour {
                gate: super::gate::ConnectionGate::new(settings.max_per_ip),
                pending: natter_net::PendingPerAddress::new(MAX_PENDING_PER_ADDRESS),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(settings.max_connections))
                        .with_max_established_per_peer(Some(8))
                        .with_max_pending_incoming(Some(256)),
                ),
                addresses: AddressBook::new(),
                relay_client: Boxed::new(relay_client),
                relay: Boxed::new(Admitted::new(relay, admissions.clone(), "relay", false)),
                dcutr: Boxed::new(dcutr::Behaviour::new(peer_id)),
                identify: Boxed::new(identify::Behaviour::new(
                    identify::Config::new(protocol::IDENTIFY_VERSION.into(), key.public())
                        .with_agent_version(format!("natter/{}", env!("CARGO_PKG_VERSION")))
                        .with_push_listen_addr_updates(true),
                )),
                ping: Boxed::new(ping::Behaviour::new(natter_net::ping_config())),
                autonat_client: super::reprobe::Reprobing::new(
                    autonat::v2::client::Config::default()
                        .with_probe_interval(Duration::from_secs(2)),
                ),
                autonat_server: Boxed::new(autonat::v2::server::Behaviour::default()),
                kad: Boxed::new(Admitted::new(kad, admissions.clone(), "directory", false)),
                login: Boxed::new(login_client::behaviour(ProtocolSupport::Outbound)),
                introduce: Boxed::new(request_response::Behaviour::with_codec(
                    IntroduceCodec::default()
                        .set_request_size_maximum(MAX_OVERLAY_MESSAGE_BYTES)
                        .set_response_size_maximum(MAX_OVERLAY_MESSAGE_BYTES),
                    [(
                        StreamProtocol::new(protocol::INTRODUCE),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10))
                        .with_max_concurrent_streams(16),
                )),
                overlay: Boxed::new(Admitted::new(
                    request_response::Behaviour::with_codec(
                        overlay_codec,
                        [(
                            StreamProtocol::new(protocol::OVERLAY),
                            ProtocolSupport::Full,
                        )],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(15))
                            .with_max_concurrent_streams(256),
                    ),
                    admissions.clone(),
                    "overlay",
                    true,
                )),
                // Requests are read within one budget for all peers (a request is read whole
                // before its certificate is checked), and 8 at a time per connection: a
                // sender has one batch in flight per recipient, besides pings and presence.
                msg: Boxed::new(request_response::Behaviour::with_codec(
                    MsgCodec::new(
                        super::codec::ReadBudget::new(super::codec::MSG_READ_BUDGET),
                        MAX_MSG_WIRE_BYTES,
                        64 * 1024,
                    ),
                    [(StreamProtocol::new(protocol::MSG), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(20))
                        .with_max_concurrent_streams(MSG_STREAMS_PER_CONNECTION),
                )),
            }
        })?;
    Ok((swarm, records))
}

/// Addresses of peers the node was told about (login server, superpeers from the bootstrap
/// list and host cache), offered whenever any behaviour dials them by PeerId. Bounded LRU.
pub(crate) struct AddressBook {
    addrs: PeerAddresses,
}

impl AddressBook {
    fn new() -> Self {
        Self {
            addrs: PeerAddresses::new(NonZeroUsize::new(1024).expect("nonzero")),
        }
    }
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
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

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer
            .map(|p| self.addrs.get(&p).collect())
            .unwrap_or_default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.addrs.on_swarm_event(&event);
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
    use libp2p::swarm::THandler;

    use super::*;

    /// Every connection's task holds the combined handler of all behaviours, more than once:
    /// the large handlers are boxed ([`Boxed`]), so what stays inline is small. It was
    /// 7,592 bytes with every handler inline, and a superpeer spent 75 KiB per leaf.
    #[test]
    fn the_combined_handler_stays_small() {
        let size = std::mem::size_of::<THandler<Behaviour>>();
        assert!(
            size <= 512,
            "the combined connection handler is {size} bytes"
        );
    }
}
