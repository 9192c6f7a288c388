//! Natter's login server: the only central part of a Natter network, and not on its data path.
//!
//! It keeps user names unique, hashes passwords (argon2id), issues short-lived identity
//! certificates signed by its issuer key, renews them without a password, keeps a bounded list
//! of live superpeers for bootstrap, and runs an AutoNAT v2 server so that even the first node
//! of a network can learn whether it is publicly reachable.
//!
//! Layout: [`keys`] and [`accounts`] hold state on disk, [`ratelimit`] and [`registry`] are pure
//! bookkeeping, [`service`] decides each request, [`server`] owns the swarm and the event loop,
//! [`dialback`] reaches announced superpeers back before they are listed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;

pub mod accounts;
pub mod config_file;
pub mod dialback;
pub mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
mod revocations;
pub mod server;
pub mod service;

pub use ratelimit::Limit;
pub use server::Server;

/// Default port of a login server, TCP and QUIC.
pub const DEFAULT_PORT: u16 = 4747;

/// Whether anyone may create an account over the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Registration {
    #[default]
    Open,
    /// Only the operator creates accounts (`natter-login user add`).
    Closed,
}

/// Everything a login server is configured by. [`Config::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub registration: Registration,
    /// Lifetime of an issued certificate (default 24 h).
    pub cert_lifetime: Duration,
    /// How long after expiry a certificate can still be renewed without a password (1 h).
    pub renew_grace: Duration,
    /// Register and login attempts per source IP (burst 20, then one per 3 s).
    pub ip_limit: Limit,
    /// Failed logins per user name and source address (burst 5, then one per 60 s): guesses
    /// from elsewhere do not lock the owner out.
    pub name_limit: Limit,
    /// Every other request (renew, exists, announce) per source address (burst 300, then 20
    /// per second). Addresses are IPv4 addresses and IPv6 /64 prefixes, for every limit.
    pub request_limit: Limit,
    /// Bound on the keys each rate limiter tracks.
    pub max_rate_limit_keys: usize,
    /// A superpeer not heard from for this long leaves bootstrap lists (150 s).
    pub announce_ttl: Duration,
    /// How often superpeers are asked to announce (60 s).
    pub announce_refresh: Duration,
    /// Most superpeers tracked (10,000), one per account.
    pub max_superpeers: usize,
    /// Announced superpeers being reached back at once (32); more wait in a queue eight
    /// times as long, and beyond that are checked at their next announcement.
    pub max_dial_backs: usize,
    /// How long a dial-back waits for its addresses to answer (10 s, libp2p's connection
    /// timeout); those that have not answered by then are not listed.
    pub dial_back_timeout: Duration,
    /// How often a listed superpeer that keeps announcing the same addresses is reached back
    /// again (30 min); an unreached one is tried again every `announce_refresh`.
    pub reverify_after: Duration,
    /// Established connections in total (4,096), per peer (4), and pending inbound (256).
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_incoming: u32,
    /// Pending inbound connections (in their handshake) per source address (16).
    pub max_pending_per_address: u32,
    /// Password hashes computed at once (default: the number of cores).
    pub password_workers: usize,
    /// Devices one account may have certified within a certificate's lifetime and renewal
    /// grace (16): a new device beyond them is refused until one of them lapses.
    pub max_devices_per_account: usize,
    /// Requests being processed at once; more are refused as busy (256).
    pub max_inflight: usize,
    /// Close connections idle this long (30 s).
    pub idle_timeout: Duration,
    /// Serve Prometheus metrics here (default: off).
    pub metrics: Option<std::net::SocketAddr>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: default_listen(DEFAULT_PORT),
            registration: Registration::Open,
            cert_lifetime: Duration::from_secs(24 * 3600),
            renew_grace: Duration::from_secs(3600),
            ip_limit: Limit {
                burst: 20,
                refill: Duration::from_secs(3),
            },
            name_limit: Limit {
                burst: 5,
                refill: Duration::from_secs(60),
            },
            request_limit: Limit {
                burst: 300,
                refill: Duration::from_millis(50),
            },
            max_rate_limit_keys: 100_000,
            announce_ttl: Duration::from_secs(150),
            announce_refresh: Duration::from_secs(60),
            max_superpeers: 10_000,
            max_dial_backs: 32,
            dial_back_timeout: Duration::from_secs(10),
            reverify_after: Duration::from_secs(30 * 60),
            max_connections: 4096,
            max_connections_per_peer: 4,
            max_pending_incoming: 256,
            max_pending_per_address: 16,
            password_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            max_devices_per_account: 16,
            max_inflight: 256,
            idle_timeout: Duration::from_secs(30),
            metrics: None,
        }
    }
}

impl Config {
    /// Refuses settings the server cannot run with, naming the setting as the configuration
    /// file spells it, with its range. [`Server::bind`] calls it first.
    pub fn validate(&self) -> Result<(), String> {
        use natter_proto::limits::within;
        fn positive(name: &str, value: Duration) -> Result<(), String> {
            if value.is_zero() {
                return Err(format!("{name} must be more than 0"));
            }
            Ok(())
        }
        let secs = |d: Duration| d.as_secs();
        within(
            "cert_lifetime_secs",
            secs(self.cert_lifetime),
            10,
            30 * 24 * 3600,
        )?;
        within("renew_grace_secs", secs(self.renew_grace), 0, 7 * 24 * 3600)?;
        within("ip_limit_burst", self.ip_limit.burst, 1, u32::MAX)?;
        positive("ip_limit_refill_secs", self.ip_limit.refill)?;
        within("name_limit_burst", self.name_limit.burst, 1, u32::MAX)?;
        positive("name_limit_refill_secs", self.name_limit.refill)?;
        within("request_limit_burst", self.request_limit.burst, 1, u32::MAX)?;
        positive("request_limit_refill_ms", self.request_limit.refill)?;
        within(
            "max_rate_limit_keys",
            self.max_rate_limit_keys,
            1,
            usize::MAX,
        )?;
        within("max_superpeers", self.max_superpeers, 1, usize::MAX)?;
        within("max_dial_backs", self.max_dial_backs, 1, 4096)?;
        within("max_connections", self.max_connections, 1, u32::MAX)?;
        within(
            "max_connections_per_peer",
            self.max_connections_per_peer,
            1,
            u32::MAX,
        )?;
        within(
            "max_pending_incoming",
            self.max_pending_incoming,
            1,
            u32::MAX,
        )?;
        within(
            "max_pending_per_address",
            self.max_pending_per_address,
            1,
            u32::MAX,
        )?;
        within("password_workers", self.password_workers, 1, 1024)?;
        within("max_inflight", self.max_inflight, 1, 65_536)?;
        within(
            "max_devices_per_account",
            self.max_devices_per_account,
            1,
            10_000,
        )?;
        if self.listen.is_empty() {
            return Err("listen needs at least one address".into());
        }
        Ok(())
    }
}

/// TCP and QUIC on all IPv4 interfaces.
pub fn default_listen(port: u16) -> Vec<Multiaddr> {
    [
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ]
    .iter()
    .map(|a| a.parse().expect("constant multiaddr"))
    .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is unusable: {1}", path = .0.display())]
    BadKeyFile(PathBuf, String),
    #[error("account database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("account database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot serve metrics on {addr}: {reason}")]
    Metrics {
        addr: std::net::SocketAddr,
        reason: String,
    },
    /// A listen port is taken by another process, or cannot be bound at all.
    #[error(transparent)]
    Port(#[from] natter_net::PortUnavailable),
    #[error("network setup failed: {0}")]
    Transport(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A setting out of its range ([`Config::validate`]).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn db(path: &Path, source: rusqlite::Error) -> Self {
        Error::Db {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn sql(source: rusqlite::Error) -> Self {
        Error::Sql(source)
    }
}
