//! When a node becomes a superpeer. All of: a confirmed, non-relayed public address; enough
//! resources; and a user who did not opt out. Defaults follow Gnutella's ultrapeer rules and
//! Skype's practice of preferring long-running, well-connected machines.

use std::time::Duration;

/// What the user asked for with `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Promote when reachable and capable (the default).
    #[default]
    Auto,
    /// Never promote.
    Leaf,
    /// Always a superpeer (seed nodes of a network).
    Superpeer,
}

/// Minimum resources for promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// CPU cores (default 2).
    pub min_cores: usize,
    /// Available memory in MiB (default 256).
    pub min_free_memory_mib: u64,
    /// Time the node has been up (default 10 min): short-lived nodes make poor superpeers,
    /// since their leaves must fail over when they go. Labs set 0.
    pub min_uptime: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_cores: 2,
            min_free_memory_mib: 256,
            min_uptime: Duration::from_secs(600),
        }
    }
}

/// What the machine offers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cores: usize,
    /// `None` when it cannot be read (then it does not block promotion).
    pub free_memory_mib: Option<u64>,
    pub uptime: Duration,
}

impl Resources {
    /// Reads cores and available memory (Linux `/proc/meminfo`) of this machine.
    pub fn probe(uptime: Duration) -> Self {
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            free_memory_mib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| parse_mem_available(&s)),
            uptime,
        }
    }
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

/// The policy's answer, with the reason a node stays (or becomes) a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Superpeer,
    Leaf(String),
}

/// Decides the role from the user's choice, reachability and resources.
pub fn decide(
    role: Role,
    public_addr_confirmed: bool,
    resources: &Resources,
    thresholds: &Thresholds,
) -> Decision {
    match role {
        Role::Superpeer => return Decision::Superpeer,
        Role::Leaf => return Decision::Leaf("role is leaf (opted out)".into()),
        Role::Auto => {}
    }
    if !public_addr_confirmed {
        return Decision::Leaf("no public address confirmed by AutoNAT".into());
    }
    if resources.cores < thresholds.min_cores {
        return Decision::Leaf(format!(
            "{} cores, {} needed",
            resources.cores, thresholds.min_cores
        ));
    }
    if let Some(free) = resources.free_memory_mib
        && free < thresholds.min_free_memory_mib
    {
        return Decision::Leaf(format!(
            "{free} MiB free memory, {} needed",
            thresholds.min_free_memory_mib
        ));
    }
    if resources.uptime < thresholds.min_uptime {
        return Decision::Leaf(format!(
            "up {} s, {} s needed",
            resources.uptime.as_secs(),
            thresholds.min_uptime.as_secs()
        ));
    }
    Decision::Superpeer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capable() -> Resources {
        Resources {
            cores: 4,
            free_memory_mib: Some(4096),
            uptime: Duration::from_secs(3600),
        }
    }

    #[test]
    fn every_condition_is_needed_for_auto() {
        let t = Thresholds::default();
        assert_eq!(
            decide(Role::Auto, true, &capable(), &t),
            Decision::Superpeer
        );
        assert!(
            matches!(decide(Role::Auto, false, &capable(), &t), Decision::Leaf(r) if r.contains("AutoNAT"))
        );
        let few_cores = Resources {
            cores: 1,
            ..capable()
        };
        assert!(
            matches!(decide(Role::Auto, true, &few_cores, &t), Decision::Leaf(r) if r.contains("cores"))
        );
        let low_mem = Resources {
            free_memory_mib: Some(10),
            ..capable()
        };
        assert!(
            matches!(decide(Role::Auto, true, &low_mem, &t), Decision::Leaf(r) if r.contains("memory"))
        );
        let young = Resources {
            uptime: Duration::from_secs(5),
            ..capable()
        };
        assert!(
            matches!(decide(Role::Auto, true, &young, &t), Decision::Leaf(r) if r.contains("up 5 s"))
        );
        let lab = Thresholds {
            min_uptime: Duration::ZERO,
            ..t
        };
        assert_eq!(decide(Role::Auto, true, &young, &lab), Decision::Superpeer);
    }

    #[test]
    fn explicit_roles_win() {
        let t = Thresholds::default();
        let weak = Resources {
            cores: 1,
            free_memory_mib: Some(1),
            uptime: Duration::ZERO,
        };
        assert_eq!(
            decide(Role::Superpeer, false, &weak, &t),
            Decision::Superpeer
        );
        assert!(matches!(
            decide(Role::Leaf, true, &capable(), &t),
            Decision::Leaf(_)
        ));
    }

    #[test]
    fn meminfo_parsing() {
        let s = "MemTotal:       24000000 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(parse_mem_available(s), Some(2048));
        assert_eq!(parse_mem_available("garbage"), None);
    }
}
