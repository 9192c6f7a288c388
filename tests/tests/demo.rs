//! `natter demo`, README's first command: the whole network comes up, each phase narrated,
//! and Ctrl-C stops it cleanly.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn demo_brings_the_network_up_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(natter_tests::bin("natter"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .env("NATTER_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(256);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut narration = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("demo stalled; so far:\n{}", narration.join("\n")));
        let up = line.starts_with("the network is up");
        narration.push(line);
        if up {
            break;
        }
    }
    let text = narration.join("\n");
    for phase in [
        "listening on /ip4/127.0.0.1/",
        "seed1 promoted itself to superpeer",
        "seed2 promoted itself to superpeer",
        "seed3 promoted itself to superpeer",
        "alice attached to",
        "bob attached to",
        "bob is online",
        "delivered (relayed)",
    ] {
        assert!(text.contains(phase), "missing {phase:?} in:\n{text}");
    }
    // The message really is in bob's inbox.
    let inbox = natter_tests::natter_json(&dir.path().join("bob"), &["inbox"]).unwrap();
    assert_eq!(inbox[0]["text"], "hello from the demo");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = natter_tests::wait_for("demo exit", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
}
