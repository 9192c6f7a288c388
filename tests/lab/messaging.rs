//! The messaging scenarios: `natter send`, `inbox` and `ping` between the users of the lab, as
//! they would type them, on the overlay `promotion` and `lookup` left running.
//!
//! A message counts as delivered when `send` says "delivered" (the recipient's node acked
//! storing it), or says "queued" and the message then shows in the recipient's inbox within a
//! bounded wait. Every look at an inbox is checked against every message the lab ever sent to
//! that user ([`Net::letters_to`]): a message shown twice, or one nobody sent, fails at once.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use futures::future::join_all;
use serde_json::Value;
use tokio::time::Instant;

use crate::nodes::{Check, Letter, Net, Node, poll};
use crate::overlay::{all_ok, compact};
use crate::punches;
use crate::report::{Report, secs};
use crate::topology::{Network, Topology};

/// For messages that `send` left queued to show in their recipient's inbox (retries back off
/// 1, 2, 4, 8, 16 s).
const MAIL_TIMEOUT: Duration = Duration::from_secs(45);
/// For alice and bob's connection to become direct (DCUtR takes seconds).
const DIRECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Probes of carol's path.
const CAROL_PINGS: usize = 3;

const MESSAGING: &str = "messaging";
const HOLE_PUNCHING: &str = "hole_punching";

/// Every user sends one message to every other user, public ones included (7 users, 42
/// messages), the senders side by side, each sender's messages one after the other, starting
/// with the next user in the lab's order:
/// - `send` answers by the contract: a message id and "delivered" with path "direct" or
///   "relayed", or "queued";
/// - a message to a public user that is delivered went direct (a public node is dialled at its
///   own address, never through a relay);
/// - every message shows exactly once in its recipient's inbox, from its sender, with its
///   text, within [`MAIL_TIMEOUT`]; nothing else shows.
pub(crate) async fn messaging(
    topo: &Topology,
    net: &mut Net,
    report: &mut Report,
) -> anyhow::Result<()> {
    net.learn_peer_ids().await?;
    let net = &*net;
    let users: Vec<&'static str> = net.nodes.iter().map(|n| n.name).collect();
    ensure!(
        users.len() == topo.hosts.len(),
        "natter up runs on {} of {} hosts",
        users.len(),
        topo.hosts.len()
    );
    let public = |user: &str| topo.host(user).is_ok_and(|h| h.network == Network::Public);

    let started = Instant::now();
    let sent = join_all(net.nodes.iter().enumerate().map(async |(i, from)| {
        let mut failed = Vec::new();
        // Each sender starts with the next user: first contacts of every kind, and no
        // recipient gets everyone's first message at once.
        for k in 1..users.len() {
            let to = users[(i + k) % users.len()];
            let text = format!("hello {to}, this is {} ({MESSAGING})", from.name);
            match from.send(to, &text).await {
                Ok(letter) => {
                    net.record(&letter);
                    if letter.status == "delivered"
                        && public(to)
                        && letter.path.as_deref() != Some("direct")
                    {
                        failed.push(format!(
                            "{} → {to} (a public user) was delivered {:?}, not direct",
                            from.name, letter.path
                        ));
                    }
                }
                Err(e) => failed.push(e),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "{}\n{}",
                failed.join("\n"),
                from.daemon.diagnosis()
            ))
        }
    }))
    .await;
    let sending = started.elapsed();
    let letters: Vec<Letter> = net
        .letters()
        .into_iter()
        .filter(|l| l.text.ends_with(&format!("({MESSAGING})")))
        .collect();
    for user in &users {
        let first = letters
            .iter()
            .filter(|l| l.from == *user)
            .min_by_key(|l| l.at);
        if let (Some(row), Some(l)) = (report.row(user), first) {
            let how = l.path.as_deref().unwrap_or(&l.status);
            row.first_message = Some((l.took, format!("{how} → {}", l.to)));
        }
    }
    all_ok(sent)?;

    let arrived = join_all(net.nodes.iter().map(async |to| {
        let wanted: Vec<&str> = letters
            .iter()
            .filter(|l| l.to == to.name)
            .map(|l| l.id.as_str())
            .collect();
        arrive(
            net,
            to,
            &wanted,
            MAIL_TIMEOUT.saturating_sub(started.elapsed()),
        )
        .await
    }))
    .await;
    let arrived = all_ok(arrived)?;
    let all_in = arrived.into_iter().max().unwrap_or_default();

    let count = |f: &dyn Fn(&Letter) -> bool| letters.iter().filter(|l| f(l)).count();
    report.note(
        MESSAGING,
        format!(
            "{} messages between {} users: delivered direct / relayed / queued",
            letters.len(),
            users.len()
        ),
        format!(
            "{} / {} / {}",
            count(&|l| l.path.as_deref() == Some("direct")),
            count(&|l| l.path.as_deref() == Some("relayed")),
            count(&|l| l.status == "queued")
        ),
    );
    report.note(
        MESSAGING,
        "all sent (senders side by side) / all in the inboxes, exactly once",
        format!("{} / {}", secs(Some(sending)), secs(Some(all_in))),
    );
    Ok(())
}

/// alice and bob (both behind home NATs: endpoint-independent mapping) end up connected
/// directly, and carol (symmetric NAT) keeps talking to alice through a relay:
/// - `natter ping bob --count 1` on alice's host, polled until a probe reads path "direct",
///   within [`DIRECT_TIMEOUT`]; the daemons' logs show a successful hole punch between them;
/// - then a message each way between alice and bob is delivered, and direct;
/// - a message each way between alice and carol is delivered (or queued, then in the inbox);
///   the paths carol's messages and pings take are recorded, not asserted: a direct path
///   through a symmetric NAT would be surprising but not wrong, and the report says so.
pub(crate) async fn hole_punching(
    _topo: &Topology,
    net: &mut Net,
    report: &mut Report,
) -> anyhow::Result<()> {
    net.learn_peer_ids().await?;
    let net = &*net;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| net.node(n));
    let (alice, bob, carol) = (alice?, bob?, carol?);
    let both = || format!("{}{}", alice.daemon.diagnosis(), bob.daemon.diagnosis());

    let started = Instant::now();
    let mut pings = 0u32;
    let probe = poll(
        "alice's ping to bob reads path direct",
        DIRECT_TIMEOUT,
        async || {
            if let Some(gone) = alice.gone().or_else(|| bob.gone()) {
                return gone;
            }
            pings += 1;
            match alice.ping_once("bob").await {
                Ok(p) if p["path"] == "direct" && p["rtt_ms"].as_f64().is_some() => Check::Done(p),
                Ok(p) => Check::Wait(compact(&p)),
                Err(e) => Check::Wait(e),
            }
        },
    )
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", both()))?;
    let polled = started.elapsed();
    report.note(
        HOLE_PUNCHING,
        "alice → bob: pings until one read direct (time polling, its round trip)",
        format!(
            "{pings} ({}, {:.1} ms)",
            secs(Some(polled)),
            probe["rtt_ms"].as_f64().unwrap_or_default()
        ),
    );
    let punched = punches::read(net);
    let between = punches::between(&punched, "alice", "bob");
    ensure!(
        between.iter().any(|p| p.ok),
        "ping reads direct, but no successful hole punch between alice and bob is logged \
         (hole punch lines: {between:?})\n{}",
        both()
    );

    // Direct both ways now.
    let mut wanted: HashMap<&str, Vec<String>> = HashMap::new();
    for (from, to) in [(alice, "bob"), (bob, "alice")] {
        let text = format!("direct now, {to}? ({HOLE_PUNCHING})");
        let letter = from
            .send(to, &text)
            .await
            .map_err(|e| anyhow!("{e}\n{}", both()))?;
        net.record(&letter);
        ensure!(
            letter.status == "delivered" && letter.path.as_deref() == Some("direct"),
            "{} → {to} after the path went direct: {letter:?}\n{}",
            from.name,
            both()
        );
        wanted.entry(to).or_default().push(letter.id);
    }

    // carol, behind a symmetric NAT, and alice: relayed, and working.
    let mut carol_paths = Vec::new();
    for (from, to) in [(alice, "carol"), (carol, "alice")] {
        let text = format!("through a relay, {to} ({HOLE_PUNCHING})");
        let letter = from.send(to, &text).await.map_err(|e| {
            anyhow!(
                "{e}\n{}{}",
                alice.daemon.diagnosis(),
                carol.daemon.diagnosis()
            )
        })?;
        net.record(&letter);
        carol_paths.push(format!(
            "{} → {to} {}",
            from.name,
            letter.path.as_deref().unwrap_or(&letter.status)
        ));
        wanted.entry(to).or_default().push(letter.id);
    }
    for _ in 0..CAROL_PINGS {
        let probe = alice.ping_once("carol").await;
        let path = match &probe {
            Ok(p) => p["path"].as_str().unwrap_or("failed").to_owned(),
            Err(e) => format!("failed ({e})"),
        };
        carol_paths.push(format!("ping {path}"));
    }
    for (user, ids) in &wanted {
        let node = net.node(user)?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        arrive(net, node, &ids, MAIL_TIMEOUT).await?;
    }

    let went_direct = carol_paths.iter().any(|p| p.ends_with("direct"));
    report.note(
        HOLE_PUNCHING,
        "alice ↔ carol (symmetric NAT): paths of messages and pings",
        format!(
            "{}{}",
            carol_paths.join(", "),
            if went_direct {
                " — SURPRISE: direct through a symmetric NAT"
            } else {
                ""
            }
        ),
    );
    Ok(())
}

/// Waits until every message of `wanted` (ids) shows in `to`'s inbox; every look also checks
/// the whole inbox against what the lab sent `to`. Returns how long it took.
pub(crate) async fn arrive(
    net: &Net,
    to: &Node,
    wanted: &[&str],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    poll(
        &format!("{} messages arrive in {}'s inbox", wanted.len(), to.name),
        timeout,
        async || {
            if let Some(gone) = to.gone() {
                return gone;
            }
            match to.inbox().await {
                Err(e) => Check::Wait(e),
                Ok(inbox) => check_inbox(&net.letters_to(to.name), &inbox, wanted),
            }
        },
    )
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", to.daemon.diagnosis()))?;
    Ok(started.elapsed())
}

/// One look at an inbox: done when every id of `wanted` shows; failed when a message shows
/// twice, or was never sent to this user, or shows another sender or text than was sent.
pub(crate) fn check_inbox(sent: &[Letter], inbox: &[Value], wanted: &[&str]) -> Check<()> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for item in inbox {
        let id = item["id"].as_str().unwrap_or_default();
        *seen.entry(id).or_default() += 1;
        let Some(letter) = sent.iter().find(|l| l.id == id) else {
            return Check::Fail(format!("a message nobody sent: {}", compact(item)));
        };
        if item["from"] != letter.from || item["text"] != letter.text.as_str() {
            return Check::Fail(format!(
                "message {id} shows as {}, but {} sent {:?}",
                compact(item),
                letter.from,
                letter.text
            ));
        }
    }
    if let Some((id, n)) = seen.iter().find(|(_, n)| **n > 1) {
        return Check::Fail(format!("message {id} shows {n} times"));
    }
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|id| !seen.contains_key(**id))
        .collect();
    if missing.is_empty() {
        Check::Done(())
    } else {
        Check::Wait(format!(
            "{} of {} still missing: {missing:?}",
            missing.len(),
            wanted.len()
        ))
    }
}

/// The user `peer` (a peer id) is, for messages.
pub(crate) fn user_of(net: &Net, peer: &Value) -> anyhow::Result<&'static str> {
    let peer = peer.as_str().context("no peer id")?;
    net.name_of(peer)
        .with_context(|| format!("no user of the lab has device {peer}"))
}
