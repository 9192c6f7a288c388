//! What a burst costs besides its rate: how the sender's control API answers meanwhile, how
//! many directory lookups it makes the superpeers serve, and the CPU time of every process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use natter_node::control::ControlClient;
use natter_node::daemon::api::{ControlRequest, ControlResponse};

use super::super::net::{Cluster, Daemon};
use super::super::{How, Latencies, Report};

/// Pause between two `status` calls of a sampler.
const STATUS_EVERY: Duration = Duration::from_millis(5);

/// A task that calls `status` on one daemon, one call every [`STATUS_EVERY`] after the last
/// answer, and times each call around the control socket as the CLI would see it.
pub(super) struct StatusSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Latencies>>,
}

impl StatusSampler {
    pub(super) fn start(daemon: &Daemon) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(sample(daemon.home.clone(), stop.clone()));
        Self { stop, task }
    }

    /// Stops sampling; the latencies of every call made.
    pub(super) async fn stop(self) -> anyhow::Result<Latencies> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

async fn sample(home: PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<Latencies> {
    let mut lat = Latencies::new();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let mut client = ControlClient::connect(&home).await?;
        match client
            .call::<_, ControlResponse>(&ControlRequest::Status)
            .await?
        {
            ControlResponse::Status(_) => lat.record(start.elapsed()),
            other => bail!("unexpected answer to status: {other:?}"),
        }
        tokio::time::sleep(STATUS_EVERY).await;
    }
    Ok(lat)
}

/// `status` latencies on an idle daemon, sampled as during a burst, for `window`.
pub(super) async fn status_idle(daemon: &Daemon, window: Duration) -> anyhow::Result<Latencies> {
    let sampler = StatusSampler::start(daemon);
    tokio::time::sleep(window).await;
    sampler.stop().await
}

/// Lookups served so far by each superpeer (`StatusView::lookups`).
pub(super) async fn lookups(superpeers: &[Daemon]) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::with_capacity(superpeers.len());
    for sp in superpeers {
        counts.push(sp.status().await?.lookups);
    }
    Ok(counts)
}

/// CPU time used so far by the login server (per thread) and by each daemon.
pub(super) struct Cpu {
    login: HashMap<u32, Duration>,
    daemons: Vec<(String, Duration)>,
}

impl Cpu {
    pub(super) fn read(cluster: &Cluster, daemons: &[&Daemon]) -> anyhow::Result<Self> {
        let mut read = Vec::with_capacity(daemons.len());
        for d in daemons {
            let Some(cpu) = d.cpu() else {
                bail!("cannot read the CPU time of {} (pid {})", d.name, d.pid());
            };
            read.push((d.name.clone(), cpu));
        }
        Ok(Self {
            login: cluster.login_cpu(),
            daemons: read,
        })
    }

    /// CPU used between `self` and `later`, per process (`login` first), in milliseconds. A
    /// login thread that ended meanwhile is left out; one that started counts whole.
    pub(super) fn until(&self, later: &Cpu) -> Vec<(String, f64)> {
        let login: Duration = later
            .login
            .iter()
            .map(|(tid, now)| now.saturating_sub(self.login.get(tid).copied().unwrap_or_default()))
            .sum();
        let mut used = vec![("login".to_owned(), login.as_secs_f64() * 1000.0)];
        for ((name, before), (_, after)) in self.daemons.iter().zip(&later.daemons) {
            used.push((
                name.clone(),
                after.saturating_sub(*before).as_secs_f64() * 1000.0,
            ));
        }
        used
    }
}

/// Waits (up to `timeout`) until `sender`'s outbox is empty, i.e. every message of a burst has
/// been acked and moved to `sent`; whether it emptied.
pub(super) async fn drained(sender: &Daemon, timeout: Duration) -> anyhow::Result<bool> {
    let start = Instant::now();
    while sender.outbox_count()? > 0 {
        if start.elapsed() > timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(true)
}

/// What the direct burst cost besides its rate, measured around it.
pub(super) struct BurstCosts {
    pub(super) sent: u64,
    /// `status` on the idle sender, and during the burst.
    pub(super) idle: Latencies,
    pub(super) busy: Latencies,
    /// Lookups served by each superpeer, before and after.
    pub(super) lookups: (Vec<u64>, Vec<u64>),
    /// CPU per process, in ms.
    pub(super) cpu: Vec<(String, f64)>,
    /// Whether the sender's outbox emptied before the CPU was read.
    pub(super) drained: bool,
}

pub(super) fn report(r: &mut Report, c: &BurstCosts) {
    r.latency(
        "msg.status.idle",
        "control status every 5 ms, idle sender",
        &c.idle,
        How::RealBinaries,
        Some("msg.control"),
    );
    r.latency(
        "msg.status.burst",
        "control status every 5 ms, sender during the burst",
        &c.busy,
        How::RealBinaries,
        Some("msg.status.idle"),
    );
    r.target("msg.status.burst.p99", "<= 2x idle p99", |v, f| {
        f.is_some_and(|f| v <= 2.0 * f)
    });
    if c.sent == 0 {
        r.not_measured(
            "lookups and CPU per message of the direct burst",
            "no message was sent",
        );
        return;
    }
    let (before, after) = &c.lookups;
    let per_sp: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let lookups: u64 = per_sp.iter().sum();
    let id = r.add(
        "msg.direct.lookups",
        "superpeer lookups per message, burst to a known route",
        lookups as f64 / c.sent as f64,
        "lkp/msg",
        c.sent,
        How::RealBinaries,
    );
    r.target(&id, "<= 0.01", |v, _| v <= 0.01);
    r.note(
        &id,
        &format!(
            "{lookups} lookups (sp00 {}, sp01 {}) for {} messages",
            per_sp.first().unwrap_or(&0),
            per_sp.get(1).unwrap_or(&0),
            c.sent
        ),
    );
    let total: f64 = c.cpu.iter().map(|(_, ms)| ms).sum();
    let id = r.add(
        "msg.direct.cpu",
        "CPU per 1,000 durable msgs, all processes (direct burst)",
        total / (c.sent as f64 / 1000.0),
        "ms",
        c.sent,
        How::RealBinaries,
    );
    r.target(&id, "<= 200 ms", |v, _| v <= 200.0);
    let parts: Vec<String> = c
        .cpu
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.0}"))
        .collect();
    r.note(
        &id,
        &format!(
            "{total:.0} ms CPU for {} messages: {} ms{}",
            c.sent,
            parts.join(", "),
            if c.drained {
                ""
            } else {
                "; the sender's outbox had not emptied 30 s after the burst"
            }
        ),
    );
}
