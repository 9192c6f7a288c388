//! Helpers shared by Natter's cross-crate tests and benchmark harness: the real binaries, and
//! a login server started in-process on loopback.

pub mod bench;
pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use libp2p::Multiaddr;
use natter_login_server::{Config, Server};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Path of a workspace binary (`natter`, `natter-login`), built once per test process so the
/// tests always run the code of this checkout.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_profile_dir();
    BUILT
        .get_or_init(|| cargo_build(&["--bins", "-p", "natter-node", "-p", "natter-login-server"]));
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Path of `natter-bench`, built once per process like [`bin`]: the scale suite runs it as
/// its floor listener, also from the smoke test (a test binary itself).
pub fn bench_bin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&["--bin", "natter-bench", "-p", "natter-tests"]));
    let path = target_profile_dir().join("natter-bench");
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Removes this process's own cargo variables (package, manifest, crate) from `cmd`'s
/// environment; `CARGO` itself stays.
pub fn without_cargo_vars(cmd: &mut Command) {
    for (var, _) in std::env::vars() {
        if var.starts_with("CARGO_PKG_")
            || var.starts_with("CARGO_MANIFEST_")
            || var == "CARGO_CRATE_NAME"
            || var == "CARGO_PRIMARY_PACKAGE"
        {
            cmd.env_remove(var);
        }
    }
}

/// `cargo build ARGS` of this checkout, in the profile this process was built with.
fn cargo_build(args: &[&str]) {
    let dir = target_profile_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").args(args);
    // The test's own cargo variables would make build scripts (ring's) see a changed
    // environment and rebuild, for this build and the next outer one alike.
    without_cargo_vars(&mut cmd);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// `target/<profile>` of the running test or bench executable (which lives in
/// `target/<profile>/deps` or `target/<profile>`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A config for tests: a data dir of the caller's choosing, TCP on an ephemeral loopback port.
pub fn loopback_config(data_dir: &Path) -> Config {
    let mut config = Config::new(data_dir);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("constant")];
    config
}

/// A login server running in this process until dropped or [`LoginServer::stop`]ped.
#[derive(Debug)]
pub struct LoginServer {
    pub addr: Multiaddr,
    pub peer_id: libp2p::PeerId,
    pub issuer_key: natter_proto::IssuerKey,
    service: std::sync::Arc<natter_login_server::service::Service>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LoginServer {
    pub async fn start(config: Config) -> Self {
        let server = Server::bind(config).await.expect("login server binds");
        let addr = server.listen_addrs()[0].clone();
        let peer_id = server.peer_id();
        let issuer_key = server.issuer_key();
        let service = server.service();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            server.run(token).await.expect("login server runs");
        });
        Self {
            addr,
            peer_id,
            issuer_key,
            service,
            shutdown,
            task: Some(task),
        }
    }

    /// Does a bootstrap list handed out now include the superpeer `peer` (announced and
    /// reached back)?
    pub fn lists(&self, peer: &str) -> bool {
        peer.parse().is_ok_and(|peer| self.service.lists(&peer))
    }

    /// The supply (superpeers, their leaves and capacity) bootstrap answers carry now.
    pub fn supply(&self) -> natter_proto::login::Supply {
        self.service.supply()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("login server task");
        }
    }
}

impl Drop for LoginServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A bare libp2p peer listening on loopback TCP, as a superpeer's listener looks to whoever
/// dials it: Noise proves `key`'s peer id and nothing else runs on the connection. Tests use
/// it as a superpeer the login server can reach back (or, with another key than the one that
/// announces it, as an address that answers with the wrong peer id). Stops when dropped.
#[derive(Debug)]
pub struct Listener {
    /// The bound address, without `/p2p/`.
    pub addr: Multiaddr,
    pub peer_id: libp2p::PeerId,
    inbound: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    shutdown: CancellationToken,
}

impl Listener {
    pub async fn start(key: libp2p::identity::Keypair) -> Self {
        use futures::StreamExt as _;
        use libp2p::swarm::SwarmEvent;

        let config = natter_net::TransportConfig {
            quic: None,
            ..Default::default()
        };
        let mut swarm = natter_net::build_swarm(key, &config, |_| libp2p::swarm::dummy::Behaviour)
            .expect("listener swarm");
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("constant"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let peer_id = *swarm.local_peer_id();
        let inbound = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let (count, token) = (inbound.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::ConnectionEstablished { endpoint, .. } = event
                            && endpoint.is_listener()
                        {
                            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Self {
            addr,
            peer_id,
            inbound,
            shutdown,
        }
    }

    /// Inbound connections established so far (each one proved `peer_id` to its dialer).
    pub fn inbound_connections(&self) -> usize {
        self.inbound.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits up to `timeout` for a first inbound connection: the dialer's side of a connection
    /// is up a moment before this side's. `false` if none came.
    pub async fn was_dialed(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inbound_connections() == 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs `natter --home HOME ARGS...` to completion, `stdin` piped in.
pub fn natter(home: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(bin("natter"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("NATTER_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn natter");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("wait for natter")
}

/// `natter ... --json` parsed, or `None` if the command failed (e.g. daemon not up yet).
pub fn natter_json(home: &Path, args: &[&str]) -> Option<serde_json::Value> {
    let mut full = args.to_vec();
    full.push("--json");
    let out = natter(home, &full, "");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A `natter up` daemon on loopback, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    pub home: PathBuf,
    extra: Vec<String>,
    /// Started as a user would: no promotion flags (see [`NodeProcess::start_plain`]).
    plain: bool,
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
}

impl NodeProcess {
    /// Registers `user` (password `password1`) at `login`, then starts `natter up` with
    /// `extra` flags, listening on loopback TCP and QUIC, promotion uptime 0.
    pub fn start(dir: &Path, user: &str, login: &Multiaddr, extra: &[&str]) -> Self {
        Self::register_and_spawn(dir, user, login, extra, false)
    }

    /// Like [`NodeProcess::start`], but `natter up` with the default promotion rules (no
    /// `--min-uptime 0`, no `--min-cores`): as a user starts it, only on loopback.
    pub fn start_plain(dir: &Path, user: &str, login: &Multiaddr, extra: &[&str]) -> Self {
        Self::register_and_spawn(dir, user, login, extra, true)
    }

    /// Another device of `user`, who registered already: `natter login` (password
    /// `password1`) in a home of its own (`dir/USER-DEVICE`), then `natter up` as
    /// [`NodeProcess::start`] does.
    pub fn start_device(
        dir: &Path,
        user: &str,
        device: &str,
        login: &Multiaddr,
        extra: &[&str],
    ) -> Self {
        let home = dir.join(format!("{user}-{device}"));
        Self::sign_in_and_spawn(home, "login", user, login, extra, false)
    }

    fn register_and_spawn(
        dir: &Path,
        user: &str,
        login: &Multiaddr,
        extra: &[&str],
        plain: bool,
    ) -> Self {
        Self::sign_in_and_spawn(dir.join(user), "register", user, login, extra, plain)
    }

    fn sign_in_and_spawn(
        home: PathBuf,
        how: &str,
        user: &str,
        login: &Multiaddr,
        extra: &[&str],
        plain: bool,
    ) -> Self {
        // Many sign-ins from one address meet the login server's rate limit, as they would
        // for a user: wait as it says, and try again.
        let mut tries = 0;
        let out = loop {
            let out = natter(
                &home,
                &[how, user, "--login", &login.to_string()],
                "password1\n",
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            tries += 1;
            if out.status.success() || !stderr.contains("rate limited") || tries == 60 {
                break out;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        };
        assert!(
            out.status.success(),
            "{how} {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, stdout) = Self::spawn(&home, &extra, plain);
        Self {
            home,
            extra,
            plain,
            child,
            stdout,
        }
    }

    fn spawn(
        home: &Path,
        extra: &[String],
        plain: bool,
    ) -> (
        std::process::Child,
        std::sync::Arc<std::sync::Mutex<String>>,
    ) {
        let mut child = Command::new(bin("natter"))
            .arg("--home")
            .arg(home)
            .args([
                "up",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .args(if plain {
                &[][..]
            } else {
                &["--min-uptime", "0", "--min-cores", "1"][..]
            })
            .args(extra)
            .env(
                "NATTER_LOG",
                std::env::var("NATTER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(log_sink(home))
            .spawn()
            .expect("spawn natter up");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stdout.take().expect("stdout");
        let sink = stdout.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push_str(&(line + "\n"));
            }
        });
        (child, stdout)
    }

    /// Starts the daemon again on the same home, after it stopped or was killed.
    pub fn restart(&mut self) {
        self.kill();
        let (child, stdout) = Self::spawn(&self.home, &self.extra, self.plain);
        self.child = child;
        self.stdout = stdout;
    }

    /// What the daemon printed so far (its progress phases).
    pub fn output(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        natter_json(&self.home, &["status"])
    }

    pub fn peer_id(&self) -> String {
        wait_for("status", std::time::Duration::from_secs(20), || {
            self.status()
                .and_then(|s| s["peer_id"].as_str().map(str::to_owned))
        })
    }

    /// Waits until `natter status` reports `role`.
    pub fn wait_role(&self, role: &str, timeout: std::time::Duration) {
        wait_for(
            &format!("{} to be {role}", self.home.display()),
            timeout,
            || self.status().filter(|s| s["role"] == role).map(|_| ()),
        );
    }

    /// `natter lookup NAME --json`; an unknown user exits 1 but still prints its answer.
    pub fn lookup(&self, name: &str) -> Option<serde_json::Value> {
        let out = natter(&self.home, &["lookup", name, "--json"], "");
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Whether `status` shows a primary superpeer.
    pub fn is_attached(&self) -> bool {
        self.status().is_some_and(|s| s["primary"].is_string())
    }

    /// `natter send TO TEXT --json` from this node's home: the answer (the command must
    /// succeed).
    pub fn send(&self, to: &str, text: &str) -> serde_json::Value {
        let out = natter(&self.home, &["send", to, text, "--json"], "");
        assert!(
            out.status.success(),
            "send: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("send --json prints JSON")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself (after `natter down`).
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        wait_for("daemon exit", timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a daemon's log goes: the test's own stderr, or with `NATTER_TEST_LOG_DIR` set, a file
/// there named after the daemon's home and the time it started (to read a failed run's logs
/// one node at a time).
fn log_sink(home: &Path) -> std::process::Stdio {
    let Some(dir) = std::env::var_os("NATTER_TEST_LOG_DIR") else {
        return std::process::Stdio::inherit();
    };
    let name = home
        .file_name()
        .map_or_else(|| "node".into(), |n| n.to_string_lossy().into_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let path = Path::new(&dir).join(format!("{name}-{started}.log"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::File::create(&path)) {
        Ok(file) => file.into(),
        Err(e) => panic!("cannot write the log {}: {e}", path.display()),
    }
}

/// A login server in this process (on its own runtime) and a temporary directory for the
/// homes of the nodes a test starts against it.
#[derive(Debug)]
pub struct TestNet {
    pub rt: tokio::runtime::Runtime,
    pub server: LoginServer,
    pub dir: tempfile::TempDir,
}

impl TestNet {
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// [`TestNet::new`] with the login server's configuration changed by `change`.
    pub fn with_config(change: impl FnOnce(&mut Config)) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = loopback_config(&dir.path().join("login"));
        change(&mut config);
        let server = rt.block_on(LoginServer::start(config));
        Self { rt, server, dir }
    }

    /// Registers `user` and starts its `natter up` with `extra` flags.
    pub fn node(&self, user: &str, extra: &[&str]) -> NodeProcess {
        NodeProcess::start(self.dir.path(), user, &self.server.addr, extra)
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeProcess {
    /// This node's PeerId and its loopback TCP listen address, for bare clients.
    pub fn tcp_endpoint(&self) -> (libp2p::PeerId, Multiaddr) {
        let status = self.status().expect("status");
        let peer = status["peer_id"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .expect("peer id");
        let addr = status["listen_addrs"]
            .as_array()
            .expect("listen_addrs")
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.contains("/tcp/") && !a.contains("p2p-circuit"))
            .and_then(|a| a.parse().ok())
            .expect("a TCP listen address");
        (peer, addr)
    }
}
