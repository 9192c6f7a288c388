//! The overlay scenarios: plain `natter up` on every host, as a user would run it, and
//! what the network makes of it. The nodes keep running from `promotion` to the end of the lab
//! run; each scenario starts from where the previous one left the network.
//!
//! Every wait polls `natter status` or `natter lookup` on the host itself (every 250 ms, up to
//! a minute) and fails with the last answer it saw; the times in the report are measurements,
//! never assertions.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use futures::future::join_all;
use serde_json::Value;

use crate::nodes::{Check, Net, Node, poll};
use crate::report::Report;
use crate::topology::{Network, Topology};

// Generous for what takes seconds, and together within the lab's budget.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(45);
/// For all a leaf's checks together (attached, reservations, AutoNAT's verdict).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// For the superpeers' leaf counts to agree with the leaves, once every leaf is attached.
const COUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// For every lookup of one node together, from the start of the `lookup` scenario.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(45);
/// A name nobody registered.
const NOBODY: &str = "nobody";
/// The progress line `natter up` prints when it promotes itself.
const PROMOTED_LINE: &str = "promoted to superpeer";

/// The public hosts promote themselves; every user behind NAT stays a leaf and attaches to two
/// of them:
/// - public1..3 run plain `natter up` (no role, no uptime flag): AutoNAT v2 confirms the
///   address each listens on, the new network has fewer than 3 superpeers so each promotes
///   by need within seconds, and `natter status` reads superpeer, reachability public, with
///   that address among its external addresses;
/// - then alice, bob (home NATs), carol (symmetric NAT) and dave (CGNAT + home NAT) run the
///   same command. Each attaches to two distinct superpeers (primary and standby), holds a
///   relay reservation on both (a `/p2p/<superpeer>/p2p-circuit` listen address), and reads
///   reachability private with no external address: AutoNAT probed and refused its mapping.
///   A NATed node that promotes itself fails the scenario at once;
/// - the superpeers count the leaves: two attachments per NATed user in all;
/// - at the end every public node is still a superpeer, and no NATed node ever printed that it
///   promoted itself.
pub(crate) async fn promotion(
    topo: &Topology,
    net: &mut Net,
    report: &mut Report,
) -> anyhow::Result<()> {
    ensure!(net.login.is_some(), "the login server is not running");
    let (public, nated): (Vec<_>, Vec<_>) = topo
        .hosts
        .iter()
        .partition(|h| h.network == Network::Public);

    for host in &public {
        net.start_node(host)?;
    }
    let promoted = join_all(public.iter().map(async |host| {
        let node = net.node(host.name)?;
        let found = promoted(node, host.ip()?).await;
        found.map_err(|e| anyhow!("{e:#}\n{}", node.daemon.diagnosis()))
    }))
    .await;
    let mut superpeers = Vec::new();
    for (host, found) in public.iter().zip(&promoted) {
        if let (Some(row), Ok((took, status))) = (report.row(host.name), found) {
            row.role = Some("superpeer".into());
            row.reachability = Some(text(&status["reachability"]));
            // Promotion follows AutoNAT's confirmation within one tick of the daemon.
            row.verdict = Some(*took);
            row.promoted = Some(*took);
        }
        if let Ok((_, status)) = found {
            superpeers.push((text(&status["peer_id"]), host.name));
        }
    }
    all_ok(promoted)?;

    for host in &nated {
        net.start_node(host)?;
    }
    let attached = join_all(nated.iter().map(async |host| {
        let node = net.node(host.name)?;
        let found = stays_leaf_and_attaches(node, &superpeers).await;
        found.map_err(|e| anyhow!("{e:#}\n{}", node.daemon.diagnosis()))
    }))
    .await;
    for (host, found) in nated.iter().zip(&attached) {
        let Some(row) = report.row(host.name) else {
            continue;
        };
        row.role = Some("leaf".into());
        if let Ok(leaf) = found {
            row.reachability = Some(leaf.reachability.clone());
            row.verdict = Some(leaf.verdict);
            row.attached = Some(leaf.took);
            let names: Vec<&str> = leaf
                .superpeers
                .iter()
                .map(|p| host_of(&superpeers, p))
                .collect();
            row.attached_to = Some(names.join(", "));
        }
    }
    all_ok(attached)?;

    // Every attachment is one leaf on a superpeer: two per NATed user.
    let expected = 2 * nated.len();
    let counts = poll(
        &format!("the superpeers count {expected} leaves in all"),
        COUNT_TIMEOUT,
        async || {
            let mut counts = Vec::new();
            for host in &public {
                let Ok(node) = net.node(host.name) else {
                    return Check::Fail(format!("{} is not running", host.name));
                };
                if let Some(gone) = node.gone() {
                    return gone;
                }
                match node.status().await {
                    Ok(s) => counts.push((host.name, s["leaves"].as_u64().unwrap_or(0))),
                    Err(e) => return Check::Wait(e),
                }
            }
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            if usize::try_from(total) == Ok(expected) {
                Check::Done(counts)
            } else {
                Check::Wait(format!("leaves per superpeer {counts:?}"))
            }
        },
    )
    .await
    .map_err(|e| {
        let logs: String = public
            .iter()
            .filter_map(|h| net.node(h.name).ok())
            .map(|n| n.daemon.diagnosis())
            .collect();
        anyhow!("{e:#}\n{logs}")
    })?;
    for (host, leaves) in counts {
        if let Some(row) = report.row(host) {
            row.attached_to = Some(format!("{leaves} leaves"));
        }
    }

    // Roles held: nothing promoted or demoted itself meanwhile.
    for host in &public {
        let node = net.node(host.name)?;
        let status = node.status().await.map_err(|e| anyhow!(e))?;
        ensure!(
            status["role"] == "superpeer",
            "{} is no longer a superpeer: {}",
            host.name,
            describe(&status)
        );
    }
    for host in &nated {
        let node = net.node(host.name)?;
        let status = node.status().await.map_err(|e| anyhow!(e))?;
        ensure!(
            status["role"] == "leaf" && !node.daemon.printed(|l| l.contains(PROMOTED_LINE)),
            "{} is behind NAT yet promoted itself: {}\n{}",
            host.name,
            describe(&status),
            node.daemon.diagnosis()
        );
    }
    Ok(())
}

/// Waits until `node` (public, at `ip`) is a superpeer by its own decision; returns how long
/// it took from `natter up` and its status then.
async fn promoted(node: &Node, ip: Ipv4Addr) -> anyhow::Result<(Duration, Value)> {
    let status = poll(
        &format!("{} promotes itself to superpeer", node.name),
        PROMOTE_TIMEOUT,
        async || {
            if let Some(gone) = node.gone() {
                return gone;
            }
            match node.status().await {
                Err(e) => Check::Wait(e),
                Ok(s) if s["role"] == "superpeer" && s["reachability"] == "public" => {
                    Check::Done(s)
                }
                Ok(s) => Check::Wait(describe(&s)),
            }
        },
    )
    .await?;
    let took = node.daemon.started().elapsed();
    let own = format!("/ip4/{ip}/");
    let external = strings(&status["external_addrs"]);
    ensure!(
        external.iter().any(|a| a.starts_with(&own)),
        "{} promoted itself, but AutoNAT confirmed {external:?}, not its address {ip}",
        node.name
    );
    Ok((took, status))
}

/// A NATed node once it is attached.
#[derive(Debug)]
struct Leaf {
    /// From `natter up` to two superpeers in `natter status`.
    took: Duration,
    /// Their peer ids, primary first.
    superpeers: Vec<String>,
    reachability: String,
    /// From `natter up` to AutoNAT's verdict.
    verdict: Duration,
}

/// Waits until `node` (behind NAT) is attached to two of `superpeers` (peer id, host) with a
/// relay reservation on each, and AutoNAT has found it unreachable.
async fn stays_leaf_and_attaches(
    node: &Node,
    superpeers: &[(String, &str)],
) -> anyhow::Result<Leaf> {
    let promoted_behind_nat = |s: &Value| {
        format!(
            "promoted itself to superpeer behind NAT (AutoNAT must not confirm a NAT mapping): {}",
            describe(s)
        )
    };
    let started = Instant::now();
    let remaining = || ATTACH_TIMEOUT.saturating_sub(started.elapsed());
    let attached = poll(
        &format!("{} attaches to two superpeers", node.name),
        remaining(),
        async || {
            if let Some(gone) = node.gone() {
                return gone;
            }
            let s = match node.status().await {
                Ok(s) => s,
                Err(e) => return Check::Wait(e),
            };
            if s["role"] != "leaf" {
                return Check::Fail(promoted_behind_nat(&s));
            }
            let sps = strings(&s["superpeers"]);
            let known = sps.iter().all(|p| superpeers.iter().any(|(id, _)| id == p));
            if sps.len() == 2 && sps[0] != sps[1] && known {
                Check::Done(sps)
            } else {
                Check::Wait(describe(&s))
            }
        },
    )
    .await?;
    let took = node.daemon.started().elapsed();

    poll(
        &format!(
            "{} holds a relay reservation on both its superpeers",
            node.name
        ),
        remaining(),
        async || {
            if let Some(gone) = node.gone() {
                return gone;
            }
            let s = match node.status().await {
                Ok(s) => s,
                Err(e) => return Check::Wait(e),
            };
            let listen = strings(&s["listen_addrs"]);
            let missing: Vec<&String> = attached
                .iter()
                .filter(|sp| {
                    let circuit = format!("/p2p/{sp}/p2p-circuit");
                    !listen.iter().any(|a| a.contains(&circuit))
                })
                .collect();
            if missing.is_empty() {
                Check::Done(())
            } else {
                Check::Wait(format!(
                    "no reservation on {missing:?}; listening on {listen:?}"
                ))
            }
        },
    )
    .await?;

    let reachability = poll(
        &format!("{} is found unreachable by AutoNAT", node.name),
        remaining(),
        async || {
            if let Some(gone) = node.gone() {
                return gone;
            }
            let s = match node.status().await {
                Ok(s) => s,
                Err(e) => return Check::Wait(e),
            };
            if s["role"] != "leaf" || !strings(&s["external_addrs"]).is_empty() {
                return Check::Fail(promoted_behind_nat(&s));
            }
            if s["reachability"] == "private" {
                Check::Done(text(&s["reachability"]))
            } else {
                Check::Wait(describe(&s))
            }
        },
    )
    .await?;
    Ok(Leaf {
        took,
        superpeers: attached,
        reachability,
        verdict: node.daemon.started().elapsed(),
    })
}

/// A user as the others should find it.
#[derive(Debug)]
struct Member {
    name: &'static str,
    peer_id: String,
    ip: Ipv4Addr,
    /// Its superpeers' peer ids; empty for a superpeer.
    superpeers: Vec<String>,
    public: bool,
}

/// Every user looks every other user up (public ones included) and finds them online; a name
/// nobody registered reads unknown. An online answer must also be usable for messaging:
/// - the device's peer id is the one `natter status` shows on that user's host;
/// - a public user (a superpeer) gives a direct address on its own IP;
/// - a NATed user gives no direct address, and one relay address through each of its two
///   superpeers, `/ip4/<superpeer's IP>/…/p2p/<superpeer>/p2p-circuit/p2p/<user>`.
///
/// The lookups of one node run one after the other, the nodes side by side.
pub(crate) async fn lookup(topo: &Topology, net: &Net, report: &mut Report) -> anyhow::Result<()> {
    let mut members = Vec::new();
    for node in &net.nodes {
        let host = topo.host(node.name)?;
        let status = node.status().await.map_err(|e| anyhow!(e))?;
        let public = host.network == Network::Public;
        members.push(Member {
            name: node.name,
            peer_id: text(&status["peer_id"]),
            ip: host.ip()?,
            superpeers: if public {
                Vec::new()
            } else {
                strings(&status["superpeers"])
            },
            public,
        });
    }
    ensure!(
        members.len() == topo.hosts.len(),
        "natter up runs on {} of {} hosts",
        members.len(),
        topo.hosts.len()
    );

    let started = Instant::now();
    let found = join_all(net.nodes.iter().map(async |observer| {
        let found = look_up_everyone(observer, &members, started).await;
        found.map_err(|e| anyhow!("{e:#}\n{}", observer.daemon.diagnosis()))
    }))
    .await;
    for (node, found) in net.nodes.iter().zip(&found) {
        if let (Some(row), Ok((first, all))) = (report.row(node.name), found) {
            row.first_lookup = Some(*first);
            row.all_found = Some(*all);
        }
    }
    all_ok(found)?;

    // Still leaves: AutoNAT kept probing all along.
    for node in &net.nodes {
        let public = topo.host(node.name)?.network == Network::Public;
        ensure!(
            public || !node.daemon.printed(|l| l.contains(PROMOTED_LINE)),
            "{} is behind NAT yet promoted itself\n{}",
            node.name,
            node.daemon.diagnosis()
        );
    }
    Ok(())
}

/// `observer` looks up every other member, then [`NOBODY`]; returns the time from `started` to
/// its first online answer and to its last.
async fn look_up_everyone(
    observer: &Node,
    members: &[Member],
    started: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    let mut first = None;
    for target in members.iter().filter(|m| m.name != observer.name) {
        poll(
            &format!("{} finds {} online", observer.name, target.name),
            LOOKUP_TIMEOUT.saturating_sub(started.elapsed()),
            async || {
                if let Some(gone) = observer.gone() {
                    return gone;
                }
                match observer.lookup(target.name).await {
                    Err(e) => Check::Wait(e),
                    Ok(answer) => check_found(&answer, target, members),
                }
            },
        )
        .await?;
        first.get_or_insert(started.elapsed());
    }
    let all = started.elapsed();
    poll(
        &format!(
            "{} reads {NOBODY} (never registered) as unknown",
            observer.name
        ),
        LOOKUP_TIMEOUT.saturating_sub(started.elapsed()),
        async || {
            if let Some(gone) = observer.gone() {
                return gone;
            }
            match observer.lookup(NOBODY).await {
                Err(e) => Check::Wait(e),
                Ok(v) if v["status"] == "unknown" => Check::Done(()),
                Ok(v) => Check::Fail(format!("reads {}", compact(&v))),
            }
        },
    )
    .await?;
    Ok((first.unwrap_or(all), all))
}

/// Whether a lookup answer shows `target` online and reachable as the scenario requires.
fn check_found(answer: &Value, target: &Member, members: &[Member]) -> Check<()> {
    if answer["status"] != "online" {
        return Check::Wait(compact(answer));
    }
    if answer["peer_id"] != target.peer_id.as_str() {
        return Check::Fail(format!(
            "online, but as device {} instead of {}: {}",
            answer["peer_id"],
            target.peer_id,
            compact(answer)
        ));
    }
    let direct = strings(&answer["direct_addrs"]);
    let relays = strings(&answer["superpeers"]);
    if target.public {
        let own = format!("/ip4/{}/", target.ip);
        let me = format!("/p2p/{}", target.peer_id);
        if direct
            .iter()
            .any(|a| a.starts_with(&own) && a.ends_with(&me))
        {
            return Check::Done(());
        }
        return Check::Wait(format!(
            "online, but no direct address {own}…{me}: {}",
            compact(answer)
        ));
    }
    if !direct.is_empty() {
        return Check::Fail(format!(
            "a user behind NAT advertises direct addresses: {}",
            compact(answer)
        ));
    }
    let circuit_end = format!("/p2p-circuit/p2p/{}", target.peer_id);
    let wrong: Vec<&String> = relays
        .iter()
        .filter(|a| {
            !a.ends_with(&circuit_end)
                || !members.iter().any(|sp| {
                    sp.public
                        && a.starts_with(&format!("/ip4/{}/", sp.ip))
                        && a.contains(&format!("/p2p/{}/p2p-circuit", sp.peer_id))
                })
        })
        .collect();
    let through = |sp: &String| {
        relays
            .iter()
            .any(|a| a.contains(&format!("/p2p/{sp}/p2p-circuit")))
    };
    if wrong.is_empty() && target.superpeers.iter().all(through) {
        Check::Done(())
    } else {
        Check::Wait(format!(
            "online, but the relay addresses are not one through each of its superpeers \
             {:?} at their public addresses (wrong: {wrong:?}): {}",
            target.superpeers,
            compact(answer)
        ))
    }
}

/// One error listing every failure, or every result.
pub(crate) fn all_ok<T>(results: Vec<anyhow::Result<T>>) -> anyhow::Result<Vec<T>> {
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(v) => found.push(v),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if failed.is_empty() {
        Ok(found)
    } else {
        Err(anyhow!(failed.join("\n\n")))
    }
}

fn host_of<'a>(superpeers: &[(String, &'a str)], peer: &str) -> &'a str {
    superpeers
        .iter()
        .find(|(id, _)| id == peer)
        .map_or("?", |(_, host)| host)
}

/// The fields of `natter status` a failure report needs, on one line.
pub(crate) fn describe(status: &Value) -> String {
    format!(
        "role {} ({}), reachability {}, external {}, superpeers {}, listening on {}",
        text(&status["role"]),
        text(&status["role_reason"]),
        text(&status["reachability"]),
        status["external_addrs"],
        status["superpeers"],
        status["listen_addrs"]
    )
}

pub(crate) fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub(crate) fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
