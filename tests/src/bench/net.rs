//! A network of real processes on loopback for the benchmarks: the login server in-process
//! (its rate limits lifted, on threads of its own so that its CPU time can be read apart from
//! the bench's), `natter up` daemons as child processes, driven through the control API
//! ([`ControlClient`]) as the CLI drives them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use natter_login_server::Limit;
use natter_node::control::ControlClient;
use natter_node::daemon::api::{ControlRequest, ControlResponse, LookupView, StatusView};

use crate::{LoginServer, bin, loopback_config};

/// Where a daemon listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// TCP on 127.0.0.1 only: every connection uses the transport the floors use.
    Tcp4,
    /// TCP on [::1] only. Leaves then dial their IPv4 superpeers from a port nothing listens
    /// on, so hole punching between two such leaves fails (connection refused) and their
    /// connection stays relayed: the way to measure the relayed path for as long as needed.
    Tcp6,
}

impl Listen {
    fn args(self) -> &'static [&'static str] {
        match self {
            Listen::Tcp4 => &["--listen", "/ip4/127.0.0.1/tcp/0"],
            Listen::Tcp6 => &["--listen", "/ip6/::1/tcp/0"],
        }
    }
}

/// Name of the login server's threads (its runtime's worker and blocking threads), by which
/// [`Cluster::login_cpu`] finds them in `/proc/self/task`.
const LOGIN_THREADS: &str = "natter-login";

/// The login server and a directory for the daemons' homes.
#[derive(Debug)]
pub struct Cluster {
    pub login: LoginServer,
    /// The login server's own runtime; declared after `login` so that the server is told to
    /// stop before its runtime goes.
    _login_rt: LoginRuntime,
    dir: tempfile::TempDir,
}

/// A runtime shut down in the background when dropped: dropping a runtime waits for its
/// blocking threads, which an async context must not do.
#[derive(Debug)]
struct LoginRuntime(Option<tokio::runtime::Runtime>);

impl Drop for LoginRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Cluster {
    /// Starts the login server (inside this process, on loopback TCP, on a runtime of its own
    /// whose threads are named [`LOGIN_THREADS`]) with its per-IP and per-name limits lifted:
    /// every daemon of the bench registers from 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = loopback_config(&dir.path().join("login"));
        let generous = Limit {
            burst: u32::MAX,
            refill: Duration::from_nanos(1),
        };
        config.ip_limit = generous;
        config.name_limit = generous;
        config.request_limit = generous;
        config.max_inflight = 4096;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(LOGIN_THREADS)
            // Blocking threads (argon2) kept for the whole run: one that exits takes its CPU
            // time out of `/proc`.
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()?;
        let login = rt.spawn(LoginServer::start(config)).await?;
        Ok(Self {
            login,
            _login_rt: LoginRuntime(Some(rt)),
            dir,
        })
    }

    /// CPU time (user + system) used so far by the login server's threads, per thread id.
    pub fn login_cpu(&self) -> HashMap<u32, Duration> {
        let mut threads = HashMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return threads;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != LOGIN_THREADS {
                continue;
            }
            if let Some(cpu) = cpu_time(&task.path().join("stat")) {
                threads.insert(tid, cpu);
            }
        }
        threads
    }

    /// `natter register USER` with the real CLI (password from stdin).
    pub async fn register(&self, user: &str) -> anyhow::Result<PathBuf> {
        use tokio::io::AsyncWriteExt as _;
        let home = self.dir.path().join(user);
        let mut child = tokio::process::Command::new(bin("natter"))
            .arg("--home")
            .arg(&home)
            .args(["register", user, "--login", &self.login.addr.to_string()])
            .env("NATTER_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning natter register")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"password1\n").await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "natter register {user}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(home)
    }

    /// Registers `user` and starts `natter up` for it: `role` is `superpeer` or `leaf`.
    pub async fn daemon(&self, user: &str, role: &str, listen: Listen) -> anyhow::Result<Daemon> {
        self.daemon_with(user, role, listen, &[]).await
    }

    /// [`Cluster::daemon`] with more arguments for `natter up`.
    pub async fn daemon_with(
        &self,
        user: &str,
        role: &str,
        listen: Listen,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        let home = self.register(user).await?;
        Daemon::spawn(user, &home, role, listen, extra)
    }

    /// Starts `n` superpeers `<prefix>00`, `<prefix>01`, … one after another (each announces
    /// itself to the login server before the next starts, so later ones meet earlier ones at
    /// once) and waits until all are superpeers.
    pub async fn superpeers(
        &self,
        prefix: &str,
        n: usize,
        listen: Listen,
    ) -> anyhow::Result<Vec<Daemon>> {
        let mut sps = Vec::with_capacity(n);
        for i in 0..n {
            let sp = self
                .daemon(&format!("{prefix}{i:02}"), "superpeer", listen)
                .await?;
            sp.wait_role("superpeer", Duration::from_secs(30)).await?;
            sps.push(sp);
        }
        Ok(sps)
    }
}

/// A `natter up` child process, killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub home: PathBuf,
    child: std::process::Child,
}

impl Daemon {
    /// Starts `natter up` for an account registered at `home`.
    pub fn spawn(
        name: &str,
        home: &Path,
        role: &str,
        listen: Listen,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(home.join("up.log"))?;
        // A profiler around the carrying superpeer (e.g. `heaptrack -o /tmp/carrier`): its
        // figures are then the wrapper's, not the daemon's, so only for profiling runs.
        let wrap: Vec<String> = std::env::var("NATTER_BENCH_WRAP_CARRIER")
            .ok()
            .filter(|_| name == "carrier")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut command = match wrap.split_first() {
            Some((program, args)) => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(bin("natter"));
                c
            }
            None => std::process::Command::new(bin("natter")),
        };
        let child = command
            .arg("--home")
            .arg(home)
            .arg("up")
            .args(listen.args())
            .args(["--role", role, "--min-uptime", "0", "--min-cores", "1"])
            .args(extra)
            .env(
                "NATTER_LOG",
                std::env::var("NATTER_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning natter up")?;
        Ok(Self {
            name: name.into(),
            home: home.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the daemon `SIGKILL` without waiting for it (it is reaped when dropped): several
    /// daemons can be killed within microseconds of each other.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Takes the messages of `names` as a contact's (not as contact requests, whose quota is
    /// small).
    pub async fn accept(&self, names: &[&str]) -> anyhow::Result<()> {
        for name in names.iter().filter(|n| **n != self.name) {
            let edit = natter_node::daemon::api::InboxEdit::Accept {
                name: (*name).to_owned(),
            };
            match self.call(&ControlRequest::Edit { edit }).await? {
                ControlResponse::Done { .. } => {}
                other => anyhow::bail!("accept {name} on {}: {other:?}", self.name),
            }
        }
        Ok(())
    }

    /// One control request, one reply.
    pub async fn call(&self, request: &ControlRequest) -> anyhow::Result<ControlResponse> {
        let mut client = ControlClient::connect(&self.home).await?;
        Ok(client.call::<_, ControlResponse>(request).await?)
    }

    /// The replies of a streaming request (ping, `inbox --follow`), until the daemon ends it;
    /// dropping the stream closes the control connection.
    pub async fn stream(
        &self,
        request: &ControlRequest,
    ) -> anyhow::Result<BoxStream<'static, anyhow::Result<ControlResponse>>> {
        let client = ControlClient::connect(&self.home).await?;
        let stream = client.stream::<_, ControlResponse>(request).await?;
        Ok(stream
            .map(|reply| reply.map_err(anyhow::Error::from))
            .boxed())
    }

    /// The first reply of a streaming request (ping); the stream is dropped after it.
    pub async fn first(&self, request: &ControlRequest) -> anyhow::Result<ControlResponse> {
        let client = ControlClient::connect(&self.home).await?;
        let stream = client.stream::<_, ControlResponse>(request).await?;
        let mut stream = std::pin::pin!(stream);
        match stream.next().await {
            Some(reply) => Ok(reply?),
            None => bail!(
                "{}: the daemon closed the stream without a reply",
                self.name
            ),
        }
    }

    pub async fn status(&self) -> anyhow::Result<StatusView> {
        match self.call(&ControlRequest::Status).await? {
            ControlResponse::Status(s) => Ok(s),
            other => bail!("unexpected answer to status: {other:?}"),
        }
    }

    pub async fn lookup(&self, name: &str) -> anyhow::Result<LookupView> {
        match self
            .call(&ControlRequest::Lookup { name: name.into() })
            .await?
        {
            ControlResponse::Lookup(v) => Ok(v),
            other => bail!("unexpected answer to lookup: {other:?}"),
        }
    }

    pub async fn wait_role(&self, role: &str, timeout: Duration) -> anyhow::Result<()> {
        wait(&format!("{} to be {role}", self.name), timeout, || async {
            self.status().await.ok().filter(|s| s.role == role)
        })
        .await
        .map(|_| ())
    }

    /// Waits until a leaf has a primary superpeer (and, when `both`, a standby too).
    pub async fn wait_attached(&self, both: bool, timeout: Duration) -> anyhow::Result<()> {
        wait(&format!("{} attached", self.name), timeout, || async {
            self.status()
                .await
                .ok()
                .filter(|s| s.primary.is_some() && (!both || s.standby.is_some()))
        })
        .await
        .map(|_| ())
    }

    /// Waits until `name` reads online from this daemon.
    pub async fn wait_online(&self, name: &str, timeout: Duration) -> anyhow::Result<LookupView> {
        wait(
            &format!("{name} online as seen by {}", self.name),
            timeout,
            || async {
                self.lookup(name)
                    .await
                    .ok()
                    .filter(|v| v.status == "online")
            },
        )
        .await
    }

    /// Resident memory of the process, in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// CPU time (user + system) the process has used so far (Linux `/proc`).
    pub fn cpu(&self) -> Option<Duration> {
        cpu_time(Path::new(&format!("/proc/{}/stat", self.pid())))
    }

    /// This daemon's SQLite store, opened read-only (WAL readers do not block the daemon's
    /// writes): cheaper and finer-grained than polling `natter inbox`, whose reply carries
    /// every message.
    fn store(&self) -> anyhow::Result<rusqlite::Connection> {
        Ok(rusqlite::Connection::open_with_flags(
            self.home.join(natter_node::store::DB_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?)
    }

    fn count(&self, table: &str) -> anyhow::Result<u64> {
        let n: i64 =
            self.store()?
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Messages in this daemon's inbox.
    pub fn inbox_count(&self) -> anyhow::Result<u64> {
        self.count("inbox")
    }

    /// Messages in this daemon's outbox (queued, not yet acked).
    pub fn outbox_count(&self) -> anyhow::Result<u64> {
        self.count("outbox")
    }

    fn texts(&self, query: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let conn = self.store()?;
        let mut query = conn.prepare(query)?;
        let texts = query
            .query_map([name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(texts)
    }

    /// The texts of the messages from `sender` in this daemon's inbox.
    pub fn inbox_texts(&self, sender: &str) -> anyhow::Result<Vec<String>> {
        self.texts("SELECT text FROM inbox WHERE sender = ?1", sender)
    }

    /// The texts of the messages to `recipient` still in this daemon's outbox.
    pub fn outbox_texts(&self, recipient: &str) -> anyhow::Result<Vec<String>> {
        self.texts("SELECT text FROM outbox WHERE recipient = ?1", recipient)
    }

    /// The last lines the daemon wrote (its progress and warnings), for error reports.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.home.join("up.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Clock ticks per second of `/proc/*/stat` times: Linux's USER_HZ, 100 on every common
/// architecture (`getconf CLK_TCK`).
const TICKS_PER_SEC: u64 = 100;

/// User + system CPU time from a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` file.
pub fn cpu_time(stat: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    // Then field 3 is the state, 14 utime, 15 stime.
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SEC,
    ))
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
