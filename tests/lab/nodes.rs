//! The Natter processes of one lab run: the login server (started by the `login` scenario) and
//! one `natter up` per host (started by `promotion`). Later scenarios use the network as it
//! is, as users would; [`Net::shutdown`] kills every process at the end, and dropping the
//! [`Net`] (a panic, the lab's budget running out) kills them too.
//!
//! Every daemon's stdout and log are files in the lab's work dir, kept when something fails; a
//! failing check shows the tail of the daemon concerned.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

    pub(crate) async fn lookup(&self, name: &str) -> Result<Value, String> {
        self.json(&["lookup", name]).await
    }
}

/// Everything running in the lab.
#[derive(Debug)]
pub(crate) struct Net {
    pub(crate) bins: Binaries,
    /// Homes, data dirs, stdout and logs of every process.
    pub(crate) work: PathBuf,
    pub(crate) login: Option<LoginServer>,
    pub(crate) nodes: Vec<Node>,
}

impl Net {
    pub(crate) fn new(bins: Binaries, work: &Path) -> Self {
        Self {
            bins,
            work: work.to_owned(),
            login: None,
            nodes: Vec::new(),
        }
    }

    /// The home directory of `user`'s device (its host's name).
    pub(crate) fn home(&self, user: &str) -> PathBuf {
        self.work.join(format!("home-{user}"))
    }

    /// Starts `natter up --role auto` on `host` (already registered), listening on the host's
    /// own address, TCP and QUIC on [`NODE_PORT`]; promotion needs no uptime and one core.
    pub(crate) fn start_node(&mut self, host: &Host) -> anyhow::Result<()> {
        let ip = host.ip()?;
        let home = self.home(host.name);
        let tcp = format!("/ip4/{ip}/tcp/{NODE_PORT}");
        let quic = format!("/ip4/{ip}/udp/{NODE_PORT}/quic-v1");
        let args: [&OsStr; 13] = [
            "--home".as_ref(),
            home.as_ref(),
            "up".as_ref(),
            "--listen".as_ref(),
            tcp.as_ref(),
            "--listen".as_ref(),
            quic.as_ref(),
            "--role".as_ref(),
            "auto".as_ref(),
            "--min-uptime".as_ref(),
            "0".as_ref(),
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
