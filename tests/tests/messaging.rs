//! Messaging with the real `natter` binary on loopback: relayed then direct delivery between
//! leaves, direct delivery to a public node, queueing while the recipient is down, surviving
//! `kill -9` of the sender, a burst of 1,000 in order, and refusal of spoofed or duplicate
//! deliveries at the recipient.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use natter_node::LoginClient;
use natter_node::control::ControlClient;
use natter_node::daemon::api::{ControlRequest, ControlResponse};
use natter_proto::login::Password;
use natter_proto::msg::{DirectMessage, MsgRefusal, MsgRequest, MsgResponse};
use natter_proto::{Certificate, UserName};
use natter_tests::{NodeProcess, natter, natter_json, wait_for};

type Net = natter_tests::TestNet;

fn net() -> Net {
    Net::new()
}

/// The messaging tests' shapes of network.
trait Shapes {
    fn superpeers(&self, names: &[&str]) -> Vec<NodeProcess>;
    fn leaf(&self, name: &str) -> NodeProcess;
}

impl Shapes for Net {
    fn superpeers(&self, names: &[&str]) -> Vec<NodeProcess> {
        let sps: Vec<NodeProcess> = names
            .iter()
            .map(|n| self.node(n, &["--role", "superpeer"]))
            .collect();
        for sp in &sps {
            sp.wait_role("superpeer", Duration::from_secs(30));
        }
        sps
    }

    /// A leaf that keeps its (loopback, hence "public") addresses out of the directory, so
    /// that others reach it through a relay first, as behind NAT.
    fn leaf(&self, name: &str) -> NodeProcess {
        let leaf = self.node(name, &["--role", "leaf", "--no-direct"]);
        wait_attached(&leaf);
        leaf
    }
}

fn wait_attached(leaf: &NodeProcess) {
    wait_for("attached", Duration::from_secs(60), || {
        leaf.status()
            .filter(|s| s["primary"].is_string())
            .map(|_| ())
    });
}

fn wait_online(from: &NodeProcess, name: &str) {
    wait_for(&format!("{name} online"), Duration::from_secs(30), || {
        from.lookup(name)
            .filter(|v| v["status"] == "online")
            .map(|_| ())
    });
}

fn send(from: &NodeProcess, to: &str, text: &str) -> serde_json::Value {
    from.send(to, text)
}

/// Runs `natter ARGS` on `node`'s home; fails the test if it has not ended within 30 s.
fn ping_with_deadline(node: &NodeProcess, args: &[&str]) -> String {
    let mut child = std::process::Command::new(natter_tests::bin("natter"))
        .arg("--home")
        .arg(&node.home)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("natter {args:?} did not end within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn inbox(node: &NodeProcess) -> Vec<serde_json::Value> {
    natter_json(&node.home, &["inbox"])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn texts(node: &NodeProcess) -> Vec<String> {
    inbox(node)
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn leaf_to_leaf_is_relayed_then_direct_and_a_public_node_is_reached_directly() {
    let net = net();
    let sps = net.superpeers(&["spa", "spb"]);
    let alice = net.leaf("alice");
    let bob = net.leaf("bob");
    wait_online(&alice, "bob");

    // First contact between two leaves goes through bob's superpeer.
    let first = send(&alice, "bob", "hello bob");
    assert_eq!(first["status"], "delivered", "{first}");
    assert_eq!(first["path"], "relayed", "{first}");
    assert!(first["id"].as_str().unwrap().len() == 26);

    // Hole punching then upgrades the connection: ping shows it.
    let direct = wait_for("a direct path", Duration::from_secs(30), || {
        let probes = natter_json(&alice.home, &["ping", "bob", "--count", "1"])?;
        let probe = probes.as_array()?.first()?.clone();
        (probe["path"] == "direct").then_some(probe)
    });
    assert!(direct["rtt_ms"].as_f64().unwrap() > 0.0);
    let second = send(&alice, "bob", "now direct");
    assert_eq!(second["path"], "direct", "{second}");

    // A public node (a superpeer's user) is reached directly from the first message.
    wait_online(&alice, "spa");
    let public = send(&alice, "spa", "hi superpeer");
    assert_eq!(public["status"], "delivered");
    assert_eq!(public["path"], "direct", "{public}");

    // Each message shows once, in order.
    assert_eq!(texts(&bob), vec!["hello bob", "now direct"]);
    assert_eq!(texts(&sps[0]), vec!["hi superpeer"]);
    let mail = inbox(&bob);
    assert_eq!(mail[0]["from"], "alice");
    assert!(mail[0]["received_at"].as_u64().unwrap() >= mail[0]["sent_at"].as_u64().unwrap());
}

#[test]
fn bad_input_is_refused_before_queueing() {
    let net = net();
    let _sps = net.superpeers(&["spa"]);
    let alice = net.leaf("alice");
    let fails = |args: &[&str], needle: &str| {
        let out = natter(&alice.home, args, "");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
    };
    fails(&["send", "nobody", "hi"], "no user named nobody");
    fails(&["send", "bob!", "hi"], "invalid name");
    fails(&["send", "alice", ""], "empty");
    let big = "x".repeat(64 * 1024 + 1);
    fails(&["send", "alice", &big], "at most 65536 bytes");
    fails(&["contacts", "add", "Alice"], "cannot add yourself");
    // Only users who exist (before: any well-formed name was added).
    fails(&["contacts", "add", "nobody"], "no user named nobody");
    let status = natter_json(&alice.home, &["status"]).unwrap();
    assert_eq!(status["user"], "alice");
    // Nothing reached the outbox: a queued message would be retried for ever.
    let store = natter_node::store::Store::open(&alice.home).unwrap();
    assert_eq!(store.outbox_len().unwrap(), 0);

    // A daemon that is not running: a clear error saying how to start it.
    let nowhere = net.dir.path().join("nowhere");
    let out = natter(&nowhere, &["send", "alice", "hi"], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("natter is not running") && err.contains("up"),
        "{err}"
    );
}

#[test]
fn queued_while_the_recipient_is_down_and_delivered_when_it_returns() {
    let net = net();
    let _sps = net.superpeers(&["spa", "spb"]);
    let alice = net.leaf("alice");
    let mut bob = net.leaf("bob");
    wait_online(&alice, "bob");
    let out = natter(&bob.home, &["down"], "");
    assert!(out.status.success());
    bob.wait_exit(Duration::from_secs(10));
    wait_for("bob offline", Duration::from_secs(20), || {
        alice
            .lookup("bob")
            .filter(|v| v["status"] == "offline")
            .map(|_| ())
    });

    let queued = send(&alice, "bob", "while you were out");
    assert_eq!(queued["status"], "queued", "{queued}");
    assert!(queued["path"].is_null());

    // A ping to a user who is offline ends with a probe that says why (it used to hang).
    let ping = ping_with_deadline(&alice, &["ping", "bob", "--count", "3", "--json"]);
    assert!(
        ping.contains("offline or unknown"),
        "ping to an offline user: {ping}"
    );

    bob.restart();
    wait_for(
        "delivery after bob returns",
        Duration::from_secs(60),
        || (texts(&bob) == vec!["while you were out"]).then_some(()),
    );
}

#[test]
fn a_message_survives_kill_9_of_the_sender() {
    let net = net();
    let _sps = net.superpeers(&["spa", "spb"]);
    let mut alice = net.leaf("alice");
    let mut bob = net.leaf("bob");
    wait_online(&alice, "bob");
    assert!(natter(&bob.home, &["down"], "").status.success());
    bob.wait_exit(Duration::from_secs(10));

    let queued = send(&alice, "bob", "survives a crash");
    assert_eq!(queued["status"], "queued", "{queued}");
    alice.kill(); // SIGKILL right after send returned

    bob.restart();
    wait_attached(&bob);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        texts(&bob).is_empty(),
        "nothing can arrive while the sender is dead"
    );
    alice.restart();
    wait_for(
        "delivery after the sender restarts",
        Duration::from_secs(60),
        || (texts(&bob) == vec!["survives a crash"]).then_some(()),
    );
}

#[test]
fn a_burst_of_1000_arrives_complete_and_in_order() {
    let net = net();
    let _sps = net.superpeers(&["spa"]);
    let alice = net.leaf("alice");
    let bob = net.leaf("bob");
    wait_online(&alice, "bob");
    // A contact: more than a contact request's 20 messages are taken.
    let out = natter(&bob.home, &["contacts", "add", "alice"], "");
    assert!(out.status.success());
    net.rt.block_on(async {
        for i in 0..1000 {
            let mut client = ControlClient::connect(&alice.home).await.unwrap();
            let request = ControlRequest::Send {
                to: "bob".into(),
                text: format!("burst {i:04}"),
                wait: false,
            };
            match client.call::<_, ControlResponse>(&request).await.unwrap() {
                ControlResponse::Sent(_) => {}
                other => panic!("{other:?}"),
            }
        }
    });
    let got = wait_for("1000 messages", Duration::from_secs(120), || {
        let t = texts(&bob);
        (t.len() >= 1000).then_some(t)
    });
    let expected: Vec<String> = (0..1000).map(|i| format!("burst {i:04}")).collect();
    assert_eq!(got, expected);
}

/// A stranger floods bob (before: 80 MiB stored in 3.6 s, after which `natter inbox --json`
/// failed for good). The flood stops at the contact-request quota (20 messages), the sender
/// is told why and keeps the rest queued, bob's inbox keeps working, and once bob accepts
/// the sender, the rest arrives, in order: nothing is lost.
#[test]
fn a_strangers_flood_stops_at_the_request_quota_and_nothing_is_lost() {
    let net = net();
    let _sps = net.superpeers(&["spa"]);
    let mallory = net.leaf("mallory");
    let bob = net.leaf("bob");
    wait_online(&mallory, "bob");
    let flood: Vec<String> = (0..60)
        .map(|i| format!("flood {i:03} {}", "x".repeat(1024)))
        .collect();
    net.rt.block_on(async {
        for text in &flood {
            let mut client = ControlClient::connect(&mallory.home).await.unwrap();
            let request = ControlRequest::Send {
                to: "bob".into(),
                text: text.clone(),
                wait: false,
            };
            match client.call::<_, ControlResponse>(&request).await.unwrap() {
                ControlResponse::Sent(_) => {}
                other => panic!("{other:?}"),
            }
        }
    });
    // The sender hears why the rest waits.
    let queued = wait_for("40 refused and queued", Duration::from_secs(60), || {
        let out = natter(&mallory.home, &["outbox", "--json"], "");
        let items: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        let refused = items.iter().all(|m| {
            m["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not in the recipient's contacts"))
        });
        (items.len() == 40 && refused).then_some(items)
    });
    assert_eq!(queued[0]["text"], flood[20]);
    let got = texts(&bob);
    assert_eq!(got, flood[..20]);
    let answer = send(&mallory, "bob", "one more");
    assert_eq!(answer["status"], "queued", "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("until they accept you")),
        "{answer}"
    );
    // Bob's inbox works as before: read, delete, read.
    let first = inbox(&bob)[0]["id"].as_str().unwrap().to_owned();
    let out = natter(&bob.home, &["inbox", "delete", &first], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(texts(&bob), flood[1..20]);
    // Bob sees who waits to be accepted, with what.
    let out = natter(&bob.home, &["contacts", "requests", "--json"], "");
    let requests: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(requests[0]["from"], "mallory", "{requests}");
    assert_eq!(requests[0]["messages"], 19, "{requests}");
    // Mallory takes back one queued message; it is never delivered.
    let unwanted = send(&mallory, "bob", "unwanted");
    let id = unwanted["id"].as_str().unwrap();
    let out = natter(&mallory.home, &["outbox", "drop", id], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = natter(&bob.home, &["contacts", "accept", "mallory"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = wait_for("the rest after accept", Duration::from_secs(90), || {
        let t = texts(&bob);
        (t.len() >= 60).then_some(t)
    });
    let mut expected = flood[1..].to_vec();
    expected.push("one more".into());
    assert_eq!(all, expected);
    let out = natter(&bob.home, &["contacts", "requests", "--json"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = natter(&mallory.home, &["outbox", "--json"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

type MsgCodec = request_response::json::codec::Codec<MsgRequest, MsgResponse>;

/// A bare client speaking `/natter/msg/1.0.0` as `key`, for what the CLI never sends.
async fn raw_request(
    key: Keypair,
    to: PeerId,
    addr: Multiaddr,
    request: MsgRequest,
) -> MsgResponse {
    let tcp_only = natter_net::TransportConfig {
        quic: None,
        ..Default::default()
    };
    let mut swarm = natter_net::build_swarm(key, &tcp_only, |_| {
        request_response::Behaviour::<MsgCodec>::new(
            [(
                StreamProtocol::new(natter_proto::protocol::MSG),
                ProtocolSupport::Outbound,
            )],
            request_response::Config::default(),
        )
    })
    .unwrap();
    swarm.dial(addr).unwrap();
    let mut request = Some(request);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == to => {
                    if let Some(r) = request.take() {
                        swarm.behaviour_mut().send_request(&to, r);
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => return response,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => {
                    panic!("request failed: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("answer in time")
}

#[test]
fn spoofed_senders_are_refused_and_duplicates_stored_once() {
    let net = net();
    let sps = net.superpeers(&["sam"]);
    let sam = &sps[0];
    let (sam_peer, sam_addr) = sam.tcp_endpoint();

    let key = Keypair::generate_ed25519();
    let mallet: Certificate = net
        .rt
        .block_on(
            LoginClient::new(key.clone(), net.server.addr.clone())
                .unwrap()
                .register(
                    &UserName::parse("mallet").unwrap(),
                    Password::new("password1"),
                ),
        )
        .unwrap()
        .cert;
    // Another user's certificate, as someone holding a copy of it would present it.
    let other_key = Keypair::generate_ed25519();
    let victim: Certificate = net
        .rt
        .block_on(
            LoginClient::new(other_key, net.server.addr.clone())
                .unwrap()
                .register(
                    &UserName::parse("victim").unwrap(),
                    Password::new("password1"),
                ),
        )
        .unwrap()
        .cert;

    let batch = |ids: &[&str]| -> Vec<DirectMessage> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| DirectMessage {
                id: (*id).into(),
                to: "sam".into(),
                text: format!("message {i}"),
                sent_at_ms: 1,
                conv_seq: i as u64 + 1,
            })
            .collect()
    };
    let ids = ["01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW"];

    let spoofed = net.rt.block_on(raw_request(
        key.clone(),
        sam_peer,
        sam_addr.clone(),
        MsgRequest::Deliver {
            cert: victim,
            messages: batch(&ids),
        },
    ));
    assert!(
        matches!(
            spoofed,
            MsgResponse::Refused {
                code: MsgRefusal::NotAuthenticated,
                ..
            }
        ),
        "{spoofed:?}"
    );
    assert!(texts(sam).is_empty());

    for expected in [(2, 0), (0, 2)] {
        let answer = net.rt.block_on(raw_request(
            key.clone(),
            sam_peer,
            sam_addr.clone(),
            MsgRequest::Deliver {
                cert: mallet.clone(),
                messages: batch(&ids),
            },
        ));
        assert_eq!(
            answer,
            MsgResponse::Stored {
                stored: expected.0,
                duplicates: expected.1
            }
        );
    }
    assert_eq!(texts(sam), vec!["message 0", "message 1"]);
    let mail = inbox(sam);
    assert_eq!(
        mail[0]["from"], "mallet",
        "the sender's name comes from its certificate"
    );
}

#[test]
fn contacts_see_a_status_change_at_once_through_inbox_follow() {
    use std::io::BufRead as _;
    let net = net();
    let _sps = net.superpeers(&["spa"]);
    let alice = net.leaf("alice");
    let bob = net.leaf("bob");
    wait_online(&alice, "bob");
    let out = natter(&alice.home, &["contacts", "add", "bob"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The list shows each contact's presence (before: names only).
    let contacts = natter_json(&alice.home, &["contacts", "list"]).unwrap();
    assert_eq!(contacts[0]["name"], "bob", "{contacts}");
    assert_eq!(contacts[0]["status"], "online", "{contacts}");
    assert_eq!(contacts.as_array().unwrap().len(), 1, "{contacts}");
    let out = natter(&alice.home, &["contacts", "list"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bob: online\n");

    let mut follow = std::process::Command::new(natter_tests::bin("natter"))
        .arg("--home")
        .arg(&bob.home)
        .args(["inbox", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500)); // let the follower register
    let changed = std::time::Instant::now();
    assert!(
        natter(&alice.home, &["set-status", "away"], "")
            .status
            .success()
    );
    let event: serde_json::Value = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("presence event");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "presence" {
            break v;
        }
    };
    eprintln!("presence change seen after {:?}", changed.elapsed());
    assert_eq!(event["user"], "alice");
    assert_eq!(event["status"], "away");

    // Messages stream the same way, one JSON object per line.
    send(&alice, "bob", "following?");
    let message: serde_json::Value = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("message event");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "message" {
            break v;
        }
    };
    assert_eq!(message["text"], "following?");
    assert_eq!(message["from"], "alice");
    let _ = follow.kill();
    let _ = follow.wait();
}

/// `retention_days` deletes received messages older than that when the daemon starts (and
/// hourly), and keeps the newer ones. Before, nothing was ever deleted but by hand.
#[test]
fn the_retention_setting_deletes_old_messages_and_keeps_new_ones() {
    let net = net();
    let config = net.dir.path().join("retention.toml");
    std::fs::write(&config, "").unwrap();
    let mut bob = net.node(
        "bob",
        &["--role", "superpeer", "--config", config.to_str().unwrap()],
    );
    bob.wait_role("superpeer", Duration::from_secs(30));
    bob.kill();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let day = 86_400_000;
    let store = natter_node::store::Store::open(&bob.home).unwrap();
    for (n, age) in [(1u32, 3 * day), (2, day)] {
        let message = natter_node::store::IncomingMessage {
            id: format!("01ARZ3NDEKTSV4RRFFQ{n:07}"),
            from: "alice".into(),
            text: format!("{} day(s) old", age / day),
            sent_at_ms: now - age,
            conv_seq: u64::from(n),
            received_at_ms: now - age,
        };
        store.receive(&message).unwrap();
    }
    drop(store);
    assert_eq!(texts(&bob), ["3 day(s) old", "1 day(s) old"]);
    std::fs::write(&config, "[inbox]\nretention_days = 2\n").unwrap();
    bob.restart();
    wait_for("the old message deleted", Duration::from_secs(30), || {
        (texts(&bob) == ["1 day(s) old"]).then_some(())
    });
}
