//! A superpeer (the real binary) refuses forged directory records offered over Kademlia:
//! wrong signing key, expired certificate, record stored under another user's name, and a
//! replayed lower sequence. A valid record is stored and found.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::kad;
use natter_proto::presence::directory_key;
use natter_proto::{Certificate, PresenceBody, PresenceRecord, Status, UserName};
use natter_tests::hostile::{KadPeer, kad_peer, kad_peer_event};
use natter_tests::{LoginServer, NodeProcess, loopback_config, wait_for};

fn record(
    issuer: &natter_proto::IssuerSigningKey,
    key: &Keypair,
    name: &str,
    seq: u64,
    issued_at: u64,
) -> PresenceRecord {
    let now = natter_login_server::service::unix_now();
    let device = key.clone().try_into_ed25519().unwrap().public().to_bytes();
    let cert = issuer
        .issue(
            UserName::parse(name).unwrap(),
            device,
            seq,
            issued_at,
            86_400,
        )
        .unwrap();
    PresenceBody {
        cert,
        status: Status::Online,
        seq,
        last_seen: now,
        expires_at: now + 90,
        home: None,
        relay_addrs: vec![],
        direct_addrs: vec![],
    }
    .sign(key)
    .unwrap()
}

/// Offers `value` under `name`'s directory key and waits for the put to finish; `cert` is
/// what the offering peer introduces itself with.
async fn offer(
    swarm: &mut libp2p::Swarm<KadPeer>,
    cert: &Certificate,
    name: &str,
    value: &PresenceRecord,
) {
    let key = directory_key(&UserName::parse(name).unwrap());
    let rec = kad::Record::new(kad::RecordKey::new(&key), value.to_json());
    let query = swarm
        .behaviour_mut()
        .kad
        .put_record(rec, kad::Quorum::One)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = swarm.select_next_some().await;
            if let Some(kad::Event::OutboundQueryProgressed { id, step, .. }) =
                kad_peer_event(swarm, Some(cert), event)
                && id == query
                && step.last
            {
                return;
            }
        }
    })
    .await
    .expect("put finishes");
}

#[test]
fn forged_records_are_refused_by_a_superpeer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let login_dir = dir.path().join("login");
    let server = rt.block_on(LoginServer::start(loopback_config(&login_dir)));
    let sp = NodeProcess::start(dir.path(), "seed", &server.addr, &["--role", "superpeer"]);
    sp.wait_role("superpeer", Duration::from_secs(30));
    let (sp_peer, sp_addr) = sp.tcp_endpoint();

    let issuer = natter_login_server::keys::load_or_create_issuer_key(&login_dir).unwrap();
    let eve = Keypair::generate_ed25519();
    let mallory = Keypair::generate_ed25519();
    let now = natter_login_server::service::unix_now();

    // Eve has an account (the overlay serves nobody without one); what she offers is checked
    // record by record all the same.
    let eve_cert = record(&issuer, &eve, "eve", 1, now - 10).body.cert;
    rt.block_on(async {
        let mut swarm = kad_peer(eve.clone()).unwrap();
        swarm.behaviour_mut().kad.add_address(&sp_peer, sp_addr);

        // A valid record first: stored.
        let valid = record(&issuer, &eve, "eve", 1_000, now - 10);
        offer(&mut swarm, &eve_cert, "eve", &valid).await;
        // Wrong key: eve's record carrying a signature made by mallory's key.
        let mut wrong_key = record(&issuer, &eve, "eve", 2_000, now - 10);
        wrong_key.signature = record(&issuer, &mallory, "eve", 2_000, now - 10).signature;
        offer(&mut swarm, &eve_cert, "eve", &wrong_key).await;
        // Expired certificate (issued two days ago for one day).
        let expired = record(&issuer, &eve, "eve", 3_000, now - 2 * 86_400);
        offer(&mut swarm, &eve_cert, "eve", &expired).await;
        // Name mismatch: eve's valid record offered under alice's key.
        let valid_newer = record(&issuer, &eve, "eve", 4_000, now - 10);
        offer(&mut swarm, &eve_cert, "alice", &valid_newer).await;
        // Replay: a lower sequence than the one stored.
        let replay = record(&issuer, &eve, "eve", 500, now - 10);
        offer(&mut swarm, &eve_cert, "eve", &replay).await;
    });

    let refused = wait_for("4 refusals counted", Duration::from_secs(10), || {
        let s = sp.status()?;
        (s["records_refused"].as_u64()? >= 4).then_some(s)
    });
    assert_eq!(refused["records_refused"], 4, "{refused}");
    assert!(
        refused["records_stored"].as_u64().unwrap() >= 1,
        "{refused}"
    );

    // What the superpeer serves for eve is the valid record, not a forgery or the replay.
    let found = sp.lookup("eve").unwrap();
    assert_eq!(found["seq"], 1_000, "{found}");
    assert_eq!(found["peer_id"], eve.public().to_peer_id().to_string());
    // Nothing was stored for alice.
    assert_eq!(sp.lookup("alice").unwrap()["status"], "unknown");
    drop(server);
}

/// "Last seen" outlives the directory record, and a restart. Alice publishes with a 15 s lease
/// and signs off; her offline record ends with its lease like an online one (before, it stayed
/// valid for her certificate's day, so an old one could be replayed); bob's lookup then
/// finds no record and still says when he last saw her, remembered by his node, also after
/// his node restarts. Before, "last seen" disappeared with the record.
#[test]
fn last_seen_outlives_the_directory_record_and_a_restart() {
    let net = natter_tests::TestNet::new();
    let sp = net.node("spa", &["--role", "superpeer"]);
    sp.wait_role("superpeer", Duration::from_secs(30));
    let mut bob = net.node("bob", &["--role", "leaf"]);
    wait_for("bob attached", Duration::from_secs(60), || {
        bob.is_attached().then_some(())
    });
    let started = std::time::Instant::now();
    let alice = net.node("alice", &["--role", "leaf", "--lease", "15"]);
    let online = wait_for("alice online", Duration::from_secs(60), || {
        bob.lookup("alice").filter(|v| v["status"] == "online")
    });
    eprintln!("alice online for bob after {:?}", started.elapsed());
    let seen = online["last_seen"].as_u64().unwrap();

    let out = natter_tests::natter(&alice.home, &["down"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut alice = alice;
    alice.wait_exit(Duration::from_secs(30));
    let gone = wait_for(
        "the directory to forget alice",
        Duration::from_secs(90),
        || bob.lookup("alice").filter(|v| v["seq"].is_null()),
    );
    assert_eq!(gone["status"], "offline", "{gone}");
    let remembered = gone["last_seen"].as_u64();
    assert!(remembered >= Some(seen), "{gone}: seen online at {seen}");

    bob.restart();
    wait_for("bob attached again", Duration::from_secs(60), || {
        bob.is_attached().then_some(())
    });
    let out = natter_tests::natter(&bob.home, &["lookup", "alice"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("alice: offline, last seen "),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = bob.lookup("alice").unwrap();
    assert_eq!(after["last_seen"].as_u64(), remembered, "{after}");

    // A user this node never saw online: offline, "not seen online yet".
    let out = natter_tests::natter(
        &net.dir.path().join("carol"),
        &["register", "carol", "--login", &net.server.addr.to_string()],
        "password1\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = natter_tests::natter(&bob.home, &["lookup", "carol"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("carol: offline (not seen online yet"),
        "{text}"
    );
}
