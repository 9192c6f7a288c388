//! Helpers shared by Natter's cross-crate tests and benchmark harness: the real binaries, and
//! a login server started in-process on loopback.

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
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "natter-node",
            "-p",
            "natter-login-server",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
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
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LoginServer {
    pub async fn start(config: Config) -> Self {
        let server = Server::bind(config).await.expect("login server binds");
        let addr = server.listen_addrs()[0].clone();
        let peer_id = server.peer_id();
        let issuer_key = server.issuer_key();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            server.run(token).await.expect("login server runs");
        });
        Self {
            addr,
            peer_id,
            issuer_key,
            shutdown,
            task: Some(task),
        }
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
