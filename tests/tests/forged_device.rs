//! A superpeer adds a device of its own to a user's devices: the answer to a lookup of bob
//! carries his genuine record and, among his "other devices", a record under a certificate
//! the superpeer forged for his name, at its own addresses. Messages go to every device of
//! their recipient, so a leaf that took the extra device would send the superpeer everything
//! it sends bob. Every device of an answer is checked like the main record: the forger gets
//! nothing and is dropped, and bob still gets the message (through the honest superpeer).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_proto::overlay::{OverlayRequest, OverlayResponse};
use natter_proto::{PresenceBody, PresenceRecord, Status, UserName};
use natter_tests::hostile::{HostileSuperpeer, plain_superpeer};
use natter_tests::{TestNet, natter_json, wait_for};

const ATTACH: Duration = Duration::from_secs(60);

#[test]
fn a_superpeer_adding_a_forged_device_to_a_user_gets_none_of_his_messages() {
    let net = TestNet::new();
    let genuine: Arc<Mutex<Option<PresenceRecord>>> = Arc::default();
    let answer = Arc::clone(&genuine);
    let hostile = net
        .rt
        .block_on(HostileSuperpeer::start(
            &net.server.addr,
            "mallory",
            Box::new(
                move |me, from, request| match (&request, answer.lock().unwrap().clone()) {
                    (OverlayRequest::Lookup { name }, Some(record)) if *name == "bob" => {
                        OverlayResponse::Found {
                            record,
                            confirmed: true,
                            others: vec![me.forged_record(&UserName::parse("bob").unwrap())],
                        }
                    }
                    _ => plain_superpeer(me, from, request),
                },
            ),
        ))
        .unwrap();
    let mallory = hostile.attacker.peer.to_string();
    let alice = net.node("alice", &["--role", "leaf"]);
    wait_for("alice attached to mallory", ATTACH, || {
        (alice.status()?["primary"].as_str()? == mallory).then_some(())
    });
    let _carol = net.node("carol", &["--role", "superpeer"]);
    let bob = net.node("bob", &["--role", "superpeer"]);
    bob.wait_role("superpeer", ATTACH);
    wait_for("alice's standby", ATTACH, || {
        (alice.status()?["superpeers"].as_array()?.len() == 2).then_some(())
    });

    // Bob's genuine record, signed by his own device, at his real address: what an honest
    // superpeer would answer, so the answer passes on everything but the extra device.
    let home = natter_node::Home::new(Some(bob.home.clone())).unwrap();
    let (bob_id, addr) = bob.tcp_endpoint();
    let now = natter_login_server::service::unix_now();
    let record = PresenceBody {
        cert: home.identity().unwrap().cert,
        status: Status::Online,
        seq: now * 1000,
        last_seen: now,
        expires_at: now + 90,
        home: None,
        relay_addrs: vec![],
        direct_addrs: vec![format!("{addr}/p2p/{bob_id}")],
    }
    .sign(&home.device_key().unwrap())
    .unwrap();
    *genuine.lock().unwrap() = Some(record);

    let sent = alice.send("bob", "for bob's devices only");
    assert_eq!(sent["status"], "delivered", "{sent}");
    // The fan-out to further devices follows the first delivery at once; give it a while.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        assert!(
            hostile.swallowed().is_empty(),
            "the forger received {:?}",
            hostile.swallowed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Alice's view of the message names no device of mallory's.
    let history = natter_json(&alice.home, &["history", "bob"]).unwrap();
    assert!(!history.to_string().contains(&mallory), "{history}");
    // And the forger is no longer her superpeer.
    wait_for("alice to drop the forger", Duration::from_secs(20), || {
        let s = alice.status()?;
        (!s["superpeers"]
            .as_array()?
            .iter()
            .any(|p| p.as_str() == Some(mallory.as_str())))
        .then_some(())
    });
    assert!(hostile.swallowed().is_empty());
}
