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
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::super::net::{Cluster, Daemon};
use super::super::{How, Latencies, Report};

/// Pause between two `status` calls of a sampler.
const STATUS_EVERY: Duration = Duration::from_millis(5);

/// What a [`Sampler`] calls.
enum Call {
    /// `status` on the daemon with this home, through its control socket.
    Status(PathBuf),
    /// The [`EchoFloor`] at this socket path.
    Echo(PathBuf),
}

/// A thread that makes one call every [`STATUS_EVERY`] after the last answer, and times each
/// call around the socket as the CLI would see it.
///
/// It has a thread and a runtime of its own, as a `natter status` process would, so that its
/// figures are the answer time and not the wait for a turn among the bench's own sender tasks.
pub(super) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Latencies>>,
}

impl Sampler {
    /// Samples `status` on `daemon`.
    pub(super) fn status(daemon: &Daemon) -> anyhow::Result<Self> {
        Self::start(Call::Status(daemon.home.clone()))
    }

    /// Samples the floor: the same calls answered by a bare thread.
    pub(super) fn echo(floor: &EchoFloor) -> anyhow::Result<Self> {
        Self::start(Call::Echo(floor.path.clone()))
    }

    fn start(call: Call) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || runtime.block_on(sample(call, stopped)))?;
        Ok(Self { stop, thread })
    }

    /// Stops sampling; the latencies of every call made.
    pub(super) async fn stop(self) -> anyhow::Result<Latencies> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a bench sampler panicked"))?
    }
}

async fn sample(call: Call, stop: Arc<AtomicBool>) -> anyhow::Result<Latencies> {
    let mut lat = Latencies::new();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match &call {
            Call::Status(home) => {
                let mut client = ControlClient::connect(home).await?;
                match client
                    .call::<_, ControlResponse>(&ControlRequest::Status)
                    .await?
                {
                    ControlResponse::Status(_) => {}
                    other => bail!("unexpected answer to status: {other:?}"),
                }
            }
            Call::Echo(path) => {
                let mut stream = tokio::net::UnixStream::connect(path).await?;
                stream.write_all(ECHO_LINE).await?;
                let mut answer = [0u8; ECHO_LINE.len()];
                stream.read_exact(&mut answer).await?;
            }
        }
        lat.record(start.elapsed());
        tokio::time::sleep(STATUS_EVERY).await;
    }
    Ok(lat)
}

/// What the floor's client sends and gets back.
const ECHO_LINE: &[u8] = b"{\"request\":\"status\"}\n";

/// The floor of the `status` figures: a Unix socket whose every connection a blocking thread
/// of its own answers at once, one connection per call as the control socket has. What it
/// costs, idle and during the burst, is what the kernel and the 2 cores' scheduler cost any
/// local round trip, with no daemon behind it.
pub(super) struct EchoFloor {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl EchoFloor {
    pub(super) fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("echo.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let mut line = [0u8; ECHO_LINE.len()];
                    if std::io::Read::read_exact(&mut stream, &mut line).is_ok() {
                        let _ = std::io::Write::write_all(&mut stream, &line);
                    }
                }
            })?;
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
            _dir: dir,
        })
    }
}

impl Drop for EchoFloor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // One more connection wakes the accept loop so that it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `status` latencies on an idle daemon, and the floor's, sampled as during a burst, for
/// `window`.
pub(super) async fn status_idle(
    daemon: &Daemon,
    floor: &EchoFloor,
    window: Duration,
) -> anyhow::Result<(Latencies, Latencies)> {
    let samplers = (Sampler::status(daemon)?, Sampler::echo(floor)?);
    tokio::time::sleep(window).await;
    Ok((samplers.0.stop().await?, samplers.1.stop().await?))
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
    /// The [`EchoFloor`]'s, sampled beside them.
    pub(super) floor_idle: Latencies,
    pub(super) floor_busy: Latencies,
    /// Lookups served by each superpeer, before and after.
    pub(super) lookups: (Vec<u64>, Vec<u64>),
    /// CPU per process, in ms.
    pub(super) cpu: Vec<(String, f64)>,
    /// Whether the sender's outbox emptied before the CPU was read.
    pub(super) drained: bool,
}

pub(super) fn report(r: &mut Report, c: &BurstCosts) {
    r.latency(
        "msg.status.floor.idle",
        "floor: bare Unix socket echo every 5 ms, idle",
        &c.floor_idle,
        How::InProcess,
        None,
    );
    r.latency(
        "msg.status.floor.burst",
        "floor: bare Unix socket echo every 5 ms, during the burst",
        &c.floor_busy,
        How::InProcess,
        Some("msg.status.floor.idle"),
    );
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
    if !c.floor_idle.is_empty() && !c.floor_busy.is_empty() {
        let ratio = |busy: &Latencies, idle: &Latencies| {
            busy.quantile_ms(0.99) / idle.quantile_ms(0.99).max(f64::MIN_POSITIVE)
        };
        r.note(
            "msg.status.burst.p99",
            &format!(
                "during the burst / idle, p99: status x{:.2}, the bare echo floor x{:.2}",
                ratio(&c.busy, &c.idle),
                ratio(&c.floor_busy, &c.floor_idle)
            ),
        );
    }
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
