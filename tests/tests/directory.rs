//! A superpeer (the real binary) refuses forged directory records offered over Kademlia:
//! wrong signing key, expired certificate, record stored under another user's name, and a
//! replayed lower sequence. A valid record is stored and found.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, kad};
use natter_proto::presence::directory_key;
use natter_proto::{PresenceBody, PresenceRecord, Status, UserName};
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

/// Offers `value` under `name`'s directory key to `target` and waits for the put to finish.
async fn offer(
    swarm: &mut libp2p::Swarm<kad::Behaviour<kad::store::MemoryStore>>,
    name: &str,
    value: &PresenceRecord,
) {
    let key = directory_key(&UserName::parse(name).unwrap());
    let rec = kad::Record::new(kad::RecordKey::new(&key), value.to_json());
    let query = swarm
        .behaviour_mut()
        .put_record(rec, kad::Quorum::One)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { id, step, .. }) =
                swarm.select_next_some().await
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

    rt.block_on(async {
        let tcp_only = natter_net::TransportConfig {
            quic: None,
            ..Default::default()
        };
        let mut swarm = natter_net::build_swarm(eve.clone(), &tcp_only, |key| {
            let peer = key.public().to_peer_id();
            let config = kad::Config::new(StreamProtocol::new(natter_proto::protocol::KAD));
            kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), config)
        })
        .unwrap();
        swarm.behaviour_mut().set_mode(Some(kad::Mode::Client));
        swarm.behaviour_mut().add_address(&sp_peer, sp_addr);

        // A valid record first: stored.
        let valid = record(&issuer, &eve, "eve", 1_000, now - 10);
        offer(&mut swarm, "eve", &valid).await;
        // Wrong key: eve's record carrying a signature made by mallory's key.
        let mut wrong_key = record(&issuer, &eve, "eve", 2_000, now - 10);
        wrong_key.signature = record(&issuer, &mallory, "eve", 2_000, now - 10).signature;
        offer(&mut swarm, "eve", &wrong_key).await;
        // Expired certificate (issued two days ago for one day).
        let expired = record(&issuer, &eve, "eve", 3_000, now - 2 * 86_400);
        offer(&mut swarm, "eve", &expired).await;
        // Name mismatch: eve's valid record offered under alice's key.
        let valid_newer = record(&issuer, &eve, "eve", 4_000, now - 10);
        offer(&mut swarm, "alice", &valid_newer).await;
        // Replay: a lower sequence than the one stored.
        let replay = record(&issuer, &eve, "eve", 500, now - 10);
        offer(&mut swarm, "eve", &replay).await;
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
