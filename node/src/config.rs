//! The node's configuration file (TOML). Precedence, resolved in `natter up`:
//! built-in defaults < this file < environment variables < command-line flags.
//!
//! The file is `--config PATH` (env `NATTER_CONFIG`), else `natter.toml` in the home
//! directory when it exists. Every key is optional; unknown keys are an error, so a typo
//! never silently falls back to a default. See `deploy/natter.toml.example`.

use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Deserialize;

use crate::store::InboxLimits;

/// File name looked for in the home directory.
pub const FILE_NAME: &str = "natter.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listen addresses (multiaddrs).
    pub listen: Option<Vec<Multiaddr>>,
    /// "auto", "leaf" or "superpeer".
    pub role: Option<String>,
    pub max_leaves: Option<usize>,
    pub min_uptime_secs: Option<u64>,
    pub min_cores: Option<usize>,
    pub min_free_memory_mib: Option<u64>,
    /// Serve Prometheus metrics on this address (e.g. "127.0.0.1:9464"); off when absent.
    pub metrics: Option<std::net::SocketAddr>,
    /// Publish the node's IP addresses in the directory (default true).
    pub publish_direct_addrs: Option<bool>,
    /// Seconds the presence record vouches for this node, 15 to 120 (default 90).
    pub lease_secs: Option<u64>,
    /// The inbox's quotas and retention (`[inbox]`).
    pub inbox: Option<InboxConfig>,
}

/// `[inbox]`: how much the inbox takes, and how long it keeps messages. Every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    /// A contact request (a sender who is neither a contact nor written to): messages and
    /// KiB held until accepted (defaults 20 and 64; 0 messages refuses strangers).
    pub request_messages: Option<u64>,
    pub request_kib: Option<u64>,
    /// One contact's share (defaults 10,000 and 32 MiB).
    pub contact_messages: Option<u64>,
    pub contact_mib: Option<u64>,
    /// The whole inbox (defaults 100,000 and 256 MiB).
    pub total_messages: Option<u64>,
    pub total_mib: Option<u64>,
    /// Delete received messages older than this many days (default 0: keep until deleted).
    pub retention_days: Option<u64>,
}

impl InboxConfig {
    /// Puts the keys that are set into `limits` and `retention` (the daemon validates them).
    pub fn apply(&self, limits: &mut InboxLimits, retention: &mut Option<Duration>) {
        let set = |key: Option<u64>, unit: u64, field: &mut u64| {
            if let Some(v) = key {
                *field = v.saturating_mul(unit);
            }
        };
        set(self.request_messages, 1, &mut limits.request_messages);
        set(self.request_kib, 1024, &mut limits.request_bytes);
        set(self.contact_messages, 1, &mut limits.sender_messages);
        set(self.contact_mib, 1 << 20, &mut limits.sender_bytes);
        set(self.total_messages, 1, &mut limits.total_messages);
        set(self.total_mib, 1 << 20, &mut limits.total_bytes);
        match self.retention_days {
            Some(0) => *retention = None,
            Some(days) => *retention = Some(Duration::from_secs(days.saturating_mul(86_400))),
            None => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
}

impl FileConfig {
    /// Reads `explicit` (which must exist), else `home/natter.toml` if it exists, else
    /// nothing.
    pub fn load(explicit: Option<&Path>, home: &Path) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => {
                let default = home.join(FILE_NAME);
                if !default.exists() {
                    return Ok(Self::default());
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path, message })
    }

    /// The error keeps toml's snippet on its own lines (line number, the offending line, a
    /// caret under the mistake), as it is written to be read.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_refuses_typos() {
        let c = FileConfig::parse(
            r#"
            listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
            role = "superpeer"
            max_leaves = 5000
            min_uptime_secs = 0
            min_cores = 1
            min_free_memory_mib = 128
            metrics = "127.0.0.1:9464"

            [inbox]
            request_messages = 5
            request_kib = 128
            contact_messages = 100
            contact_mib = 1
            total_messages = 1000
            total_mib = 10
            retention_days = 30
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.as_ref().unwrap().len(), 2);
        assert_eq!(c.role.as_deref(), Some("superpeer"));
        assert_eq!(c.max_leaves, Some(5000));
        assert!(c.metrics.is_some());
        let inbox = c.inbox.unwrap();
        let (mut limits, mut retention) = (InboxLimits::default(), None);
        inbox.apply(&mut limits, &mut retention);
        assert_eq!(
            limits,
            InboxLimits {
                request_messages: 5,
                request_bytes: 128 * 1024,
                sender_messages: 100,
                sender_bytes: 1 << 20,
                total_messages: 1000,
                total_bytes: 10 << 20,
            }
        );
        assert_eq!(retention, Some(Duration::from_secs(30 * 86_400)));
        let err = FileConfig::parse("max_leafs = 3").unwrap_err();
        assert!(err.contains("max_leafs"), "{err}");
        let err = FileConfig::parse("[inbox]\nrequest_msgs = 3").unwrap_err();
        assert!(err.contains("request_msgs"), "{err}");
        assert!(FileConfig::parse("listen = [\"not an address\"]").is_err());
        assert_eq!(FileConfig::parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn missing_default_file_is_fine_but_a_missing_explicit_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            FileConfig::load(None, dir.path()).unwrap(),
            FileConfig::default()
        );
        assert!(FileConfig::load(Some(&dir.path().join("nope.toml")), dir.path()).is_err());
        std::fs::write(dir.path().join(FILE_NAME), "min_cores = 7").unwrap();
        assert_eq!(
            FileConfig::load(None, dir.path()).unwrap().min_cores,
            Some(7)
        );
    }

    #[test]
    fn parse_errors_keep_the_snippet_on_its_own_lines() {
        let err = FileConfig::parse("min_cores = 1\nlisten = [\"not an address\"]\n").unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines.len() >= 3, "{err}");
        assert!(lines[0].contains("line 2"), "{err}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("| listen = [\"not an address\"]")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.trim_start().starts_with('|') && l.contains('^')),
            "{err}"
        );
    }
}
