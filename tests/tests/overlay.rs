//! The overlay with the real `natter` binary on loopback: nodes promote themselves, leaves
//! attach to two superpeers, users find each other, sign off, fail over, get refused when a
//! superpeer is full, and forged directory records are refused.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use natter_tests::{LoginServer, NodeProcess, loopback_config, wait_for};

const PROMOTE: Duration = Duration::from_secs(60);
const ATTACH: Duration = Duration::from_secs(60);

type Net = natter_tests::TestNet;

fn net() -> Net {
    Net::new()
}

fn attached(node: &NodeProcess, n: usize) -> Vec<String> {
    wait_for(
        &format!("{} attached to {n}", node.home.display()),
        ATTACH,
        || {
            let s = node.status()?;
            let sps: Vec<String> = s["superpeers"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            (sps.len() == n).then_some(sps)
        },
    )
}

fn status_of(node: &NodeProcess, name: &str, expected: &str) -> serde_json::Value {
    wait_for(
        &format!("{name} to read {expected}"),
        Duration::from_secs(20),
        || node.lookup(name).filter(|v| v["status"] == expected),
    )
}

#[test]
fn nodes_promote_themselves_leaves_attach_and_users_find_each_other() {
    let net = net();
    let sps: Vec<NodeProcess> = ["sp1", "sp2", "sp3"]
        .iter()
        .map(|u| net.node(u, &["--role", "auto"]))
        .collect();
    for sp in &sps {
        sp.wait_role("superpeer", PROMOTE);
        let s = sp.status().unwrap();
        assert_eq!(s["reachability"], "public");
        assert!(
            sp.output().contains("promoted to superpeer"),
            "{}",
            sp.output()
        );
    }
    let superpeer_ids: Vec<String> = sps.iter().map(NodeProcess::peer_id).collect();

    let alice = net.node("alice", &["--role", "leaf"]);
    let mut bob = net.node("bob", &["--role", "leaf"]);
    for leaf in [&alice, &bob] {
        let attached_to = attached(leaf, 2);
        assert!(
            attached_to.iter().all(|p| superpeer_ids.contains(p)),
            "{attached_to:?}"
        );
        assert_ne!(attached_to[0], attached_to[1]);
        let s = leaf.status().unwrap();
        assert_eq!(s["role"], "leaf");
    }

    let found = status_of(&alice, "bob", "online");
    assert_eq!(found["peer_id"], bob.peer_id());
    assert!(
        found["superpeers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("p2p-circuit")),
        "relay addresses in the record: {found}"
    );
    status_of(&bob, "alice", "online");
    // A superpeer finds a leaf of another superpeer, and a leaf finds a superpeer's user.
    status_of(&sps[0], "alice", "online");
    status_of(&alice, "sp3", "online");
    // Nobody registered this name.
    assert_eq!(alice.lookup("nobody").unwrap()["status"], "unknown");

    // Graceful sign-off: others read offline, with last-seen.
    let out = natter_tests::natter(&bob.home, &["down"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bob.wait_exit(Duration::from_secs(10)).success());
    let gone = status_of(&alice, "bob", "offline");
    let last_seen = gone["last_seen"].as_u64().expect("last_seen");
    assert!(last_seen + 120 > natter_login_server::service::unix_now());

    // The login server holds accounts, counters, which devices it certified (for the cap
    // on devices per account, written at most hourly) and revocations, never presence.
    let db = rusqlite_tables(&net.dir.path().join("login"));
    assert_eq!(db, ["accounts", "counters", "devices", "revocations"]);
}

fn rusqlite_tables(data_dir: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print('\\n'.join(r[0] for r in c.execute(\"select name from sqlite_master where type='table' order by name\")))")
        .arg(data_dir.join("accounts.sqlite3"))
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_leaf_whose_primary_dies_is_reachable_again_through_another_within_seconds() {
    let net = net();
    let mut sps: Vec<NodeProcess> = ["spa", "spb", "spc"]
        .iter()
        .map(|u| net.node(u, &["--role", "superpeer"]))
        .collect();
    for sp in &sps {
        sp.wait_role("superpeer", PROMOTE);
    }
    let ids: Vec<String> = sps.iter().map(NodeProcess::peer_id).collect();
    let alice = net.node("alice", &["--role", "leaf"]);
    let bob = net.node("bob", &["--role", "leaf"]);
    let alice_sps = attached(&alice, 2);
    attached(&bob, 2);
    status_of(&bob, "alice", "online");

    let primary = alice_sps[0].clone();
    let victim = ids.iter().position(|p| *p == primary).unwrap();
    // Her record is held by her primary, since a moment after she attached to it.
    let before = wait_for("alice's record held", Duration::from_secs(30), || {
        let s = alice.status()?;
        (s["home"].as_str()? == primary).then_some(s)
    });
    let (attached_ms, held_ms) = (
        before["primary_since"].as_u64().unwrap(),
        before["home_since"].as_u64().unwrap(),
    );
    assert!(attached_ms <= held_ms, "{before}");
    let killed_ms = unix_ms();
    let killed_at = Instant::now();
    sps[victim].kill();

    // Alice fails over to her standby and publishes through it; Bob reads her online again
    // with relay addresses that no longer go through the dead superpeer.
    let found = wait_for(
        "alice reachable through another superpeer",
        Duration::from_secs(60),
        || {
            let v = bob.lookup("alice")?;
            let relays = v["superpeers"].as_array()?;
            let fresh = v["status"] == "online"
                && !relays.is_empty()
                && relays
                    .iter()
                    .all(|a| !a.as_str().unwrap_or("").contains(&primary));
            fresh.then_some(v)
        },
    );
    let took = killed_at.elapsed();
    eprintln!("failover: reachable again after {took:?}: {found}");
    let s = alice.status().unwrap();
    assert_ne!(s["primary"], primary.as_str());
    assert!(alice.output().contains("takes over"), "{}", alice.output());
    // The standby she was attached to before the kill now holds her record, since after it.
    assert!(s["primary_since"].as_u64().unwrap() < killed_ms, "{s}");
    assert_eq!(s["home"], s["primary"], "{s}");
    assert!(s["home_since"].as_u64().unwrap() >= killed_ms, "{s}");
    // And she finds a new standby.
    let now_attached = attached(&alice, 2);
    assert!(!now_attached.contains(&primary));
}

/// A superpeer that hangs (here `SIGSTOP`: its sockets stay open, so no connection closes)
/// stops answering its leaves. The leaf drops it when a publication or a revocation poll
/// goes unanswered, and its standby takes over: before, the leaf kept a hung primary until
/// TCP gave up on the connection, many minutes later.
#[test]
fn a_leaf_whose_primary_hangs_drops_it_and_is_reachable_through_its_standby() {
    let net = net();
    // TCP only: QUIC's own keep-alive would notice the hang within 6 s by itself.
    let tcp = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let mut sps: Vec<NodeProcess> = ["sph", "spi", "spj"]
        .iter()
        .map(|u| net.node(u, &["--role", "superpeer", tcp[0], tcp[1]]))
        .collect();
    for sp in &sps {
        sp.wait_role("superpeer", PROMOTE);
    }
    let ids: Vec<String> = sps.iter().map(NodeProcess::peer_id).collect();
    let alice = net.node("alice", &["--role", "leaf", tcp[0], tcp[1]]);
    let alice_sps = attached(&alice, 2);
    let (hung, standby) = (alice_sps[0].clone(), alice_sps[1].clone());
    let victim = ids.iter().position(|p| *p == hung).unwrap();
    let stop = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &sps[victim].pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    stop("-STOP");

    // Within a revocation poll (every 15 s) and the overlay's request timeout (15 s), with a
    // margin.
    // Her standby then holds her record.
    wait_for(
        "alice to drop her hung primary",
        Duration::from_secs(60),
        || {
            alice
                .status()
                .filter(|s| s["primary"] == standby.as_str() && s["home"] == standby.as_str())
        },
    );
    assert!(alice.output().contains("takes over"), "{}", alice.output());
    // Bob, on the superpeers that still answer, finds her at her new home.
    let bob = net.node("bob", &["--role", "leaf"]);
    let found = wait_for("bob to find alice", Duration::from_secs(60), || {
        bob.lookup("alice")
            .filter(|v| v["status"] == "online" && v["home"] == standby.as_str())
    });
    assert_eq!(found["user"], "alice");
    stop("-CONT");
    sps[victim].kill();
}

#[test]
fn a_full_superpeer_refuses_and_the_leaf_attaches_elsewhere() {
    let net = net();
    let full = net.node("tiny", &["--role", "superpeer", "--max-leaves", "0"]);
    let roomy = net.node("roomy", &["--role", "superpeer"]);
    full.wait_role("superpeer", PROMOTE);
    roomy.wait_role("superpeer", PROMOTE);
    let (full_id, roomy_id) = (full.peer_id(), roomy.peer_id());
    // Both are in the login server's list before the leaf starts.
    std::thread::sleep(Duration::from_secs(1));

    let leaf = net.node("carol", &["--role", "leaf"]);
    let sps = attached(&leaf, 1);
    assert_eq!(sps, vec![roomy_id]);
    // It did ask the full one (it wants a standby too) and was told to go elsewhere.
    wait_for("the refusal", ATTACH, || {
        leaf.output()
            .contains(&format!("superpeer {full_id} is full"))
            .then_some(())
    });
    assert_eq!(full.status().unwrap()["leaves"], 0);
    assert_eq!(roomy.status().unwrap()["leaves"], 1);
}

#[test]
fn the_daemon_renews_its_certificate_before_expiry_without_a_password() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(&dir.path().join("login"));
    config.cert_lifetime = Duration::from_secs(12);
    let server = rt.block_on(LoginServer::start(config));
    let node = NodeProcess::start(dir.path(), "renee", &server.addr, &["--role", "superpeer"]);
    node.wait_role("superpeer", PROMOTE);
    let first = node.status().unwrap()["cert_expires_at"].as_u64().unwrap();
    // Renewal is due at 80% of the lifetime; the daemon has no password to use.
    let renewed = wait_for("a renewed certificate", Duration::from_secs(30), || {
        let s = node.status()?;
        let exp = s["cert_expires_at"].as_u64()?;
        (exp > first).then_some(exp)
    });
    assert!(renewed > first);
    // The renewed certificate is what the node stores for its next start.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.home.join("identity.json")).unwrap()).unwrap();
    let cert = natter_proto::Certificate::from_base64(stored["cert"].as_str().unwrap()).unwrap();
    assert!(cert.expires_at() >= renewed);
    drop(server);
}

/// Certificates renewed while connected: each node introduces its new certificate on the
/// connections it has, so its peers serve it on past the old one's expiry. With 12 s
/// certificates (renewed at 80%), a leaf stays attached to its superpeer without a break for
/// three lifetimes, and each lookup through it is answered the first time.
#[test]
fn a_renewed_certificate_keeps_a_leaf_served_past_the_first_ones_expiry() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(&dir.path().join("login"));
    config.cert_lifetime = Duration::from_secs(12);
    let server = rt.block_on(LoginServer::start(config));
    let start = |name: &str, role: &str| {
        NodeProcess::start(dir.path(), name, &server.addr, &["--role", role])
    };
    let sp = start("spa", "superpeer");
    sp.wait_role("superpeer", PROMOTE);
    let alice = start("alice", "leaf");
    let bob = start("bob", "leaf");
    for (from, to) in [(&alice, "bob"), (&bob, "alice")] {
        wait_for(&format!("{to} online"), ATTACH, || {
            from.lookup(to)
                .filter(|v| v["status"] == "online")
                .map(drop)
        });
    }
    let first = alice.status().unwrap()["cert_expires_at"].as_u64().unwrap();
    let until = first + 24;
    let mut renewed = first;
    while natter_login_server::service::unix_now() < until {
        let status = alice.status().unwrap();
        assert_eq!(status["primary"], sp.peer_id().as_str(), "{status}");
        renewed = renewed.max(status["cert_expires_at"].as_u64().unwrap());
        let out = natter_tests::natter(&alice.home, &["lookup", "bob", "--json"], "");
        let view: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("lookup failed: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(view["status"], "online", "{view}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        renewed > first + 12,
        "alice renewed twice: {first} -> {renewed}"
    );
}

/// A leaf whose only superpeer comes back on another port asks the login server for a fresh
/// bootstrap list instead of retrying the old address for minutes (issue 17, item 3).
#[test]
fn a_leaf_finds_its_only_superpeer_again_on_a_new_port() {
    let net = net();
    let mut sp = net.node("spa", &["--role", "superpeer"]);
    sp.wait_role("superpeer", PROMOTE);
    let id = sp.peer_id();
    let alice = net.node("alice", &["--role", "leaf"]);
    assert_eq!(attached(&alice, 1), vec![id.clone()]);
    let old = sp.status().unwrap()["listen_addrs"].clone();

    // Killed, and started again from its home: same peer id, new ports (port 0).
    sp.kill();
    wait_for("alice to notice", Duration::from_secs(30), || {
        alice
            .status()
            .filter(|s| s["primary"].is_null())
            .map(|_| ())
    });
    sp.restart();
    sp.wait_role("superpeer", PROMOTE);
    let new = sp.status().unwrap()["listen_addrs"].clone();
    assert_ne!(old, new, "the superpeer came back on the same ports");
    wait_for(
        "alice attached to spa again",
        Duration::from_secs(45),
        || {
            alice
                .status()
                .filter(|s| s["primary"] == id.as_str())
                .map(|_| ())
        },
    );
}

/// Each request-response behaviour numbers its requests from 1 on its own. A leaf that starts
/// with a dead superpeer first in its host cache sends its first attach (overlay request 1)
/// while its first login request (login request 1) is in flight, and the attach fails at
/// once. When the network task keyed requests by that number alone, the failed attach took
/// the login's place and the login server's answer was dropped: the leaf went without its
/// bootstrap list until the next one was asked for, 10 s later.
#[test]
fn a_failed_attach_does_not_swallow_the_login_answer() {
    const LOGGED_IN: Duration = Duration::from_secs(5);
    let net = net();
    let mut sp = net.node("spa", &["--role", "superpeer"]);
    sp.wait_role("superpeer", PROMOTE);
    let mut alice = net.node("alice", &["--role", "leaf"]);
    attached(&alice, 1);
    alice.kill();
    sp.kill();
    alice.restart();
    wait_for("alice logged in after her restart", LOGGED_IN, || {
        alice.output().contains("logged in").then_some(())
    });
}

/// Two connections to a node at once (both sides dialling, a relayed one next to a direct
/// one): the node introduces itself on one of them, and when that one closes before the
/// answer, it says it again on the other. It did not: the peer held the node's answers as
/// those of a peer without an account, then closed the connection (seen as a leaf attached
/// to one superpeer instead of two for a whole minute).
#[test]
fn an_introduction_cut_off_with_its_connection_is_made_again_on_another() {
    use futures::StreamExt as _;
    use libp2p::request_response::{Event, Message};
    use libp2p::swarm::SwarmEvent;
    use natter_tests::hostile::{KadPeerEvent, kad_peer};

    let net = net();
    let sp = net.node("spa", &["--role", "superpeer"]);
    sp.wait_role("superpeer", PROMOTE);
    let (sp_peer, sp_addr) = sp.tcp_endpoint();
    let heard = net.rt.block_on(async {
        let mut swarm = kad_peer(libp2p::identity::Keypair::generate_ed25519()).unwrap();
        let addr = sp_addr.with(libp2p::multiaddr::Protocol::P2p(sp_peer));
        swarm.dial(addr.clone()).unwrap();
        swarm.dial(addr).unwrap();
        let (mut connections, mut first, mut heard) = (Vec::new(), None, 0);
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                () = &mut deadline => break,
                event = swarm.select_next_some() => event,
            };
            match event {
                SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                    connections.push(connection_id);
                }
                SwarmEvent::Behaviour(KadPeerEvent::Introduce(Event::Message {
                    connection_id,
                    message: Message::Request { channel, .. },
                    ..
                })) => {
                    heard += 1;
                    if heard > 1 {
                        break;
                    }
                    // Unanswered until both connections are up; then its own is closed.
                    first = Some((connection_id, channel));
                }
                _ => {}
            }
            if connections.len() == 2
                && let Some((connection, _unanswered)) = first.take()
            {
                swarm.close_connection(connection);
            }
        }
        heard
    });
    assert_eq!(heard, 2, "the node did not introduce itself again");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
