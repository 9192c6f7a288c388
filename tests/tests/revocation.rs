//! Revocation within a minute, played by the revoked user: after the operator disables
//! mallory's account with `natter-login user disable` (another process, while the login
//! server runs), mallory keeps trying to send to bob and to stay attached. Within 60 s her
//! messages are refused by bob's node, her superpeer has detached her, and bob's lookups of her
//! say her certificate was revoked. Without revocation lists she went on for the rest of her
//! certificate's 24 hours.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use natter_tests::{NodeProcess, TestNet, natter, natter_json, wait_for};

fn texts(node: &NodeProcess) -> Vec<String> {
    natter_json(&node.home, &["inbox"])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_disabled_user_is_cut_off_within_a_minute() {
    let net = TestNet::new();
    let seed = net.node("seed", &["--role", "superpeer"]);
    seed.wait_role("superpeer", Duration::from_secs(30));
    let mallory = net.node("mallory", &["--role", "leaf"]);
    let bob = net.node("bob", &["--role", "leaf"]);
    for leaf in [&mallory, &bob] {
        wait_for("attached", Duration::from_secs(30), || {
            leaf.is_attached().then_some(())
        });
    }
    wait_for("bob online", Duration::from_secs(30), || {
        mallory
            .lookup("bob")
            .filter(|v| v["status"] == "online")
            .map(|_| ())
    });
    let before = mallory.send("bob", "before");
    assert_eq!(before["status"], "delivered", "{before}");

    // The operator, in another process, on the running server's database.
    let out = std::process::Command::new(natter_tests::bin("natter-login"))
        .arg("--data-dir")
        .arg(net.dir.path().join("login"))
        .args(["user", "disable", "mallory"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "disable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disabled = Instant::now();

    // Mallory keeps sending, twice a second; she is cut off when bob's node refuses her.
    let mut sent = 0;
    let cut_after = wait_for("mallory cut off", Duration::from_secs(60), || {
        sent += 1;
        let answer = mallory.send("bob", &format!("after {sent}"));
        eprintln!("{:.1} s: {answer}", disabled.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(500));
        (answer["status"] != "delivered").then(|| disabled.elapsed())
    });
    // Everywhere, not just at bob: her superpeer detached her, and bob cannot find her.
    let deadline = disabled + Duration::from_secs(60);
    loop {
        let lookup = natter(&bob.home, &["lookup", "mallory", "--json"], "");
        let said = String::from_utf8_lossy(&lookup.stdout).to_string()
            + &String::from_utf8_lossy(&lookup.stderr);
        let online = said.contains("\"online\"");
        if !mallory.is_attached() && !online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mallory not cut off everywhere after 60 s: her status {:?}; bob's lookup: {said}",
            mallory.status()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let everywhere = disabled.elapsed();
    eprintln!(
        "revocation: mallory's messages refused after {:.1} s, detached and unfindable after {:.1} s",
        cut_after.as_secs_f64(),
        everywhere.as_secs_f64()
    );
    assert!(everywhere <= Duration::from_secs(60), "{everywhere:?}");

    // Nothing she sent once refused reaches bob later (her node keeps retrying).
    let delivered = texts(&bob);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(texts(&bob), delivered);
    assert!(delivered.contains(&"before".to_owned()));
    // What the refused sends said: queued, not lost and not "delivered".
    let outbox = natter(&mallory.home, &["outbox", "--json"], "");
    assert!(
        String::from_utf8_lossy(&outbox.stdout).contains(&format!("after {sent}")),
        "{}",
        String::from_utf8_lossy(&outbox.stdout)
    );
}
