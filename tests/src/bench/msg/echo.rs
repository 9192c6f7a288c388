//! An application echo between two daemons, as two programs built on the CLI would do it:
//! `a` sends; a program on `b`'s side follows `inbox --follow` and sends each message back;
//! `a`'s own `inbox --follow` sees the reply.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::{Stream, StreamExt as _};
use natter_node::control::ControlClient;
use natter_node::daemon::api::{ControlRequest, ControlResponse, FollowEvent, InboxItem};

use super::super::Latencies;
use super::super::net::Daemon;

/// Round trips made before the timed ones (the reply path may need a lookup first).
const WARMUP: usize = 3;
/// How long one round trip may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// `n` round trips `a → b → a`, one after another, each timed from `a`'s `send` call
/// (`wait: false`, as an application that does not wait for the ack) to `a`'s follow stream
/// delivering the reply.
pub(super) async fn echo(a: &Daemon, b: &Daemon, n: usize) -> anyhow::Result<Latencies> {
    // Texts no earlier message has, so the followers' history (the last 16 messages of the
    // inbox, replayed first) is never taken for a reply.
    let tag = format!("echo {:016x} ", rand::random::<u64>());
    let follow = ControlRequest::Inbox { follow: true };

    let b_inbox = b.stream(&follow).await?;
    let echoer = tokio::spawn(echo_back(
        b_inbox,
        b.home.clone(),
        a.name.clone(),
        tag.clone(),
    ));
    let _abort = AbortOnDrop(echoer.abort_handle());

    let mut a_inbox = std::pin::pin!(a.stream(&follow).await?);
    let mut lat = Latencies::new();
    for i in 0..n + WARMUP {
        let text = format!("{tag}{i}");
        let start = Instant::now();
        let request = ControlRequest::Send {
            to: b.name.clone(),
            text: text.clone(),
            wait: false,
        };
        match a.call(&request).await? {
            ControlResponse::Sent(_) => {}
            other => bail!("unexpected answer to send: {other:?}"),
        }
        let reply = tokio::time::timeout(PATIENCE, async {
            while let Some(reply) = a_inbox.next().await {
                if message(reply?).is_some_and(|m| m.from == b.name && m.text == text) {
                    return Ok(());
                }
            }
            bail!("the daemon ended {}'s inbox --follow", a.name)
        })
        .await;
        match reply {
            Ok(done) => done?,
            Err(_) if echoer.is_finished() => {
                let ended = echoer.await?.err();
                let ended = ended.unwrap_or_else(|| anyhow!("the echo side ended"));
                return Err(ended.context(format!("echo side ({})", b.name)));
            }
            Err(_) => bail!(
                "echo {i} {} -> {} -> {} took over {PATIENCE:?}\n{}\n{}",
                a.name,
                b.name,
                a.name,
                a.log_tail(),
                b.log_tail()
            ),
        }
        if i >= WARMUP {
            lat.record(start.elapsed());
        }
    }
    Ok(lat)
}

/// The program on the echo side: every message from `to` whose text starts with `tag` is sent
/// back to `to` (`wait: false`). Runs until the follow stream ends or fails.
async fn echo_back(
    inbox: impl Stream<Item = anyhow::Result<ControlResponse>>,
    home: PathBuf,
    to: String,
    tag: String,
) -> anyhow::Result<()> {
    let mut inbox = std::pin::pin!(inbox);
    while let Some(reply) = inbox.next().await {
        let Some(m) = message(reply?) else { continue };
        if m.from != to || !m.text.starts_with(&tag) {
            continue;
        }
        let request = ControlRequest::Send {
            to: to.clone(),
            text: m.text,
            wait: false,
        };
        let mut client = ControlClient::connect(&home).await?;
        match client.call::<_, ControlResponse>(&request).await? {
            ControlResponse::Sent(_) => {}
            other => bail!("unexpected answer to the echo's send: {other:?}"),
        }
    }
    bail!("the daemon ended the echo side's inbox --follow")
}

/// The message of an `inbox --follow` line (presence lines are not).
fn message(reply: ControlResponse) -> Option<InboxItem> {
    match reply {
        ControlResponse::Event(FollowEvent::Message(m)) => Some(m),
        _ => None,
    }
}

/// Ends the echo side with the run, however it ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
