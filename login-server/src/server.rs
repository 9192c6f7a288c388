//! The login server's swarm and event loop. Only this loop touches the swarm; requests are
//! decided by [`Service`] on the blocking pool and answered back through a bounded channel.
//! Dial-backs of announced superpeers run in a task of their own ([`Prober`]) that the loop
//! hands them to without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, identify, ping,
};
use natter_proto::limits::{MAX_LOGIN_REQUEST_BYTES, MAX_LOGIN_RESPONSE_BYTES};
use natter_proto::login::{LoginRequest, LoginResponse, Refusal, RefusalCode};
use natter_proto::{IssuerKey, protocol};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::accounts::Accounts;
use crate::dialback::{Prober, ProberConfig};
use crate::registry::DialBack;
use crate::service::{Caller, Service};
use crate::{Config, Error, keys};

type LoginCodec = request_response::json::codec::Codec<LoginRequest, LoginResponse>;
type Responder = request_response::ResponseChannel<LoginResponse>;
/// A decided request: where its answer goes, the answer, and a dial-back to start.
type Done = (Responder, LoginResponse, Option<DialBack>);

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Before the total cap on pending connections: one address cannot take all of it.
    pending: natter_net::PendingPerAddress,
    limits: connection_limits::Behaviour,
    login: request_response::Behaviour<LoginCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::v2::server::Behaviour,
}

/// A bound login server: keys loaded, database open, listening. Call [`Server::run`] to serve.
pub struct Server {
    swarm: Swarm<Behaviour>,
    service: Arc<Service>,
    listen_addrs: Vec<Multiaddr>,
    config: Config,
    metrics: Option<crate::metrics::MetricsServer>,
    dial_backs: mpsc::Sender<DialBack>,
    /// Taken by [`Server::run`], which spawns it.
    prober: Option<Prober>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("peer_id", self.swarm.local_peer_id())
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads (or creates) keys and accounts in `config.data_dir` and starts listening. Returns
    /// once every listen address is bound.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        // Before anything else: libp2p would share a port that another process listens on
        // (SO_REUSEPORT) instead of failing.
        for addr in &config.listen {
            natter_net::ensure_port_free(addr)?;
        }
        keys::ensure_private_dir(&config.data_dir)?;
        let identity = keys::load_or_create_node_key(&config.data_dir)?;
        let issuer = keys::load_or_create_issuer_key(&config.data_dir)?;
        let accounts = Accounts::open(&config.data_dir)?;
        let service = Arc::new(Service::new(accounts, issuer, config.clone()));

        let mut swarm = build_swarm(identity, &config)?;
        let (dial_backs, prober) = Prober::new(
            service.clone(),
            ProberConfig {
                max_in_flight: config.max_dial_backs,
                timeout: config.dial_back_timeout,
            },
        )?;
        let mut pending = HashMap::new();
        for addr in &config.listen {
            let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                addr: addr.clone(),
                reason: natter_net::error_chain(&e),
            })?;
            pending.insert(id, addr.clone());
        }
        let peer_id = *swarm.local_peer_id();
        let mut listen_addrs = Vec::new();
        // Wait until every listener reports an address; a wildcard listener reports one per
        // interface, and those that arrive right after are collected too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let wait = if pending.is_empty() {
                tokio::time::Instant::now() + Duration::from_millis(100)
            } else {
                deadline
            };
            let event = match tokio::time::timeout_at(wait, swarm.select_next_some()).await {
                Ok(event) => event,
                Err(_) if pending.is_empty() => break,
                Err(_) => {
                    let addr = pending.into_values().next().expect("not empty");
                    return Err(Error::Listen {
                        addr,
                        reason: "no address reported within 10 s".into(),
                    });
                }
            };
            match event {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    pending.remove(&listener_id);
                    listen_addrs.push(address.with_p2p(peer_id).expect("own peer id"));
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(e),
                    ..
                }
                | SwarmEvent::ListenerError {
                    listener_id,
                    error: e,
                } => {
                    if let Some(addr) = pending.remove(&listener_id) {
                        return Err(Error::Listen {
                            addr,
                            reason: natter_net::error_chain(&e),
                        });
                    }
                }
                other => tracing::trace!(?other, "event while binding"),
            }
        }
        let metrics =
            match config.metrics {
                Some(addr) => Some(crate::metrics::MetricsServer::bind(addr).await.map_err(
                    |e| Error::Metrics {
                        addr,
                        reason: e.to_string(),
                    },
                )?),
                None => None,
            };
        Ok(Self {
            swarm,
            service,
            listen_addrs,
            config,
            metrics,
            dial_backs,
            prober: Some(prober),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Bound addresses, each ending in `/p2p/<peer id>`: what users pass as `--login`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Where metrics are served, when enabled.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    pub fn issuer_key(&self) -> IssuerKey {
        self.service.issuer_key()
    }

    /// The accounts and registry this server answers from, for a program that embeds it
    /// (and for tests) to read while it runs.
    pub fn service(&self) -> Arc<Service> {
        self.service.clone()
    }

    /// Serves until `shutdown` is cancelled. Requests in progress are dropped; every state
    /// change already committed to SQLite stays.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let (done_tx, mut done_rx) = mpsc::channel::<Done>(self.config.max_inflight);
        let inflight = Arc::new(Semaphore::new(self.config.max_inflight));
        let password_work = Arc::new(Semaphore::new(self.config.password_workers.max(1)));
        let mut remote_ips: HashMap<ConnectionId, IpAddr> = HashMap::new();
        if let Some(metrics) = self.metrics.take() {
            let mut registry = prometheus_client::registry::Registry::default();
            self.service.register_metrics(&mut registry);
            tokio::spawn(metrics.run(Arc::new(registry), shutdown.clone()));
        }
        if let Some(prober) = self.prober.take() {
            tokio::spawn(prober.run(shutdown.clone()));
        }
        tracing::info!(peer_id = %self.peer_id(), issuer_key = %self.issuer_key().to_base64(), "login server running");

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((channel, response, dial_back)) = done_rx.recv() => {
                    if self.swarm.behaviour_mut().login.send_response(channel, response).is_err() {
                        tracing::debug!("requester went away before the response");
                    }
                    // Never waits: a dial-back that does not fit is checked at the
                    // superpeer's next announcement.
                    if let Some(job) = dial_back
                        && let Err(e) = self.dial_backs.try_send(job)
                    {
                        self.service.dial_back_dropped(e.into_inner());
                    }
                }
                event = self.swarm.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { connection_id, endpoint, peer_id, .. } => {
                        if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                            remote_ips.insert(connection_id, ip);
                        }
                        tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connection established");
                    }
                    SwarmEvent::ConnectionClosed { connection_id, .. } => {
                        remote_ips.remove(&connection_id);
                    }
                    SwarmEvent::NewListenAddr { address, .. } => {
                        tracing::info!(%address, "listening");
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Login(request_response::Event::Message {
                        peer,
                        connection_id,
                        message: request_response::Message::Request { request, channel, .. },
                    })) => {
                        let caller = Caller { peer, ip: remote_ips.get(&connection_id).copied() };
                        self.dispatch(request, channel, caller, &inflight, &password_work, &done_tx);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Login(request_response::Event::InboundFailure { peer, error, .. })) => {
                        tracing::debug!(%peer, %error, "login request failed");
                    }
                    other => tracing::trace!(?other, "swarm event"),
                },
            }
        }
        tracing::info!("login server stopped");
        Ok(())
    }

    /// Runs one request on the blocking pool, or refuses it at once when the server is at its
    /// concurrency limits: nothing waits in an unbounded queue.
    fn dispatch(
        &mut self,
        request: LoginRequest,
        channel: Responder,
        caller: Caller,
        inflight: &Arc<Semaphore>,
        password_work: &Arc<Semaphore>,
        done: &mpsc::Sender<Done>,
    ) {
        let Ok(slot) = inflight.clone().try_acquire_owned() else {
            let busy = Refusal {
                retry_after_secs: Some(1),
                ..Refusal::new(RefusalCode::Busy, "login server is busy, retry in 1 s")
            };
            let _ = self
                .swarm
                .behaviour_mut()
                .login
                .send_response(channel, LoginResponse::Refused(busy));
            return;
        };
        let expensive = Service::is_expensive(&request).then(|| password_work.clone());
        let service = self.service.clone();
        let done = done.clone();
        tokio::spawn(async move {
            // Password hashes queue here, bounded by `inflight`; cheap requests never wait.
            let _hash_slot = match expensive {
                Some(sem) => Some(sem.acquire_owned().await.expect("never closed")),
                None => None,
            };
            let (response, dial_back) =
                tokio::task::spawn_blocking(move || service.handle(request, caller))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "request task failed");
                        let internal = Refusal::new(RefusalCode::Internal, "internal error");
                        (LoginResponse::Refused(internal), None)
                    });
            let _ = done.send((channel, response, dial_back)).await;
            drop(slot);
        });
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

fn build_swarm(
    identity: libp2p::identity::Keypair,
    config: &Config,
) -> Result<Swarm<Behaviour>, Error> {
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_incoming));
    let codec = LoginCodec::default()
        .set_request_size_maximum(MAX_LOGIN_REQUEST_BYTES)
        .set_response_size_maximum(MAX_LOGIN_RESPONSE_BYTES);
    let rr_config = request_response::Config::default()
        .with_request_timeout(Duration::from_secs(30))
        .with_max_concurrent_streams(64);
    let transport_config = natter_net::TransportConfig {
        idle_timeout: config.idle_timeout,
        quic: Some(natter_net::QuicConfig::LIBP2P_DEFAULTS),
        ..Default::default()
    };
    natter_net::build_swarm(identity, &transport_config, |key| Behaviour {
        pending: natter_net::PendingPerAddress::new(config.max_pending_per_address),
        limits: connection_limits::Behaviour::new(limits),
        login: request_response::Behaviour::with_codec(
            codec,
            [(
                StreamProtocol::new(protocol::LOGIN),
                ProtocolSupport::Inbound,
            )],
            rr_config,
        ),
        identify: identify::Behaviour::new(
            identify::Config::new(protocol::IDENTIFY_VERSION.into(), key.public())
                .with_agent_version(format!("natter-login/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::new(natter_net::ping_config()),
        autonat: autonat::v2::server::Behaviour::default(),
    })
    .map_err(|e| Error::Transport(e.to_string()))
}
