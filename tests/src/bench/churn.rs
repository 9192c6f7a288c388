//! The `churn` suite: a third of the superpeers die at once (`SIGKILL`) under a network of
//! real daemons; how long until every leaf is attached to two live superpeers again and every
//! user is findable again, and whether a message sent during the churn is lost or delivered
//! twice.
//!
//! The network (real binaries on loopback): the login server (in this process), S superpeers
//! `sp00…`, L leaves `cl000…` each attached to a primary and a standby. Leaf i sends to leaf
//! i+1 (which took i as a contact) and looks it up. The floor: one more leaf joining the settled
//! network, from `natter up` to attached to two superpeers and findable.
//!
//! On loopback a killed process's sockets are closed by the kernel at once, so the leaves learn
//! of the loss immediately; across a real network a dead machine is noticed only when a request
//! or a keep-alive times out. The figures are the recovery after the loss is known.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::net::{Cluster, Daemon, Listen};
use super::{How, Mode, Report, progress};

mod census;
mod messages;

use census::recover;
use messages::{drained, send_during, send_round, tally};

/// The longest wait for the network to recover; past it the leaves still out are counted.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);

/// How many control requests the census has in flight at once.
const CONCURRENCY: usize = 16;

/// The shape of a run: superpeers, leaves, superpeers killed, seconds of sending.
#[derive(Debug, Clone, Copy)]
struct Shape {
    superpeers: usize,
    leaves: usize,
    killed: usize,
    send_secs: u32,
}

/// Runs the suite on its own runtime.
pub fn run(mode: Mode) -> anyhow::Result<Report> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(suite(mode))
}

/// `NATTER_BENCH_CHURN=S,L,K` (superpeers, leaves, killed) or the mode's shape.
fn shape(mode: Mode) -> anyhow::Result<Shape> {
    let (superpeers, leaves, killed) = match std::env::var("NATTER_BENCH_CHURN") {
        Ok(spec) => {
            let n: Vec<usize> = spec
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("NATTER_BENCH_CHURN={spec:?}: {e}"))?;
            match n[..] {
                [s, l, k] if k < s && s >= 3 && l >= 2 => (s, l, k),
                _ => anyhow::bail!(
                    "NATTER_BENCH_CHURN={spec:?}: want SUPERPEERS,LEAVES,KILLED with at \
                     least 3 superpeers, 2 leaves and fewer killed than superpeers"
                ),
            }
        }
        Err(_) => mode.pick((4, 8, 1), (12, 60, 4), (30, 300, 10)),
    };
    Ok(Shape {
        superpeers,
        leaves,
        killed,
        send_secs: match std::env::var("NATTER_BENCH_CHURN_SEND") {
            Ok(secs) => secs
                .parse()
                .map_err(|e| anyhow::anyhow!("NATTER_BENCH_CHURN_SEND={secs:?}: {e}"))?,
            Err(_) => mode.pick(2, 5, 10),
        },
    })
}

async fn suite(mode: Mode) -> anyhow::Result<Report> {
    let mut r = Report::default();
    let shape = shape(mode)?;
    let Shape {
        superpeers: s,
        leaves: l,
        killed: k,
        ..
    } = shape;
    progress(&format!("churn: starting {s} superpeers"));
    let cluster = Cluster::start().await?;
    let mut sps = cluster.superpeers("sp", s, Listen::Tcp4).await?;
    progress(&format!("churn: starting {l} leaves"));
    let names: Vec<String> = (0..l).map(|i| format!("cl{i:03}")).collect();
    let leaves: Vec<Daemon> = futures::stream::iter(names.iter())
        .map(|name| cluster.daemon(name, "leaf", Listen::Tcp4))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    progress("churn: waiting for every leaf to hold two superpeers and be findable");
    let none = HashSet::new();
    let everyone = vec![(true, true); l];
    let settled = recover(
        &leaves,
        &names,
        &none,
        0,
        &everyone,
        Duration::from_secs(300),
    )
    .await;
    if settled.unrecovered() > 0 {
        anyhow::bail!(
            "the network never settled: {} leaf(s) without two superpeers, {} user(s) not \
             findable",
            settled.unattached,
            settled.unfindable
        );
    }
    for (i, leaf) in leaves.iter().enumerate() {
        leaf.accept(&[names[(i + l - 1) % l].as_str()]).await?;
    }
    // Users who chat are connected already: each leaf's first message (a lookup, a relayed
    // connection, hole punching) is sent before the kill, so that the churn's cost is the
    // churn's.
    let warm = send_round(&leaves, &names, "warm-up").await;
    if warm.iter().any(|(_, _, ok)| !ok) {
        anyhow::bail!("a warm-up message was not accepted");
    }
    drained(&leaves, "every warm-up message delivered").await?;
    floor(&mut r, &cluster, &leaves).await?;
    at_rest(
        &mut r,
        &sps,
        &leaves,
        Duration::from_secs(mode.pick(2, 10, 20)),
    )
    .await;

    // The victims: the first leaf's primary (so that some leaf loses its primary however
    // few there are), then evenly spread over the start order, so that early and late
    // superpeers both go.
    let mut ids = Vec::with_capacity(s);
    for sp in &sps {
        ids.push(sp.status().await?.peer_id);
    }
    let first = leaves[0].status().await?.primary;
    let mut victims: Vec<usize> = ids
        .iter()
        .position(|p| Some(p) == first.as_ref())
        .into_iter()
        .collect();
    let step = s / k.max(1);
    for v in (0..s).step_by(step.max(1)) {
        if !victims.contains(&v) {
            victims.push(v);
        }
    }
    victims.truncate(k);
    victims.sort_unstable();
    let killed: HashSet<String> = victims.iter().map(|&v| ids[v].clone()).collect();
    // What each leaf loses: its primary (then its record must move to a new home) or its
    // standby; the others keep both superpeers and their record's home.
    let mut hit = Vec::with_capacity(l);
    for leaf in &leaves {
        let st = leaf.status().await?;
        let primary = st.primary.as_ref().is_some_and(|p| killed.contains(p));
        let standby = st.standby.as_ref().is_some_and(|p| killed.contains(p));
        hit.push((primary || standby, primary));
    }
    let lost_primary = hit.iter().filter(|h| h.1).count();
    let lost_standby = hit.iter().filter(|h| h.0 && !h.1).count();
    progress(&format!(
        "churn: killing {k} of {s} superpeers ({lost_primary} leaves lose their primary, \
         {lost_standby} their standby) while every leaf sends for {} s",
        shape.send_secs
    ));
    let killed_ms = unix_ms();
    for &v in &victims {
        sps[v].kill();
    }
    let (recovery, sent) = tokio::join!(
        recover(&leaves, &names, &killed, killed_ms, &hit, RECOVERY_DEADLINE),
        send_during(&leaves, &names, shape.send_secs),
    );
    // The dead are reaped only now: the kills above were all sent within microseconds.
    for v in victims.into_iter().rev() {
        drop(sps.remove(v));
    }
    let sent = sent?;
    // Then everyone, the leaves that lost nothing too: all on two live superpeers, all
    // findable at a live home.
    progress("churn: checking every leaf and user after the recovery");
    let after = recover(
        &leaves,
        &names,
        &killed,
        killed_ms,
        &everyone,
        Duration::ZERO,
    )
    .await;

    progress("churn: waiting for every outbox to drain");
    let drained = drained(&leaves, "every outbox empty").await;
    let tally = tally(&leaves, &names, &sent)?;

    let scene = format!("{k} of {s} superpeers killed, {l} leaves");
    r.add(
        "churn.lost_primary",
        &format!("leaves whose primary was killed ({scene})"),
        lost_primary as f64,
        "leaves",
        l as u64,
        How::RealBinaries,
    );
    r.add(
        "churn.lost_standby",
        "leaves whose standby (only) was killed",
        lost_standby as f64,
        "leaves",
        l as u64,
        How::RealBinaries,
    );
    let lost_any = (lost_primary + lost_standby) as u64;
    let mut time = |id: &str, figure: &str, t: Option<Duration>, n: u64| match t {
        Some(t) => {
            r.add(id, figure, t.as_secs_f64(), "s", n, How::RealBinaries);
            r.floor(id, "churn.floor.join");
        }
        None => r.not_measured(
            figure,
            &format!(
                "{} leaf(s) not on two superpeers, {} user(s) not findable after {} s",
                recovery.unattached,
                recovery.unfindable,
                RECOVERY_DEADLINE.as_secs()
            ),
        ),
    };
    time(
        "churn.attached",
        "leaves that lost a superpeer: the last on two live ones again (leaves' clocks)",
        recovery.attached_after,
        lost_any,
    );
    time(
        "churn.rehomed",
        "users whose home died: the last record held by a new home (leaves' clocks)",
        recovery.rehomed_after,
        lost_primary as u64,
    );
    time(
        "churn.findable",
        "those users: the last read online at a live home by a lookup (census)",
        recovery.findable_after,
        lost_primary as u64,
    );
    time(
        "churn.attached.p50",
        "leaves that lost a superpeer: the median (leaves' clocks)",
        recovery.attached_median,
        lost_any,
    );
    time(
        "churn.rehomed.p50",
        "users whose home died: the median (leaves' clocks)",
        recovery.rehomed_median,
        lost_primary as u64,
    );
    time(
        "churn.findable.p50",
        "those users: the median read online again (census)",
        recovery.findable_median,
        lost_primary as u64,
    );
    r.target(
        "churn.findable",
        "everyone findable again within 10 s",
        |v, _| v <= 10.0,
    );
    r.add(
        "churn.resolution",
        "longest census round (statuses, then lookups): findability is seen up to this late",
        recovery.resolution.as_secs_f64(),
        "s",
        recovery.rounds,
        How::RealBinaries,
    );
    r.add(
        "churn.unrecovered",
        "then, of all leaves: not on two live superpeers, or not findable",
        after.unrecovered() as f64,
        "leaves",
        l as u64,
        How::RealBinaries,
    );
    r.target("churn.unrecovered", "0", |v, _| v == 0.0);
    let accepted = sent.accepted.len() as u64;
    let queued = format!(
        "accepted messages still queued when the outboxes were given up on ({} s)",
        RECOVERY_DEADLINE.as_secs()
    );
    let sent_during = format!("messages sent during the churn ({} s)", shape.send_secs);
    // (id, figure, count, out of, target: none of them)
    let counts: [(&str, &str, u64, u64, bool); 5] = [
        ("churn.msgs.sent", &sent_during, accepted, accepted, false),
        (
            "churn.msgs.failures",
            "sends refused or failed (not accepted by the sender's daemon)",
            sent.failures,
            sent.failures + accepted,
            false,
        ),
        (
            "churn.msgs.lost",
            "accepted messages neither delivered nor still queued",
            tally.lost,
            accepted,
            true,
        ),
        (
            "churn.msgs.duplicated",
            "messages delivered more than once",
            tally.duplicated,
            accepted,
            true,
        ),
        ("churn.msgs.queued", &queued, tally.queued, accepted, false),
    ];
    for (id, figure, count, of, none) in counts {
        r.add(id, figure, count as f64, "msgs", of, How::RealBinaries);
        if none {
            r.target(id, "0", |v, _| v == 0.0);
        }
    }
    if let Err(e) = drained {
        r.note("churn.msgs.queued", &format!("{e:#}"));
    }
    drop(leaves);
    drop(sps);
    cluster.login.stop().await;
    Ok(r)
}

/// The floor: one more leaf joins the settled network; from `natter up` until it holds two
/// superpeers and its sender-to-be finds it online.
async fn floor(r: &mut Report, cluster: &Cluster, leaves: &[Daemon]) -> anyhow::Result<()> {
    let home = cluster.register("clnew").await?;
    let start = Instant::now();
    let newcomer = Daemon::spawn("clnew", &home, "leaf", Listen::Tcp4, &[])?;
    newcomer
        .wait_attached(true, Duration::from_secs(60))
        .await?;
    let finder = leaves
        .first()
        .ok_or_else(|| anyhow::anyhow!("no leaf to look the newcomer up"))?;
    super::net::wait("the newcomer findable", Duration::from_secs(60), || async {
        finder
            .lookup("clnew")
            .await
            .ok()
            .filter(|v| v.status == "online")
    })
    .await?;
    r.add(
        "churn.floor.join",
        "floor: one leaf joining, start to on two superpeers and findable",
        start.elapsed().as_secs_f64(),
        "s",
        1,
        How::RealBinaries,
    );
    Ok(())
}

/// What the network costs its machine at rest: the mean CPU of a leaf and of a superpeer over
/// `window`, with nothing asked of them.
async fn at_rest(r: &mut Report, sps: &[Daemon], leaves: &[Daemon], window: Duration) {
    let cpu = |ds: &[Daemon]| -> Duration { ds.iter().filter_map(Daemon::cpu).sum() };
    let before = [cpu(leaves), cpu(sps)];
    tokio::time::sleep(window).await;
    for (i, (id, what, group)) in [
        ("leaf_cpu", "a leaf's", leaves),
        ("superpeer_cpu", "a superpeer's", sps),
    ]
    .into_iter()
    .enumerate()
    {
        let used = cpu(group).saturating_sub(before[i]);
        let n = group.len().max(1);
        r.add(
            &format!("churn.rest.{id}"),
            &format!("{what} CPU at rest, mean of {n}"),
            100.0 * used.as_secs_f64() / window.as_secs_f64() / n as f64,
            "% core",
            n as u64,
            How::RealBinaries,
        );
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
