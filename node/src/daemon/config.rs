//! How a node daemon runs: [`DaemonConfig`], its documented defaults and its ranges.

use std::time::Duration;

use libp2p::Multiaddr;
use natter_superpeer::{Role, Thresholds};

use crate::store::InboxLimits;

/// How a node daemon runs. [`DaemonConfig::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Listen addresses (default: TCP and QUIC on all IPv4 interfaces, ports chosen by the OS).
    pub listen: Vec<Multiaddr>,
    pub role: Role,
    pub thresholds: Thresholds,
    /// Leaves a superpeer accepts (default 1,000).
    pub max_leaves: usize,
    /// Established connections in total (default 4,096), raised to what `max_leaves` needs:
    /// see [`DaemonConfig::connection_limit`].
    pub max_connections: u32,
    /// How long a presence record vouches for its user (default 90 s): a crashed user reads
    /// offline within this lease at the latest.
    pub lease: Duration,
    /// How often a leaf re-publishes its record (default 30 s, a third of the lease: see
    /// [`DaemonConfig::set_lease`]).
    pub publish_interval: Duration,
    /// Where to serve Prometheus metrics (default: nowhere).
    pub metrics: Option<std::net::SocketAddr>,
    /// Publish this node's public addresses in the directory (default true). Without them,
    /// others reach a leaf through its superpeers' relays first (hole punching may still
    /// upgrade the path), and the directory does not reveal its IP address.
    pub publish_direct: bool,
    /// Inbound connections one remote IP address may hold (default 512): enough for many
    /// leaves behind one NAT, not every slot of a superpeer.
    pub max_connections_per_ip: u32,
    /// How long the promotion policy's answer must hold before the role follows it
    /// (default: 2 s to promote, 30 s to demote).
    pub hysteresis: natter_superpeer::promotion::Hysteresis,
    /// The inbox's quotas (`[inbox]` in `natter.toml`).
    pub inbox: InboxLimits,
    /// Received messages older than this are deleted, hourly (default: kept until deleted).
    pub retention: Option<Duration>,
    /// Print the progress lines as JSON, one object per line: `{"at", "phase"}` (`up --json`).
    pub json: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("constant"),
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("constant"),
            ],
            role: Role::Auto,
            thresholds: Thresholds::default(),
            max_leaves: 1000,
            max_connections: 4096,
            lease: Duration::from_secs(90),
            publish_interval: Duration::from_secs(30),
            metrics: None,
            publish_direct: true,
            max_connections_per_ip: 512,
            hysteresis: Default::default(),
            inbox: InboxLimits::default(),
            retention: None,
            json: false,
        }
    }
}

impl DaemonConfig {
    /// Sets the lease, and the re-publication to a third of it (so that two may be lost).
    pub fn set_lease(&mut self, lease: Duration) {
        self.lease = lease;
        self.publish_interval = lease / 3;
    }

    /// The established connections the swarm accepts: `max_connections`, or enough for
    /// `max_leaves` leaves (one connection each, two while one reconnects) and 1,024 others
    /// (superpeers, contacts, the login server) when that is more. A superpeer configured for
    /// 10,000 leaves would otherwise refuse every leaf past the 4,096th connection.
    pub fn connection_limit(&self) -> u32 {
        let for_leaves = self.max_leaves.saturating_mul(2).saturating_add(1024);
        self.max_connections
            .max(u32::try_from(for_leaves).unwrap_or(u32::MAX))
    }

    /// The open files the daemon may need at most: a socket per connection, and a margin for
    /// the store, the control socket and listeners.
    pub fn files_needed(&self) -> u64 {
        u64::from(self.connection_limit()) + 256
    }

    /// Raises this process's soft open-file limit to [`Self::files_needed`] (at most to the
    /// hard limit), as servers do: the usual soft default of 1,024 files would refuse a
    /// superpeer's leaves long before `max_leaves`. Warns when the hard limit is too low.
    pub(crate) fn raise_open_files(&self) {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let needed = self.files_needed();
        let mut limit = getrlimit(Resource::Nofile);
        let target = limit.maximum.map_or(needed, |hard| needed.min(hard));
        if limit.current.is_some_and(|soft| soft < target) {
            limit.current = Some(target);
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(target, "cannot raise the open-file limit: {e}");
            }
        }
        // Only what the leaves need is worth a warning: a leaf under a hard limit of 4,096
        // would otherwise warn on every start about connections it never accepts.
        let for_leaves = (self.max_leaves as u64)
            .saturating_mul(2)
            .saturating_add(1024 + 256);
        if limit.maximum.is_some_and(|hard| hard < for_leaves) {
            tracing::warn!(
                limit = ?limit.maximum,
                needed = for_leaves,
                max_leaves = self.max_leaves,
                "the open-file limit is lower than max_leaves needs: connections past it will \
                 fail; raise it (`ulimit -n`, or LimitNOFILE= in the systemd unit)"
            );
        }
    }

    /// Refuses settings the daemon cannot run with, named as `natter.toml` spells them, with
    /// their range.
    pub fn validate(&self) -> Result<(), String> {
        use natter_proto::limits::within;
        // 0: a superpeer that keeps the directory and serves no leaves (always "full").
        within("max_leaves", self.max_leaves, 0, 1_000_000)?;
        within("min_cores", self.thresholds.min_cores, 0, 4096)?;
        within(
            "min_free_memory_mib",
            self.thresholds.min_free_memory_mib,
            0,
            1 << 30,
        )?;
        within(
            "min_uptime_secs",
            self.thresholds.min_uptime.as_secs(),
            0,
            30 * 24 * 3600,
        )?;
        let inbox = &self.inbox;
        // 0 contact-request messages: strangers are refused until accepted.
        within(
            "inbox.request_messages",
            inbox.request_messages,
            0,
            1_000_000,
        )?;
        within("inbox.request_kib", inbox.request_bytes / 1024, 0, 1 << 20)?;
        within(
            "inbox.contact_messages",
            inbox.sender_messages,
            1,
            10_000_000,
        )?;
        within("inbox.contact_mib", inbox.sender_bytes >> 20, 1, 1 << 20)?;
        within("inbox.total_messages", inbox.total_messages, 1, 100_000_000)?;
        within("inbox.total_mib", inbox.total_bytes >> 20, 1, 1 << 22)?;
        if let Some(keep) = self.retention {
            within("inbox.retention_days", keep.as_secs() / 86_400, 1, 36_500)?;
        }
        within(
            "lease_secs",
            self.lease.as_secs(),
            15,
            natter_proto::limits::MAX_RECORD_LEASE_SECS,
        )?;
        if self.listen.is_empty() {
            return Err("listen needs at least one address".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A superpeer configured for more leaves accepts the connections they need.
    #[test]
    fn the_connection_limit_follows_max_leaves() {
        let mut config = DaemonConfig::default();
        assert_eq!(config.connection_limit(), 4096);
        config.max_leaves = 10_000;
        assert_eq!(config.connection_limit(), 21_024);
        assert_eq!(config.files_needed(), 21_280);
        config.max_connections = 50_000;
        assert_eq!(config.connection_limit(), 50_000);
    }
}
