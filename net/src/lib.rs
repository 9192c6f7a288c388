//! The transport every Natter process uses, built in one place: TCP (Noise, Yamux, no Nagle),
//! QUIC, DNS resolution and, for nodes, the relay client; and the check that a listen port is
//! not already taken.
//!
//! The node daemon, the login server, the login client, the integration tests and the
//! benchmark all build their swarms with [`build_swarm`] or
//! [`build_swarm_with_relay_client`], so what the tests and the bench measure is the
//! transport users run.

mod pending;
mod port;
mod swarm;

pub use pending::{PendingPerAddress, TooManyPending, address_key, remote_address};
pub use port::{PortUnavailable, ensure_port_free, error_chain};
pub use swarm::{
    BuildError, PING_INTERVAL, QuicConfig, TransportConfig, build_swarm,
    build_swarm_with_relay_client, ping_config,
};
