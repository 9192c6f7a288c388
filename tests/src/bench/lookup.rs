//! The `lookup` suite: how long `natter lookup` takes, cold (the superpeer resolves the name
//! through the directory) and cached (a repeat within the superpeer's 3 s cache), with 10 and
//! 50 superpeers, against one bare Kademlia hop and a bare Kademlia walk of the same size.
//!
//! The network (real binaries): the login server (in this process), N superpeers `sp00…`
//! listening on TCP only, each publishing its own user's record into the directory, and two
//! leaves `querya` and `queryb` asking for those names through the control API, as `natter lookup`
//! does. A cold lookup is leaf → its superpeer (overlay request) → Kademlia GET through the
//! superpeer DHT, which the daemon follows to the end of the query → liveness check with the
//! record's home superpeer (unless it is the same one) → answer. A cached one is leaf → its
//! superpeer → answer from the cache.

use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use natter_node::daemon::api::ControlRequest;
use natter_proto::msg::MsgRequest;

use super::floors;
use super::net::{Cluster, Daemon, Listen};
use super::{How, Latencies, Mode, Report, progress};

/// The superpeer's lookup cache lifetime, plus a margin: a repeat after this is cold again.
const CACHE_EXPIRED: Duration = Duration::from_millis(3300);

/// Runs the suite on its own runtime.
pub fn run(mode: Mode) -> anyhow::Result<Report> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(suite(mode))
}

async fn suite(mode: Mode) -> anyhow::Result<Report> {
    let mut r = Report::default();
    progress("lookup: floors (one kad hop, bare echo)");
    let floor_samples = mode.pick(30, 1000, 5000);
    let hop = floors::kad_one_hop(floor_samples).await?;
    r.latency(
        "lookup.floor.kad1",
        "floor: one DHT hop (bare kad GET, 1 peer)",
        &hop,
        How::InProcess,
        None,
    );
    let key = Keypair::generate_ed25519();
    let cert = floors::sample_cert(&key, "alice")?;
    let echo = floors::echo_rtt(floor_samples, key, move |nonce| MsgRequest::Ping {
        cert: cert.clone(),
        nonce,
    })
    .await?;
    r.latency(
        "lookup.floor.echo",
        "floor: bare libp2p req-resp echo",
        &echo,
        How::InProcess,
        None,
    );

    let sizes = sizes(mode)?;
    for &n in &sizes {
        progress(&format!("lookup: in-process DHT of {n} nodes"));
        let walk = floors::kad_walk(n, n.min(20), mode.pick(20, 300, 1000)).await?;
        let walk_id = format!("lookup.n{n}.floor.walk");
        r.latency(
            &walk_id,
            &format!("floor: bare kad walk, {n} nodes, to end of query"),
            &walk.finished,
            How::InProcess,
            Some("lookup.floor.kad1"),
        );
        r.latency(
            &format!("lookup.n{n}.floor.first"),
            &format!("floor: bare kad walk, {n} nodes, to 1st record"),
            &walk.first,
            How::InProcess,
            Some("lookup.floor.kad1"),
        );
        if !walk.requests.is_empty() {
            let mean = walk.requests.iter().map(|&x| f64::from(x)).sum::<f64>()
                / walk.requests.len() as f64;
            r.add(
                &format!("lookup.n{n}.floor.requests"),
                &format!("bare kad walk, {n} nodes: requests per query"),
                mean,
                "req",
                walk.requests.len() as u64,
                How::InProcess,
            );
            r.note(
                &format!("lookup.n{n}.floor.requests"),
                &format!("one node's routing table: {} entries", walk.routing_entries),
            );
        }

        let rounds = mode.pick(1, 3, if n > 20 { 6 } else { 10 });
        real_network(&mut r, n, rounds).await?;
        r.target(
            &format!("lookup.n{n}.cold.p99"),
            &format!("cold p99 <= 20 ms (the targets are at 50 and 100 superpeers; here {n})"),
            |v, _| v <= 20.0,
        );
    }
    for big in [50, 100] {
        if !sizes.contains(&big) {
            r.not_measured(
                &format!("lookup latency with {big} superpeers"),
                "only in full mode (the daemons take minutes to start and converge)",
            );
        }
    }
    Ok(r)
}

/// The directory sizes to measure: `NATTER_BENCH_LOOKUP` (comma-separated superpeer counts)
/// or the mode's.
fn sizes(mode: Mode) -> anyhow::Result<Vec<usize>> {
    super::sizes_from_env(
        "NATTER_BENCH_LOOKUP",
        mode.pick(vec![3], vec![10], vec![10, 50, 100]),
    )
}

async fn real_network(r: &mut Report, n: usize, rounds: usize) -> anyhow::Result<()> {
    progress(&format!("lookup: starting {n} superpeers and 2 leaves"));
    let cluster = Cluster::start().await?;
    let sps = cluster.superpeers("sp", n, Listen::Tcp4).await?;
    let queriers = vec![
        cluster.daemon("querya", "leaf", Listen::Tcp4).await?,
        cluster.daemon("queryb", "leaf", Listen::Tcp4).await?,
    ];
    for q in &queriers {
        q.wait_attached(false, Duration::from_secs(30)).await?;
    }
    let names: Vec<String> = sps.iter().map(|s| s.name.clone()).collect();
    progress("lookup: superpeers up and queriers attached; waiting for every name to resolve");

    // Every record must be in the directory before anything is timed. A superpeer's first
    // publication, at promotion, finds no peer to store it on and would only be repeated at
    // its next round (30 s): a status change republishes it, so superpeers whose name does not
    // resolve yet are told to republish until every name does.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let mut missing = std::collections::BTreeSet::new();
        for q in &queriers {
            for (i, name) in names.iter().enumerate() {
                if !q.lookup(name).await.is_ok_and(|v| v.status == "online") {
                    missing.insert(i);
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} name(s) never resolved online", missing.len());
        }
        for i in missing {
            sps[i]
                .call(&ControlRequest::SetStatus {
                    status: natter_proto::Status::Online,
                })
                .await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rss: Vec<u64> = sps.iter().filter_map(Daemon::rss_kib).collect();
    if !rss.is_empty() {
        r.add(
            &format!("lookup.n{n}.rss"),
            &format!("superpeer RSS, mean of {n}, no leaves but the 2 queriers"),
            rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0,
            "MiB",
            rss.len() as u64,
            How::RealBinaries,
        );
    }

    progress(&format!(
        "lookup: {rounds} round(s) of cold and cached lookups"
    ));
    let mut cold = Latencies::new();
    let mut cached = Latencies::new();
    let mut not_online = 0u64;
    tokio::time::sleep(CACHE_EXPIRED).await;
    for _ in 0..rounds {
        // One querier at a time, so that the other's lookups never warm the cache of a
        // superpeer they might share.
        for q in &queriers {
            let phase = Instant::now();
            for name in &names {
                let start = Instant::now();
                let view = q.lookup(name).await?;
                let took = start.elapsed();
                if view.status != "online" {
                    not_online += 1;
                    continue;
                }
                cold.record(took);
                let start = Instant::now();
                let view = q.lookup(name).await?;
                if view.status == "online" {
                    cached.record(start.elapsed());
                }
            }
            let rest = CACHE_EXPIRED.saturating_sub(phase.elapsed());
            tokio::time::sleep(rest).await;
        }
    }
    r.latency(
        &format!("lookup.n{n}.cold"),
        &format!("lookup, cold, {n} superpeers"),
        &cold,
        How::RealBinaries,
        Some(&format!("lookup.n{n}.floor.walk")),
    );
    r.latency(
        &format!("lookup.n{n}.cached"),
        &format!("lookup, cached, {n} superpeers"),
        &cached,
        How::RealBinaries,
        Some("lookup.floor.echo"),
    );
    if not_online > 0 {
        r.note(
            &format!("lookup.n{n}.cold.p50"),
            &format!("{not_online} lookup(s) did not read online and were left out"),
        );
    }
    drop(queriers);
    drop(sps);
    cluster.login.stop().await;
    Ok(())
}
