//! The churn suite's census: which leaves hold two live superpeers again, whose records a
//! live home holds, and who reads online again, timed from the kill.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use natter_node::daemon::api::StatusView;

use super::super::net::Daemon;
use super::{CONCURRENCY, unix_ms};

/// What [`recover`] saw. The attachment and record times are the leaves' own (from their
/// status, on the machine's one clock), counted from the kill; findability is timed by the
/// census, so it is seen up to one round late.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// When the last watched leaf held two live superpeers again.
    pub(super) attached_after: Option<Duration>,
    /// When the last watched leaf's record was held by its new primary.
    pub(super) rehomed_after: Option<Duration>,
    /// When the last watched user read online again at a live home, by the census.
    pub(super) findable_after: Option<Duration>,
    /// The medians of the same three (of the watched leaves).
    pub(super) attached_median: Option<Duration>,
    pub(super) rehomed_median: Option<Duration>,
    pub(super) findable_median: Option<Duration>,
    /// At the deadline (or the end): leaves without two live superpeers, users not findable.
    pub(super) unattached: usize,
    pub(super) unfindable: usize,
    /// The longest census round: findability is seen at most this long after it happens.
    pub(super) resolution: Duration,
    pub(super) rounds: u64,
}

impl Recovery {
    pub(super) fn unrecovered(&self) -> usize {
        self.unattached.max(self.unfindable)
    }
}

/// One leaf's recovery as [`recover`] follows it (times from the kill).
#[derive(Debug, Clone, Copy, Default)]
struct Leaf {
    attached: Option<Duration>,
    rehomed: Option<Duration>,
    findable: Option<Duration>,
}

/// Checks leaves again and again until each holds two superpeers outside `dead` and its user
/// reads online from its sender at a home outside `dead`: leaf i's attachment when
/// `watch[i].0`, its record and findability when `watch[i].1` (the rest count as recovered
/// at once). `killed_ms` (Unix ms) is when `dead` were killed, 0 for none. What passed is not
/// checked again. One round at least; gives up after `deadline`.
pub(super) async fn recover(
    leaves: &[Daemon],
    names: &[String],
    dead: &HashSet<String>,
    killed_ms: u64,
    watch: &[(bool, bool)],
    deadline: Duration,
) -> Recovery {
    let start = Instant::now();
    let l = leaves.len();
    let live = |p: &Option<String>| p.as_ref().is_some_and(|p| !dead.contains(p));
    let since = |ms: u64| Duration::from_millis(ms.saturating_sub(killed_ms));
    let mut state: Vec<Leaf> = watch
        .iter()
        .map(|&(attach, home)| Leaf {
            attached: (!attach).then_some(Duration::ZERO),
            rehomed: (!home).then_some(Duration::ZERO),
            findable: (!home).then_some(Duration::ZERO),
        })
        .collect();
    let mut out = Recovery::default();
    loop {
        let pending: Vec<usize> = (0..l)
            .filter(|&i| {
                let s = state[i];
                s.attached.is_none() || s.rehomed.is_none() || s.findable.is_none()
            })
            .collect();
        out.unattached = pending
            .iter()
            .filter(|&&i| state[i].attached.is_none())
            .count();
        out.unfindable = pending
            .iter()
            .filter(|&&i| state[i].findable.is_none())
            .count();
        if pending.is_empty() || (out.rounds > 0 && start.elapsed() > deadline) {
            break;
        }
        // Statuses first (local to each leaf, cheap); then lookups (a directory walk each)
        // only for users whose record a live primary holds.
        let round = Instant::now();
        let statuses: Vec<(usize, Option<StatusView>)> = futures::stream::iter(&pending)
            .map(|&i| async move { (i, leaves[i].status().await.ok()) })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut ask = Vec::new();
        for (i, status) in statuses {
            let Some(st) = status else { continue };
            let s = &mut state[i];
            if s.attached.is_none()
                && live(&st.primary)
                && live(&st.standby)
                && let (Some(p), Some(b)) = (st.primary_since, st.standby_since)
            {
                s.attached = Some(since(p.max(b)));
            }
            if s.rehomed.is_none()
                && live(&st.home)
                && st.home == st.primary
                && let Some(at) = st.home_since
            {
                s.rehomed = Some(since(at));
            }
            if s.findable.is_none() && s.rehomed.is_some() {
                ask.push(i);
            }
        }
        let found: Vec<usize> = futures::stream::iter(ask)
            .map(|i| async move {
                let view = leaves[(i + l - 1) % l].lookup(&names[i]).await.ok();
                view.filter(|v| v.status == "online" && live(&v.home))
                    .map(|_| i)
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        let now = since(unix_ms());
        for i in found {
            state[i].findable = Some(now);
        }
        out.rounds += 1;
        out.resolution = out.resolution.max(round.elapsed());
        tracing::info!(
            round = out.rounds,
            pending = pending.len(),
            secs = round.elapsed().as_secs_f64(),
            "census round"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = |time: fn(&Leaf) -> Option<Duration>| {
        state
            .iter()
            .try_fold(Duration::ZERO, |worst, s| time(s).map(|t| worst.max(t)))
    };
    for (i, s) in state.iter().enumerate() {
        tracing::debug!(leaf = %names[i], ?s.attached, ?s.rehomed, ?s.findable, "recovered");
    }
    out.attached_after = last(|s| s.attached);
    out.rehomed_after = last(|s| s.rehomed);
    out.findable_after = last(|s| s.findable);
    let median = |time: fn(&Leaf) -> Option<Duration>, watched: fn(&(bool, bool)) -> bool| {
        let mut times: Vec<Duration> = state
            .iter()
            .zip(watch)
            .filter(|(_, w)| watched(w))
            .filter_map(|(s, _)| time(s))
            .collect();
        times.sort_unstable();
        times.get(times.len() / 2).copied()
    };
    out.attached_median = median(|s| s.attached, |w| w.0);
    out.rehomed_median = median(|s| s.rehomed, |w| w.1);
    out.findable_median = median(|s| s.findable, |w| w.1);
    out
}
