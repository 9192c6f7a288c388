//! What one real superpeer carries: thousands of simulated leaves ([`super::leafsim`])
//! attached to one `natter up` process, grown in steps. At each size: the attach rate, the
//! superpeer's resident memory per leaf, its CPU at rest (leaves publishing, polling and
//! pinging on their normal schedule), the relay reservations held, and lookups from the
//! leaves through it.

use std::time::{Duration, Instant};

use anyhow::Context as _;

mod floor;

pub use floor::listener as floor_listener;

use super::leafsim::{self, Counters, Fleet};
use super::net::{Cluster, Listen};
use super::{How, Latencies, Mode, Report, progress};

/// Adds the carry figures for each size of `mode` to `r`.
pub async fn run(r: &mut Report, mode: Mode, cluster: &Cluster) -> anyhow::Result<()> {
    let sizes = sizes(mode)?;
    let largest = sizes.last().copied().unwrap_or(0);
    raise_fd_limit(largest)?;
    let floors = measure_floor(r, mode, &sizes).await?;
    let max_leaves = (largest + 100).to_string();
    let hub = cluster
        .daemon_with(
            "carrier",
            "superpeer",
            Listen::Tcp4,
            &["--max-leaves", &max_leaves],
        )
        .await?;
    hub.wait_role("superpeer", Duration::from_secs(30)).await?;
    let status = hub.status().await?;
    let peer: libp2p::PeerId = status.peer_id.parse()?;
    let addr: libp2p::Multiaddr = status
        .listen_addrs
        .iter()
        .find_map(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the superpeer listens nowhere"))?;

    progress(&format!("carry: registering {largest} simulated leaves"));
    let started = Instant::now();
    let names = (0..largest).map(|i| format!("sim{i:05}")).collect();
    let mut accounts = leafsim::register(&cluster.login.addr, names, 8).await?;
    progress(&format!(
        "carry: {largest} accounts in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    // Settled, with no leaf: the baseline.
    tokio::time::sleep(Duration::from_secs(mode.pick(1, 3, 5))).await;
    let base_rss = hub
        .rss_kib()
        .ok_or_else(|| anyhow::anyhow!("cannot read the superpeer's RSS"))?;
    let window = mode.pick(
        Duration::from_secs(2),
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let base_cpu = cpu_share(hub.pid(), window).await?;
    r.add(
        "carry.0.cpu",
        "carrying superpeer at rest, no leaf: CPU",
        base_cpu,
        "% core",
        0,
        How::RealBinaries,
    );

    let mut fleet = Fleet::new();
    for &size in &sizes {
        let add = size - fleet.len();
        progress(&format!("carry: {size} leaves on one superpeer"));
        let rest = accounts.split_off(add.min(accounts.len()));
        let start = Instant::now();
        fleet.start(std::mem::replace(&mut accounts, rest), peer, &addr)?;
        let counters = fleet.counters.clone();
        super::net::wait(
            &format!("{size} simulated leaves attached and published"),
            Duration::from_secs(60 + size as u64 / 20),
            || async { (Counters::get(&counters.published) >= size as u64).then_some(()) },
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: {} attached, {} reserved, {} published, {} failures; superpeer log:\n{}",
                Counters::get(&counters.attached),
                Counters::get(&counters.reserved),
                Counters::get(&counters.published),
                Counters::get(&counters.failures),
                hub.log_tail()
            )
        })?;
        let attach_s = start.elapsed().as_secs_f64();
        let id = |what: &str| format!("carry.{size}.{what}");
        r.add(
            &id("attach"),
            &format!("{size} leaves: attach+reserve+publish rate ({add} new)"),
            add as f64 / attach_s,
            "leaves/s",
            add as u64,
            How::RealBinaries,
        );
        super::net::wait(
            "the superpeer counting every leaf",
            Duration::from_secs(30),
            || async {
                hub.status()
                    .await
                    .ok()
                    .filter(|s| s.leaves >= size)
                    .map(|_| ())
            },
        )
        .await?;
        // Past the first republication of the newest leaves, then at rest.
        tokio::time::sleep(Duration::from_secs(mode.pick(1, 5, 10))).await;
        let cpu = cpu_share(hub.pid(), window).await?;
        let rss = hub
            .rss_kib()
            .ok_or_else(|| anyhow::anyhow!("cannot read the superpeer's RSS"))?;
        let cpu_id = r.add(
            &id("cpu"),
            &format!("{size} leaves: superpeer CPU at rest"),
            cpu,
            "% core",
            0,
            How::RealBinaries,
        );
        r.note(
            &cpu_id,
            &format!(
                "over {} s; each leaf publishes every 30 s, polls revocations every 60 s, \
                 pings every {} s (and is pinged as often)",
                window.as_secs(),
                natter_net::PING_INTERVAL.as_secs()
            ),
        );
        r.add(
            &id("rss"),
            &format!("{size} leaves: superpeer RSS"),
            rss as f64 / 1024.0,
            "MiB",
            1,
            How::RealBinaries,
        );
        let per_leaf = r.add(
            &id("per_leaf"),
            &format!("{size} leaves: superpeer memory per leaf (RSS delta / leaves)"),
            rss.saturating_sub(base_rss) as f64 / size as f64,
            "KiB",
            size as u64,
            How::RealBinaries,
        );
        r.note(
            &per_leaf,
            &format!("RSS {base_rss} KiB with no leaf, {rss} KiB with {size}"),
        );
        if floors.contains(&size) {
            r.floor(&per_leaf, &format!("carry.{size}.floor_per_leaf"));
        }
        r.add(
            &id("reserved"),
            &format!("{size} leaves: relay reservations held"),
            Counters::get(&counters.reserved) as f64,
            "resv",
            size as u64,
            How::RealBinaries,
        );
        r.add(
            &id("failures"),
            &format!("{size} leaves: requests failed or refused, connections lost (so far)"),
            Counters::get(&counters.failures) as f64,
            "events",
            0,
            How::RealBinaries,
        );
        let lookups = lookups(&fleet, mode.pick(20, 500, 2_000)).await?;
        r.latency(
            &id("lookup"),
            &format!("{size} leaves: lookup of another leaf through the superpeer"),
            &lookups,
            How::RealBinaries,
            None,
        );
    }
    Ok(())
}

/// The sizes to measure, growing: `NATTER_BENCH_CARRY` (comma-separated) or the mode's.
fn sizes(mode: Mode) -> anyhow::Result<Vec<usize>> {
    super::sizes_from_env(
        "NATTER_BENCH_CARRY",
        mode.pick(
            vec![10, 30],
            vec![300, 1_000, 2_000],
            vec![1_000, 3_000, 10_000],
        ),
    )
}

/// The floor at each size: a bare libp2p swarm in its own process with as many connections
/// (see [`floor`]). Returns the sizes measured.
async fn measure_floor(r: &mut Report, mode: Mode, sizes: &[usize]) -> anyhow::Result<Vec<usize>> {
    let mut floor = floor::Floor::start()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |pid| {
        super::net::rss_kib(pid).ok_or_else(|| anyhow::anyhow!("cannot read the floor's RSS"))
    };
    let base = rss(floor.pid())?;
    let window = mode.pick(
        Duration::from_secs(2),
        Duration::from_secs(15),
        Duration::from_secs(30),
    );
    let mut measured = Vec::new();
    for &size in sizes {
        progress(&format!("carry: floor, {size} bare connections"));
        floor.grow(size).await?;
        tokio::time::sleep(Duration::from_secs(mode.pick(1, 3, 5))).await;
        let cpu = cpu_share(floor.pid(), window).await?;
        let after = rss(floor.pid())?;
        let id = r.add(
            &format!("carry.{size}.floor_per_leaf"),
            &format!(
                "floor: bare libp2p (TCP+Noise+Yamux, ping), {size} connections: RSS per connection"
            ),
            after.saturating_sub(base) as f64 / size as f64,
            "KiB",
            size as u64,
            How::RealBinaries,
        );
        r.note(
            &id,
            &format!("RSS {base} KiB with none, {after} KiB with {size}"),
        );
        r.add(
            &format!("carry.{size}.floor_cpu"),
            &format!("floor: bare libp2p, {size} connections: CPU at rest"),
            cpu,
            "% core",
            0,
            How::RealBinaries,
        );
        measured.push(size);
    }
    Ok(measured)
}

/// The share of one core process `pid` used over `window`, in percent.
async fn cpu_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let stat = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
    let read = || {
        super::net::cpu_time(&stat)
            .ok_or_else(|| anyhow::anyhow!("cannot read the CPU time of process {pid}"))
    };
    let before = read()?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let used = read()?.saturating_sub(before);
    Ok(used.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0)
}

/// `n` lookups, one after another, each from a random leaf for another random leaf.
async fn lookups(fleet: &Fleet, n: usize) -> anyhow::Result<Latencies> {
    let mut lat = Latencies::new();
    let leaves = fleet.len();
    for _ in 0..n {
        let from = rand::random_range(0..leaves);
        let of = rand::random_range(0..leaves);
        let name = fleet.name(of).context("no such leaf")?.to_string();
        let looked = fleet.lookup(from, &name).await?;
        anyhow::ensure!(looked.found, "{name} was not found");
        lat.record(looked.took);
    }
    Ok(lat)
}

/// Raises this process's open-file limit so that `leaves` simulated leaves (a connection each;
/// the floor's bare swarms, as many, are gone before the leaves start) fit, and the processes
/// started after it (the superpeer, the floor listener, a connection per leaf) inherit it.
fn raise_fd_limit(leaves: usize) -> anyhow::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let needed = leaves as u64 + 4096;
    let mut limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some_and(|hard| hard < needed) {
        anyhow::bail!(
            "{leaves} simulated leaves need {needed} open files, the hard limit is {:?}: raise \
             it (`ulimit -Hn`, as root), or measure fewer (NATTER_BENCH_CARRY)",
            limit.maximum
        );
    }
    if limit.current.is_some_and(|soft| soft >= needed) {
        return Ok(());
    }
    limit.current = Some(needed);
    setrlimit(Resource::Nofile, limit)
        .map_err(|e| anyhow::anyhow!("cannot raise the open-file limit to {needed}: {e}"))
}
