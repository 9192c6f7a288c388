//! Programs inside the lab's namespaces: one-shot commands (`natter register`, `natter status`,
//! `nft -f -`) and long-running daemons (`natter-login serve`, `natter up`). patchbay's
//! `spawn_command` forks them from a thread inside the namespace, so they see only that host's
//! network; their pipes and exit are awaited from the lab's own runtime.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// The log filter for one-shot commands: the caller's `NATTER_LOG`, else warnings only.
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
        .env("NO_COLOR", "1")
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

/// Stdout lines a daemon's [`Daemon`] keeps in memory (its whole stdout is also in a file).
const KEPT_LINES: usize = 1000;
/// Lines of stdout and stderr a failure report shows.
const TAIL_LINES: usize = 30;

/// The lines a daemon printed on stdout, each with the time since it started, the last
/// [`KEPT_LINES`] of them.
#[derive(Debug, Default)]
struct Printed {
    lines: VecDeque<(Duration, String)>,
    /// Lines printed in all, including those no longer kept.
    total: usize,
}

/// A long-running program. A task reads its stdout line by line into memory and into
/// `<dir>/<name>.out`; stderr (its log) goes to `<dir>/<name>.log`. Both are shown when
/// something fails. Killed when stopped or dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: String,
    child: Child,
    started: Instant,
    printed: Arc<Mutex<Printed>>,
    /// How many lines the daemon has printed; closed when its stdout closes.
    count: watch::Receiver<usize>,
    /// Index of the line [`Daemon::next_line`] returns next.
    cursor: usize,
    reader: JoinHandle<()>,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(
        spawn: impl FnOnce(Command) -> anyhow::Result<Child>,
        name: &str,
        program: &Path,
        args: &[&OsStr],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = dir.join(format!("{name}.out"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let out_file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("NATTER_LOG", daemon_log_filter())
            // The log is a file: no colour codes in it (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = spawn(cmd).with_context(|| format!("spawning {name}"))?;
        let stdout = child.stdout.take().context("stdout of the daemon")?;
        let printed = Arc::new(Mutex::new(Printed::default()));
        let (count_tx, count) = watch::channel(0);
        let reader = tokio::spawn(read_stdout(
            BufReader::new(stdout).lines(),
            started,
            printed.clone(),
            count_tx,
            out_file,
        ));
        Ok(Self {
            name: name.to_owned(),
            child,
            started,
            printed,
            count,
            cursor: 0,
            reader,
            log,
        })
    }

    /// Its log file (stderr).
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// When the daemon was started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The next line the daemon prints on stdout (each line once, in order), within `timeout`.
    pub(crate) async fn next_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let cursor = self.cursor;
        let waited = tokio::time::timeout(timeout, self.count.wait_for(|&n| n > cursor)).await;
        match waited.map(|printed| printed.is_ok()) {
            Err(_) => bail!(
                "{} printed nothing for {timeout:?}\n{}",
                self.name,
                self.diagnosis()
            ),
            Ok(false) => {
                let status = self.child.wait().await?;
                bail!("{} exited ({status})\n{}", self.name, self.diagnosis())
            }
            Ok(true) => {}
        }
        let printed = lock(&self.printed);
        let first_kept = printed.total - printed.lines.len();
        let Some((_, line)) = cursor
            .checked_sub(first_kept)
            .and_then(|i| printed.lines.get(i))
        else {
            bail!("{}: stdout line {cursor} is no longer kept", self.name);
        };
        let line = line.clone();
        drop(printed);
        self.cursor += 1;
        Ok(line)
    }

    /// Whether the daemon closed its stdout: it has exited (or is exiting).
    pub(crate) fn exited(&self) -> bool {
        self.count.has_changed().is_err()
    }

    /// Whether any kept stdout line satisfies `pred`.
    pub(crate) fn printed(&self, pred: impl Fn(&str) -> bool) -> bool {
        lock(&self.printed).lines.iter().any(|(_, l)| pred(l))
    }

    /// Fails if the daemon has exited already.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})\n{}", self.name, self.diagnosis());
        }
        Ok(())
    }

    /// What the daemon said lately: its last stdout lines (with the time since it started) and
    /// the last lines of its log.
    pub(crate) fn diagnosis(&self) -> String {
        let printed = lock(&self.printed);
        let skip = printed.lines.len().saturating_sub(TAIL_LINES);
        let mut text = format!("  {} stdout:\n", self.name);
        for (at, line) in printed.lines.iter().skip(skip) {
            text.push_str(&format!("    +{:.2}s {line}\n", at.as_secs_f64()));
        }
        if printed.lines.is_empty() {
            text.push_str("    (nothing)\n");
        }
        drop(printed);
        text.push_str(&format!(
            "  {} log (last lines of {}):\n",
            self.name,
            self.log.display()
        ));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
            text.push_str(&format!("    {line}\n"));
        }
        if lines.is_empty() {
            text.push_str("    (empty)\n");
        }
        text
    }

    /// Kills the daemon (SIGKILL) and reaps it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.start_kill()?;
        }
        self.child.wait().await?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The child itself is killed by `kill_on_drop`.
        self.reader.abort();
    }
}

/// The log filter for daemons: the caller's `NATTER_LOG`, else `info`, so that the logs kept
/// after a failure tell what happened.
fn daemon_log_filter() -> String {
    std::env::var("NATTER_LOG").unwrap_or_else(|_| "info".into())
}

fn lock(printed: &Mutex<Printed>) -> std::sync::MutexGuard<'_, Printed> {
    printed.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Copies a daemon's stdout into `printed` and `file` until it closes.
async fn read_stdout(
    mut lines: Lines<BufReader<ChildStdout>>,
    started: Instant,
    printed: Arc<Mutex<Printed>>,
    count: watch::Sender<usize>,
    mut file: File,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let at = started.elapsed();
        // The file is a copy for whoever reads the kept work dir; the lab never reads it.
        let _ = writeln!(file, "+{:.3}s {line}", at.as_secs_f64());
        let total = {
            let mut p = lock(&printed);
            if p.lines.len() == KEPT_LINES {
                p.lines.pop_front();
            }
            p.lines.push_back((at, line));
            p.total += 1;
            p.total
        };
        count.send_replace(total);
    }
}
