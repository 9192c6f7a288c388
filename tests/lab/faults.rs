//! The fault scenarios: what users notice when a superpeer dies, when the login server stops,
//! and when a home loses its connection. Each runs on the network the scenarios before it left
//! (the login server may already be gone, a superpeer may already be dead) and records how
//! long recovery took; the bounds are generous, the times in the report are measurements.

use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use futures::future::join_all;
use tokio::time::Instant;

use crate::messaging::{arrive, user_of};
use crate::nodes::{Check, Letter, Net, Node, poll};
use crate::overlay::{all_ok, compact, describe, strings, text};
use crate::report::{Report, secs};
use crate::topology::{Network, Topology};

const SUPERPEER_LOSS: &str = "superpeer_loss";
const LOGIN_DOWN: &str = "login_down";
const UPLINK_CUT: &str = "uplink_cut";

/// The leaf whose primary superpeer is killed: carol, behind a symmetric NAT, is reachable only
/// through relays, so losing one matters most to her.
const LOSS_LEAF: &str = "carol";
/// Who writes to her meanwhile.
const LOSS_FRIEND: &str = "alice";
/// For a leaf to have two live superpeers again (a dead QUIC connection is noticed within 6 s).
const REATTACH_TIMEOUT: Duration = Duration::from_secs(45);
/// For a message sent in a fault to show in its recipient's inbox.
const MAIL_TIMEOUT: Duration = Duration::from_secs(60);
/// For every lookup of one user with the login server down.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whose home loses its uplink, and who writes to them meanwhile.
const CUT_USER: &str = "bob";
const CUT_SENDER: &str = "alice";
/// How long the link stays cut: longer than QUIC's idle timeout (6 s), so connections die.
const CUT_FOR: Duration = Duration::from_secs(10);
/// From the link's return, for the leaf to be attached to two superpeers again. The daemon
/// skips a superpeer it lost for 60 s (`SKIP_AFTER_REFUSAL` in node/src/daemon/leaf.rs), so
/// today this takes about 60 s from the loss, which is 6 s into the cut.
const REATTACH_AFTER_CUT: Duration = Duration::from_secs(75);
/// From the leaf's re-attachment, for the queued message to arrive: one retry at the longest
/// backoff (30 s), its lookup (5 s today while a dead superpeer lingers in the directory's
/// routing tables) and a tick, with room to spare.
const DRAIN_AFTER_ATTACH: Duration = Duration::from_secs(50);

/// The superpeer serving as carol's primary (from her `natter status`) is killed with SIGKILL:
/// - right after, alice sends carol a message and carol sends alice one ("delivered" or
///   "queued": either is fine);
/// - carol's standby becomes her primary, and she finds a new standby: her status shows two
///   superpeers, neither of them the dead one, within [`REATTACH_TIMEOUT`]; so does every
///   other leaf that was attached to it;
/// - both messages show in their recipient's inbox, exactly once, within [`MAIL_TIMEOUT`];
/// - alice looks carol up and finds her online, at home on her new primary.
pub(crate) async fn superpeer_loss(
    topo: &Topology,
    net: &mut Net,
    report: &mut Report,
) -> anyhow::Result<()> {
    net.learn_peer_ids().await?;
    let status = net
        .node(LOSS_LEAF)?
        .status()
        .await
        .map_err(|e| anyhow!(e))?;
    let (primary, standby) = (text(&status["primary"]), text(&status["standby"]));
    ensure!(
        !primary.is_empty() && !standby.is_empty() && primary != standby,
        "{LOSS_LEAF} has no primary and standby superpeer to lose: {}",
        compact(&status)
    );
    let victim = user_of(net, &status["primary"])?;
    let mut attached = Vec::new();
    for node in &net.nodes {
        if topo.host(node.name)?.network == Network::Public {
            continue;
        }
        let s = node.status().await.map_err(|e| anyhow!(e))?;
        if strings(&s["superpeers"]).contains(&primary) {
            attached.push(node.name);
        }
    }

    net.kill_node(victim).await?;
    let killed = Instant::now();
    report.note(
        SUPERPEER_LOSS,
        format!("killed {victim} (SIGKILL), {LOSS_LEAF}'s primary; leaves attached to it"),
        attached.join(", "),
    );
    let net = &*net;
    let (leaf, friend) = (net.node(LOSS_LEAF)?, net.node(LOSS_FRIEND)?);
    let pair = || format!("{}{}", leaf.daemon.diagnosis(), friend.daemon.diagnosis());

    let to_text = format!("your superpeer died, {LOSS_LEAF} ({SUPERPEER_LOSS})");
    let from_text = format!("mine died, {LOSS_FRIEND} ({SUPERPEER_LOSS})");
    let (to_leaf, from_leaf) = futures::join!(
        friend.send(LOSS_LEAF, &to_text),
        leaf.send(LOSS_FRIEND, &from_text),
    );
    let to_leaf = to_leaf.map_err(|e| anyhow!("{e}\n{}", pair()))?;
    net.record(&to_leaf);
    let from_leaf = from_leaf.map_err(|e| anyhow!("{e}\n{}", pair()))?;
    net.record(&from_leaf);
    report.note(
        SUPERPEER_LOSS,
        "right after the kill: send to / from the leaf",
        format!("{} / {}", how(&to_leaf), how(&from_leaf)),
    );

    // The leaf's recovery and the two messages' arrival, watched side by side.
    let recovery = async {
        let took_over = poll(
            &format!("{LOSS_LEAF}'s standby becomes her primary"),
            REATTACH_TIMEOUT,
            async || {
                if let Some(gone) = leaf.gone() {
                    return gone;
                }
                match leaf.status().await {
                    Err(e) => Check::Wait(e),
                    Ok(s) if s["primary"] == standby.as_str() => Check::Done(killed.elapsed()),
                    Ok(s) => Check::Wait(describe(&s)),
                }
            },
        )
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", leaf.daemon.diagnosis()))?;
        let reattached = join_all(attached.iter().map(async |name| {
            let node = net.node(name)?;
            let timeout = REATTACH_TIMEOUT.saturating_sub(killed.elapsed());
            let took = reattaches(node, &primary, killed, timeout)
                .await
                .map_err(|e| anyhow!("{e:#}\n{}", node.daemon.diagnosis()))?;
            Ok((*name, took))
        }))
        .await;
        anyhow::Ok((took_over, all_ok(reattached)?))
    };
    let arrival = async |to: &Node, id: &str| {
        let timeout = MAIL_TIMEOUT.saturating_sub(killed.elapsed());
        arrive(net, to, &[id], timeout)
            .await
            .map(|_| killed.elapsed())
    };
    let (recovery, to_arrived, from_arrived) = futures::join!(
        recovery,
        arrival(leaf, &to_leaf.id),
        arrival(friend, &from_leaf.id)
    );
    let (took_over, reattached) = recovery?;
    report.note(
        SUPERPEER_LOSS,
        format!("{LOSS_LEAF}: standby took over / two live superpeers again (from the kill)"),
        format!(
            "{} / {}",
            secs(Some(took_over)),
            secs(
                reattached
                    .iter()
                    .find(|(n, _)| *n == LOSS_LEAF)
                    .map(|(_, t)| *t)
            )
        ),
    );
    for (name, took) in reattached.iter().filter(|(n, _)| *n != LOSS_LEAF) {
        report.note(
            SUPERPEER_LOSS,
            format!("{name}: two live superpeers again (from the kill)"),
            secs(Some(*took)),
        );
    }
    let (to_arrived, from_arrived) = (to_arrived?, from_arrived?);
    report.note(
        SUPERPEER_LOSS,
        "in the inbox, exactly once: to / from the leaf (from the kill)",
        format!("{} / {}", secs(Some(to_arrived)), secs(Some(from_arrived))),
    );

    let home = poll(
        &format!("{LOSS_FRIEND} finds {LOSS_LEAF} online at home on her new primary"),
        REATTACH_TIMEOUT,
        async || match friend.lookup(LOSS_LEAF).await {
            Err(e) => Check::Wait(e),
            Ok(v) if v["status"] == "online" && v["home"] == standby.as_str() => {
                Check::Done(killed.elapsed())
            }
            Ok(v) => Check::Wait(compact(&v)),
        },
    )
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", pair()))?;
    report.note(
        SUPERPEER_LOSS,
        format!("{LOSS_FRIEND} finds {LOSS_LEAF} online at her new home (from the kill)"),
        secs(Some(home)),
    );
    Ok(())
}

/// Waits until `node` is attached to two superpeers again, neither of them `dead`; returns the
/// time from `since`.
async fn reattaches(
    node: &Node,
    dead: &str,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    poll(
        &format!("{} attaches to two live superpeers", node.name),
        timeout,
        async || {
            if let Some(gone) = node.gone() {
                return gone;
            }
            match node.status().await {
                Err(e) => Check::Wait(e),
                Ok(s) => {
                    let sps = strings(&s["superpeers"]);
                    if sps.len() == 2 && sps[0] != sps[1] && !sps.iter().any(|p| p == dead) {
                        Check::Done(())
                    } else {
                        Check::Wait(describe(&s))
                    }
                }
            }
        },
    )
    .await?;
    Ok(since.elapsed())
}

/// The login server process is killed. Every user still online then looks every other one up
/// and finds them online, and sends each a message, which is delivered ("delivered": the
/// recipient's node acked it) and shows exactly once in the recipient's inbox. No daemon
/// exits meanwhile.
pub(crate) async fn login_down(
    _topo: &Topology,
    net: &mut Net,
    report: &mut Report,
) -> anyhow::Result<()> {
    net.stop_login().await?;
    let stopped = Instant::now();
    let net = &*net;
    let users: Vec<&'static str> = net.nodes.iter().map(|n| n.name).collect();

    let done = join_all(net.nodes.iter().map(async |from| {
        let mut letters = Vec::new();
        let mut lookups = Vec::new();
        for &to in users.iter().filter(|&&u| u != from.name) {
            let looking = Instant::now();
            poll(
                &format!("{} finds {to} online", from.name),
                LOOKUP_TIMEOUT,
                async || {
                    if let Some(gone) = from.gone() {
                        return gone;
                    }
                    match from.lookup(to).await {
                        Err(e) => Check::Wait(e),
                        Ok(v) if v["status"] == "online" => Check::Done(()),
                        Ok(v) => Check::Wait(compact(&v)),
                    }
                },
            )
            .await
            .map_err(|e| anyhow!("{e:#}\n{}", from.daemon.diagnosis()))?;
            lookups.push((looking.elapsed(), from.name, to));
            let text = format!("still here, {to}? ({LOGIN_DOWN})");
            let letter = from
                .send(to, &text)
                .await
                .map_err(|e| anyhow!("{e}\n{}", from.daemon.diagnosis()))?;
            net.record(&letter);
            ensure!(
                letter.status == "delivered",
                "{} → {to} with the login server down: {letter:?}\n{}",
                from.name,
                from.daemon.diagnosis()
            );
            letters.push(letter);
        }
        Ok((letters, lookups))
    }))
    .await;
    let (letters, lookups): (Vec<_>, Vec<_>) = all_ok(done)?.into_iter().unzip();
    let letters: Vec<Letter> = letters.into_iter().flatten().collect();
    let sent = stopped.elapsed();
    if let Some((took, from, to)) = lookups.into_iter().flatten().max() {
        report.note(
            LOGIN_DOWN,
            "slowest lookup reading online",
            format!("{from} → {to} {}", secs(Some(took))),
        );
    }
    if let Some(l) = letters.iter().max_by_key(|l| l.took) {
        report.note(
            LOGIN_DOWN,
            "slowest send",
            format!("{} → {} {}", l.from, l.to, how(l)),
        );
    }
    let arrived = join_all(net.nodes.iter().map(async |to| {
        let wanted: Vec<&str> = letters
            .iter()
            .filter(|l| l.to == to.name)
            .map(|l| l.id.as_str())
            .collect();
        arrive(net, to, &wanted, MAIL_TIMEOUT).await
    }))
    .await;
    all_ok(arrived)?;
    for node in &net.nodes {
        if let Some(Check::Fail(e)) = node.gone::<()>() {
            return Err(anyhow!("{e}\n{}", node.daemon.diagnosis()));
        }
    }
    report.note(
        LOGIN_DOWN,
        format!(
            "{} users: lookups online and messages delivered (direct / relayed)",
            users.len()
        ),
        format!(
            "{} and {} ({} / {}) in {}",
            letters.len(),
            letters.len(),
            letters
                .iter()
                .filter(|l| l.path.as_deref() == Some("direct"))
                .count(),
            letters
                .iter()
                .filter(|l| l.path.as_deref() == Some("relayed"))
                .count(),
            secs(Some(sent))
        ),
    );
    Ok(())
}

/// bob's home goes offline: the link between his device and his home router is cut
/// (patchbay's `Iface::link_down`; patchbay 0.7 has no link-state call for a router's side)
/// for [`CUT_FOR`], longer than QUIC's idle timeout, so his connections die:
/// - meanwhile alice sends bob a message: "queued" (nothing can reach bob);
/// - the link returns: bob is attached to two superpeers again within [`REATTACH_AFTER_CUT`],
///   and the message shows in his inbox exactly once, at the latest [`DRAIN_AFTER_ATTACH`]
///   after that (it may well come first, over a connection that outlived the cut);
/// - alice's own store agrees: the message is in her sent log (to bob, with its text), and
///   nothing is left in her outbox for bob;
/// - a message sent after the link's return shows in bob's inbox too, and bob's inbox holds
///   exactly what the lab ever sent him.
pub(crate) async fn uplink_cut(
    topo: &Topology,
    net: &mut Net,
    report: &mut Report,
) -> anyhow::Result<()> {
    let host = topo.host(CUT_USER)?;
    let iface = host
        .device
        .default_iface()
        .with_context(|| format!("{CUT_USER} has no network interface"))?;
    let net = &*net;
    let (user, sender) = (net.node(CUT_USER)?, net.node(CUT_SENDER)?);
    let pair = || format!("{}{}", user.daemon.diagnosis(), sender.daemon.diagnosis());

    iface.link_down().await.context("cutting the link")?;
    let cut = Instant::now();
    let sent = sender
        .send(
            CUT_USER,
            &format!("your line is cut, {CUT_USER} ({UPLINK_CUT})"),
        )
        .await;
    // Restore the link whatever happened, so a failure leaves the lab as it found it.
    tokio::time::sleep_until(cut + CUT_FOR).await;
    iface.link_up().await.context("restoring the link")?;
    let restored = Instant::now();
    let letter = sent.map_err(|e| anyhow!("{e}\n{}", pair()))?;
    net.record(&letter);
    report.note(
        UPLINK_CUT,
        format!(
            "{CUT_SENDER} → {CUT_USER} with {CUT_USER}'s link cut ({}s)",
            CUT_FOR.as_secs()
        ),
        how(&letter),
    );
    ensure!(
        letter.status == "queued",
        "{CUT_SENDER} → {CUT_USER} while {CUT_USER}'s link was cut: {letter:?}\n{}",
        pair()
    );

    let wanted = [letter.id.as_str()];
    let (attached, arrived) = futures::join!(
        reattaches(user, "", restored, REATTACH_AFTER_CUT),
        arrive(net, user, &wanted, REATTACH_AFTER_CUT + DRAIN_AFTER_ATTACH),
    );
    let attached = attached.map_err(|e| anyhow!("{e:#}\n{}", user.daemon.diagnosis()))?;
    let arrived = arrived?;
    ensure!(
        arrived <= attached + DRAIN_AFTER_ATTACH,
        "{CUT_USER} was attached again {} after the link's return, but the message arrived \
         only {} after it\n{}",
        secs(Some(attached)),
        secs(Some(arrived)),
        pair()
    );
    report.note(
        UPLINK_CUT,
        "after the link's return: message in the inbox / two superpeers",
        format!("{} / {}", secs(Some(arrived)), secs(Some(attached))),
    );

    let home = sender.home().to_owned();
    let (id, to) = (letter.id.clone(), CUT_USER);
    let (delivered, queued) = tokio::task::spawn_blocking(move || {
        let store = natter_node::store::Store::open(&home)?;
        anyhow::Ok((store.get_sent(&id)?, store.queued_for(to)?))
    })
    .await
    .context("reading the sender's store")??;
    let delivered = delivered.with_context(|| {
        format!(
            "{CUT_SENDER}'s sent log has no {}, though {CUT_USER} has it",
            letter.id
        )
    })?;
    ensure!(
        delivered.to == CUT_USER && delivered.text == letter.text,
        "{CUT_SENDER}'s sent log holds {delivered:?} for the message {letter:?}"
    );
    ensure!(
        queued.is_empty(),
        "{CUT_SENDER}'s outbox still holds messages for {CUT_USER}: {queued:?}"
    );
    report.note(
        UPLINK_CUT,
        format!("{CUT_SENDER}'s view: failed attempts before the ack / path"),
        format!("{} / {}", delivered.attempts, delivered.path),
    );

    let after = sender
        .send(
            CUT_USER,
            &format!("welcome back, {CUT_USER} ({UPLINK_CUT})"),
        )
        .await
        .map_err(|e| anyhow!("{e}\n{}", pair()))?;
    net.record(&after);
    arrive(net, user, &[&after.id, &letter.id], MAIL_TIMEOUT).await?;
    let inbox = user.inbox().await.map_err(|e| anyhow!(e))?;
    let expected = net.letters_to(CUT_USER).len();
    ensure!(
        inbox.len() == expected,
        "{CUT_USER}'s inbox holds {} messages, the lab sent him {expected}",
        inbox.len()
    );
    report.note(UPLINK_CUT, "a message after the link's return", how(&after));
    Ok(())
}

/// How `send` answered: "delivered direct (0.12s)", "queued (5.01s)".
fn how(letter: &Letter) -> String {
    match &letter.path {
        Some(path) => format!("{} {path} ({})", letter.status, secs(Some(letter.took))),
        None => format!("{} ({})", letter.status, secs(Some(letter.took))),
    }
}
