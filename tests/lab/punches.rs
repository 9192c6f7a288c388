//! Hole punching as the daemons saw it. Every `natter up` logs each DCUtR outcome at info:
//!
//! ```text
//! 2026-11-21T10:19:02.024025Z  INFO natter_node::daemon: hole punch peer=12D3Koo… result=Ok(ConnectionId(7))
//! 2026-11-21T10:19:05.113700Z  INFO natter_node::daemon: hole punch peer=12D3Koo… result=Err(Error { inner: AttemptsExceeded(3) })
//! ```
//!
//! A successful upgrade is logged by both ends (each one's dial yields the direct connection);
//! a failed one only by the end that was dialled through the relay, which is the end that
//! retries (three rounds) and gives up. So, per pair of users, the upgrades attempted are the
//! successes (the larger of the two ends' counts) plus every failure either end logged.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::nodes::Net;
use crate::report::PairLine;
use crate::topology::{Network, Topology};

/// One `hole punch` line.
#[derive(Debug, Clone)]
pub(crate) struct Punch {
    pub(crate) at: SystemTime,
    /// The user whose daemon logged it.
    pub(crate) by: &'static str,
    /// The user at the other end.
    pub(crate) peer: &'static str,
    pub(crate) ok: bool,
}

/// Every hole-punch outcome in the logs of every `natter up` started so far (killed ones
/// included), whose peer is a user of the lab.
pub(crate) fn read(net: &Net) -> Vec<Punch> {
    let mut punches = Vec::new();
    for (by, log) in &net.logs {
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        for (at, peer, ok) in text.lines().filter_map(parse_line) {
            if let Some(peer) = net.name_of(peer) {
                punches.push(Punch { at, by, peer, ok });
            }
        }
    }
    punches.sort_by_key(|p| p.at);
    punches
}

/// The outcomes between `a` and `b`, logged by either.
pub(crate) fn between<'p>(punches: &'p [Punch], a: &str, b: &str) -> Vec<&'p Punch> {
    punches
        .iter()
        .filter(|p| (p.by == a && p.peer == b) || (p.by == b && p.peer == a))
        .collect()
}

/// The lines of the table of paths: every pair of users behind NAT, and every other pair with
/// a hole punch in the logs. "msg → direct" runs from the pair's first message (either way) to
/// its first successful punch.
pub(crate) fn pairs(topo: &Topology, net: &Net) -> Vec<PairLine> {
    let punches = read(net);
    let letters = net.letters();
    let network = |user: &str| {
        topo.host(user)
            .map(|h| h.network)
            .unwrap_or(Network::Public)
    };
    let mut pairs: BTreeMap<(usize, usize), (&'static str, &'static str)> = BTreeMap::new();
    let index = |user: &str| topo.hosts.iter().position(|h| h.name == user);
    let mut add = |a: &'static str, b: &'static str| {
        if let (Some(i), Some(j)) = (index(a), index(b))
            && i != j
        {
            let key = (i.min(j), i.max(j));
            let names = if i < j { (a, b) } else { (b, a) };
            pairs.entry(key).or_insert(names);
        }
    };
    for a in &topo.hosts {
        for b in &topo.hosts {
            if a.network != Network::Public && b.network != Network::Public {
                add(a.name, b.name);
            }
        }
    }
    for p in &punches {
        add(p.by, p.peer);
    }

    pairs
        .into_values()
        .map(|(a, b)| {
            let these = between(&punches, a, b);
            let count = |by: &str, ok: bool| {
                let n = these.iter().filter(|p| p.by == by && p.ok == ok).count();
                u32::try_from(n).unwrap_or(u32::MAX)
            };
            let (ok_a, err_a, ok_b, err_b) = (
                count(a, true),
                count(a, false),
                count(b, true),
                count(b, false),
            );
            let successes = ok_a.max(ok_b);
            let first_contact = letters
                .iter()
                .filter(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
                .map(|l| l.at)
                .min();
            let first_ok = these.iter().find(|p| p.ok).map(|p| p.at);
            let to_direct = match (first_contact, first_ok) {
                (Some(from), Some(to)) => to.duration_since(from).ok(),
                _ => None,
            };
            PairLine {
                pair: format!("{a}–{b}"),
                networks: format!("{} ↔ {}", short(network(a)), short(network(b))),
                to_direct,
                attempts: successes.saturating_add(err_a).saturating_add(err_b),
                successes,
                logged: format!("{a} {ok_a}/{err_a}, {b} {ok_b}/{err_b}"),
            }
        })
        .collect()
}

/// The network of a user, shortly.
fn short(network: Network) -> &'static str {
    match network {
        Network::Public => "public",
        Network::HomeNat => "home NAT",
        Network::SymmetricNat => "symmetric NAT",
        Network::CgnatAndHomeNat => "CGNAT + home NAT",
    }
}

/// The time, peer id and outcome of a `hole punch` log line.
fn parse_line(line: &str) -> Option<(SystemTime, &str, bool)> {
    if !line.contains(" hole punch ") {
        return None;
    }
    let at = parse_utc(line.split_whitespace().next()?)?;
    let peer = line.split(" peer=").nth(1)?.split_whitespace().next()?;
    let result = line.split(" result=").nth(1)?;
    let ok = if result.starts_with("Ok(") {
        true
    } else if result.starts_with("Err(") {
        false
    } else {
        return None;
    };
    Some((at, peer, ok))
}

/// `2026-11-21T10:19:00.929385Z` (tracing-subscriber's timestamps) as a [`SystemTime`].
fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (hms.next()??, hms.next()??, hms.next()??);
    let digits = fraction.len().min(9);
    let nanos: u32 = fraction.get(..digits)?.parse().ok()?;
    let nanos = nanos * 10u32.pow(u32::try_from(9 - digits).ok()?);
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
