//! The leaf simulator: thousands of leaves in this process, so that a real `natter up`
//! superpeer can be measured carrying them on a 2-core machine, where thousands of leaf
//! daemons (18 MiB each) could not run.
//!
//! Each simulated leaf is its own libp2p swarm (TCP, Noise, Yamux, the relay client) with its
//! own device key and a real certificate the real login server issued at registration. It
//! speaks the real protocols as a leaf daemon does towards its superpeer: the introduction on
//! the new connection (and an answer to the superpeer's), `Attach`, a relay reservation
//! (relay v2), its signed presence record published at once and again every publication
//! interval, the revocation poll, identify and ping, and lookups on request. What it leaves
//! out is what does not load the superpeer: no store, no standby superpeer, no hole punching.
//!
//! Leaves connect from many loopback addresses (`127.1.x.y`, [`LEAVES_PER_SOURCE`] each), as
//! leaves on the Internet come from many IP addresses: a superpeer's per-IP limits
//! (connections, relay reservations per minute) would otherwise hold thousands back.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, ping, relay, yamux};
use natter_node::login_client::LoginClient;
use natter_proto::login::Password;
use natter_proto::overlay::{Introduction, IntroductionResponse, OverlayRequest, OverlayResponse};
use natter_proto::{Certificate, PresenceBody, Status, UserName, protocol};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub(crate) mod source;

use libp2p::core::Transport as _;

type OverlayCodec = request_response::json::codec::Codec<OverlayRequest, OverlayResponse>;
type IntroduceCodec = request_response::json::codec::Codec<Introduction, IntroductionResponse>;

/// Leaves that share one source address.
pub const LEAVES_PER_SOURCE: usize = 10;
/// How long a record vouches for its leaf, and how often it is published again: the daemon's
/// defaults (90 s lease, a third of it).
const LEASE_SECS: u64 = 90;
const PUBLISH_EVERY: Duration = Duration::from_secs(30);
/// The leaf daemon's revocation poll.
const REVOCATIONS_EVERY: Duration = Duration::from_secs(60);

/// A simulated leaf's account: its device key and the certificate the login server issued.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: UserName,
    pub key: Keypair,
    pub cert: Certificate,
}

/// Registers `names` at the login server, `concurrency` at a time, each with a new device key:
/// real registrations (argon2id on the server) through the real login protocol.
pub async fn register(
    login: &Multiaddr,
    names: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<Vec<Account>> {
    let mut accounts = Vec::with_capacity(names.len());
    let mut names = names.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < concurrency {
            let Some(name) = names.next() else { break };
            let login = login.clone();
            running.push(async move {
                let name = UserName::parse(&name)?;
                let key = Keypair::generate_ed25519();
                let client =
                    LoginClient::new(key.clone(), login)?.with_timeout(Duration::from_secs(120));
                let issued = client
                    .register(&name, Password::new("password1"))
                    .await
                    .with_context(|| format!("registering {name}"))?;
                anyhow::Ok(Account {
                    name,
                    key,
                    cert: issued.cert,
                })
            });
        }
        match running.next().await {
            Some(account) => accounts.push(account?),
            None => return Ok(accounts),
        }
    }
}

/// What the leaves did so far, summed over all of them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Leaves the superpeer answered `Attached`.
    pub attached: AtomicU64,
    /// Leaves holding a relay reservation (their circuit address is listening).
    pub reserved: AtomicU64,
    /// Leaves whose first record the superpeer took.
    pub published: AtomicU64,
    /// Records taken, first ones and renewals.
    pub publications: AtomicU64,
    /// Requests refused or failed, connections lost, reservations lost.
    pub failures: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A lookup's answer as a simulated leaf saw it.
#[derive(Debug, Clone, Copy)]
pub struct Looked {
    pub took: Duration,
    pub found: bool,
}

struct Ask {
    name: String,
    reply: oneshot::Sender<anyhow::Result<Looked>>,
}

/// A running fleet of simulated leaves; every leaf stops when it is dropped.
#[derive(Debug)]
pub struct Fleet {
    asks: Vec<mpsc::Sender<Ask>>,
    names: Vec<UserName>,
    pub counters: Arc<Counters>,
    stop: CancellationToken,
}

impl Fleet {
    pub fn new() -> Self {
        Self {
            asks: Vec::new(),
            names: Vec::new(),
            counters: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.asks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.asks.is_empty()
    }

    /// Starts one leaf per account, attaching to `superpeer` at `addr` (loopback TCP), on the
    /// current runtime. Leaf `i` of the fleet uses source address [`source_ip`]`(i)`.
    pub fn start(
        &mut self,
        accounts: Vec<Account>,
        superpeer: PeerId,
        addr: &Multiaddr,
    ) -> anyhow::Result<()> {
        for account in accounts {
            let source = source_ip(self.asks.len());
            self.names.push(account.name.clone());
            let swarm = build(account.key.clone(), source)?;
            let (tx, rx) = mpsc::channel(16);
            let leaf = Leaf {
                swarm,
                account,
                superpeer,
                addr: addr.clone(),
                counters: self.counters.clone(),
                relay_addr: None,
                lookups: Default::default(),
                seq: 0,
                published_once: false,
                redial: false,
            };
            tokio::spawn(leaf.run(rx, self.stop.child_token()));
            self.asks.push(tx);
        }
        Ok(())
    }

    /// The user name of leaf `i`.
    pub fn name(&self, i: usize) -> Option<&UserName> {
        self.names.get(i)
    }

    /// Leaf `from` looks `name` up through its superpeer.
    pub async fn lookup(&self, from: usize, name: &str) -> anyhow::Result<Looked> {
        let (reply, answer) = oneshot::channel();
        self.asks
            .get(from)
            .context("no such leaf")?
            .send(Ask {
                name: name.to_owned(),
                reply,
            })
            .await
            .context("the leaf stopped")?;
        answer.await.context("the leaf stopped")?
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The loopback address leaf `i` connects from.
pub fn source_ip(i: usize) -> Ipv4Addr {
    let group = i / LEAVES_PER_SOURCE;
    Ipv4Addr::new(127, 1, (group / 250) as u8, (group % 250 + 1) as u8)
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay_client: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    introduce: request_response::Behaviour<IntroduceCodec>,
    overlay: request_response::Behaviour<OverlayCodec>,
}

/// A leaf's swarm: TCP from `source` with Noise and Yamux, as a daemon's, without the DNS
/// resolver a daemon has (each swarm would hold its own, and no address here is a name).
fn build(key: Keypair, source: Ipv4Addr) -> anyhow::Result<Swarm<Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                source::FromSource { source }
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default()),
            )
        })?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| Behaviour {
            relay_client,
            identify: identify::Behaviour::new(
                identify::Config::new(protocol::IDENTIFY_VERSION.into(), key.public())
                    .with_agent_version("natter-bench leaf".into()),
            ),
            ping: ping::Behaviour::new(natter_net::ping_config()),
            introduce: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(protocol::INTRODUCE),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            ),
            overlay: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(protocol::OVERLAY),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

struct Leaf {
    swarm: Swarm<Behaviour>,
    account: Account,
    superpeer: PeerId,
    addr: Multiaddr,
    counters: Arc<Counters>,
    /// The circuit address through the superpeer, once the reservation holds.
    relay_addr: Option<Multiaddr>,
    lookups: std::collections::HashMap<
        OutboundRequestId,
        (Instant, oneshot::Sender<anyhow::Result<Looked>>),
    >,
    seq: u64,
    published_once: bool,
    /// Dial the superpeer again (a second later).
    redial: bool,
}

impl Leaf {
    async fn run(mut self, mut asks: mpsc::Receiver<Ask>, stop: CancellationToken) {
        self.dial();
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut revocations = tokio::time::interval(REVOCATIONS_EVERY);
        revocations.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(ask) = asks.recv() => {
                    let id = self.swarm.behaviour_mut().overlay.send_request(
                        &self.superpeer,
                        OverlayRequest::Lookup { name: ask.name },
                    );
                    self.lookups.insert(id, (Instant::now(), ask.reply));
                }
                _ = publish.tick() => self.publish(),
                _ = redial.tick(), if self.redial => {
                    self.redial = false;
                    self.dial();
                }
                _ = revocations.tick() => {
                    if self.relay_addr.is_some() {
                        self.swarm.behaviour_mut().overlay.send_request(
                            &self.superpeer,
                            OverlayRequest::Revocations { since: 0 },
                        );
                    }
                }
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn dial(&mut self) {
        let addr = self.addr.clone().with(Protocol::P2p(self.superpeer));
        if let Err(e) = self.swarm.dial(addr) {
            tracing::warn!("a simulated leaf cannot dial its superpeer: {e}");
            self.failed();
            self.redial = true;
        }
    }

    fn failed(&self) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn publish(&mut self) {
        let Some(relay) = &self.relay_addr else {
            return;
        };
        let now = natter_login_server::service::unix_now();
        self.seq = (now * 1000).max(self.seq + 1);
        let record = PresenceBody {
            cert: self.account.cert.clone(),
            status: Status::Online,
            seq: self.seq,
            last_seen: now,
            expires_at: now + LEASE_SECS,
            home: Some(self.superpeer.to_string()),
            relay_addrs: vec![relay.to_string()],
            direct_addrs: vec![],
        }
        .sign(&self.account.key);
        match record {
            Ok(record) => {
                self.swarm
                    .behaviour_mut()
                    .overlay
                    .send_request(&self.superpeer, OverlayRequest::Publish { record });
            }
            Err(e) => {
                tracing::warn!("cannot sign a record: {e}");
                self.failed();
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == self.superpeer => {
                let cert = self.account.cert.clone();
                let b = self.swarm.behaviour_mut();
                b.introduce
                    .send_request(&peer_id, Introduction { cert: cert.clone() });
                b.overlay
                    .send_request(&peer_id, OverlayRequest::Attach { cert });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } if peer_id == self.superpeer => {
                tracing::warn!(
                    ?cause,
                    "a simulated leaf lost its superpeer; dialling again"
                );
                self.failed();
                self.redial = true;
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                tracing::warn!("a simulated leaf cannot connect: {error}; dialling again");
                self.failed();
                self.redial = true;
            }
            SwarmEvent::NewListenAddr { address, .. }
                if address.iter().any(|p| p == Protocol::P2pCircuit) =>
            {
                let first = self.relay_addr.is_none();
                // The circuit address ends in this leaf's id already.
                self.relay_addr = Some(address);
                if first {
                    self.counters.reserved.fetch_add(1, Ordering::Relaxed);
                    self.publish();
                }
            }
            SwarmEvent::ListenerClosed { addresses, .. }
                if addresses
                    .iter()
                    .any(|a| a.iter().any(|p| p == Protocol::P2pCircuit)) =>
            {
                self.relay_addr = None;
                self.counters.reserved.fetch_sub(1, Ordering::Relaxed);
                self.failed();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Introduce(
                request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                },
            )) => {
                // The superpeer's certificate: a leaf daemon checks it; the simulator only
                // loads the superpeer and answers.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .introduce
                    .send_response(channel, IntroductionResponse::Admitted);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(event)) => self.on_overlay(event),
            _ => {}
        }
    }

    fn on_overlay(&mut self, event: request_response::Event<OverlayRequest, OverlayResponse>) {
        match event {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((asked, reply)) = self.lookups.remove(&request_id) {
                    let answer = match response {
                        OverlayResponse::Found { .. } => Ok(Looked {
                            took: asked.elapsed(),
                            found: true,
                        }),
                        OverlayResponse::NotFound => Ok(Looked {
                            took: asked.elapsed(),
                            found: false,
                        }),
                        other => Err(anyhow::anyhow!("lookup answered {other:?}")),
                    };
                    let _ = reply.send(answer);
                    return;
                }
                match response {
                    OverlayResponse::Attached { .. } => {
                        self.counters.attached.fetch_add(1, Ordering::Relaxed);
                        let circuit = self
                            .addr
                            .clone()
                            .with(Protocol::P2p(self.superpeer))
                            .with(Protocol::P2pCircuit);
                        if let Err(e) = self.swarm.listen_on(circuit) {
                            tracing::warn!("cannot reserve a relay slot: {e}");
                            self.failed();
                        }
                    }
                    OverlayResponse::Published => {
                        self.counters.publications.fetch_add(1, Ordering::Relaxed);
                        if !self.published_once {
                            self.published_once = true;
                            self.counters.published.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    OverlayResponse::Revocations { .. } => {}
                    other => {
                        tracing::warn!("superpeer answered {other:?}");
                        self.failed();
                    }
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((_, reply)) = self.lookups.remove(&request_id) {
                    let _ = reply.send(Err(anyhow::anyhow!("lookup failed: {error}")));
                } else {
                    tracing::debug!("a simulated leaf's request failed: {error}");
                    self.failed();
                }
            }
            _ => {}
        }
    }
}
