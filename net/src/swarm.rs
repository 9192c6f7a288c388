//! Swarm construction on Natter's transport: TCP with Noise and Yamux, QUIC, DNS and,
//! optionally, the relay client.

use std::time::Duration;

use libp2p::core::transport::OptionalTransport;
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, noise, ping, quic, relay, tcp, yamux};

/// How a swarm's transport and connection pool are set up. The default is the node daemon's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// How long a connection that no behaviour needs stays open.
    pub idle_timeout: Duration,
    /// QUIC next to TCP, with these timers; `None` for TCP only (tests and benchmarks that
    /// measure or exercise TCP alone).
    pub quic: Option<QuicConfig>,
    /// Streams this side opens skip the protocol negotiation's round trip (multistream-select
    /// `V1Lazy`): the protocol name and the first request leave in one packet, instead of the
    /// request waiting for the other side to confirm the protocol. On loopback that round trip
    /// was a third of a message's delivery time. Safe for Natter's protocols: each stream
    /// offers one protocol and none nests a second negotiation. The cost: a peer that lacks
    /// the protocol shows as an I/O error on the answer rather than "unsupported protocol"
    /// before anything is sent, which is why one-shot clients with a message for that case
    /// turn it off.
    pub optimistic_streams: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(120),
            quic: Some(QuicConfig::default()),
            optimistic_streams: true,
        }
    }
}

/// QUIC's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicConfig {
    /// A connection that hears nothing from its peer for this long is closed.
    pub max_idle_timeout: Duration,
    /// How often a quiet connection sends a keep-alive.
    pub keep_alive_interval: Duration,
}

impl QuicConfig {
    /// libp2p-quic's own defaults (10 s idle, 5 s keep-alive), which the login server and the
    /// login client use: neither has to notice a vanished peer within seconds.
    pub const LIBP2P_DEFAULTS: Self = Self {
        max_idle_timeout: Duration::from_secs(10),
        keep_alive_interval: Duration::from_secs(5),
    };

    fn apply(&self, mut config: quic::Config) -> quic::Config {
        config.max_idle_timeout =
            u32::try_from(self.max_idle_timeout.as_millis()).unwrap_or(u32::MAX);
        config.keep_alive_interval = self.keep_alive_interval;
        config
    }
}

impl Default for QuicConfig {
    /// The node's: notice a vanished peer in seconds (a crashed superpeer sends no close), as
    /// leaves fail over on it. Keep-alives also hold NAT mappings open.
    fn default() -> Self {
        Self {
            max_idle_timeout: Duration::from_secs(6),
            keep_alive_interval: Duration::from_secs(2),
        }
    }
}

/// How often a node pings each connected peer (libp2p ping). The round trip feeds the
/// metrics only: a failed ping closes nothing, connections stay open on TCP without it (a
/// leaf publishes every 30 s) and QUIC keeps itself alive. Every ping costs both ends a few
/// frames, wake-ups and timers: with libp2p's default of 15 s, pings were the largest part of
/// a superpeer's CPU at rest with thousands of leaves (docs/BENCHMARKS.md, issue 14).
pub const PING_INTERVAL: Duration = Duration::from_secs(60);

/// libp2p ping every [`PING_INTERVAL`].
pub fn ping_config() -> ping::Config {
    ping::Config::new().with_interval(PING_INTERVAL)
}

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Noise could not be set up with the identity key.
    #[error("cannot set up Noise: {0}")]
    Noise(noise::Error),
    /// The system's DNS configuration (`/etc/resolv.conf`) could not be read.
    #[error("cannot read the system's DNS configuration: {0}")]
    Dns(std::io::Error),
}

/// The transport part of the builder chain, shared by both constructors. A macro because
/// libp2p's builder phases are private types: no function can return a half-built builder.
macro_rules! with_transport {
    ($key:expr, $config:expr) => {
        libp2p::SwarmBuilder::with_existing_identity($key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(BuildError::Noise)?
            .with_other_transport(|key| match $config.quic {
                Some(q) => OptionalTransport::some(quic::tokio::Transport::new(
                    q.apply(quic::Config::new(key)),
                )),
                None => OptionalTransport::none(),
            })
            .unwrap_or_else(|never| match never {})
            .with_dns()
            .map_err(BuildError::Dns)?
    };
}

/// The connection pool's settings.
fn swarm_config(c: libp2p::swarm::Config, config: &TransportConfig) -> libp2p::swarm::Config {
    let c = c.with_idle_connection_timeout(config.idle_timeout);
    if config.optimistic_streams {
        c.with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
    } else {
        c
    }
}

/// A swarm running `behaviour` on Natter's transport: TCP (Noise, Yamux, `TCP_NODELAY`),
/// QUIC unless `config.quic` is `None`, and DNS names resolved by the system's resolver.
pub fn build_swarm<B: NetworkBehaviour>(
    key: Keypair,
    config: &TransportConfig,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Result<Swarm<B>, BuildError> {
    Ok(with_transport!(key, config)
        .with_behaviour(behaviour)
        .unwrap_or_else(|never| match never {})
        .with_swarm_config(|c| swarm_config(c, config))
        .build())
}

/// [`build_swarm`] with the relay client too: the swarm can listen on and dial
/// `/p2p-circuit` addresses, and `behaviour` must include the [`relay::client::Behaviour`]
/// it is handed.
pub fn build_swarm_with_relay_client<B: NetworkBehaviour>(
    key: Keypair,
    config: &TransportConfig,
    behaviour: impl FnOnce(&Keypair, relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, BuildError> {
    Ok(with_transport!(key, config)
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(BuildError::Noise)?
        .with_behaviour(behaviour)
        .unwrap_or_else(|never| match never {})
        .with_swarm_config(|c| swarm_config(c, config))
        .build())
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use libp2p::Multiaddr;
    use libp2p::swarm::{SwarmEvent, dummy};

    use super::*;

    fn swarm(config: &TransportConfig) -> Swarm<dummy::Behaviour> {
        build_swarm(Keypair::generate_ed25519(), config, |_| dummy::Behaviour).expect("swarm")
    }

    /// `listener` listens on `addr`, a fresh swarm dials it: both see the connection.
    async fn connects(config: &TransportConfig, addr: &str) {
        let mut listener = swarm(config);
        listener
            .listen_on(addr.parse().expect("addr"))
            .expect("listen");
        let mut dialer = swarm(config);
        let connected = async {
            let addr: Multiaddr = loop {
                if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await
                {
                    break address;
                }
            };
            dialer.dial(addr).expect("dial");
            let mut established = 0;
            while established < 2 {
                tokio::select! {
                    event = listener.select_next_some() => {
                        established += usize::from(matches!(event, SwarmEvent::ConnectionEstablished { .. }));
                    }
                    event = dialer.select_next_some() => {
                        established += usize::from(matches!(event, SwarmEvent::ConnectionEstablished { .. }));
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), connected)
            .await
            .expect("connected within 10 s");
    }

    #[tokio::test]
    async fn connects_over_tcp_and_quic() {
        connects(&TransportConfig::default(), "/ip4/127.0.0.1/tcp/0").await;
        connects(&TransportConfig::default(), "/ip4/127.0.0.1/udp/0/quic-v1").await;
        let tcp_only = TransportConfig {
            quic: None,
            ..Default::default()
        };
        connects(&tcp_only, "/ip4/127.0.0.1/tcp/0").await;
    }

    #[tokio::test]
    async fn without_quic_a_quic_address_is_refused() {
        let mut swarm = swarm(&TransportConfig {
            quic: None,
            ..Default::default()
        });
        let addr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr");
        assert!(swarm.listen_on(addr).is_err());
    }

    #[test]
    fn quic_timers_reach_libp2p() {
        let key = Keypair::generate_ed25519();
        let libp2p = quic::Config::new(&key);
        let defaults = QuicConfig::LIBP2P_DEFAULTS.apply(quic::Config::new(&key));
        assert_eq!(defaults.max_idle_timeout, libp2p.max_idle_timeout);
        assert_eq!(defaults.keep_alive_interval, libp2p.keep_alive_interval);
        let node = QuicConfig::default().apply(quic::Config::new(&key));
        assert_eq!(node.max_idle_timeout, 6_000);
        assert_eq!(node.keep_alive_interval, Duration::from_secs(2));
    }
}
