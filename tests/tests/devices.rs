//! One user on several devices, with the real `natter` binary on loopback: the directory keeps
//! each device's record side by side, a lookup lists them all, and one device signing off
//! leaves the user online on the other.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::time::Duration;

use natter_tests::{NodeProcess, TestNet, natter, wait_for};

const PROMOTE: Duration = Duration::from_secs(60);
const ATTACH: Duration = Duration::from_secs(60);

/// The peer ids `lookup NAME --json` lists under `devices`, if the answer reads `status`.
fn devices_if(answer: &serde_json::Value, status: &str) -> Option<BTreeSet<String>> {
    (answer["status"] == status).then_some(())?;
    Some(
        answer["devices"]
            .as_array()?
            .iter()
            .filter_map(|d| d["peer_id"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[test]
fn a_user_on_two_devices_is_listed_with_both_and_stays_online_when_one_signs_off() {
    let net = TestNet::new();
    let sps: Vec<NodeProcess> = ["spa", "spb"]
        .iter()
        .map(|u| net.node(u, &["--role", "superpeer"]))
        .collect();
    for sp in &sps {
        sp.wait_role("superpeer", PROMOTE);
    }
    let laptop = net.node("alice", &["--role", "leaf"]);
    let mut phone = NodeProcess::start_device(
        net.dir.path(),
        "alice",
        "phone",
        &net.server.addr,
        &["--role", "leaf"],
    );
    let bob = net.node("bob", &["--role", "leaf"]);
    for node in [&laptop, &phone, &bob] {
        wait_for("attached", ATTACH, || node.is_attached().then_some(()));
    }
    let (laptop_id, phone_id) = (laptop.peer_id(), phone.peer_id());
    assert_ne!(laptop_id, phone_id, "two devices, two device keys");
    // Bob is alice's contact on both devices, so each pushes its presence to him; he accepts
    // her messages.
    for node in [&laptop, &phone] {
        let out = natter(&node.home, &["contacts", "add", "bob"], "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = natter(&bob.home, &["contacts", "add", "alice"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both devices published under the one name; neither overwrote the other.
    let both = BTreeSet::from([laptop_id.clone(), phone_id.clone()]);
    let answer = wait_for("bob to see both of alice's devices", ATTACH, || {
        let v = bob.lookup("alice")?;
        (devices_if(&v, "online")? == both).then_some(v)
    });
    eprintln!("alice on two devices: {answer}");
    let out = natter(&bob.home, &["lookup", "alice"], "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice: online (2 devices, 2 signed on)\n"
    );

    // The phone signs off: alice is still online, on her laptop.
    let out = natter(&phone.home, &["down"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    phone.wait_exit(Duration::from_secs(30));
    let answer = wait_for(
        "alice online on her laptop after her phone signed off",
        Duration::from_secs(30),
        || {
            let v = bob.lookup("alice")?;
            let phone_left = v["devices"]
                .as_array()?
                .iter()
                .find(|d| d["peer_id"] == phone_id.as_str())
                .is_none_or(|d| d["status"] == "offline");
            (v["status"] == "online" && v["peer_id"] == laptop_id.as_str() && phone_left)
                .then_some(v)
        },
    );
    eprintln!("after the phone signed off: {answer}");
    // Bob's message reaches her on the laptop, though her phone told him it signed off.
    let sent = bob.send("alice", "still there?");
    assert_eq!(sent["status"], "delivered", "{sent}");
    let inbox = natter(&laptop.home, &["inbox", "--json"], "");
    assert!(
        String::from_utf8_lossy(&inbox.stdout).contains("still there?"),
        "{}",
        String::from_utf8_lossy(&inbox.stdout)
    );
    // And her laptop finds bob as before.
    assert_eq!(laptop.lookup("bob").unwrap()["status"], "online");
}
