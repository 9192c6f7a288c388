//! What the lab prints: libtest-style lines per scenario, a table of the hosts (network, how
//! the internet sees them, how long registration and login took), a table of the overlay
//! (each node's role, how long it took to promote or to attach, how long until its lookups
//! found the others, how its first message went), a table of the paths between users (hole
//! punching per pair of NATs, from the daemons' logs), the measurements of the fault scenarios,
//! and the closing count.

use std::net::SocketAddr;
use std::time::Duration;

use crate::topology::Topology;

/// One host's line in the table.
#[derive(Debug)]
pub(crate) struct Row {
    host: &'static str,
    network: &'static str,
    address: String,
    /// The host's UDP mapping as public1 and public2 see it.
    pub(crate) seen: Option<[SocketAddr; 2]>,
    pub(crate) register: Option<Duration>,
    pub(crate) login: Option<Duration>,
    /// `natter status`: "superpeer" or "leaf", and "public", "private" or "unknown".
    pub(crate) role: Option<String>,
    pub(crate) reachability: Option<String>,
    /// From `natter up` to `natter status` reading reachability public or private (AutoNAT's
    /// verdict).
    pub(crate) verdict: Option<Duration>,
    /// From `natter up` to `natter status` reading superpeer.
    pub(crate) promoted: Option<Duration>,
    /// From `natter up` to `natter status` listing two superpeers.
    pub(crate) attached: Option<Duration>,
    /// Leaves: the hosts of their superpeers, primary first; superpeers: how many leaves.
    pub(crate) attached_to: Option<String>,
    /// From the start of the lookups to this node's first lookup reading online.
    pub(crate) first_lookup: Option<Duration>,
    /// From the start of the lookups to this node having read every other user online.
    pub(crate) all_found: Option<Duration>,
    /// This user's first `natter send` (a first contact): how long it took and how it went
    /// ("relayed", "direct" or "queued").
    pub(crate) first_message: Option<(Duration, String)>,
}

impl Row {
    fn new(host: &'static str, network: &'static str, address: String) -> Self {
        Self {
            host,
            network,
            address,
            seen: None,
            register: None,
            login: None,
            role: None,
            reachability: None,
            verdict: None,
            promoted: None,
            attached: None,
            attached_to: None,
            first_lookup: None,
            all_found: None,
            first_message: None,
        }
    }
}

/// One pair of users in the table of paths.
#[derive(Debug)]
pub(crate) struct PairLine {
    /// "alice–bob".
    pub(crate) pair: String,
    /// "home NAT ↔ symmetric NAT".
    pub(crate) networks: String,
    /// From the pair's first message to the first successful hole punch between them.
    pub(crate) to_direct: Option<Duration>,
    /// Upgrades DCUtR attempted between them, and how many went direct.
    pub(crate) attempts: u32,
    pub(crate) successes: u32,
    /// The raw counts, per end: "alice 1 ok 0 failed, bob 1 ok 0 failed".
    pub(crate) logged: String,
}

/// A measurement of a scenario that has no column: what, and how much.
#[derive(Debug)]
struct Note {
    scenario: &'static str,
    what: String,
    value: String,
}

/// Everything measured in one run of the lab.
#[derive(Debug)]
pub(crate) struct Report {
    rows: Vec<Row>,
    pairs: Vec<PairLine>,
    notes: Vec<Note>,
}

impl Report {
    pub(crate) fn new(topo: &Topology) -> Self {
        let address = |d: &patchbay::Device| d.ip().map(|ip| ip.to_string()).unwrap_or_default();
        let mut rows = vec![Row::new(
            "login",
            "public (natter-login)",
            address(&topo.login),
        )];
        rows.extend(
            topo.hosts
                .iter()
                .map(|h| Row::new(h.name, h.network.describe(), address(&h.device))),
        );
        Self {
            rows,
            pairs: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a measurement for the table of notes.
    pub(crate) fn note(
        &mut self,
        scenario: &'static str,
        what: impl Into<String>,
        value: impl Into<String>,
    ) {
        self.notes.push(Note {
            scenario,
            what: what.into(),
            value: value.into(),
        });
    }

    /// The table of paths, computed at the end of the run (from the daemons' logs).
    pub(crate) fn set_pairs(&mut self, pairs: Vec<PairLine>) {
        self.pairs = pairs;
    }

    pub(crate) fn row(&mut self, host: &str) -> Option<&mut Row> {
        self.rows.iter_mut().find(|r| r.host == host)
    }

    pub(crate) fn print(&self) {
        println!();
        println!(
            "{:<8} {:<34} {:<13} {:<32} {:>14} {:>12}",
            "host",
            "network",
            "address",
            "UDP mapping seen by public1 | 2",
            "register tcp",
            "login quic"
        );
        for r in &self.rows {
            let seen = match r.seen {
                None => "-".to_owned(),
                Some([a, b]) if a == b => a.to_string(),
                Some([a, b]) if a.ip() == b.ip() => format!("{a} | :{}", b.port()),
                Some([a, b]) => format!("{a} | {b}"),
            };
            println!(
                "{:<8} {:<34} {:<13} {:<32} {:>14} {:>12}",
                r.host,
                r.network,
                r.address,
                seen,
                secs(r.register),
                secs(r.login)
            );
        }
        println!();
        if self.rows.iter().any(|r| r.role.is_some()) {
            self.print_overlay();
        }
        if !self.pairs.is_empty() {
            self.print_pairs();
        }
        if !self.notes.is_empty() {
            self.print_notes();
        }
    }

    /// Hole punching between users, from the `hole punch` lines of the daemons' logs. A
    /// successful upgrade is logged by both ends; a failed one (after DCUtR's three rounds) by
    /// the end that was dialled through the relay.
    fn print_pairs(&self) {
        println!(
            "{:<14} {:<34} {:>14} {:>8} {:>7}  as logged by each end (ok/failed)",
            "users", "networks", "msg → direct", "punches", "direct",
        );
        for p in &self.pairs {
            println!(
                "{:<14} {:<34} {:>14} {:>8} {:>7}  {}",
                p.pair,
                p.networks,
                secs(p.to_direct),
                p.attempts,
                p.successes,
                p.logged
            );
        }
        println!();
    }

    fn print_notes(&self) {
        let width = self
            .notes
            .iter()
            .map(|n| n.what.chars().count())
            .max()
            .unwrap_or(0);
        println!("{:<15} {:<width$}  value", "scenario", "measured");
        for n in &self.notes {
            println!("{:<15} {:<width$}  {}", n.scenario, n.what, n.value);
        }
        println!();
    }

    /// The overlay: times are measured by polling `natter status` and `natter lookup` every
    /// 250 ms, so they are accurate to about a third of a second.
    fn print_overlay(&self) {
        println!(
            "{:<8} {:<10} {:<12} {:>8} {:>9} {:>11}  {:<18} {:>12} {:>11}  {:<24}",
            "node",
            "role",
            "reachable",
            "AutoNAT",
            "promoted",
            "attached 2",
            "superpeers",
            "first lookup",
            "all online",
            "first message"
        );
        for r in self.rows.iter().filter(|r| r.role.is_some()) {
            let first_message = r.first_message.as_ref().map_or_else(
                || "-".into(),
                |(d, how)| format!("{} {how}", secs(Some(*d))),
            );
            println!(
                "{:<8} {:<10} {:<12} {:>8} {:>9} {:>11}  {:<18} {:>12} {:>11}  {:<24}",
                r.host,
                r.role.as_deref().unwrap_or("-"),
                r.reachability.as_deref().unwrap_or("-"),
                secs(r.verdict),
                secs(r.promoted),
                secs(r.attached),
                r.attached_to.as_deref().unwrap_or("-"),
                secs(r.first_lookup),
                secs(r.all_found),
                first_message
            );
        }
        println!();
    }
}

pub(crate) fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}s", d.as_secs_f64()))
}

/// How one scenario (or the whole lab) ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Passed(Duration),
    Failed(anyhow::Error),
    Skipped(String),
}

/// The libtest line for one test, printed as it ends; a failure's cause goes to stderr.
pub(crate) fn test_line(name: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Passed(d) => println!("test {name} ... ok ({:.2}s)", d.as_secs_f64()),
        Outcome::Skipped(reason) => println!("test {name} ... ignored, {reason}"),
        Outcome::Failed(e) => {
            println!("test {name} ... FAILED");
            eprintln!("---- {name} ----\n{e:#}\n");
        }
    }
}

/// Counts of a run, closed by the plain `N passed, N failed, N skipped` line.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) passed: usize,
    pub(crate) failed: usize,
    pub(crate) skipped: usize,
}

impl Tally {
    pub(crate) fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Passed(_) => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Skipped(_) => self.skipped += 1,
        }
    }

    pub(crate) fn close(&self, elapsed: Duration) {
        println!();
        println!(
            "natlab finished in {:.1}s: {}",
            elapsed.as_secs_f64(),
            if self.failed == 0 { "ok" } else { "FAILED" }
        );
        println!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
    }
}
