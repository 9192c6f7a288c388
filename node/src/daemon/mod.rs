//! The node daemon (`natter up`): the services of a node, driven by the network task's events
//! (see [`crate::net`], which alone owns the swarm), the control API and their timers.
//!
//! Layout: this file holds the daemon's state, its main loop, the timers and the network's
//! events. State machines and pure handlers decide, the other files carry out:
//! `attach` / `leaf` (attachment, failover, publishing), `outbox` / `messaging` (delivery,
//! `send`), `inbox` / `messaging` (the msg protocol, `inbox --follow`), `ping`, `superpeer`
//! (promotion, admission, directory, lookups), `login` (the login server's answers),
//! `commands` (the control API), `metrics`, `netcheck` (NAT behaviour from observations).

pub mod api;
mod attach;
mod candidates;
mod commands;
mod config;
mod contacts;
mod devices;
mod event_loop;
mod events;
mod fanout;
mod follow;
mod gather;
mod inbox;
mod leaf;
mod login;
mod lookup_result;
mod messaging;
mod metrics;
mod netcheck;
mod outbox;
mod ping;
mod presence;
mod reprobe;
mod revocation;
mod storage;
mod superpeer;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::{Multiaddr, PeerId};
use natter_proto::{IssuerKey, Status, UserName};
use natter_superpeer::directory::DirectoryStats;
use natter_superpeer::lookup::{LookupId, Lookups};
use natter_superpeer::{LeafTable, Role};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::{ControlServer, Lanes, Replier};
use crate::home::{Home, Identity};
use crate::net::{self, DirectoryRecords, Net, OutRequest, Token};
use crate::store::{Host, Store, StoreHandle};
use api::{ControlRequest, ControlResponse};
pub use config::DaemonConfig;
use metrics::NodeMetrics;

/// Most identify-observed addresses a node keeps (`Daemon::observed`).
const MAX_OBSERVED: usize = 256;

/// The role the node has right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Current {
    Leaf,
    Superpeer,
}

/// Requests this node has in flight on the overlay protocol.
#[derive(Debug)]
enum OverlayPending {
    Attach(PeerId),
    Publish {
        peer: PeerId,
        down: bool,
    },
    /// A leaf's own lookup `lookup` (in `Daemon::asking`), answered by its superpeer `peer`.
    Lookup {
        peer: PeerId,
        lookup: u64,
    },
    /// This superpeer asked a record's home superpeer whether the user is attached.
    Liveness {
        lookup: LookupId,
    },
    Detach,
    /// The revocation list, asked of this leaf's superpeer.
    Revocations(PeerId),
}

/// Why this node looks a user up, which decides what happens with the answer.
#[derive(Debug)]
pub(crate) enum LookupFor {
    /// `natter lookup`: show it.
    Control(Replier<ControlResponse>),
    /// `natter send`: messages to this user are queued (their ids wait in the messaging
    /// state); take them out again if the user does not exist.
    Send,
    /// Delivering queued messages: where is the user now?
    Route,
    /// Telling a contact about a status change.
    Push,
    /// Learning a user's devices, for the fan-out.
    Devices,
}

/// What a lookup found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per lookup, moved once
pub(crate) enum LookupOutcome {
    /// The most available device's record, whether its home confirmed it, and the user's
    /// other devices' records.
    Found {
        record: natter_proto::PresenceRecord,
        confirmed: bool,
        others: Vec<natter_proto::PresenceRecord>,
    },
    /// No record; `exists` is what the login server said (None: it could not be asked).
    NotFound {
        exists: Option<bool>,
    },
    Failed(String),
}

/// Requests in flight to the login server.
#[derive(Debug)]
enum LoginPending {
    Renew,
    /// A bootstrap list and the supply, without a new certificate.
    Bootstrap,
    /// Out of the bootstrap lists (demoted, or signing off).
    Withdraw,
    Announce,
    /// The revocation list, asked by a superpeer.
    Revocations,
    /// A lookup found no record: does the name exist at all?
    Exists {
        name: UserName,
        purpose: LookupFor,
    },
    /// `contacts add NAME`: does the account exist? Added only if it does.
    ContactExists {
        name: UserName,
        reply: Replier<ControlResponse>,
    },
}

/// Store jobs queued towards the store thread; beyond it, callers wait (in the job's future,
/// never in the loop).
const STORE_QUEUE: usize = 1024;

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The daemon's whole state. Only [`Daemon::run`]'s loop holds it.
pub(crate) struct Daemon {
    net: Net,
    /// This node's PeerId (its device key's).
    me: PeerId,
    /// The directory's records (superpeers), shared with Kademlia in the network task.
    records: DirectoryRecords,
    /// Addresses the network listens on, as it reported them (relay circuits included).
    listeners: BTreeSet<Multiaddr>,
    next_token: Token,
    config: DaemonConfig,
    home: Home,
    /// The store thread: every disk access goes through it (never blocking this loop).
    store: StoreHandle,
    /// Store jobs in flight, each with what to do with its result here.
    store_jobs: FuturesUnordered<BoxFuture<'static, storage::Then>>,
    identity: Identity,
    issuer: IssuerKey,
    key: libp2p::identity::Keypair,
    started: Instant,
    login_peer: PeerId,

    role: Current,
    role_reason: String,
    /// Holds role changes back until the policy's answer has held for a while.
    role_gate: natter_superpeer::promotion::RoleGate,
    /// The network's superpeers as the login server last counted them (promotion by need).
    supply: Option<natter_proto::login::Supply>,
    /// When `supply` was learned.
    supply_at: Option<Instant>,
    /// Staggers promotion by need (see `natter_superpeer::promotion::NeedGate`).
    need_gate: natter_superpeer::promotion::NeedGate,
    /// Staggers demotion of surplus superpeers (the same gate, on the surplus).
    surplus_gate: natter_superpeer::promotion::NeedGate,
    /// When a reachable leaf that may promote last asked for the supply.
    supply_asked: Option<Instant>,
    presence: Status,
    seq: u64,
    /// Addresses AutoNAT v2 confirmed (never relayed ones).
    confirmed: BTreeSet<Multiaddr>,
    /// When to probe reachability again while none is confirmed.
    reprobe: reprobe::ReprobeSchedule,
    /// The address each connected peer says it sees this node at (identify), at most
    /// [`MAX_OBSERVED`]: what `netcheck` infers the NAT's behaviour from.
    observed: HashMap<PeerId, Multiaddr>,
    probes: VecDeque<api::Probe>,
    /// Superpeers known from bootstrap lists, the host cache and superpeers' answers, ranked
    /// by how this node knows of them.
    candidates: candidates::Candidates,
    login_connected: bool,

    // Leaf side.
    /// Primary and standby superpeer, and which to try next.
    attach: attach::Attach,
    /// When (Unix ms) this leaf attached to each superpeer it holds (at most two).
    attached_at: HashMap<PeerId, u64>,
    /// The superpeer holding this device's record (the primary that acknowledged a
    /// publication first), and since when (Unix ms); none until then.
    home_since: Option<(PeerId, u64)>,
    last_publish: Option<Instant>,
    relay_addrs: BTreeSet<Multiaddr>,
    /// The circuit address asked for on each superpeer, until its reservation is accepted.
    reserving: HashMap<PeerId, Multiaddr>,
    /// When a reservation was last asked of each superpeer, to retry ones that failed.
    reserve_tried: HashMap<PeerId, Instant>,

    // Superpeer side.
    leaves: LeafTable,
    stats: DirectoryStats,
    /// Lookups this superpeer resolves (cache, directory, liveness).
    lookups: Lookups<superpeer::Requester>,
    /// This leaf's lookups, asked of both its superpeers.
    asking: gather::Gathers<LookupFor>,
    last_announce: Option<Instant>,
    /// The leaf count in the last announcement.
    announced_leaves: usize,
    last_own_publish: Option<Instant>,
    last_bootstrap: Option<Instant>,
    /// Peers that speak the directory's protocol, met now, with when each was first met.
    superpeers_seen: BTreeMap<PeerId, Instant>,

    overlay_pending: HashMap<Token, OverlayPending>,
    login_pending: HashMap<Token, LoginPending>,
    /// Directory GETs in flight, with the lookup each serves.
    queries: HashMap<Token, LookupId>,
    renew_failed_at: Option<Instant>,
    renewed_once: bool,
    /// The login server's newest signed revocation list, and when it was last asked for.
    revocations: natter_proto::Revocations,
    last_revocations: Option<Instant>,
    going_down: Option<(Instant, Option<Replier<ControlResponse>>)>,
    msg: messaging::Messaging,
    metrics: Option<NodeMetrics>,
}

/// How often a reachable leaf that may promote asks the login server for the supply.
const SUPPLY_POLL: Duration = Duration::from_secs(30);

/// Runs the daemon for `home` until `shutdown` or `natter down`.
pub async fn run(
    home: Home,
    config: DaemonConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let identity = home.identity()?;
    let key = home.device_key()?;
    if identity.cert.peer_id() != key.public().to_peer_id() {
        anyhow::bail!(
            "the stored certificate belongs to another device key: run `natter login {}` again",
            identity.user
        );
    }
    let mut store = Store::open(home.dir())?;
    store.set_inbox_limits(config.inbox);
    let hosts = store.hosts(candidates::MAX_CANDIDATES).unwrap_or_default();
    let (store, store_thread) = StoreHandle::spawn(store, STORE_QUEUE)?;
    let control = ControlServer::bind(home.dir()).await?;
    config.raise_open_files();
    let admissions = net::admission::Admissions::default();
    let (swarm, records) = net::behaviour::build(
        key.clone(),
        &net::behaviour::SwarmSettings {
            max_leaves: config.max_leaves,
            max_connections: config.connection_limit(),
            idle_timeout: Duration::from_secs(120),
            max_per_ip: config.max_connections_per_ip,
        },
        &admissions,
    )?;
    let mut metrics = None;
    let mut metrics_server = None;
    if let Some(addr) = config.metrics {
        let server = natter_login_server::metrics::MetricsServer::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        let mut registry = prometheus_client::registry::Registry::default();
        let p2p = libp2p::metrics::Metrics::new(&mut registry);
        metrics = Some((NodeMetrics::new(&mut registry), p2p));
        metrics_server = Some((server, registry));
    }
    let (p2p, node_metrics) = match metrics {
        Some((node, p2p)) => (Some(p2p), Some(node)),
        None => (None, None),
    };
    let (mut network, handle, events) = net::Network::new(
        swarm,
        p2p,
        admissions,
        identity.issuer_key,
        identity.cert.clone(),
    );
    for addr in config.listen.clone() {
        network.listen_on(addr)?;
    }
    let mut daemon = Daemon::new(
        home,
        config,
        identity,
        key,
        (store, hosts),
        Net::new(handle),
        records,
    )?;
    daemon.metrics = node_metrics;
    if let Some((server, registry)) = metrics_server {
        daemon.phase(&format!(
            "metrics on http://{}/metrics",
            server.local_addr()?
        ));
        tokio::spawn(server.run(std::sync::Arc::new(registry), shutdown.child_token()));
    }
    let network_task = tokio::spawn(network.run());
    let (tx, rx) = mpsc::channel(64);
    let (quick_tx, quick_rx) = mpsc::channel(16);
    let lanes = Lanes::new(tx).with_quick(quick_tx, ControlRequest::is_quick);
    let control_shutdown = shutdown.child_token();
    let control_task = tokio::spawn(control.serve(lanes, control_shutdown.clone()));
    let result = daemon.run([quick_rx, rx], events, shutdown).await;
    // The last commands (answers, the offline record) go out before the network stops.
    daemon.net.drain().await;
    // Writes already queued (an acknowledged message, a host) still reach the disk.
    daemon.finish_store_jobs().await;
    drop(daemon);
    let _ = network_task.await;
    control_shutdown.cancel();
    let _ = control_task.await;
    match tokio::task::spawn_blocking(move || store_thread.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the store thread failed"),
        Err(e) => tracing::error!(error = %e, "the store thread failed"),
    }
    result
}

impl Daemon {
    fn new(
        home: Home,
        config: DaemonConfig,
        identity: Identity,
        key: libp2p::identity::Keypair,
        (store, hosts): (StoreHandle, Vec<Host>),
        net: Net,
        records: DirectoryRecords,
    ) -> anyhow::Result<Self> {
        let login_peer = crate::login_client::server_peer_id(&identity.login)?;
        let candidates = candidates::Candidates::from_hosts(hosts, key.public().to_peer_id());
        let role_reason = match config.role {
            Role::Leaf => "role is leaf (opted out)".into(),
            _ => "starting".into(),
        };
        let issuer = identity.issuer_key;
        let me = key.public().to_peer_id();
        Ok(Self {
            issuer,
            leaves: LeafTable::new(config.max_leaves),
            lookups: Lookups::new(key.public().to_peer_id(), identity.issuer_key),
            asking: gather::Gathers::default(),
            net,
            me,
            records,
            listeners: BTreeSet::new(),
            next_token: 0,
            home,
            store,
            store_jobs: FuturesUnordered::new(),
            identity,
            key,
            started: Instant::now(),
            login_peer,
            role: Current::Leaf,
            role_reason,
            supply: None,
            supply_at: None,
            need_gate: Default::default(),
            surplus_gate: Default::default(),
            supply_asked: None,
            role_gate: natter_superpeer::promotion::RoleGate::new(config.hysteresis),
            presence: Status::Online,
            seq: 0,
            confirmed: BTreeSet::new(),
            reprobe: reprobe::ReprobeSchedule::new(Instant::now()),
            observed: HashMap::new(),
            probes: VecDeque::new(),
            candidates,
            login_connected: false,
            attach: attach::Attach::default(),
            attached_at: HashMap::new(),
            home_since: None,
            last_publish: None,
            relay_addrs: BTreeSet::new(),
            reserving: HashMap::new(),
            reserve_tried: HashMap::new(),
            stats: DirectoryStats::default(),
            queries: HashMap::new(),
            last_announce: None,
            announced_leaves: 0,
            last_own_publish: None,
            last_bootstrap: None,
            superpeers_seen: BTreeMap::new(),
            overlay_pending: HashMap::new(),
            login_pending: HashMap::new(),
            renew_failed_at: None,
            renewed_once: false,
            revocations: natter_proto::Revocations::default(),
            last_revocations: None,
            going_down: None,
            msg: messaging::Messaging::new(issuer, me),
            metrics: None,
            config,
        })
    }

    pub(crate) fn peer_id(&self) -> PeerId {
        self.me
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// A progress line for the person who ran `natter up`, and the same in the log.
    fn phase(&self, text: &str) {
        // Progress for the person watching; nobody watching (a closed stdout) is no error.
        let line = if self.config.json {
            serde_json::json!({ "at": messaging::now_ms(), "phase": text }).to_string()
        } else {
            text.to_owned()
        };
        let _ = std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{line}\n"));
        tracing::info!(phase = text);
    }

    fn send_overlay(
        &mut self,
        peer: PeerId,
        request: natter_proto::overlay::OverlayRequest,
        pending: OverlayPending,
    ) {
        let addrs = self
            .candidates
            .addrs(peer)
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let token = self.token();
        self.net
            .request(token, peer, addrs, OutRequest::Overlay(request));
        self.overlay_pending.insert(token, pending);
    }

    /// Public addresses this node can give out (confirmed by AutoNAT, or listen addresses of a
    /// forced superpeer that has none confirmed yet).
    fn public_addrs(&self) -> Vec<Multiaddr> {
        if !self.confirmed.is_empty() {
            return self.confirmed.iter().cloned().collect();
        }
        if self.config.role == Role::Superpeer {
            return self
                .listeners
                .iter()
                .filter(|a| !is_relayed(a) && !is_unspecified(a))
                .cloned()
                .collect();
        }
        Vec::new()
    }

    fn finish_down(&mut self) {
        if let Some((_, Some(reply))) = self.going_down.take() {
            let _ = reply.try_send(Ok(ControlResponse::Done {
                message: "signed off; the daemon is stopping".into(),
            }));
        }
        self.going_down = Some((Instant::now(), None));
    }
}

pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
