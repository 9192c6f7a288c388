//! The churn suite's messages: every leaf sends to the next one, before and during the
//! churn, and each accepted message is then looked for in its recipient's inbox.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use natter_node::daemon::api::{ControlRequest, ControlResponse};

use super::super::net::Daemon;
use super::{CONCURRENCY, RECOVERY_DEADLINE};

/// The messages sent during the churn.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// (sender index, text) of every message its daemon accepted.
    pub(super) accepted: Vec<(usize, String)>,
    pub(super) failures: u64,
}

/// Every leaf sends one message a second to the next leaf, for `secs` seconds, without
/// waiting for the acknowledgement (as `natter send` queues).
pub(super) async fn send_during(
    leaves: &[Daemon],
    names: &[String],
    secs: u32,
) -> anyhow::Result<Sent> {
    let mut sent = Sent::default();
    let start = Instant::now();
    for round in 0..secs {
        let results = send_round(leaves, names, &format!("churn round {round}")).await;
        for (i, text, ok) in results {
            if ok {
                sent.accepted.push((i, text));
            } else {
                sent.failures += 1;
            }
        }
        let next = Duration::from_secs(u64::from(round) + 1);
        tokio::time::sleep(next.saturating_sub(start.elapsed())).await;
    }
    Ok(sent)
}

/// Every leaf sends `"{label} from {name}"` to the next leaf, without waiting for the
/// acknowledgement (as `natter send` queues). Per leaf: (index, text, whether its daemon took
/// the message).
pub(super) async fn send_round(
    leaves: &[Daemon],
    names: &[String],
    label: &str,
) -> Vec<(usize, String, bool)> {
    let l = leaves.len();
    futures::stream::iter(0..l)
        .map(|i| async move {
            let text = format!("{label} from {}", names[i]);
            let request = ControlRequest::Send {
                to: names[(i + 1) % l].clone(),
                text: text.clone(),
                wait: false,
            };
            let ok = matches!(
                leaves[i].call(&request).await,
                Ok(ControlResponse::Sent(v)) if v.status != "refused"
            );
            (i, text, ok)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Waits until every leaf's outbox is empty (up to [`RECOVERY_DEADLINE`]).
pub(super) async fn drained(leaves: &[Daemon], what: &str) -> anyhow::Result<()> {
    super::super::net::wait(what, RECOVERY_DEADLINE, || async {
        leaves
            .iter()
            .all(|d| d.outbox_count().is_ok_and(|n| n == 0))
            .then_some(())
    })
    .await
}

/// Accepted messages missing from their recipient's inbox (and from their sender's outbox:
/// those are still queued), and deliveries past the first.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) lost: u64,
    pub(super) queued: u64,
    pub(super) duplicated: u64,
}

pub(super) fn tally(leaves: &[Daemon], names: &[String], sent: &Sent) -> anyhow::Result<Tally> {
    let l = leaves.len();
    let mut out = Tally::default();
    let mut received: Vec<Option<Vec<String>>> = vec![None; l];
    let mut queued: Vec<Option<Vec<String>>> = vec![None; l];
    for (from, text) in &sent.accepted {
        let to = (from + 1) % l;
        let inbox = match &mut received[to] {
            Some(t) => t,
            slot => slot.insert(leaves[to].inbox_texts(&names[*from])?),
        };
        match inbox.iter().filter(|t| *t == text).count() {
            0 => {
                let outbox = match &mut queued[*from] {
                    Some(t) => t,
                    slot => slot.insert(leaves[*from].outbox_texts(&names[to])?),
                };
                if outbox.contains(text) {
                    out.queued += 1;
                } else {
                    out.lost += 1;
                }
            }
            n => out.duplicated += n as u64 - 1,
        }
    }
    Ok(out)
}
