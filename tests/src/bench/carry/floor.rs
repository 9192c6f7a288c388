//! The floor of a superpeer's cost per leaf: what a bare libp2p swarm spends per connection on
//! the same transport (TCP, Noise, Yamux) with nothing but libp2p ping (at the node's
//! interval), measured the same way (RSS delta of its own process, CPU over a window).
//!
//! The listener is `natter-bench`, run again with `--floor-listener`: it prints its address and
//! serves until killed. The dialers are bare swarms in this process, each from its own
//! loopback address like the simulated leaves.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use libp2p::core::Transport as _;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, noise, ping, yamux};
use tokio_util::sync::CancellationToken;

use super::super::leafsim::{self, source::FromSource};

/// Connections stay open without any behaviour asking for them.
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// The `--floor-listener` process: listens on loopback TCP, prints `LISTEN <addr>` and runs
/// until killed.
pub fn listener() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let config = natter_net::TransportConfig {
                idle_timeout: IDLE,
                quic: None,
                ..Default::default()
            };
            let mut swarm = natter_net::build_swarm(Keypair::generate_ed25519(), &config, |_| {
                ping::Behaviour::new(natter_net::ping_config())
            })?;
            swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    let me = *swarm.local_peer_id();
                    println!(
                        "LISTEN {}",
                        address.with(libp2p::multiaddr::Protocol::P2p(me))
                    );
                    break;
                }
            }
            loop {
                swarm.select_next_some().await;
            }
        })
}

/// A running floor listener and the bare swarms connected to it.
#[derive(Debug)]
pub(super) struct Floor {
    child: Child,
    addr: Multiaddr,
    connected: usize,
    stop: CancellationToken,
}

impl Floor {
    pub(super) fn start() -> anyhow::Result<Self> {
        // This binary when it is natter-bench; under the smoke test, natter-bench built.
        let me = std::env::current_exe()?;
        let exe = if me.file_stem().is_some_and(|n| n == "natter-bench") {
            me
        } else {
            crate::bench_bin()
        };
        let mut child = Command::new(exe)
            .arg("--floor-listener")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the floor listener")?;
        let stdout = child.stdout.take().context("the listener's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("LISTEN ")
            .with_context(|| format!("the floor listener said {line:?}"))?
            .parse()?;
        Ok(Self {
            child,
            addr,
            connected: 0,
            stop: CancellationToken::new(),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects bare swarms until `n` are connected.
    pub(super) async fn grow(&mut self, n: usize) -> anyhow::Result<()> {
        let (done, mut connected) = tokio::sync::mpsc::channel(64);
        let adding = n.saturating_sub(self.connected);
        for i in self.connected..n {
            let mut swarm = bare(leafsim::source_ip(i))?;
            swarm.dial(self.addr.clone())?;
            let done = done.clone();
            let stop = self.stop.clone();
            tokio::spawn(async move {
                let mut told = false;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        event = swarm.select_next_some() => {
                            if !told && matches!(event, SwarmEvent::ConnectionEstablished { .. }) {
                                told = true;
                                let _ = done.send(()).await;
                            }
                        }
                    }
                }
            });
        }
        let start = Instant::now();
        for _ in 0..adding {
            tokio::time::timeout(
                Duration::from_secs(120).saturating_sub(start.elapsed()),
                async { connected.recv().await },
            )
            .await
            .context("bare connections to the floor listener timed out")?;
        }
        self.connected = n;
        Ok(())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bare(source: std::net::Ipv4Addr) -> anyhow::Result<Swarm<ping::Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                FromSource { source }
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default()),
            )
        })?
        .with_behaviour(|_| ping::Behaviour::new(natter_net::ping_config()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
        .build())
}
