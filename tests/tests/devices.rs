//! One user on several devices, with the real `natter` binary on loopback: the directory keeps
//! each device's record side by side, a lookup lists them all, a message reaches every device
//! of its recipient, each device keeps what the others sent, the conversation has one order,
//! and one device signing off leaves the user online on the other (and gets what it missed
//! when it comes back).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::time::Duration;

use natter_tests::{NodeProcess, TestNet, natter, natter_json, wait_for};

const PROMOTE: Duration = Duration::from_secs(60);
const ATTACH: Duration = Duration::from_secs(60);

/// `natter history NAME --json` on `node`.
fn history(node: &NodeProcess, name: &str) -> Vec<serde_json::Value> {
    let v = natter_json(&node.home, &["history", name]).expect("history --json");
    v.as_array().expect("an array").clone()
}

/// The texts of `history`, in its order, with their state.
fn texts(history: &[serde_json::Value]) -> Vec<(String, String)> {
    history
        .iter()
        .map(|m| {
            (
                m["text"].as_str().unwrap_or_default().to_owned(),
                m["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn inbox_has(node: &NodeProcess, text: &str) -> bool {
    let out = natter(&node.home, &["inbox", "--json"], "");
    String::from_utf8_lossy(&out.stdout).contains(text)
}

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
fn a_user_on_two_devices_gets_messages_on_both_and_stays_online_when_one_signs_off() {
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

    // Bob writes to alice: both of her devices get it, and bob sees where it stands on each.
    let sent = bob.send("alice", "hello, both of you");
    assert_eq!(sent["status"], "delivered", "{sent}");
    for (device, node) in [("laptop", &laptop), ("phone", &phone)] {
        wait_for(
            &format!("bob's message on alice's {device}"),
            Duration::from_secs(30),
            || inbox_has(node, "hello, both of you").then_some(()),
        );
    }
    let states = wait_for(
        "bob's view: stored by both devices",
        Duration::from_secs(30),
        || {
            let h = history(&bob, "alice");
            let m = h.iter().find(|m| m["text"] == "hello, both of you")?;
            let first = m["device"].as_str()?.to_owned();
            let further: Vec<&serde_json::Value> = m["devices"].as_array()?.iter().collect();
            let stored: BTreeSet<String> = std::iter::once(first)
                .chain(
                    further
                        .iter()
                        .filter(|d| d["state"] == "delivered")
                        .filter_map(|d| d["peer_id"].as_str().map(str::to_owned)),
                )
                .collect();
            (stored == both).then(|| m.clone())
        },
    );
    eprintln!("bob's message on alice's devices: {states}");

    // Alice writes from her laptop, then from her phone: each device shows both, bob gets
    // both, and the conversation has one order on every device.
    let sent = laptop.send("bob", "from the laptop");
    assert_eq!(sent["status"], "delivered", "{sent}");
    wait_for(
        "the laptop's message on alice's phone",
        Duration::from_secs(30),
        || {
            texts(&history(&phone, "bob"))
                .contains(&("from the laptop".into(), "sent_elsewhere".into()))
                .then_some(())
        },
    );
    let sent = phone.send("bob", "from the phone");
    assert_eq!(sent["status"], "delivered", "{sent}");
    let conversation: Vec<String> = ["hello, both of you", "from the laptop", "from the phone"]
        .map(String::from)
        .to_vec();
    for (who, node) in [("alice's laptop", &laptop), ("alice's phone", &phone)] {
        let seen = wait_for(
            &format!("the whole conversation on {who}"),
            Duration::from_secs(30),
            || {
                let h: Vec<String> = texts(&history(node, "bob"))
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect();
                (h == conversation).then_some(h)
            },
        );
        eprintln!("{who}: {seen:?}");
    }
    let on_bob = wait_for(
        "both of alice's messages at bob",
        Duration::from_secs(30),
        || {
            let h: Vec<String> = texts(&history(&bob, "alice"))
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            (h == conversation).then_some(h)
        },
    );
    eprintln!("bob: {on_bob:?}");
    // One order for the pair, whoever wrote from which device: each message numbered after
    // everything its device had seen (by send time alone, two devices' clocks could disagree).
    let seqs: Vec<u64> = history(&bob, "alice")
        .iter()
        .filter_map(|m| m["conv_seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // A message to a user who is not online stays queued, and alice's phone has its copy
    // all the same.
    let carol = net.dir.path().join("carol");
    let out = natter(
        &carol,
        &["register", "carol", "--login", &net.server.addr.to_string()],
        "password1\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = laptop.send("carol", "when you are back");
    assert_eq!(sent["status"], "queued", "{sent}");
    wait_for(
        "the copy of a queued message on alice's phone",
        Duration::from_secs(30),
        || {
            (texts(&history(&phone, "carol"))
                == [("when you are back".to_owned(), "sent_elsewhere".to_owned())])
            .then_some(())
        },
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

    // The phone comes back and gets what it missed meanwhile.
    phone.restart();
    let back = std::time::Instant::now();
    wait_for(
        "the message sent while the phone was off, on the phone",
        Duration::from_secs(120),
        || inbox_has(&phone, "still there?").then_some(()),
    );
    eprintln!(
        "the phone had what it missed {:?} after it restarted",
        back.elapsed()
    );
}
