//! `natter demo`, README's first command: the whole network comes up, each phase narrated,
//! and Ctrl-C stops it cleanly.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn demo_brings_the_network_up_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Demo(
        Command::new(natter_tests::bin("natter"))
            .args(["demo", "--dir"])
            .arg(dir.path())
            .env("NATTER_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut demo.0;
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

    // Metrics: Natter's counters are exposed and move.
    let metrics_addr = std::fs::read_to_string(dir.path().join("seed1/metrics.addr")).unwrap();
    let lookups = |addr: &str| -> i64 {
        let body = scrape(addr);
        assert!(body.contains("natter_superpeer 1"), "{body}");
        assert!(body.contains("libp2p_swarm_"), "libp2p's own metrics too");
        body.lines()
            .find_map(|l| l.strip_prefix("natter_lookups "))
            .expect("natter_lookups")
            .trim()
            .parse()
            .unwrap()
    };
    let before = lookups(&metrics_addr);
    assert!(natter_tests::natter_json(&dir.path().join("seed1"), &["lookup", "alice"]).is_some());
    let after = natter_tests::wait_for("lookups counter to move", Duration::from_secs(10), || {
        let n = lookups(&metrics_addr);
        (n > before).then_some(n)
    });
    assert!(after > before);

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

/// Stops the demo (and with it its daemons) even when an assertion fails.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let _ = natter_tests::wait_for("demo exit", Duration::from_secs(20), || {
                self.0.try_wait().ok().flatten()
            });
        }
    }
}

/// GET /metrics over a plain TCP connection.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr.trim()).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}

/// Closing the terminal (SIGHUP to the demo's process group), while the network comes up or
/// after: the demo stops its daemons and removes its temporary directory. Before, SIGHUP
/// killed it at once and left the directory (and, in another process group, the daemons)
/// behind.
#[test]
fn demo_cleans_up_when_its_terminal_closes() {
    use std::os::unix::process::CommandExt as _;
    for hang_up_after in ["[3/6]", "the network is up"] {
        let mut demo = Demo(
            Command::new(natter_tests::bin("natter"))
                .arg("demo")
                .env("NATTER_LOG", "warn")
                .stdout(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap(),
        );
        let child = &mut demo.0;
        let pgid = child.id().to_string();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let dir = first
            .split_once("state in ")
            .map(|(_, d)| std::path::PathBuf::from(d))
            .unwrap_or_else(|| panic!("no state directory in {first:?}"));
        assert!(dir.is_dir());
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            let line = rx.recv_timeout(Duration::from_secs(120)).unwrap();
            if line.trim_start().starts_with(hang_up_after) {
                break;
            }
        }
        let hup = Command::new("kill")
            .args(["-HUP", "--", &format!("-{pgid}")])
            .status()
            .unwrap();
        assert!(hup.success());
        let status = natter_tests::wait_for("demo exit", Duration::from_secs(30), || {
            child.try_wait().unwrap()
        });
        assert!(status.success(), "{hang_up_after}: {status}");
        assert!(
            !dir.exists(),
            "{hang_up_after}: {} left behind",
            dir.display()
        );
        // Nothing of the demo's process group is left.
        natter_tests::wait_for("the daemons gone", Duration::from_secs(10), || {
            let alive = Command::new("kill")
                .args(["-0", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            (!alive).then_some(())
        });
    }
}
