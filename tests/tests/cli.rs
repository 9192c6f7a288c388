//! The real `natter-login` and `natter` binaries, as separate processes on loopback.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use natter_tests::bin;

/// A running `natter-login serve`, killed on drop.
struct LoginProcess {
    child: Child,
    addr: String,
}

impl LoginProcess {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(bin("natter-login"))
            .args(["--data-dir"])
            .arg(data_dir)
            .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("NATTER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn natter-login");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(addr.contains("/p2p/12D3Koo"), "{addr}");
        Self { child, addr }
    }

    /// SIGTERM, as a service manager stops it; it must exit cleanly.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "natter-login exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "natter-login ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LoginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary with `stdin` piped in (passwords are read from a non-terminal stdin).
fn run(program: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin(program))
        .args(args)
        .env("NATTER_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("wait")
}

fn natter(home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut full = vec!["--home", home.to_str().unwrap()];
    full.extend_from_slice(args);
    run("natter", &full, stdin)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts failure with exit code 1 and exactly one line on stderr containing `needle`.
#[track_caller]
fn fails_with(o: Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

#[test]
fn register_login_and_every_refusal_through_the_real_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("login");
    let server = LoginProcess::start(&data);
    let (alice, phone, other) = (
        tmp.path().join("alice"),
        tmp.path().join("phone"),
        tmp.path().join("other"),
    );
    let login = server.addr.clone();

    let out = natter(
        &alice,
        &["register", "alice", "--login", &login],
        "correct horse\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).starts_with("registered alice;"),
        "{}",
        stdout(&out)
    );
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(alice.join("identity.json")).unwrap()).unwrap();
    assert_eq!(identity["user"], "alice");
    assert_eq!(identity["login"], login.as_str());

    // The certificate stored by the CLI verifies with the key `natter-login info` prints.
    let info = run(
        "natter-login",
        &["--data-dir", data.to_str().unwrap(), "info", "--json"],
        "",
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["issuer_key"], identity["issuer_key"]);
    let issuer =
        natter_proto::IssuerKey::from_base64(info["issuer_key"].as_str().unwrap()).unwrap();
    let cert = natter_proto::Certificate::from_base64(identity["cert"].as_str().unwrap()).unwrap();
    cert.verify(&issuer, natter_login_server::service::unix_now())
        .unwrap();
    assert!(login.ends_with(info["peer_id"].as_str().unwrap()));

    let out = natter(
        &phone,
        &["login", "Alice", "--login", &login],
        "correct horse\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).starts_with("logged in as alice;"));

    fails_with(
        natter(
            &other,
            &["login", "alice", "--login", &login],
            "wrong horse\n",
        ),
        "wrong password",
    );
    fails_with(
        natter(&other, &["login", "bob", "--login", &login], "whatever1\n"),
        "no user named bob",
    );
    fails_with(
        natter(
            &other,
            &["register", "alice", "--login", &login],
            "whatever1\n",
        ),
        "already taken",
    );
    fails_with(
        natter(
            &other,
            &["register", "a b", "--login", &login],
            "whatever1\n",
        ),
        "invalid name",
    );
    fails_with(
        natter(&other, &["register", "bob", "--login", &login], "short\n"),
        "too short",
    );
    let dead = login.replacen(
        &login[..login.find("/p2p/").unwrap()],
        "/ip4/127.0.0.1/tcp/1",
        1,
    );
    fails_with(
        natter(&other, &["login", "alice", "--login", &dead], "whatever1\n"),
        "unreachable",
    );
    fails_with(
        natter(
            &other,
            &["login", "alice", "--login", "/ip4/127.0.0.1/tcp/1"],
            "whatever1\n",
        ),
        "/p2p/",
    );
    // Usage errors exit 2.
    assert_eq!(natter(&other, &["login"], "").status.code(), Some(2));

    // The operator disables alice: her devices can no longer log in.
    let out = run(
        "natter-login",
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "user",
            "disable",
            "alice",
        ],
        "",
    );
    assert!(out.status.success());
    fails_with(
        natter(
            &phone,
            &["login", "alice", "--login", &login],
            "correct horse\n",
        ),
        "disabled",
    );
    let out = run(
        "natter-login",
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "user",
            "list",
            "--json",
        ],
        "",
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["disabled"], true);
    server.terminate();
}

#[test]
fn accounts_peer_id_and_issuer_key_survive_a_restart_of_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("login");
    let home = tmp.path().join("home");

    let server = LoginProcess::start(&data);
    let first_addr = server.addr.clone();
    let out = natter(
        &home,
        &["register", "carol", "--login", &first_addr],
        "password1\n",
    );
    assert!(out.status.success());
    let before = std::fs::read_to_string(home.join("identity.json")).unwrap();
    server.terminate();

    let server = LoginProcess::start(&data);
    let peer = |a: &str| a[a.find("/p2p/").unwrap()..].to_owned();
    assert_eq!(
        peer(&server.addr),
        peer(&first_addr),
        "same PeerId after restart"
    );
    let out = natter(
        &home,
        &["login", "carol", "--login", &server.addr],
        "password1\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::read_to_string(home.join("identity.json")).unwrap();
    let key = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["issuer_key"].clone();
    assert_eq!(key(&before), key(&after), "same issuer key after restart");

    // Operator-created accounts log in too; the password comes from stdin, never argv.
    let out = run(
        "natter-login",
        &["--data-dir", data.to_str().unwrap(), "user", "add", "dan"],
        "password2\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = natter(
        &tmp.path().join("dan"),
        &["login", "dan", "--login", &server.addr],
        "password2\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a binary that is expected to exit on its own within `limit`; kills it and fails
/// otherwise (a server that started after all would run forever).
fn run_expecting_exit(program: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(bin(program))
        .args(args)
        .env("NATTER_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{program} {args:?} still running after {limit:?}; stdout: {}",
                stdout(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("wait")
}

/// libp2p listens with SO_REUSEPORT, so a second server on a taken port used to start and
/// share it (connections reached either). Both binaries now refuse the port instead.
#[test]
fn a_second_server_on_a_port_in_use_exits_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let server = LoginProcess::start(&tmp.path().join("first"));
    let addr: libp2p::Multiaddr = server.addr.parse().unwrap();
    let port = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let expected = format!(
        "cannot listen on {listen}: the port is already in use (is another natter running?)"
    );

    let second = tmp.path().join("second");
    let out = run_expecting_exit(
        "natter-login",
        &[
            "--data-dir",
            second.to_str().unwrap(),
            "serve",
            "--listen",
            &listen,
        ],
        Duration::from_secs(20),
    );
    fails_with(out, &expected);

    let home = tmp.path().join("home");
    let out = run_expecting_exit(
        "natter",
        &["--home", home.to_str().unwrap(), "up", "--listen", &listen],
        Duration::from_secs(20),
    );
    fails_with(out, &expected);

    // The first server was not disturbed.
    server.terminate();
}
