//! The Natter processes of one lab run: the login server (started by the `login` scenario) and
//! one `natter up` per host (started by `promotion`). Later scenarios use the network as it
//! is, as users would; [`Net::shutdown`] kills every process at the end, and dropping the
//! [`Net`] (a panic, the lab's budget running out) kills them too.
//!
//! Every daemon's stdout and log are files in the lab's work dir, kept when something fails; a
//! failing check shows the tail of the daemon concerned.
//!
//! Every message a scenario sends is kept in [`Net::letters`], so that any later look at an
//! inbox can tell a lost, duplicated or unexpected message from the ones still on their way.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use patchbay::Device;
use serde_json::Value;
use tokio::time::Instant;

use crate::runner::{self, Daemon};
use crate::topology::Host;

/// The port `natter up` listens on, TCP and QUIC, on every host.
const NODE_PORT: u16 = 4001;
/// `natter status` and friends answer at once; `lookup` may wait for the overlay's request
/// timeout (15 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a condition is polled.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// The workspace binaries the lab runs.
#[derive(Debug)]
pub(crate) struct Binaries {
    pub(crate) natter: PathBuf,
    pub(crate) natter_login: PathBuf,
}

/// `natter-login serve` on the login host.
#[derive(Debug)]
pub(crate) struct LoginServer {
    pub(crate) daemon: Daemon,
    /// The TCP address it printed, ending in `/p2p/<its peer id>`.
    pub(crate) tcp: String,
    /// The QUIC address it printed, ending in `/p2p/<its peer id>`.
    pub(crate) quic: String,
}

/// `natter up` on one host, and the CLI to talk to it from that host.
#[derive(Debug)]
pub(crate) struct Node {
    /// The host's name, also its user's name.
    pub(crate) name: &'static str,
    device: Device,
    home: PathBuf,
    natter: PathBuf,
    pub(crate) daemon: Daemon,
}

impl Node {
    /// `natter --home H ARGS` on this node's host.
    pub(crate) async fn cli(&self, args: &[&str]) -> anyhow::Result<runner::Output> {
        let mut full: Vec<&OsStr> = vec!["--home".as_ref(), self.home.as_ref()];
        full.extend(args.iter().map(OsStr::new));
        runner::run(
            |cmd| self.device.spawn_command(cmd),
            &self.natter,
            &full,
            "",
            CLI_TIMEOUT,
        )
        .await
        .with_context(|| format!("natter {} on {}", args.join(" "), self.name))
    }

    /// `natter ARGS --json`, parsed; the error is one line saying what went wrong (the daemon
    /// not answering yet, a refusal, …), for a poll to show as its last observation.
    pub(crate) async fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cli(&full).await.map_err(|e| format!("{e:#}"))?;
        if !out.status.success() {
            return Err(format!(
                "natter {} on {}: {}: {}",
                args.join(" "),
                self.name,
                out.status,
                out.stderr.trim()
            ));
        }
        serde_json::from_str(&out.stdout).map_err(|e| {
            format!(
                "natter {} on {} printed no JSON ({e}): {}",
                args.join(" "),
                self.name,
                out.stdout.trim()
            )
        })
    }

    /// A failed check if `natter up` has exited: nothing to wait for any more.
    pub(crate) fn gone<T>(&self) -> Option<Check<T>> {
        self.daemon
            .exited()
            .then(|| Check::Fail(format!("natter up on {} has exited", self.name)))
    }

    pub(crate) async fn status(&self) -> Result<Value, String> {
        self.json(&["status"]).await
    }

    /// `natter lookup NAME --json`: an unknown user exits 1 but still prints its answer.
    pub(crate) async fn lookup(&self, name: &str) -> Result<Value, String> {
        match self.json(&["lookup", name]).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let out = self
                    .cli(&["lookup", name, "--json"])
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                serde_json::from_str::<Value>(&out.stdout)
                    .ok()
                    .filter(|v| v["status"] == "unknown")
                    .ok_or(e)
            }
        }
    }

    /// `natter send TO TEXT --json`, checked against the `send` contract: a message id, status
    /// "delivered" (with path "direct" or "relayed") or "queued" (with no path), and `to`.
    pub(crate) async fn send(&self, to: &'static str, text: &str) -> Result<Letter, String> {
        let at = SystemTime::now();
        let started = Instant::now();
        let v = self.json(&["send", to, text]).await?;
        let took = started.elapsed();
        let status = v["status"].as_str().unwrap_or_default().to_owned();
        let path = v["path"].as_str().map(str::to_owned);
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let fits = matches!(
            (status.as_str(), path.as_deref()),
            ("delivered", Some("direct" | "relayed")) | ("queued", None)
        );
        if !fits || id.len() != 26 || v["to"] != to {
            return Err(format!(
                "natter send {to} on {}: an answer outside the contract: {v}",
                self.name
            ));
        }
        Ok(Letter {
            id,
            from: self.name,
            to,
            text: text.to_owned(),
            status,
            path,
            at,
            took,
        })
    }

    /// `natter inbox --json`: every message this user received, oldest first.
    pub(crate) async fn inbox(&self) -> Result<Vec<Value>, String> {
        let v = self.json(&["inbox"]).await?;
        v.as_array()
            .cloned()
            .ok_or_else(|| format!("natter inbox on {} printed no array: {v}", self.name))
    }

    /// `natter ping NAME --count 1 --json`: the one probe.
    pub(crate) async fn ping_once(&self, name: &str) -> Result<Value, String> {
        let v = self.json(&["ping", name, "--count", "1"]).await?;
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .ok_or_else(|| format!("natter ping {name} on {} printed no probe: {v}", self.name))
    }

    /// The home directory of this node's user.
    pub(crate) fn home(&self) -> &Path {
        &self.home
    }
}

/// A message a scenario sent, as `natter send` answered.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    pub(crate) id: String,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    pub(crate) text: String,
    /// "delivered" or "queued".
    pub(crate) status: String,
    /// "direct" or "relayed" when delivered.
    pub(crate) path: Option<String>,
    /// When `send` was started (wall clock, to compare with the daemons' logs).
    pub(crate) at: SystemTime,
    /// How long `send` took (it waits up to 5 s for the recipient's ack).
    pub(crate) took: Duration,
}

/// Everything running in the lab.
#[derive(Debug)]
pub(crate) struct Net {
    pub(crate) bins: Binaries,
    /// Homes, data dirs, stdout and logs of every process.
    pub(crate) work: PathBuf,
    pub(crate) login: Option<LoginServer>,
    /// The daemons still running.
    pub(crate) nodes: Vec<Node>,
    /// Every `natter up` ever started, with its log file, killed ones included.
    pub(crate) logs: Vec<(&'static str, PathBuf)>,
    /// User (host) name and device peer id of every node, as its `natter status` said.
    pub(crate) peer_ids: Vec<(&'static str, String)>,
    /// Every message accepted by `natter send` so far. A cell, so that scenarios record what
    /// they send while they hold their nodes (the lab runs on one thread; no borrow is held
    /// across an await).
    letters: RefCell<Vec<Letter>>,
}

impl Net {
    pub(crate) fn new(bins: Binaries, work: &Path) -> Self {
        Self {
            bins,
            work: work.to_owned(),
            login: None,
            nodes: Vec::new(),
            logs: Vec::new(),
            peer_ids: Vec::new(),
            letters: RefCell::new(Vec::new()),
        }
    }

    /// The home directory of `user`'s device (its host's name).
    pub(crate) fn home(&self, user: &str) -> PathBuf {
        self.work.join(format!("home-{user}"))
    }

    /// Starts plain `natter up` on `host` (already registered), listening on the host's own
    /// address, TCP and QUIC on [`NODE_PORT`]: the default role and promotion rules (public
    /// hosts promote by need, as the new network has no superpeer), but one core is enough,
    /// as the lab's hosts share the machine's.
    pub(crate) fn start_node(&mut self, host: &Host) -> anyhow::Result<()> {
        let ip = host.ip()?;
        let home = self.home(host.name);
        let tcp = format!("/ip4/{ip}/tcp/{NODE_PORT}");
        let quic = format!("/ip4/{ip}/udp/{NODE_PORT}/quic-v1");
        let args: [&OsStr; 9] = [
            "--home".as_ref(),
            home.as_ref(),
            "up".as_ref(),
            "--listen".as_ref(),
            tcp.as_ref(),
            "--listen".as_ref(),
            quic.as_ref(),
            "--min-cores".as_ref(),
            "1".as_ref(),
        ];
        let daemon = Daemon::start(
            |cmd| host.device.spawn_command(cmd),
            &format!("natter-up-{}", host.name),
            &self.bins.natter,
            &args,
            &self.work,
        )?;
        self.logs.push((host.name, daemon.log_path().to_owned()));
        self.nodes.push(Node {
            name: host.name,
            device: host.device.clone(),
            home,
            natter: self.bins.natter.clone(),
            daemon,
        });
        Ok(())
    }

    pub(crate) fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("natter up is not running on {name}"))
    }

    /// Reads the peer id of every running node not known yet from its `natter status`.
    pub(crate) async fn learn_peer_ids(&mut self) -> anyhow::Result<()> {
        for node in &self.nodes {
            if self.peer_ids.iter().any(|(n, _)| *n == node.name) {
                continue;
            }
            let status = node.status().await.map_err(|e| anyhow::anyhow!(e))?;
            let id = status["peer_id"]
                .as_str()
                .with_context(|| format!("no peer id in the status of {}: {status}", node.name))?;
            self.peer_ids.push((node.name, id.to_owned()));
        }
        Ok(())
    }

    /// The user whose device is `peer`.
    pub(crate) fn name_of(&self, peer: &str) -> Option<&'static str> {
        self.peer_ids
            .iter()
            .find(|(_, id)| id == peer)
            .map(|(name, _)| *name)
    }

    /// Kills `natter up` on `name` (SIGKILL: no goodbye to anyone), as a crash or power cut
    /// would; its log stays in the work dir.
    pub(crate) async fn kill_node(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("natter up is not running on {name}"))?;
        self.nodes.remove(index).daemon.stop().await
    }

    /// Kills the login server (SIGKILL).
    pub(crate) async fn stop_login(&mut self) -> anyhow::Result<()> {
        let login = self
            .login
            .take()
            .context("the login server is not running")?;
        login.daemon.stop().await
    }

    /// Keeps a message `natter send` accepted.
    pub(crate) fn record(&self, letter: &Letter) {
        self.letters.borrow_mut().push(letter.clone());
    }

    /// The messages sent so far.
    pub(crate) fn letters(&self) -> Vec<Letter> {
        self.letters.borrow().clone()
    }

    /// The messages sent to `user` so far.
    pub(crate) fn letters_to(&self, user: &str) -> Vec<Letter> {
        let letters = self.letters.borrow();
        letters.iter().filter(|l| l.to == user).cloned().collect()
    }

    /// Kills every process (SIGKILL) and reaps it.
    pub(crate) async fn shutdown(&mut self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        let login = self.login.take().map(|l| l.daemon);
        for daemon in self.nodes.drain(..).map(|n| n.daemon).chain(login) {
            if let Err(e) = daemon.stop().await {
                failed.push(format!("{e:#}"));
            }
        }
        anyhow::ensure!(failed.is_empty(), "stopping: {}", failed.join("; "));
        Ok(())
    }
}

/// One look at a condition being polled.
#[derive(Debug)]
pub(crate) enum Check<T> {
    /// It holds; here is what was found.
    Done(T),
    /// Not yet; this is what was seen instead.
    Wait(String),
    /// It can no longer hold (e.g. a NATed node promoted itself): stop waiting.
    Fail(String),
}

/// Looks at `check` every [`POLL_EVERY`] until it is [`Check::Done`], for at most `timeout`.
/// The error names `what` and the last thing seen.
pub(crate) async fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Check<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing (no answer yet)");
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Check::Done(found)) => return Ok(found),
            Ok(Check::Wait(seen)) => last = seen,
            Ok(Check::Fail(seen)) => anyhow::bail!("{what}: {seen}"),
            Err(_) => {}
        }
        if Instant::now() + POLL_EVERY >= deadline {
            anyhow::bail!("{what}: not within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
