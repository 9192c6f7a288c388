//! The login server's configuration file (TOML). Precedence, resolved by `natter-login serve`:
//! built-in defaults ([`crate::Config::new`]) < this file < environment variables < flags.
//!
//! The file is `--config PATH` (env `NATTER_LOGIN_CONFIG`), else `natter-login.toml` in the
//! data directory when it exists. Every key is optional; unknown keys are an error. See
//! `deploy/natter-login.toml.example`.

use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Deserialize;

use crate::{Config, Limit, Registration};

/// File name looked for in the data directory.
pub const FILE_NAME: &str = "natter-login.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<Multiaddr>>,
    /// "open" or "closed".
    pub registration: Option<String>,
    pub cert_lifetime_secs: Option<u64>,
    pub renew_grace_secs: Option<u64>,
    pub ip_limit_burst: Option<u32>,
    pub ip_limit_refill_secs: Option<u64>,
    pub name_limit_burst: Option<u32>,
    pub name_limit_refill_secs: Option<u64>,
    pub request_limit_burst: Option<u32>,
    pub request_limit_refill_ms: Option<u64>,
    pub max_connections: Option<u32>,
    pub max_connections_per_peer: Option<u32>,
    pub max_inflight: Option<usize>,
    pub max_devices_per_account: Option<usize>,
    pub metrics: Option<std::net::SocketAddr>,
}

impl FileConfig {
    /// Reads `explicit` (which must exist), else `data_dir/natter-login.toml` if it exists.
    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> Result<Self, String> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => {
                let default = data_dir.join(FILE_NAME);
                if !default.exists() {
                    return Ok(Self::default());
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The error keeps toml's snippet on its own lines (line number, the offending line, a
    /// caret under the mistake), as it is written to be read.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Applies the file's settings over `config` (which holds the defaults).
    pub fn apply(&self, config: &mut Config) -> Result<(), String> {
        if let Some(l) = &self.listen {
            config.listen = l.clone();
        }
        match self.registration.as_deref() {
            None => {}
            Some("open") => config.registration = Registration::Open,
            Some("closed") => config.registration = Registration::Closed,
            Some(other) => return Err(format!("registration {other:?} is not open or closed")),
        }
        let secs = Duration::from_secs;
        if let Some(s) = self.cert_lifetime_secs {
            config.cert_lifetime = secs(s);
        }
        if let Some(s) = self.renew_grace_secs {
            config.renew_grace = secs(s);
        }
        config.ip_limit = Limit {
            burst: self.ip_limit_burst.unwrap_or(config.ip_limit.burst),
            refill: self
                .ip_limit_refill_secs
                .map(secs)
                .unwrap_or(config.ip_limit.refill),
        };
        config.name_limit = Limit {
            burst: self.name_limit_burst.unwrap_or(config.name_limit.burst),
            refill: self
                .name_limit_refill_secs
                .map(secs)
                .unwrap_or(config.name_limit.refill),
        };
        config.request_limit = Limit {
            burst: self
                .request_limit_burst
                .unwrap_or(config.request_limit.burst),
            refill: self
                .request_limit_refill_ms
                .map(Duration::from_millis)
                .unwrap_or(config.request_limit.refill),
        };
        config.max_connections = self.max_connections.unwrap_or(config.max_connections);
        config.max_connections_per_peer = self
            .max_connections_per_peer
            .unwrap_or(config.max_connections_per_peer);
        config.max_inflight = self.max_inflight.unwrap_or(config.max_inflight);
        config.max_devices_per_account = self
            .max_devices_per_account
            .unwrap_or(config.max_devices_per_account);
        config.metrics = self.metrics.or(config.metrics);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_typos_are_errors() {
        let f = FileConfig::parse(
            r#"
            listen = ["/ip4/0.0.0.0/tcp/4747"]
            registration = "closed"
            cert_lifetime_secs = 3600
            ip_limit_burst = 50
            metrics = "127.0.0.1:9465"
            "#,
        )
        .unwrap();
        let mut c = Config::new("/tmp/x");
        f.apply(&mut c).unwrap();
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.registration, Registration::Closed);
        assert_eq!(c.cert_lifetime, Duration::from_secs(3600));
        assert_eq!(c.ip_limit.burst, 50);
        assert_eq!(c.ip_limit.refill, Config::new("/tmp/x").ip_limit.refill);
        assert!(c.metrics.is_some());
        assert!(FileConfig::parse("registraton = \"open\"").is_err());
        let bad = FileConfig::parse("registration = \"maybe\"").unwrap();
        assert!(bad.apply(&mut c).is_err());
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
