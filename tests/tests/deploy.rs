//! The deployment files (deploy/) checked by `deploy/check.sh` with real tools and the real
//! binaries: the compose file, the Dockerfile, the shell scripts, the systemd units, the
//! example env and TOML files, a sandboxed smoke test of the whole network, and the firewall
//! example of docs/OPERATING.md.
//!
//! The script installs what it lacks with apt (and hadolint with pip) and uses network
//! namespaces, so it needs root on Debian: the test is ignored by default, and CI runs it
//! with `cargo test --workspace --all-targets -- --include-ignored`.

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far above the few minutes the script takes on a fresh machine: a stuck apt or pip must
/// not hang CI forever.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[test]
#[ignore = "installs packages and needs root: run with --include-ignored (CI does)"]
fn deploy_check_sh_passes() {
    let root = natter_tests::workspace_root();
    let mut cmd = Command::new("bash");
    cmd.args(["deploy/check.sh", "--install"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so that a timeout stops the script and everything it started.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // The test's own cargo variables would make the script's `cargo build` see a changed
    // environment and rebuild (as natter_tests::bin explains). CARGO itself stays: the
    // script builds with the same cargo as the test.
    natter_tests::without_cargo_vars(&mut cmd);

    let started = Instant::now();
    let mut child = cmd.spawn().expect("running bash deploy/check.sh");
    // Print each line as it comes (through the test harness: shown on failure, or live with
    // --nocapture).
    let out = forward(child.stdout.take().expect("stdout"), false);
    let err = forward(child.stderr.take().expect("stderr"), true);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for deploy/check.sh") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = Command::new("kill")
                .args(["-TERM", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("deploy/check.sh did not finish within {TIMEOUT:?}: stopped");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    out.join().expect("stdout reader");
    err.join().expect("stderr reader");
    println!(
        "deploy/check.sh took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "deploy/check.sh failed ({status}): its output is above"
    );
}

/// Prints the lines of `pipe` as they arrive, on stderr if `to_stderr` (threads inherit the
/// test's output capture).
fn forward(pipe: impl Read + Send + 'static, to_stderr: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match pipe.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches('\n');
                    if to_stderr {
                        eprintln!("{text}");
                    } else {
                        println!("{text}");
                    }
                }
                Err(e) => {
                    eprintln!("[deploy/check.sh output unreadable: {e}]");
                    break;
                }
            }
        }
    })
}

/// Without `--install`, check.sh names the tools it lacks and stops before installing
/// anything (before: it ran apt-get without asking). Run with a PATH that has only what the
/// script needs to get that far, so the tools are missing whatever this machine has.
#[test]
fn check_sh_asks_before_installing() {
    let root = natter_tests::workspace_root();
    let bin = tempfile::tempdir().unwrap();
    for tool in ["dirname", "cargo", "rustc", "grep", "sed"] {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8(found.stdout).unwrap();
        std::os::unix::fs::symlink(path.trim(), bin.path().join(tool)).unwrap();
    }
    let out = Command::new("/bin/bash")
        .arg("deploy/check.sh")
        .current_dir(&root)
        .env_clear()
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing: docker-compose"), "{err}");
    assert!(err.contains("--install"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("installing"));
    let usage = Command::new("bash")
        .args(["deploy/check.sh", "--bogus"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
