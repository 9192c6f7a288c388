//! `natter demo`: a whole Natter network on loopback in a temporary directory — a login
//! server (in this process), three nodes that promote themselves, two users as leaves — with
//! each phase narrated, then left running for the user to try commands against.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use natter_login_server::{Config, Server};
use natter_node::control::ControlClient;
use natter_node::daemon::api::{ControlRequest, ControlResponse, StatusView};
use natter_node::{Home, Identity, LoginClient};
use natter_proto::UserName;
use natter_proto::login::Password;
use tokio_util::sync::CancellationToken;

const SUPERPEERS: [&str; 3] = ["seed1", "seed2", "seed3"];
const USERS: [&str; 2] = ["alice", "bob"];

/// A node daemon started by the demo; stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    name: &'static str,
    home: PathBuf,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(text: impl AsRef<str>) {
    // The narration; a closed stdout (nobody watching) is no reason to stop the demo.
    let _ = std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{}\n", text.as_ref()));
}

/// Runs the demo until Ctrl-C. An error names the phase that failed.
///
/// Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop it at any phase: the daemons are
/// stopped and the temporary directory removed, nothing is left behind.
pub(crate) async fn run(keep: Option<PathBuf>) -> anyhow::Result<()> {
    // Registered before anything starts, so that no signal ends the process abruptly.
    let stop = stop_on_signal()?;
    let (root, temp) = match keep {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new().prefix("natter-demo-").tempdir()?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let up = std::sync::atomic::AtomicBool::new(false);
    // Until the network is up, a signal drops the phases (their daemons stop as they are
    // dropped); after, `network` stops it in order itself.
    let during_setup = async {
        stop.cancelled().await;
        if up.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = network(&root, &stop, &up) => result,
        () = during_setup => {
            say("stopping the demo network");
            Ok(())
        }
    };
    // A signal to the whole process group (the terminal closed) reaches the daemons too: one
    // that exits before this process has seen the signal is part of the stop, not a failure.
    if result.is_err()
        && tokio::time::timeout(Duration::from_secs(3), stop.cancelled())
            .await
            .is_ok()
    {
        say("stopping the demo network");
        return Ok(());
    }
    // A failure points to the daemons' logs: keep them.
    if result.is_err()
        && let Some(temp) = temp
    {
        eprintln!(
            "the demo's state and logs are kept in {}",
            temp.keep().display()
        );
    }
    result
}

/// The phases, then waiting for `stop`.
async fn network(
    root: &Path,
    stop: &CancellationToken,
    up: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let root = root.to_owned();
    say(format!(
        "natter demo: a whole network on loopback, state in {}",
        root.display()
    ));
    let started = Instant::now();

    say("\n[1/6] starting a login server");
    let mut config = Config::new(root.join("login"));
    config.listen = vec![
        "/ip4/127.0.0.1/tcp/0".parse()?,
        "/ip4/127.0.0.1/udp/0/quic-v1".parse()?,
    ];
    let server = Server::bind(config)
        .await
        .context("phase 1: login server")?;
    let login = server.listen_addrs()[0].clone();
    let shutdown = CancellationToken::new();
    let server_task = tokio::spawn(server.run(shutdown.clone()));
    say(format!("      listening on {login}"));

    say("\n[2/6] registering five users (three will run seed nodes)");
    for name in SUPERPEERS.iter().chain(&USERS) {
        register(&root.join(name), name, &login)
            .await
            .with_context(|| format!("phase 2: registering {name}"))?;
    }
    say(format!(
        "      registered {}",
        SUPERPEERS
            .iter()
            .chain(&USERS)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ));

    say(
        "\n[3/6] starting three plain nodes (`natter up`): they probe their reachability (AutoNAT v2)\n      and, as the network has no superpeer yet, promote by need within seconds",
    );
    let mut daemons = Vec::new();
    for name in SUPERPEERS {
        daemons.push(spawn(&root, name, "auto")?);
    }
    for d in &mut daemons {
        let s = wait_status(d, Duration::from_secs(60), |s| s.role == "superpeer")
            .await
            .with_context(|| format!("phase 3: {} did not promote itself", d.name))?;
        say(format!(
            "      {} promoted itself to superpeer ({}; public address {})",
            d.name,
            s.role_reason,
            s.external_addrs.first().map(String::as_str).unwrap_or("?")
        ));
    }

    say("\n[4/6] starting alice and bob as leaves: each attaches to two superpeers");
    let name_of = |peer: &str, ids: &[(String, &str)]| {
        ids.iter()
            .find(|(id, _)| id == peer)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| peer.to_string())
    };
    let mut ids = Vec::new();
    for d in &daemons {
        ids.push((status(&d.home).await?.peer_id, d.name));
    }
    for name in USERS {
        daemons.push(spawn(&root, name, "leaf")?);
    }
    for d in &mut daemons[SUPERPEERS.len()..] {
        let s = wait_status(d, Duration::from_secs(60), |s| s.superpeers.len() == 2)
            .await
            .with_context(|| format!("phase 4: {} did not attach", d.name))?;
        say(format!(
            "      {} attached to {} (primary) and {} (standby), with relay reservations on both",
            d.name,
            name_of(&s.superpeers[0], &ids),
            name_of(&s.superpeers[1], &ids)
        ));
    }

    say("\n[5/6] alice looks bob up in the directory");
    let alice = &daemons[SUPERPEERS.len()].home;
    let lookup = poll(Duration::from_secs(30), || async {
        match call(alice, ControlRequest::Lookup { name: "bob".into() }).await {
            Ok(ControlResponse::Lookup(v)) if v.status == "online" => Some(v),
            _ => None,
        }
    })
    .await
    .context("phase 5: bob did not read online")?;
    say(format!(
        "      bob is {} (reachable through {} relay address(es))",
        lookup.status,
        lookup.superpeers.len()
    ));

    say("\n[6/6] alice sends bob a message; the first goes through bob's superpeer");
    let sent = call(
        alice,
        ControlRequest::Send {
            to: "bob".into(),
            text: "hello from the demo".into(),
            wait: true,
        },
    )
    .await
    .context("phase 6: send")?;
    match sent {
        ControlResponse::Sent(v) if v.status == "delivered" => say(format!(
            "      delivered ({}), stored by bob's node",
            v.path.unwrap_or_default()
        )),
        other => bail!("phase 6: message not delivered: {other:?}"),
    }
    let direct = poll(Duration::from_secs(30), || async {
        match call(
            alice,
            ControlRequest::Ping {
                name: "bob".into(),
                count: 1,
                interval_ms: None,
            },
        )
        .await
        {
            Ok(ControlResponse::Ping(p)) if p.path.as_deref() == Some("direct") => Some(p),
            _ => None,
        }
    })
    .await;
    match direct {
        Some(p) => say(format!(
            "      hole punching upgraded the path: ping bob {:.2} ms via direct",
            p.rtt_ms.unwrap_or_default()
        )),
        None => say("      the path stayed relayed (hole punching did not succeed here)"),
    }

    say(format!(
        "\nthe network is up ({:.1} s). Try, in another terminal:",
        started.elapsed().as_secs_f64()
    ));
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "natter".into());
    let home = |n: &str| root.join(n).display().to_string();
    say(format!(
        "  {exe} --home {} send bob \"hi bob\"",
        home("alice")
    ));
    say(format!("  {exe} --home {} inbox", home("bob")));
    say(format!("  {exe} --home {} ping alice", home("bob")));
    say(format!("  {exe} --home {} lookup alice", home("bob")));
    say(format!("  {exe} --home {} status", home("seed1")));
    for name in ["seed1", "alice"] {
        if let Ok(addr) = std::fs::read_to_string(root.join(name).join("metrics.addr")) {
            say(format!(
                "  curl -s http://{addr}/metrics | grep ^natter_    # {name}'s counters"
            ));
        }
    }
    say("daemon logs are in each home (daemon.log). Ctrl-C stops the demo.");

    up.store(true, std::sync::atomic::Ordering::SeqCst);
    stop.cancelled().await;
    say("stopping the demo network");
    drop(daemons);
    shutdown.cancel();
    let _ = server_task.await;
    Ok(())
}

async fn register(home: &Path, name: &str, login: &libp2p::Multiaddr) -> anyhow::Result<()> {
    let home = Home::new(Some(home.to_owned()))?;
    let user = UserName::parse(name)?;
    let client = LoginClient::new(home.device_key()?, login.clone())?;
    let issued = client
        .register(&user, Password::new("demo-password"))
        .await?;
    home.save_identity(&Identity {
        user,
        login: login.clone(),
        issuer_key: issued.issuer_key,
        cert: issued.cert,
    })?;
    Ok(())
}

/// A free loopback port for a metrics endpoint (bound and released: a tiny race is fine here).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(root: &Path, name: &'static str, role: &str) -> anyhow::Result<Daemon> {
    let home = root.join(name);
    let log = std::fs::File::create(home.join("daemon.log"))?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    std::fs::write(home.join("metrics.addr"), &metrics)?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--home")
        .arg(&home)
        .args([
            "up",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            // The demo runs on one-core machines too.
            "--min-cores",
            "1",
            "--metrics",
            &metrics,
        ])
        // The users stay leaves, and on loopback every node is "public": keep the users'
        // addresses out of the directory so their first contact goes through a relay, as it
        // would behind NAT. The other nodes promote by the default rules.
        .args(if role == "leaf" {
            &["--role", "leaf", "--no-direct"][..]
        } else {
            &[][..]
        })
        .env("NATTER_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Daemon { name, home, child })
}

async fn call(home: &Path, request: ControlRequest) -> anyhow::Result<ControlResponse> {
    let mut client = ControlClient::connect(home).await?;
    Ok(client.call(&request).await?)
}

async fn status(home: &Path) -> anyhow::Result<StatusView> {
    match call(home, ControlRequest::Status).await? {
        ControlResponse::Status(s) => Ok(s),
        other => bail!("unexpected answer {other:?}"),
    }
}

async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = check().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Polls `d`'s status until `ok`. A failure says why: the daemon exited (with the end of its
/// log), or what its last status said.
async fn wait_status(
    d: &mut Daemon,
    timeout: Duration,
    ok: impl Fn(&StatusView) -> bool,
) -> anyhow::Result<StatusView> {
    let log = d.home.join("daemon.log");
    let deadline = Instant::now() + timeout;
    loop {
        let last = match status(&d.home).await {
            Ok(s) if ok(&s) => return Ok(s),
            Ok(s) => format!("role {} ({})", s.role, s.role_reason),
            Err(e) => format!("no status: {e:#}"),
        };
        if let Some(exit) = d.child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            bail!(
                "{} exited ({exit}); the end of {}:\n{}",
                d.name,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "not within {} s; last: {}; see {}",
                timeout.as_secs(),
                last,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A token cancelled at the first Ctrl-C, SIGTERM or SIGHUP.
fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let token = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        token.cancel();
    });
    Ok(stop)
}
