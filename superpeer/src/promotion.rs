//! When a node becomes a superpeer. All of: a confirmed, non-relayed public address; enough
//! resources; and a user who did not opt out. Defaults follow Gnutella's ultrapeer rules and
//! Skype's practice of preferring long-running, well-connected machines.
//!
//! Promotion by need, as Gnutella's ultrapeers and Skype's supernodes were elected: while the
//! network has fewer superpeers than [`NeedPolicy::min_superpeers`], or its superpeers are
//! fuller than [`NeedPolicy::target_load_percent`] of their capacity (the login server's count,
//! [`Supply`]), the uptime rule is waived and a reachable, capable node promotes within
//! seconds. With enough superpeers, a node must have been up [`Thresholds::min_uptime`]. The
//! uptime rule only ever holds a promotion back: a superpeer is not demoted by it when the
//! need passes (which would drop its leaves for nothing).

use natter_proto::login::Supply;

use std::time::{Duration, Instant};

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

/// When the network needs more superpeers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedPolicy {
    /// Fewer listed superpeers than this: every capable node is needed (default 3: a leaf
    /// attaches to two, and one more lets a leaf fail over while one restarts).
    pub min_superpeers: u32,
    /// Superpeers fuller than this share of their summed capacity, in percent (default 50).
    pub target_load_percent: u64,
}

impl Default for NeedPolicy {
    fn default() -> Self {
        Self {
            min_superpeers: 3,
            target_load_percent: 50,
        }
    }
}

impl NeedPolicy {
    /// Why the network needs another superpeer, given the login server's `supply`; `None`
    /// when it has enough, or when nothing is known yet (no answer from the login server).
    pub fn need(&self, supply: Option<&Supply>) -> Option<String> {
        let supply = supply?;
        if supply.superpeers < self.min_superpeers {
            return Some(format!(
                "the network has {} superpeer(s), fewer than {}",
                supply.superpeers, self.min_superpeers
            ));
        }
        let full = supply.leaves.saturating_mul(100);
        (full > supply.capacity.saturating_mul(self.target_load_percent)).then(|| {
            format!(
                "the network's superpeers are {}% full, above the {}% target",
                full / supply.capacity.max(1),
                self.target_load_percent
            )
        })
    }

    /// Why the network would do without a superpeer of `capacity` that it lists in `supply`:
    /// more than the minimum, and the others would carry every leaf under half the load
    /// target. Half: so that a demotion does not bring the load back over the target, which
    /// would promote somebody again (the gap is the hysteresis between the two rules).
    ///
    /// Capacities are each superpeer's own claim: the others are counted at most as large as
    /// this one, so that one account claiming a huge capacity cannot talk the honest
    /// superpeers into demoting.
    pub fn surplus(&self, supply: Option<&Supply>, capacity: u64) -> Option<String> {
        let supply = supply?;
        if supply.superpeers <= self.min_superpeers {
            return None;
        }
        let others = u64::from(supply.superpeers - 1);
        let rest = supply
            .capacity
            .saturating_sub(capacity)
            .min(others.saturating_mul(capacity));
        let load = supply.leaves.saturating_mul(100);
        (load.saturating_mul(2) <= rest.saturating_mul(self.target_load_percent)).then(|| {
            format!(
                "the network has {} superpeers, more than the {} it needs, and the others \
                 would be {}% full without this one",
                supply.superpeers,
                self.min_superpeers,
                load / rest.max(1)
            )
        })
    }

    /// Why a leaf of `capacity` that may promote should not: it would be one too many
    /// ([`Self::surplus`] as if it were listed already).
    pub fn enough(&self, supply: Option<&Supply>, capacity: u64) -> Option<String> {
        let supply = supply?;
        let with_me = Supply {
            superpeers: supply.superpeers.saturating_add(1),
            leaves: supply.leaves,
            capacity: supply.capacity.saturating_add(capacity),
        };
        self.surplus(Some(&with_me), capacity).map(|_| {
            format!(
                "the network has enough superpeers ({}, {}% full); this node promotes when \
                 they are fewer than {} or over {}% full",
                supply.superpeers,
                supply.leaves.saturating_mul(100) / supply.capacity.max(1),
                self.min_superpeers,
                self.target_load_percent
            )
        })
    }
}

/// What to do about a need seen in the supply: see [`NeedGate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeedStep {
    /// Decide with this need (`None`: there is none).
    Act(Option<String>),
    /// A need was seen; wait until then before asking again.
    Wait(Instant),
    /// Ask the login server for the supply again now.
    Ask,
}

/// Staggers promotion by need. Nodes that start together all see the same empty network; if
/// each promoted at once, all would. A node that sees a need waits a random while (the
/// caller's `delay`, e.g. 0 to 10 s), asks the login server again, and acts only on an answer
/// that came after its wait: by then the first nodes to promote are listed, and the need may
/// have passed. A pure state machine: the caller passes the time in.
#[derive(Debug, Clone, Default)]
pub struct NeedGate {
    recheck_at: Option<Instant>,
    asked_at: Option<Instant>,
}

/// How long an unanswered re-ask waits before the next.
const NEED_ASK_AGAIN: Duration = Duration::from_secs(10);

impl NeedGate {
    /// When the need it saw is asked about again (`None`: it saw none).
    pub fn pending(&self) -> Option<Instant> {
        self.recheck_at
    }

    /// `need` from the supply learned at `supply_at` (from [`NeedPolicy::need`]).
    pub fn observe(
        &mut self,
        need: Option<String>,
        supply_at: Option<Instant>,
        now: Instant,
        delay: impl FnOnce() -> Duration,
    ) -> NeedStep {
        let Some(need) = need else {
            *self = Self::default();
            return NeedStep::Act(None);
        };
        let at = *self.recheck_at.get_or_insert_with(|| now + delay());
        if supply_at.is_some_and(|t| t >= at) {
            return NeedStep::Act(Some(need));
        }
        if now < at {
            return NeedStep::Wait(at);
        }
        if self
            .asked_at
            .is_none_or(|t| now.saturating_duration_since(t) >= NEED_ASK_AGAIN)
        {
            self.asked_at = Some(now);
            return NeedStep::Ask;
        }
        NeedStep::Wait(at)
    }
}

/// The policy's answer, with the reason a node stays (or becomes) a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Superpeer,
    Leaf(String),
}

/// Decides the role from the user's choice, reachability and resources; `need` (from
/// [`NeedPolicy::need`]) waives the uptime rule, which applies to a leaf's promotion only
/// (`is_superpeer`: the node is one now); `surplus` (from [`NeedPolicy::surplus`] for a
/// superpeer, [`NeedPolicy::enough`] for a leaf) keeps an `auto` node a leaf or demotes it.
pub fn decide(
    role: Role,
    public_addr_confirmed: bool,
    resources: &Resources,
    thresholds: &Thresholds,
    need: Option<&str>,
    surplus: Option<&str>,
    is_superpeer: bool,
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
    if resources.uptime < thresholds.min_uptime && need.is_none() && !is_superpeer {
        return Decision::Leaf(format!(
            "up {} s, {} s needed while the network has enough superpeers",
            resources.uptime.as_secs(),
            thresholds.min_uptime.as_secs()
        ));
    }
    // Too many superpeers: a sitting one demotes (its gate staggered it), a leaf stays one.
    if let Some(surplus) = surplus {
        return Decision::Leaf(surplus.to_owned());
    }
    Decision::Superpeer
}

/// How long a new answer of the policy must hold before the role follows it.
///
/// Without it, a short dip (free memory while a build runs, an AutoNAT probe that failed once)
/// would demote a superpeer and drop every leaf it carries, only to promote it again seconds
/// later. Forced roles (`--role leaf|superpeer`) are not held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// A node that may become a superpeer waits this long (default 2 s).
    pub promote_after: Duration,
    /// A superpeer that no longer qualifies waits this long (default 30 s).
    pub demote_after: Duration,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self {
            promote_after: Duration::from_secs(2),
            demote_after: Duration::from_secs(30),
        }
    }
}

/// What the role should do now, after [`RoleGate::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleChange {
    /// Keep the current role (the decision agrees, or a change is still being held back).
    Stay,
    Promote,
    /// Become a leaf, for this reason.
    Demote(String),
}

/// Applies [`Hysteresis`] to a stream of [`Decision`]s: the role changes only when the other
/// answer held, without interruption, for the configured time. A pure state machine: the
/// caller passes the time in.
#[derive(Debug, Clone)]
pub struct RoleGate {
    hysteresis: Hysteresis,
    /// Since when the decision has disagreed with the current role.
    disagreeing_since: Option<Instant>,
}

impl RoleGate {
    pub fn new(hysteresis: Hysteresis) -> Self {
        Self {
            hysteresis,
            disagreeing_since: None,
        }
    }

    /// Feeds one decision taken at `now` for a node whose role is superpeer (`is_superpeer`)
    /// or leaf; `forced` decisions (the user's `--role`) act at once.
    pub fn observe(
        &mut self,
        is_superpeer: bool,
        decision: Decision,
        forced: bool,
        now: Instant,
    ) -> RoleChange {
        let wants_superpeer = matches!(decision, Decision::Superpeer);
        if wants_superpeer == is_superpeer {
            self.disagreeing_since = None;
            return RoleChange::Stay;
        }
        let since = *self.disagreeing_since.get_or_insert(now);
        let hold = if wants_superpeer {
            self.hysteresis.promote_after
        } else {
            self.hysteresis.demote_after
        };
        if !forced && now.saturating_duration_since(since) < hold {
            return RoleChange::Stay;
        }
        self.disagreeing_since = None;
        match decision {
            Decision::Superpeer => RoleChange::Promote,
            Decision::Leaf(reason) => RoleChange::Demote(reason),
        }
    }

    /// How long until a change being held back would take effect, if one is.
    pub fn pending(&self, is_superpeer: bool, now: Instant) -> Option<Duration> {
        let since = self.disagreeing_since?;
        let hold = if is_superpeer {
            self.hysteresis.demote_after
        } else {
            self.hysteresis.promote_after
        };
        Some(hold.saturating_sub(now.saturating_duration_since(since)))
    }
}

#[cfg(test)]
mod tests;
