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
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        // A program that refuses its arguments may exit before it reads its input.
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
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
    // A malformed address is a usage error, with an example of a good one.
    for bad in ["/ip4/127.0.0.1/tcp/1", "127.0.0.1:4747"] {
        let out = natter(&other, &["login", "alice", "--login", bad], "whatever1\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("/ip4/203.0.113.7/tcp/4747/p2p/12D3KooW"),
            "{bad}: {err}"
        );
    }
    // A server with another peer id at that address: one plain line, no libp2p rendering.
    let impostor = format!(
        "{}/p2p/{}",
        &login[..login.find("/p2p/").unwrap()],
        libp2p::PeerId::random()
    );
    fails_with(
        natter(
            &other,
            &["login", "alice", "--login", &impostor],
            "whatever1\n",
        ),
        "another server answers there",
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

/// `cmd` run with a deadline: killed and reported if it has not finished by then.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

fn natter_cmd(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("natter"));
    cmd.arg("--home")
        .arg(home)
        .args(args)
        .env("NATTER_LOG", "error");
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_names_the_programs() {
    let version = env!("CARGO_PKG_VERSION");
    let out = run("natter", &["--version"], "");
    assert_eq!(stdout(&out), format!("natter {version}\n"));
    let out = run("natter-login", &["--version"], "");
    assert_eq!(stdout(&out), format!("natter-login {version}\n"));
}

/// What users build (`cargo install`, `cargo build --release`, the Docker image) carries no
/// debug info: 171 MB for `natter` with line tables before, a few tens of MB without. Read
/// from the workspace manifest: a release build takes longer than this whole suite.
#[test]
fn release_binaries_carry_no_debug_info() {
    let manifest = std::fs::read_to_string(natter_tests::workspace_root().join("Cargo.toml"))
        .expect("the workspace manifest");
    let release: Vec<&str> = manifest
        .lines()
        .skip_while(|l| l.trim() != "[profile.release]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let value = |key: &str| {
        release.iter().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    assert!(
        matches!(value("debug").as_deref(), Some("false" | "0" | "\"none\"")),
        "[profile.release] must set debug = false: {release:?}"
    );
    assert!(
        matches!(
            value("strip").as_deref(),
            Some("\"debuginfo\"" | "\"symbols\"" | "true")
        ),
        "[profile.release] must strip debug info: {release:?}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["ping", "bob", "--count", "0"][..],
        &["ping", "bob", "--count", "1001"],
        &["register", "bob", "--login", "not-an-address"],
    ] {
        let out = natter(tmp.path(), args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_home_holds_one_user_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let server = LoginProcess::start(&tmp.path().join("login"));
    let home = tmp.path().join("shared");
    let login = server.addr.clone();
    let register = |name: &str, extra: &[&str]| {
        let mut args = vec!["register", name, "--login", &login];
        args.extend_from_slice(extra);
        natter(&home, &args, "password1\n")
    };
    let user_in_home = || {
        let id: serde_json::Value =
            serde_json::from_slice(&std::fs::read(home.join("identity.json")).unwrap()).unwrap();
        id["user"].as_str().unwrap().to_owned()
    };

    // A home nobody is logged in to says how to log in, naming the home given.
    let fresh = tmp.path().join("fresh");
    fails_with(
        natter(&fresh, &["up"], ""),
        &format!("`natter --home {} register NAME", fresh.display()),
    );

    assert!(register("alice", &[]).status.success());
    let out = natter(&home, &["contacts", "add", "carol"], "");
    assert!(out.status.success(), "{}", stderr(&out));

    // bob in alice's home: refused, and nothing changed.
    let out = register("bob", &[]);
    let err = stderr(&out);
    assert!(err.contains("--home") && err.contains("--force"), "{err}");
    fails_with(out, "already holds alice's identity");
    assert_eq!(user_in_home(), "alice");
    // alice logging in again in her own home is fine.
    let out = natter(&home, &["login", "alice", "--login", &login], "password1\n");
    assert!(out.status.success(), "{}", stderr(&out));

    // --force replaces her, and her contacts and messages are not bob's.
    let out = register("bob", &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("moved to"), "{}", stderr(&out));
    assert_eq!(user_in_home(), "bob");
    let out = natter(&home, &["contacts", "list", "--json"], "");
    let contacts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(contacts, serde_json::json!([]));
}

#[test]
fn toml_errors_keep_the_snippet_on_its_own_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "min_cores = 1\nlisten = [\"not an address\"]\n").unwrap();
    let config = config.to_str().unwrap();
    let home = tmp.path().join("home");
    let node = natter(&home, &["--config", config, "up"], "");
    let login = run(
        "natter-login",
        &[
            "--data-dir",
            tmp.path().join("login").to_str().unwrap(),
            "--config",
            config,
            "serve",
        ],
        "",
    );
    for out in [node, login] {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines.len() >= 3, "the snippet is on its own lines: {err}");
        assert!(
            lines[0].contains("bad.toml") && lines[0].contains("line 2"),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("| listen = [\"not an address\"]")),
            "{err}"
        );
        assert!(lines.iter().any(|l| l.contains('^')), "{err}");
    }
}

/// Runs `script` (a pseudo-terminal) around `sh -c line`; `answer` is typed once `prompt`
/// shows. Returns everything the terminal showed, or `None` without util-linux `script`.
fn on_a_terminal(line: &str, prompt: &str, answer: &[u8]) -> Option<String> {
    use std::io::Read as _;
    use std::sync::{Arc, Mutex};
    let Ok(mut child) = Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    else {
        eprintln!("util-linux `script` is not installed: terminal checks skipped");
        return None;
    };
    let shown = Arc::new(Mutex::new(Vec::new()));
    let mut pipe = child.stdout.take().unwrap();
    let sink = shown.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text =
        |shown: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !text(&shown).contains(prompt) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {prompt:?} on the terminal: {:?}",
            text(&shown)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the program switch the terminal to raw mode after printing its prompt.
    std::thread::sleep(Duration::from_millis(500));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answer).unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the terminal session did not end: {:?}", text(&shown));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    reader.join().unwrap();
    Some(text(&shown))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn ctrl_c_at_the_password_prompt_restores_echo_and_no_color_is_obeyed() {
    let tmp = tempfile::tempdir().unwrap();
    let natter = bin("natter");
    let addr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", libp2p::PeerId::random());
    for no_color in ["1", ""] {
        let home = tmp.path().join(format!("home{}", no_color.len()));
        let line = format!(
            "NO_COLOR={no_color} NATTER_LOG=info {} --home {} login bob --login {addr}; echo \"exit=$?\"; stty -a",
            sh_quote(natter.to_str().unwrap()),
            sh_quote(home.to_str().unwrap()),
        );
        let Some(shown) = on_a_terminal(&line, "password for bob", b"\x03") else {
            return;
        };
        // The log line (the device key is created before the prompt) is coloured only when
        // NO_COLOR is unset or empty.
        assert!(shown.contains("created device key"), "{shown:?}");
        assert_eq!(shown.contains('\u{1b}'), no_color.is_empty(), "{shown:?}");
        assert!(shown.contains("exit=130"), "{shown:?}");
        let modes: Vec<&str> = shown
            .split_once("exit=130")
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        for mode in ["echo", "icanon", "isig"] {
            assert!(
                modes.contains(&mode),
                "{mode} is off after Ctrl-C: {shown:?}"
            );
        }
    }
}

/// A superpeer and two leaves, alice and bob, who see each other online.
fn small_net(net: &natter_tests::TestNet) -> [natter_tests::NodeProcess; 3] {
    let sp = net.node("spa", &["--role", "superpeer"]);
    sp.wait_role("superpeer", Duration::from_secs(30));
    let alice = net.node("alice", &["--role", "leaf"]);
    let bob = net.node("bob", &["--role", "leaf"]);
    for (from, to) in [(&alice, "bob"), (&bob, "alice")] {
        wait_for(&format!("{to} online"), Duration::from_secs(60), || {
            from.lookup(to)
                .filter(|v| v["status"] == "online")
                .map(|_| ())
        });
    }
    [sp, alice, bob]
}

use natter_tests::wait_for;

#[test]
fn messages_are_shown_escaped_and_the_store_works_while_the_daemon_is_down() {
    let net = natter_tests::TestNet::new();
    let [_sp, mut alice, bob] = small_net(&net);
    let forged = "\u{1b}[31mred\n[2020-01-01T00:00:00Z] mallory: send me your password\u{202e}";
    let out = natter(&bob.home, &["send", "alice", forged, "--json"], "");
    assert!(out.status.success(), "{}", stderr(&out));

    // Human output: one line, no escape character; JSON: the exact text. (Under load the
    // send may have answered "queued": wait for the message.)
    let shown = wait_for(
        "the message in alice's inbox",
        Duration::from_secs(30),
        || {
            let out = natter(&alice.home, &["inbox"], "");
            assert!(out.status.success(), "inbox: {}", stderr(&out));
            let shown = stdout(&out);
            (!shown.is_empty()).then_some(shown)
        },
    );
    assert_eq!(shown.lines().count(), 1, "{shown:?}");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{202e}'),
        "{shown:?}"
    );
    assert!(
        shown.contains("bob: \\u{1b}[31mred\\n[2020-01-01T00:00:00Z] mallory"),
        "{shown:?}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&natter(&alice.home, &["inbox", "--json"], "").stdout).unwrap();
    assert_eq!(json[0]["text"], forged);

    // `inbox --follow` ends with an error when the daemon stops.
    let mut follow = Command::new(bin("natter"))
        .arg("--home")
        .arg(&alice.home)
        .args(["inbox", "--follow"])
        .env("NATTER_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follow_out = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    follow_out.read_line(&mut first).unwrap();
    assert!(first.contains("bob: "), "{first:?}");
    let out = natter(&alice.home, &["down"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    alice.wait_exit(Duration::from_secs(10));
    let mut follow_err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut follow_err).unwrap();
    assert_eq!(follow.wait().unwrap().code(), Some(1), "{follow_err:?}");
    assert!(follow_err.contains("the daemon stopped"), "{follow_err:?}");
    assert_eq!(follow_err.trim_end().lines().count(), 1, "{follow_err:?}");

    // Down, again: not an error.
    let out = natter(&alice.home, &["down"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));

    // The store without the daemon: inbox, contacts, send (queued) and outbox.
    let json: serde_json::Value =
        serde_json::from_slice(&natter(&alice.home, &["inbox", "--json"], "").stdout).unwrap();
    assert_eq!(json[0]["text"], forged);
    fails_with(
        natter(&alice.home, &["inbox", "--follow"], ""),
        "needs the daemon",
    );
    for args in [
        &["contacts", "add", "carol"][..],
        &["contacts", "add", "bob"],
    ] {
        let out = natter(&alice.home, args, "");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = natter(&alice.home, &["contacts", "remove", "carol"], "");
    assert_eq!(stdout(&out), "carol removed from contacts\n");
    let out = natter(&alice.home, &["contacts", "list"], "");
    assert_eq!(stdout(&out), "bob\n");
    fails_with(
        natter(&alice.home, &["send", "alice", "hi"], ""),
        "cannot send a message to yourself",
    );
    fails_with(natter(&alice.home, &["send", "bob", " "], ""), "empty");
    let out = natter(
        &alice.home,
        &["send", "bob", "while I was down", "--json"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("the daemon is not running; the message is queued"));
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["status"], "queued");
    assert!(sent["path"].is_null());
    assert_eq!(sent["id"].as_str().unwrap().len(), 26);
    let outbox: serde_json::Value =
        serde_json::from_slice(&natter(&alice.home, &["outbox", "--json"], "").stdout).unwrap();
    assert_eq!(outbox.as_array().unwrap().len(), 1, "{outbox}");
    assert_eq!(outbox[0]["id"], sent["id"]);
    assert_eq!(outbox[0]["to"], "bob");
    assert_eq!(outbox[0]["attempts"], 0);
    let shown = stdout(&natter(&alice.home, &["outbox"], ""));
    assert!(shown.contains("to bob: while I was down"), "{shown}");

    // Once the daemon runs, the queued message goes out and the outbox empties.
    alice.restart();
    wait_for("delivery after up", Duration::from_secs(60), || {
        let inbox = natter_tests::natter_json(&bob.home, &["inbox"])?;
        inbox
            .as_array()?
            .iter()
            .any(|m| m["text"] == "while I was down")
            .then_some(())
    });
    wait_for("an empty outbox", Duration::from_secs(20), || {
        let outbox = natter_tests::natter_json(&alice.home, &["outbox"])?;
        outbox.as_array()?.is_empty().then_some(())
    });
}

#[test]
fn lookup_and_ping_fail_clearly() {
    let net = natter_tests::TestNet::new();
    let [_sp, mut alice, bob] = small_net(&net);

    // An unknown user: exit 1 with one line; --json still prints the answer.
    fails_with(
        natter(&bob.home, &["lookup", "nobody"], ""),
        "unknown user nobody",
    );
    let out = natter(&bob.home, &["lookup", "nobody", "--json"], "");
    assert_eq!(out.status.code(), Some(1));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["status"], "unknown");
    let out = natter(&bob.home, &["lookup", "alice"], "");
    assert!(
        stdout(&out).starts_with("alice: online"),
        "{}",
        stdout(&out)
    );

    fails_with(
        natter(&bob.home, &["ping", "bob"], ""),
        "cannot ping yourself",
    );
    // The first probes may find no route yet; once one is answered, ping exits 0.
    let mut tries = Vec::new();
    wait_for("a ping answered", Duration::from_secs(60), || {
        let out = run_bounded(
            natter_cmd(&bob.home, &["ping", "alice", "--count", "1"]),
            Duration::from_secs(60),
        );
        tries.push(format!("{}{}", stdout(&out), stderr(&out)));
        assert!(tries.len() < 100, "{tries:?}");
        out.status.success().then_some(())
    });
    eprintln!("pings before the first answer: {tries:?}");

    // alice's node dies: every probe to her is lost, and ping says so with exit 1.
    alice.kill();
    let out = run_bounded(
        natter_cmd(&bob.home, &["ping", "alice", "--count", "1", "--json"]),
        Duration::from_secs(60),
    );
    let probes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(probes[0]["rtt_ms"].is_null(), "{probes}");
    fails_with(out, "no answer from alice");
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

/// A setting out of its range is refused at start, named as the file spells it, with its
/// range. `max_inflight = 0` used to start the server and then panic in its event loop
/// (issue 12).
#[test]
fn a_login_setting_out_of_range_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("login");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("natter-login.toml"), "max_inflight = 0\n").unwrap();
    let out = run_expecting_exit(
        "natter-login",
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        Duration::from_secs(20),
    );
    fails_with(out, "max_inflight must be from 1 to 65536, not 0");
}

/// `natter-login info | head -0`, `natter contacts list | head -0`: the reader is gone before
/// the command writes. `println!` panicked ("failed printing to stdout: Broken pipe", status
/// 101); the commands now end quietly (issue 12).
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    fn with_closed_stdout(program: &str, args: &[&str]) -> Output {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Command::new(bin(program))
            .args(args)
            .env("NATTER_LOG", "error")
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("login");
    let out = with_closed_stdout(
        "natter-login",
        &["--data-dir", data.to_str().unwrap(), "info"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "{}: {err}",
        out.status
    );

    let server = LoginProcess::start(&data);
    let alice = tmp.path().join("alice");
    let home = alice.to_str().unwrap();
    let registered = run(
        "natter",
        &["--home", home, "register", "alice", "--login", &server.addr],
        "password1\n",
    );
    assert!(registered.status.success(), "{}", stderr(&registered));
    let added = run("natter", &["--home", home, "contacts", "add", "bob"], "");
    assert!(added.status.success(), "{}", stderr(&added));
    let out = with_closed_stdout("natter", &["--home", home, "contacts", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "{}: {err}",
        out.status
    );
}

/// A setting out of its range is refused at start, named as `natter.toml` spells it, rather
/// than taken as it is (`--max-leaves 2000000` was announced as a capacity no superpeer has).
#[test]
fn a_node_setting_out_of_range_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = run_expecting_exit(
        "natter",
        &[
            "--home",
            home.to_str().unwrap(),
            "up",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--max-leaves",
            "2000000",
        ],
        Duration::from_secs(20),
    );
    fails_with(out, "max_leaves must be from 0 to 1000000, not 2000000");
}

/// `send NAME -` reads the message from standard input (before: it sent "-"), and every
/// command that changes something answers `--json` with `{"message": ...}` (before: no
/// `--json` on set-status, down, contacts add|remove|accept|block, inbox delete|clear,
/// outbox drop).
#[test]
fn send_reads_stdin_and_every_change_answers_json() {
    let net = natter_tests::TestNet::new();
    let mut alice = net.node("alice", &["--role", "superpeer"]);
    alice.wait_role("superpeer", Duration::from_secs(30));
    let home = alice.home.clone();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = natter(&home, args, "");
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {:?}", stdout(&out)))
    };
    let message = |v: serde_json::Value| v["message"].as_str().unwrap().to_owned();
    // bob exists but is not running.
    net.node("bob", &["--role", "leaf"]).kill();
    assert!(message(json(&["set-status", "away", "--json"])).contains("away"));
    assert!(message(json(&["contacts", "add", "bob", "--json"])).contains("bob added"));
    assert!(message(json(&["contacts", "block", "mallory", "--json"])).contains("blocked"));
    assert!(message(json(&["contacts", "accept", "mallory", "--json"])).contains("accepted"));
    assert!(message(json(&["contacts", "remove", "bob", "--json"])).contains("removed"));
    // The message is queued (bob is down), and read from stdin.
    let out = natter(
        &home,
        &["send", "bob", "-", "--no-wait", "--json"],
        "two lines\nfrom stdin\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let outbox = json(&["outbox", "--json"]);
    assert_eq!(outbox[0]["text"], "two lines\nfrom stdin");
    let id = outbox[0]["id"].as_str().unwrap().to_owned();
    assert!(message(json(&["outbox", "drop", &id, "--json"])).contains("dropped 1"));
    let too_long = "x".repeat(natter_proto::limits::MAX_MESSAGE_TEXT_BYTES + 1);
    fails_with(natter(&home, &["send", "bob", "-"], &too_long), "over");
    assert!(message(json(&["down", "--json"])).contains("stop"));
    alice.wait_exit(Duration::from_secs(30));
    // Not running: still JSON, still exit 0.
    assert!(message(json(&["down", "--json"])).contains("not running"));
    assert!(message(json(&["inbox", "clear", "--json"])).contains("deleted 0"));
}

/// `register`, `login` and `natter-login user add|disable|revoke-device` answer `--json`
/// (before: text only).
#[test]
fn accounts_answer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("login");
    let server = LoginProcess::start(&data);
    let data = data.to_str().unwrap();
    let value = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", stdout(o)))
    };
    let added = value(&run(
        "natter-login",
        &["--data-dir", data, "user", "add", "erin", "--json"],
        "password1\n",
    ));
    assert_eq!(added["message"], "added erin");
    let home = tmp.path().join("erin");
    let login = |verb: &str| {
        value(&natter(
            &home,
            &[verb, "erin", "--login", &server.addr, "--json"],
            "password1\n",
        ))
    };
    let logged_in = login("login");
    assert_eq!(logged_in["user"], "erin");
    let peer_id = logged_in["peer_id"].as_str().unwrap().to_owned();
    assert!(peer_id.starts_with("12D3Koo"), "{logged_in}");
    assert!(logged_in["cert_expires_at"].as_u64().unwrap() > 1_700_000_000);
    let registered = value(&natter(
        &tmp.path().join("fay"),
        &["register", "fay", "--login", &server.addr, "--json"],
        "password1\n",
    ));
    assert_eq!(registered["user"], "fay");
    let revoked = value(&run(
        "natter-login",
        &[
            "--data-dir",
            data,
            "user",
            "revoke-device",
            "erin",
            &peer_id,
            "--json",
        ],
        "",
    ));
    assert!(
        revoked["message"]
            .as_str()
            .unwrap()
            .contains("revoked device")
    );
    let disabled = value(&run(
        "natter-login",
        &["--data-dir", data, "user", "disable", "fay", "--json"],
        "",
    ));
    assert!(
        disabled["message"]
            .as_str()
            .unwrap()
            .starts_with("disabled fay")
    );
}

/// `natter up --json` prints its progress as one JSON object per line (before: text only).
#[test]
fn up_prints_its_progress_as_json_lines() {
    let net = natter_tests::TestNet::new();
    let node = net.node("gil", &["--role", "superpeer", "--json"]);
    node.wait_role("superpeer", Duration::from_secs(30));
    let out = wait_for("the promotion line", Duration::from_secs(10), || {
        let out = node.output();
        out.contains("promoted to superpeer").then_some(out)
    });
    let phases: Vec<String> = out
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert!(v["at"].as_u64().unwrap() > 1_700_000_000_000, "{line}");
            v["phase"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(phases[0].starts_with("natter "), "{phases:?}");
    assert!(
        phases.iter().any(|p| p.starts_with("logging in to ")),
        "{phases:?}"
    );
}

/// An address that is not on this host: both programs say why they cannot listen (before:
/// `cannot listen on ADDR: ` and nothing after, as libp2p keeps the reason in its error's
/// source), and the login server names a metrics address it cannot bind.
#[test]
fn a_listen_address_not_on_this_host_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("login");
    let elsewhere = "/ip4/192.0.2.1/tcp/4747";
    let reason_after = |out: &Output, prefix: &str| {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let reason = err
            .split_once(prefix)
            .map(|(_, r)| r.trim())
            .unwrap_or_else(|| panic!("{prefix:?} not in {err:?}"));
        assert!(!reason.is_empty(), "no reason in {err:?}");
    };
    let out = run_expecting_exit(
        "natter-login",
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
            "--listen",
            elsewhere,
        ],
        Duration::from_secs(30),
    );
    reason_after(&out, &format!("cannot listen on {elsewhere}:"));
    let out = run_expecting_exit(
        "natter-login",
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--metrics",
            "192.0.2.1:9",
        ],
        Duration::from_secs(30),
    );
    reason_after(&out, "cannot serve metrics on 192.0.2.1:9:");

    let server = LoginProcess::start(&data);
    let home = tmp.path().join("ivy");
    let registered = natter(
        &home,
        &["register", "ivy", "--login", &server.addr],
        "password1\n",
    );
    assert!(registered.status.success(), "{}", stderr(&registered));
    let out = run_expecting_exit(
        "natter",
        &[
            "--home",
            home.to_str().unwrap(),
            "up",
            "--listen",
            elsewhere,
        ],
        Duration::from_secs(30),
    );
    reason_after(&out, &format!("cannot listen on {elsewhere}:"));
}
