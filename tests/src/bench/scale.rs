//! The `scale` suite: what each attached leaf costs a superpeer in memory, and what one leaf
//! daemon costs its own machine; plus the size and validation cost of a presence record, the
//! inputs of the scaling model in docs/BENCHMARKS.md.
//!
//! The network (real binaries): the login server (in this process), one superpeer `hub00` on
//! TCP, and L leaves (`leaf000`…) attached to it (with a single superpeer there is no standby).
//! The superpeer's resident memory (VmRSS) is read before the first leaf starts and once every
//! leaf is attached and has published its record; the difference divided by L is the figure.
//! RSS includes allocator slack, so this is an estimate, not an exact per-leaf size.

use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use natter_proto::presence::directory_key;
use natter_proto::{IssuerSigningKey, PresenceBody, Status, UserName};

use super::net::{Cluster, Daemon, Listen};
use super::{How, Mode, Report, progress};

/// Runs the suite on its own runtime.
pub fn run(mode: Mode) -> anyhow::Result<Report> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(suite(mode))
}

async fn suite(mode: Mode) -> anyhow::Result<Report> {
    let mut r = Report::default();
    record_costs(&mut r, mode)?;

    let leaves = mode.pick(3, 10, 60);
    progress(&format!("scale: one superpeer and {leaves} leaves"));
    let cluster = Cluster::start().await?;
    let hub = cluster
        .superpeers("hub", 1, Listen::Tcp4)
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no superpeer started"))?;
    // Let the superpeer settle (login, first announcements) before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = hub
        .rss_kib()
        .ok_or_else(|| anyhow::anyhow!("cannot read the superpeer's RSS"))?;
    let mut daemons: Vec<Daemon> = Vec::with_capacity(leaves);
    for i in 0..leaves {
        daemons.push(
            cluster
                .daemon(&format!("leaf{i:03}"), "leaf", Listen::Tcp4)
                .await?,
        );
    }
    let start = Instant::now();
    for d in &daemons {
        d.wait_attached(false, Duration::from_secs(60)).await?;
    }
    super::net::wait(
        "every leaf counted by the superpeer",
        Duration::from_secs(60),
        || async {
            hub.status()
                .await
                .ok()
                .filter(|s| s.leaves >= leaves && s.records_stored >= leaves as u64)
        },
    )
    .await?;
    r.add(
        "scale.attach",
        &format!("{leaves} leaves attached and published, after the last start"),
        start.elapsed().as_secs_f64(),
        "s",
        leaves as u64,
        How::RealBinaries,
    );
    // A few publication rounds' worth of steady state.
    tokio::time::sleep(Duration::from_secs(mode.pick(1, 3, 5))).await;
    let after = hub
        .rss_kib()
        .ok_or_else(|| anyhow::anyhow!("cannot read the superpeer's RSS"))?;
    r.add(
        "scale.hub_rss",
        &format!("superpeer RSS with {leaves} leaves"),
        after as f64 / 1024.0,
        "MiB",
        1,
        How::RealBinaries,
    );
    r.add(
        "scale.per_leaf",
        "superpeer memory per attached leaf (RSS delta / leaves)",
        after.saturating_sub(before).max(1) as f64 / leaves as f64,
        "KiB",
        leaves as u64,
        How::RealBinaries,
    );
    r.note(
        "scale.per_leaf",
        &format!("RSS {before} KiB before the first leaf, {after} KiB with {leaves} attached"),
    );
    let leaf_rss: Vec<u64> = daemons.iter().filter_map(Daemon::rss_kib).collect();
    if !leaf_rss.is_empty() {
        r.add(
            "scale.leaf_rss",
            "leaf daemon RSS (mean)",
            leaf_rss.iter().sum::<u64>() as f64 / leaf_rss.len() as f64 / 1024.0,
            "MiB",
            leaf_rss.len() as u64,
            How::RealBinaries,
        );
    }
    drop(daemons);
    drop(hub);
    super::carry::run(&mut r, mode, &cluster).await?;
    cluster.login.stop().await;
    Ok(r)
}

/// The size of a presence record as a leaf with two superpeers publishes it, and what a
/// superpeer spends validating one before storing it.
fn record_costs(r: &mut Report, mode: Mode) -> anyhow::Result<()> {
    let issuer = IssuerSigningKey::from_bytes(&rand::random());
    let device = Keypair::generate_ed25519();
    let public = device
        .clone()
        .try_into_ed25519()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .public()
        .to_bytes();
    let now = natter_login_server::service::unix_now();
    let cert = issuer.issue(UserName::parse("alice")?, public, 1, now - 60, 86_400)?;
    let me = device.public().to_peer_id();
    let home = Keypair::generate_ed25519().public().to_peer_id();
    let relay_addrs = [
        "tcp/4001",
        "udp/4001/quic-v1",
        "tcp/4002",
        "udp/4002/quic-v1",
    ]
    .iter()
    .map(|t| format!("/ip4/203.0.113.7/{t}/p2p/{home}/p2p-circuit/p2p/{me}"))
    .collect();
    let record = PresenceBody {
        cert,
        status: Status::Online,
        seq: 1,
        last_seen: now,
        expires_at: now + 90,
        home: Some(home.to_string()),
        relay_addrs,
        direct_addrs: vec![],
    }
    .sign(&device)?;
    let json = record.to_json();
    r.add(
        "scale.record_bytes",
        "presence record, JSON (4 relay addresses)",
        json.len() as f64,
        "B",
        1,
        How::Local,
    );
    let key = directory_key(record.username());
    let issuer_key = issuer.public();
    let window = mode.pick(
        Duration::from_millis(100),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        let parsed = natter_proto::PresenceRecord::from_json(&json)?;
        parsed.validate_for_store(&key, &issuer_key, now, None)?;
        n += 1;
    }
    r.add(
        "scale.record_validate",
        "presence record decode+validate, 1 core",
        n as f64 / start.elapsed().as_secs_f64(),
        "rec/s",
        n,
        How::Local,
    );
    Ok(())
}
