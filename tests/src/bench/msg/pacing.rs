//! How `natter ping` paces its probes: one run of `count` probes at a given interval, timed by
//! the bench from the request to the end of the stream.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt as _;
use natter_node::daemon::api::{ControlRequest, ControlResponse};

use super::super::net::Daemon;
use super::super::{How, Report};

pub(super) struct Paced {
    /// Probes answered (or failed) before the stream ended or the budget ran out.
    pub(super) probes: u32,
    /// From the request to the end of the stream, when every probe came within the budget.
    pub(super) wall: Option<Duration>,
    /// Mean time between two consecutive probe answers (needs two of them).
    pub(super) mean_interval: Option<Duration>,
}

/// `Ping { count, interval_ms }` from `from` to `to`, read for at most `budget`: a daemon that
/// paces slower than asked is shown by its mean interval, not waited for.
pub(super) async fn ping(
    from: &Daemon,
    to: &str,
    count: u32,
    interval: Duration,
    budget: Duration,
) -> anyhow::Result<Paced> {
    let request = ControlRequest::Ping {
        name: to.into(),
        count,
        interval_ms: Some(u64::try_from(interval.as_millis())?),
    };
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + budget);
    let mut stream = std::pin::pin!(from.stream(&request).await?);
    let mut answers = Vec::with_capacity(count as usize);
    let mut ended = None;
    while let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await {
        match next {
            Some(Ok(ControlResponse::Ping(_))) => answers.push(start.elapsed()),
            Some(Ok(other)) => bail!("unexpected answer to ping: {other:?}"),
            Some(Err(e)) => return Err(e.context(format!("ping {to} from {}", from.name))),
            None => {
                ended = Some(start.elapsed());
                break;
            }
        }
    }
    let probes = u32::try_from(answers.len())?;
    let mean_interval = match (answers.first(), answers.last()) {
        (Some(first), Some(last)) if probes >= 2 => Some((*last - *first) / (probes - 1)),
        _ => None,
    };
    Ok(Paced {
        probes,
        wall: ended.filter(|_| probes == count),
        mean_interval,
    })
}

/// `natter ping --count 100 --interval 0.01`: its wall time and the mean interval between
/// probes, read for at most `budget`.
pub(super) async fn report(
    r: &mut Report,
    from: &Daemon,
    to: &str,
    budget: Duration,
) -> anyhow::Result<()> {
    const COUNT: u32 = 100;
    const INTERVAL: Duration = Duration::from_millis(10);
    let paced = ping(from, to, COUNT, INTERVAL, budget).await?;
    match paced.mean_interval {
        Some(mean) => {
            let id = r.add(
                "msg.ping.interval",
                "natter ping --interval 0.01: mean interval",
                mean.as_secs_f64() * 1000.0,
                "ms",
                u64::from(paced.probes),
                How::RealBinaries,
            );
            r.target(&id, "10 ms asked, +-20%", |v, _| (8.0..=12.0).contains(&v));
        }
        None => r.not_measured(
            "natter ping --interval 0.01: mean interval",
            &format!("{} probe(s) answered within {budget:?}", paced.probes),
        ),
    }
    match paced.wall {
        Some(wall) => {
            let id = r.add(
                "msg.ping.wall",
                "natter ping --count 100 --interval 0.01: wall time",
                wall.as_secs_f64() * 1000.0,
                "ms",
                u64::from(paced.probes),
                How::RealBinaries,
            );
            r.target(&id, "< 2,000 ms", |v, _| v < 2000.0);
        }
        None => r.not_measured(
            "natter ping --count 100 --interval 0.01: wall time",
            &format!(
                "cut after {budget:?}, {} of {COUNT} probes answered",
                paced.probes
            ),
        ),
    }
    Ok(())
}
