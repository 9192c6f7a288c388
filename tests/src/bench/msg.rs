//! The `msg` suite: message round trips and durable throughput between real daemons on
//! loopback, against raw TCP, a bare libp2p request-response echo and the store alone.
//!
//! The network (real binaries): the login server (in this process), two superpeers `sp00`
//! and `sp01` listening on TCP only (the transport of the floors), and two leaves `alice` and
//! `bob` listening on [::1] only, attached to both superpeers. The superpeers are public, so
//! `sp00 → sp01` is a direct connection. The leaves can only reach each other through a
//! superpeer's relay: their hole punch fails by construction (see [`Listen::Tcp6`]), so the
//! relayed path is measured for as long as needed rather than in the second before DCUtR
//! upgrades it. A third pair of leaves, `carol` and `dave` (IPv4), is let hole-punch, to time
//! the upgrade and the direct leaf-to-leaf path after it.
//!
//! Two ways of timing a message:
//! - `natter ping` probes (`Ping { count: 1 }` through the control API, one after another):
//!   the round trip of the msg protocol as the sending daemon times it, from the request to
//!   the answer. The recipient checks the certificate but writes nothing to disk.
//! - `send` with `wait: true`, timed by the bench around the control API call: the whole of
//!   what a user waits for, i.e. the control socket, a directory lookup (cached by the
//!   superpeer for 3 s), the outbox write, delivery, the recipient's fsynced store, the ack,
//!   and the sender moving the message to `sent`.
//!
//! Around the direct burst, what it costs besides its rate ([`cost`]): the sender's `status`
//! latency during it against idle, the superpeers' lookups per message and every process's
//! CPU per message. Also an application echo over `inbox --follow` ([`echo`]) and how `natter
//! ping` paces its probes ([`pacing`]).

mod cost;
mod echo;
mod pacing;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use libp2p::identity::Keypair;
use natter_node::daemon::api::{ControlRequest, ControlResponse, InboxEdit};
use natter_proto::msg::{MsgRequest, MsgResponse};

use super::floors;
use super::net::{Cluster, Daemon, Listen};
use super::{How, Latencies, Mode, Report, progress};

/// Runs the suite on its own runtime.
pub fn run(mode: Mode) -> anyhow::Result<Report> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(suite(mode))
}

struct Sizes {
    /// Probes or round trips per latency figure of the real network.
    rtt: usize,
    /// Timed sends per path.
    send: usize,
    /// Round trips per floor.
    floor_rtt: usize,
    /// How long senders keep queueing in a burst.
    burst: Duration,
    /// Concurrent control connections queueing a burst.
    senders: usize,
    /// Window of a throughput floor.
    window: Duration,
    /// Application echo round trips.
    echo: usize,
    /// How long `status` is sampled on the idle sender before the burst.
    idle: Duration,
    /// How long the paced ping run may take before it is cut (100 probes at 10 ms take 1 s).
    pace_budget: Duration,
}

async fn suite(mode: Mode) -> anyhow::Result<Report> {
    let sz = Sizes {
        rtt: mode.pick(15, 200, 2000),
        send: mode.pick(8, 100, 1000),
        floor_rtt: mode.pick(50, 1000, 10_000),
        burst: mode.pick(
            Duration::from_millis(500),
            Duration::from_secs(3),
            Duration::from_secs(10),
        ),
        senders: mode.pick(4, 16, 16),
        window: mode.pick(
            Duration::from_millis(300),
            Duration::from_secs(2),
            Duration::from_secs(5),
        ),
        echo: mode.pick(20, 200, 1000),
        idle: mode.pick(
            Duration::from_millis(300),
            Duration::from_secs(1),
            Duration::from_secs(1),
        ),
        pace_budget: mode.pick(
            Duration::from_secs(4),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ),
    };
    let mut r = Report::default();
    progress("msg: floors (raw TCP, bare libp2p echo, store)");
    floors_part(&mut r, &sz).await?;
    progress("msg: starting the login server, 2 superpeers and 2 leaves");

    // The network of real daemons.
    let cluster = Cluster::start().await?;
    let sps = cluster.superpeers("sp", 2, Listen::Tcp4).await?;
    let alice = cluster.daemon("alice", "leaf", Listen::Tcp6).await?;
    let bob = cluster.daemon("bob", "leaf", Listen::Tcp6).await?;
    let attach = Duration::from_secs(30);
    for leaf in [&alice, &bob] {
        leaf.wait_attached(false, attach).await?;
    }
    // A superpeer that promotes itself before its listener is up publishes a record without
    // direct addresses, and would fix it only at its next round (30 s): a status change
    // republishes it.
    super::net::wait("sp01 online with a direct address", attach, || async {
        let found = sps[0]
            .lookup("sp01")
            .await
            .ok()
            .filter(|v| v.status == "online" && !v.direct_addrs.is_empty());
        if found.is_none() {
            let _ = sps[1]
                .call(&ControlRequest::SetStatus {
                    status: natter_proto::Status::Online,
                })
                .await;
        }
        found
    })
    .await?;
    alice.wait_online("bob", attach).await?;
    // Everyone takes everyone's messages as a contact's: the bench measures delivery, not
    // the contact-request quota.
    let everyone = [&alice, &bob, &sps[0], &sps[1]];
    let names: Vec<&str> = everyone.iter().map(|d| d.name.as_str()).collect();
    for d in everyone {
        d.accept(&names).await?;
    }

    progress("msg: round trips");
    // The control API alone: what every CLI command pays before the daemon does anything.
    let mut control = Latencies::new();
    for i in 0..sz.rtt + 5 {
        let start = Instant::now();
        sps[0].status().await?;
        if i >= 5 {
            control.record(start.elapsed());
        }
    }
    r.latency(
        "msg.control",
        "control API round trip (status)",
        &control,
        How::RealBinaries,
        None,
    );

    // Round trips of the msg protocol.
    let direct = pings(&sps[0], "sp01", sz.rtt, "direct").await?;
    r.latency(
        "msg.direct.ping",
        "msg round trip, direct sp00->sp01 (natter ping)",
        &direct.lat,
        How::RealBinaries,
        Some("msg.floor.echo"),
    );
    r.target(
        "msg.direct.ping.p50",
        "<= 2x bare libp2p echo p50",
        |v, f| f.is_some_and(|f| v <= 2.0 * f),
    );
    let relayed = pings(&alice, "bob", sz.rtt, "relayed").await?;
    r.latency(
        "msg.relayed.ping",
        "msg round trip, relayed alice->sp->bob (natter ping)",
        &relayed.lat,
        How::RealBinaries,
        Some("msg.direct.ping"),
    );
    // The same ratio for bare libp2p: what the relay hop itself costs.
    if let (Some(relay), Some(direct)) = (
        r.value("msg.floor.relay_echo.p50"),
        r.value("msg.floor.echo.p50"),
    ) {
        r.note(
            "msg.relayed.ping.p50",
            &format!(
                "bare libp2p through a bare relay: x{:.2} of the bare direct echo (p50)",
                relay / direct
            ),
        );
    }
    r.target("msg.relayed.ping.p50", "<= 1.5x direct p50", |v, f| {
        f.is_some_and(|f| v <= 1.5 * f)
    });
    if relayed.other_path > 0 {
        r.note(
            "msg.relayed.ping.p50",
            &format!(
                "{} probe(s) came back on another path and were left out",
                relayed.other_path
            ),
        );
    }

    // Send -> stored ack, as a user waits for it.
    let direct_send = sends(&sps[0], "sp01", sz.send, "direct").await?;
    r.latency(
        "msg.direct.send",
        "send -> stored ack, direct (send, wait)",
        &direct_send.lat,
        How::RealBinaries,
        Some("msg.floor.echo_deliver"),
    );
    let relayed_send = sends(&alice, "bob", sz.send, "relayed").await?;
    r.latency(
        "msg.relayed.send",
        "send -> stored ack, relayed (send, wait)",
        &relayed_send.lat,
        How::RealBinaries,
        Some("msg.direct.send"),
    );
    for (id, s) in [
        ("msg.direct.send.p50", &direct_send),
        ("msg.relayed.send.p50", &relayed_send),
    ] {
        if s.other_path > 0 || s.queued > 0 {
            r.note(
                id,
                &format!(
                    "{} answered queued, {} on another path; left out",
                    s.queued, s.other_path
                ),
            );
        }
    }

    progress("msg: application echo and ping pacing");
    let echo = echo::echo(&sps[0], &sps[1], sz.echo).await?;
    r.latency(
        "msg.direct.echo",
        "app echo sp00->sp01->sp00 (send + inbox --follow)",
        &echo,
        How::RealBinaries,
        Some("msg.direct.send"),
    );
    r.target("msg.direct.echo.p50", "<= 3 ms", |v, _| v <= 3.0);
    pacing::report(&mut r, &sps[0], "sp01", sz.pace_budget).await?;

    // Sustained durable messages/s, and what the burst costs besides.
    progress("msg: bursts");
    let floor = cost::EchoFloor::start()?;
    let (idle, floor_idle) = cost::status_idle(&sps[0], &floor, sz.idle).await?;
    let lookups_before = cost::lookups(&sps).await?;
    let everyone = [&sps[0], &sps[1], &alice, &bob];
    let cpu_before = cost::Cpu::read(&cluster, &everyone)?;
    let samplers = (
        cost::Sampler::status(&sps[0])?,
        cost::Sampler::echo(&floor)?,
    );
    let b = burst(&sps[0], &sps[1], "sp01", sz.burst, sz.senders).await?;
    let busy = samplers.0.stop().await?;
    let floor_busy = samplers.1.stop().await?;
    drop(floor);
    // The sender's last acks (and its `sent` writes) come after the recipient's store: the
    // burst's work ends when the sender's outbox is empty.
    let drained = cost::drained(&sps[0], Duration::from_secs(30)).await?;
    let cpu = cpu_before.until(&cost::Cpu::read(&cluster, &everyone)?);
    let lookups_after = cost::lookups(&sps).await?;
    let id = r.add(
        "msg.direct.durable",
        &format!("durable msg/s, direct burst ({} senders)", sz.senders),
        b.rate,
        "msg/s",
        b.sent,
        How::RealBinaries,
    );
    r.floor(&id, "msg.floor.echo_tput64");
    r.target(&id, ">= 5,000 durable msg/s", |v, _| v >= 5000.0);
    r.note(
        &id,
        &format!(
            "{} messages queued in {:.2} s ({:.0}/s at the control API), all in the recipient's \
             store {:.2} s after the first",
            b.sent,
            b.queued_in.as_secs_f64(),
            b.sent as f64 / b.queued_in.as_secs_f64(),
            b.arrived_in.as_secs_f64()
        ),
    );
    r.latency(
        "msg.nowait",
        "send --no-wait: time to the daemon's answer",
        &b.answers,
        How::RealBinaries,
        Some("msg.control"),
    );
    r.target("msg.nowait.p99", "<= 5 ms", |v, _| v <= 5.0);
    cost::report(
        &mut r,
        &cost::BurstCosts {
            sent: b.sent,
            idle,
            busy,
            floor_idle,
            floor_busy,
            lookups: (lookups_before, lookups_after),
            cpu,
            drained,
        },
    );
    if mode == Mode::Smoke {
        r.not_measured(
            "durable msg/s, relayed burst",
            "not run in smoke mode (same code path as the direct burst)",
        );
    } else {
        let b = burst(&alice, &bob, "bob", sz.burst, sz.senders).await?;
        let id = r.add(
            "msg.relayed.durable",
            &format!("durable msg/s, relayed burst ({} senders)", sz.senders),
            b.rate,
            "msg/s",
            b.sent,
            How::RealBinaries,
        );
        r.floor(&id, "msg.direct.durable");
    }
    drop((alice, bob));

    // Hole punching: relayed first, then direct.
    progress("msg: hole punching between two more leaves");
    let carol = cluster.daemon("carol", "leaf", Listen::Tcp4).await?;
    let dave = cluster.daemon("dave", "leaf", Listen::Tcp4).await?;
    for leaf in [&carol, &dave] {
        leaf.wait_attached(false, attach).await?;
    }
    carol.wait_online("dave", attach).await?;
    match upgrade(&carol, "dave", Duration::from_secs(30)).await? {
        Some(took) => {
            r.add(
                "msg.upgrade",
                "first contact -> first direct probe (relay, then hole punch)",
                took.as_secs_f64() * 1000.0,
                "ms",
                1,
                How::RealBinaries,
            );
            let punched = pings(&carol, "dave", sz.rtt, "direct").await?;
            r.latency(
                "msg.punched.ping",
                "msg round trip, leaves after hole punch (natter ping)",
                &punched.lat,
                How::RealBinaries,
                Some("msg.direct.ping"),
            );
        }
        None => r.not_measured(
            "relayed -> direct upgrade; leaf-to-leaf direct round trip",
            "no probe came back direct within 30 s",
        ),
    }
    drop(sps);
    cluster.login.stop().await;
    Ok(r)
}

async fn floors_part(r: &mut Report, sz: &Sizes) -> anyhow::Result<()> {
    let key = Keypair::generate_ed25519();
    let cert = floors::sample_cert(&key, "alice")?;
    let ping = {
        let cert = cert.clone();
        move |nonce| MsgRequest::Ping {
            cert: cert.clone(),
            nonce,
        }
    };
    let (req_len, resp_len) = floors::wire_len(&ping(1), &MsgResponse::Pong { nonce: 1 });
    let tcp = floors::tcp_pingpong(sz.floor_rtt, req_len, resp_len).await?;
    r.latency(
        "msg.floor.tcp",
        &format!("floor: raw TCP ping-pong, {req_len} B / {resp_len} B"),
        &tcp,
        How::InProcess,
        None,
    );
    let echo = floors::echo_rtt(sz.floor_rtt, key.clone(), ping.clone()).await?;
    r.latency(
        "msg.floor.echo",
        "floor: bare libp2p req-resp echo (ping)",
        &echo,
        How::InProcess,
        Some("msg.floor.tcp"),
    );
    let relayed = floors::relay_echo_rtt(sz.floor_rtt, key.clone(), ping.clone()).await?;
    r.latency(
        "msg.floor.relay_echo",
        "floor: bare libp2p echo through a bare relay (ping)",
        &relayed,
        How::InProcess,
        Some("msg.floor.echo"),
    );
    let deliver = {
        let cert = cert.clone();
        move |i| MsgRequest::Deliver {
            cert: cert.clone(),
            messages: floors::messages(i, 1),
        }
    };
    let echo_deliver = floors::echo_rtt(sz.floor_rtt, key.clone(), deliver).await?;
    r.latency(
        "msg.floor.echo_deliver",
        "floor: bare libp2p req-resp echo (1-msg deliver)",
        &echo_deliver,
        How::InProcess,
        Some("msg.floor.tcp"),
    );
    let t64 = floors::echo_throughput(sz.window, 64, 1, key.clone(), cert.clone()).await?;
    r.add(
        "msg.floor.echo_tput64",
        "floor: bare libp2p echo, 64-msg batches, 1 in flight",
        t64,
        "msg/s",
        0,
        How::InProcess,
    );
    let t1 = floors::echo_throughput(sz.window, 1, 32, key, cert).await?;
    r.add(
        "msg.floor.echo_tput1",
        "floor: bare libp2p echo, 1 msg/request, 32 in flight",
        t1,
        "msg/s",
        0,
        How::InProcess,
    );
    let window = sz.window;
    let (receive, sender, batched) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            floors::store_receive_rate(window)?,
            floors::store_sender_rate(window)?,
            floors::sqlite_batched_rate(window, 64)?,
        ))
    })
    .await??;
    r.add(
        "msg.floor.store_receive",
        "floor: node store receive alone (1 fsync/msg)",
        receive,
        "msg/s",
        0,
        How::Local,
    );
    r.add(
        "msg.floor.store_sender",
        "floor: node store enqueue+mark_delivered (2 fsync/msg)",
        sender,
        "msg/s",
        0,
        How::Local,
    );
    r.add(
        "msg.floor.sqlite64",
        "floor: SQLite WAL+FULL, 64 inserts per fsync",
        batched,
        "msg/s",
        0,
        How::Local,
    );
    Ok(())
}

/// Probes of one path.
struct Probes {
    lat: Latencies,
    /// Probes that came back on the other path (left out).
    other_path: u64,
}

/// `n` probes of `name` from `from`, one after another, after 5 unmeasured ones (the first
/// may dial); only probes on `path` count.
async fn pings(from: &Daemon, name: &str, n: usize, path: &str) -> anyhow::Result<Probes> {
    let mut probes = Probes {
        lat: Latencies::new(),
        other_path: 0,
    };
    let mut failures = 0;
    let request = ControlRequest::Ping {
        name: name.into(),
        count: 1,
        interval_ms: None,
    };
    let mut i = 0;
    while i < n + 5 {
        let probe = match from.first(&request).await? {
            ControlResponse::Ping(p) => p,
            other => bail!("unexpected answer to ping: {other:?}"),
        };
        let Some(rtt) = probe.rtt_ms else {
            failures += 1;
            if failures > 10 {
                bail!(
                    "ping {name} from {} keeps failing: {:?}\n{}",
                    from.name,
                    probe.error,
                    from.log_tail()
                );
            }
            continue;
        };
        i += 1;
        if i <= 5 {
            continue;
        }
        if probe.path.as_deref() == Some(path) {
            probes.lat.record_ms(rtt);
        } else {
            probes.other_path += 1;
        }
    }
    Ok(probes)
}

struct Sends {
    lat: Latencies,
    queued: u64,
    other_path: u64,
}

/// `n` sends with `wait: true`, each timed around the control API call.
async fn sends(from: &Daemon, to: &str, n: usize, path: &str) -> anyhow::Result<Sends> {
    let mut s = Sends {
        lat: Latencies::new(),
        queued: 0,
        other_path: 0,
    };
    for i in 0..n + 3 {
        let request = ControlRequest::Send {
            to: to.into(),
            text: floors::text(i as u64),
            wait: true,
        };
        let start = Instant::now();
        let view = match from.call(&request).await? {
            ControlResponse::Sent(v) => v,
            other => bail!("unexpected answer to send: {other:?}"),
        };
        let took = start.elapsed();
        if i < 3 {
            continue;
        }
        if view.status != "delivered" {
            s.queued += 1;
        } else if view.path.as_deref() != Some(path) {
            s.other_path += 1;
        } else {
            s.lat.record(took);
        }
    }
    Ok(s)
}

struct Burst {
    sent: u64,
    rate: f64,
    queued_in: Duration,
    arrived_in: Duration,
    /// How long each `send` (no wait) took to be answered.
    answers: Latencies,
}

/// `senders` control connections queue messages (`wait: false`) for `window`; the clock stops
/// when the recipient's store holds all of them.
async fn burst(
    from: &Daemon,
    to: &Daemon,
    to_name: &str,
    window: Duration,
    senders: usize,
) -> anyhow::Result<Burst> {
    // Room for the whole burst within the recipient's quota for one sender (10,000 messages
    // until they are deleted): what the suite sent before is deleted first.
    let from_name = from.name.clone();
    to.call(&ControlRequest::Edit {
        edit: InboxEdit::Clear {
            from: Some(from_name),
        },
    })
    .await
    .context("clearing the recipient's inbox before the burst")?;
    let base = to.inbox_count()?;
    // Below the outbox limit, so that a slow recipient shows as a low rate, not an error.
    let cap = (natter_node::store::MAX_OUTBOX as u64) * 9 / 10;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (sent, stop) = (sent.clone(), stop.clone());
        let home = from.home.clone();
        let to_name = to_name.to_owned();
        tasks.spawn(async move {
            let mut answers = Latencies::new();
            while start.elapsed() < window && !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if n >= cap {
                    sent.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let request = ControlRequest::Send {
                    to: to_name.clone(),
                    text: floors::text(n),
                    wait: false,
                };
                let t = Instant::now();
                let mut client = natter_node::control::ControlClient::connect(&home).await?;
                match client.call::<_, ControlResponse>(&request).await {
                    Ok(ControlResponse::Sent(_)) => answers.record(t.elapsed()),
                    Ok(other) => bail!("unexpected answer to send: {other:?}"),
                    Err(e) => {
                        // Not queued (e.g. the outbox is full): stop the burst there.
                        sent.fetch_sub(1, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        tracing::warn!(error = %e, "send refused during the burst");
                        break;
                    }
                }
            }
            anyhow::Ok(answers)
        });
    }
    let mut answers = Latencies::new();
    while let Some(done) = tasks.join_next().await {
        answers.merge(&done??);
    }
    let queued_in = start.elapsed();
    let total = sent.load(Ordering::Relaxed);
    let deadline = Duration::from_secs(120).max(window * 20);
    loop {
        if to.inbox_count()? >= base + total {
            break;
        }
        if start.elapsed() > deadline {
            bail!(
                "only {} of {total} messages arrived within {deadline:?}",
                to.inbox_count()? - base
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrived_in = start.elapsed();
    Ok(Burst {
        sent: total,
        rate: total as f64 / arrived_in.as_secs_f64(),
        queued_in,
        arrived_in,
        answers,
    })
}

/// Probes `name` (never contacted before) until a probe comes back direct: the time from the
/// first probe, which opens the relayed connection, to the first direct answer.
async fn upgrade(from: &Daemon, name: &str, timeout: Duration) -> anyhow::Result<Option<Duration>> {
    let request = ControlRequest::Ping {
        name: name.into(),
        count: 1,
        interval_ms: None,
    };
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let ControlResponse::Ping(p) = from.first(&request).await?
            && p.rtt_ms.is_some()
            && p.path.as_deref() == Some("direct")
        {
            return Ok(Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}
