//! Programs inside the lab's namespaces: one-shot commands (`natter register`, `nft -f -`) and
//! long-running daemons (`natter-login serve`). patchbay's `spawn_command` forks them from a
//! thread inside the namespace, so they see only that host's network; their pipes and exit
//! are awaited from the lab's own runtime.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// What a finished command did.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Output {
    /// Exit 0, or an error that shows everything the command said.
    pub(crate) fn success(self, what: &str) -> anyhow::Result<Self> {
        if !self.status.success() {
            bail!(
                "{what}: {}\n  stdout: {}\n  stderr: {}",
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            );
        }
        Ok(self)
    }
}

/// The log filter for Natter's binaries: the caller's `NATTER_LOG`, else warnings only.
fn log_filter() -> String {
    std::env::var("NATTER_LOG").unwrap_or_else(|_| "warn".into())
}

/// Runs `program args` to completion in the namespace of `spawn` (`|cmd| device.spawn_command(cmd)`,
/// or a router's, or the IX's) with `stdin` as its standard input, killing it after
/// `timeout`.
pub(crate) async fn run(
    spawn: impl FnOnce(Command) -> anyhow::Result<Child>,
    program: &Path,
    args: &[&OsStr],
    stdin: &str,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("NATTER_LOG", log_filter())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = spawn(cmd).with_context(|| format!("spawning {}", program.display()))?;
    let mut input = child.stdin.take().context("stdin of the child")?;
    // A program that exits before reading its input is judged by its exit status, not by EPIPE.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("{} did not finish within {timeout:?}", program.display()))?
        .with_context(|| format!("waiting for {}", program.display()))?;
    Ok(Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    })
}

/// A long-running program: stdout is read line by line, stderr goes to a log file that is
/// shown when something fails. Killed when stopped or dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(
        spawn: impl FnOnce(Command) -> anyhow::Result<Child>,
        name: &str,
        program: &Path,
        args: &[&OsStr],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("NATTER_LOG", log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = spawn(cmd).with_context(|| format!("spawning {name}"))?;
        let stdout = child.stdout.take().context("stdout of the daemon")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            stdout: BufReader::new(stdout).lines(),
            log: log.to_owned(),
        })
    }

    /// The next line the daemon prints on stdout, within `timeout`.
    pub(crate) async fn next_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Err(_) => bail!(
                "{} printed nothing for {timeout:?}; its log:\n{}",
                self.name,
                self.log_tail()
            ),
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => {
                let status = self.child.wait().await?;
                bail!(
                    "{} exited ({status}) while starting; its log:\n{}",
                    self.name,
                    self.log_tail()
                )
            }
            Ok(Err(e)) => Err(e).context(format!("reading the stdout of {}", self.name)),
        }
    }

    /// Fails if the daemon has exited already.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the daemon's stderr.
    pub(crate) fn log_tail(&self) -> String {
        const LINES: usize = 30;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LINES)..];
        if tail.is_empty() {
            "  (empty)".into()
        } else {
            tail.iter().map(|l| format!("  {l}\n")).collect()
        }
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}
