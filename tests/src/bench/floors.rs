//! Floors: what the same exchange costs without Natter on top, measured inside the bench
//! process over real loopback sockets (or the local disk), so that each Natter figure is read
//! against them.
//!
//! - raw TCP ping-pong (tokio sockets, `TCP_NODELAY`), request and response of the sizes the
//!   messaging protocol puts on the wire;
//! - a bare libp2p request-response echo on the daemon's transport (`natter_net`'s TCP with
//!   `nodelay`, Noise, Yamux) and codec (JSON, the real `MsgRequest`/`MsgResponse` types), with no certificate
//!   check, no store and no event loop of Natter's: round trip and throughput;
//! - a bare Kademlia GET: one hop to one peer holding the record, and a full walk in an
//!   in-process DHT of N nodes (Natter's protocol id, k = 20);
//! - the node's own store (`natter_node::store::Store`) alone, and SQLite batching.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, kad};
use natter_proto::msg::{DirectMessage, MsgRequest, MsgResponse};
use natter_proto::{Certificate, IssuerSigningKey, UserName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use super::Latencies;

type MsgCodec = request_response::json::codec::Codec<MsgRequest, MsgResponse>;

/// A certificate of the real size (the echo does not check it).
pub fn sample_cert(key: &Keypair, name: &str) -> anyhow::Result<Certificate> {
    let issuer = IssuerSigningKey::from_bytes(&rand::random());
    let device = key
        .clone()
        .try_into_ed25519()
        .context("ed25519 key")?
        .public()
        .to_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(issuer.issue(UserName::parse(name)?, device, 1, now, 86_400)?)
}

/// A canonical ULID built from a counter (unique within a run).
pub fn ulid(n: u64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        & ((1 << 48) - 1);
    let value = (u128::from(ms) << 80) | u128::from(n);
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 0x1f) as usize] as char)
        .collect()
}

/// The text every benchmark message carries (the same length in floors and real runs).
pub fn text(n: u64) -> String {
    format!("bench message {n:08}")
}

/// `count` direct messages as the daemon batches them.
pub fn messages(start: u64, count: usize) -> Vec<DirectMessage> {
    (0..count as u64)
        .map(|i| DirectMessage {
            id: ulid(start + i),
            to: "bob".into(),
            text: text(start + i),
            sent_at_ms: 1_800_000_000_000,
            conv_seq: start + i + 1,
        })
        .collect()
}

/// Wire sizes (JSON bytes) of a request and its answer, for the raw TCP floor.
pub fn wire_len(request: &MsgRequest, response: &MsgResponse) -> (usize, usize) {
    (
        serde_json::to_vec(request).map(|v| v.len()).unwrap_or(1),
        serde_json::to_vec(response).map(|v| v.len()).unwrap_or(1),
    )
}

/// Raw TCP ping-pong on loopback: `req_len` bytes out, `resp_len` bytes back, sequentially.
pub async fn tcp_pingpong(
    samples: usize,
    req_len: usize,
    resp_len: usize,
) -> anyhow::Result<Latencies> {
    let (addr, server) = remote(move || async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let serve: Serve = Box::pin(async move {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let _ = sock.set_nodelay(true);
            let mut req = vec![0u8; req_len];
            let resp = vec![1u8; resp_len];
            while sock.read_exact(&mut req).await.is_ok() {
                if sock.write_all(&resp).await.is_err() {
                    return;
                }
            }
        });
        Ok((addr, serve))
    })
    .await?;
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let req = vec![2u8; req_len];
    let mut resp = vec![0u8; resp_len];
    let mut lat = Latencies::new();
    for i in 0..samples + 10 {
        let start = Instant::now();
        sock.write_all(&req).await?;
        sock.read_exact(&mut resp).await?;
        if i >= 10 {
            lat.record(start.elapsed());
        }
    }
    drop(sock);
    drop(server);
    Ok(lat)
}

/// The daemon's transport without QUIC: the floors measure TCP.
fn tcp_only(idle_timeout: Duration) -> natter_net::TransportConfig {
    natter_net::TransportConfig {
        idle_timeout,
        quic: None,
        ..Default::default()
    }
}

fn rr_swarm(
    key: Keypair,
    support: ProtocolSupport,
) -> anyhow::Result<Swarm<request_response::Behaviour<MsgCodec>>> {
    Ok(natter_net::build_swarm(
        key,
        &tcp_only(Duration::from_secs(60)),
        |_| {
            request_response::Behaviour::with_codec(
                MsgCodec::default()
                    .set_request_size_maximum(natter_proto::msg::MAX_MSG_WIRE_BYTES)
                    .set_response_size_maximum(64 * 1024),
                [(StreamProtocol::new(natter_proto::protocol::MSG), support)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(20))
                    .with_max_concurrent_streams(128),
            )
        },
    )?)
}

/// What a [`remote`] server runs until it is dropped.
type Serve = std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// A server on a runtime of its own (two workers, as a daemon's runtime has on this machine),
/// in threads of its own: what it exchanges with the bench's client crosses threads through
/// the kernel, as between two processes, instead of being handed from task to task inside one
/// runtime (which would flatter the floor). Stopped and joined when dropped.
#[derive(Debug)]
struct Remote {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `setup` on a new runtime in a new thread; returns what it returned and a handle that
/// stops the server it started.
async fn remote<T, Setup, Fut>(setup: Setup) -> anyhow::Result<(T, Remote)>
where
    T: Send + 'static,
    Setup: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<(T, Serve)>>,
{
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<T>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        rt.block_on(async move {
            match setup().await {
                Ok((info, serve)) => {
                    let _ = ready_tx.send(Ok(info));
                    tokio::select! {
                        _ = serve => {}
                        _ = stop_rx => {}
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    });
    let remote = Remote {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let info = ready_rx.await.context("the server thread died")??;
    Ok((info, remote))
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen_addr<B: libp2p::swarm::NetworkBehaviour>(
    swarm: &mut Swarm<B>,
) -> anyhow::Result<Multiaddr> {
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return Ok(address);
        }
    }
}

/// A bare echo server on the msg protocol: answers `Ping` with `Pong` and `Deliver` with
/// `Stored`, checking nothing and storing nothing.
async fn echo_server() -> anyhow::Result<(PeerId, Multiaddr, Remote)> {
    let ((peer, addr), server) = remote(|| async {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let mut swarm = rr_swarm(key, ProtocolSupport::Inbound)?;
        let addr = listen_addr(&mut swarm).await?;
        let serve: Serve = Box::pin(async move {
            loop {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) = swarm.select_next_some().await
                {
                    let response = match request {
                        MsgRequest::Ping { nonce, .. } => MsgResponse::Pong { nonce },
                        MsgRequest::Deliver { messages, .. } => MsgResponse::Stored {
                            stored: messages.len() as u32,
                            duplicates: 0,
                        },
                        MsgRequest::Presence { .. } => MsgResponse::Noted,
                    };
                    let _ = swarm.behaviour_mut().send_response(channel, response);
                }
            }
        });
        Ok(((peer, addr), serve))
    })
    .await?;
    Ok((peer, addr, server))
}

/// A connected echo client.
async fn echo_client(
    key: Keypair,
    server: PeerId,
    addr: Multiaddr,
) -> anyhow::Result<Swarm<request_response::Behaviour<MsgCodec>>> {
    let mut swarm = rr_swarm(key, ProtocolSupport::Outbound)?;
    swarm.dial(addr)?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server => {
                return Ok(swarm);
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => bail!("dial: {error}"),
            _ => {}
        }
    }
}

async fn answer(
    swarm: &mut Swarm<request_response::Behaviour<MsgCodec>>,
) -> anyhow::Result<MsgResponse> {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => return Ok(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                bail!("echo request failed: {error}")
            }
            _ => {}
        }
    }
}

/// Round trips of `make(i)` through a bare libp2p request-response echo, sequentially, after
/// 10 unmeasured ones.
pub async fn echo_rtt(
    samples: usize,
    key: Keypair,
    make: impl Fn(u64) -> MsgRequest,
) -> anyhow::Result<Latencies> {
    let (server, addr, _guard) = echo_server().await?;
    let mut client = echo_client(key, server, addr).await?;
    let mut lat = Latencies::new();
    for i in 0..samples + 10 {
        let request = make(i as u64);
        let start = Instant::now();
        client.behaviour_mut().send_request(&server, request);
        answer(&mut client).await?;
        if i >= 10 {
            lat.record(start.elapsed());
        }
    }
    Ok(lat)
}

/// Messages per second through a bare echo: batches of `batch` messages, `in_flight`
/// requests outstanding, for `window`.
pub async fn echo_throughput(
    window: Duration,
    batch: usize,
    in_flight: usize,
    key: Keypair,
    cert: Certificate,
) -> anyhow::Result<f64> {
    let (server, addr, _guard) = echo_server().await?;
    let mut client = echo_client(key, server, addr).await?;
    let start = Instant::now();
    let (mut sent, mut acked, mut outstanding) = (0u64, 0u64, 0usize);
    loop {
        while outstanding < in_flight && start.elapsed() < window {
            let request = MsgRequest::Deliver {
                cert: cert.clone(),
                messages: messages(sent, batch),
            };
            client.behaviour_mut().send_request(&server, request);
            sent += batch as u64;
            outstanding += 1;
        }
        if outstanding == 0 {
            break;
        }
        match answer(&mut client).await? {
            MsgResponse::Stored { stored, .. } => acked += u64::from(stored),
            other => bail!("unexpected echo answer {other:?}"),
        }
        outstanding -= 1;
    }
    Ok(acked as f64 / start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Through a relay

/// A relay server with limits fit for a long benchmark circuit.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct RelayServer {
    relay: libp2p::relay::Behaviour,
}

/// An echo client or server that reaches its peer through a relay circuit.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct RelayedPeer {
    relay_client: libp2p::relay::client::Behaviour,
    rr: request_response::Behaviour<MsgCodec>,
}

fn relayed_swarm(key: Keypair, support: ProtocolSupport) -> anyhow::Result<Swarm<RelayedPeer>> {
    Ok(natter_net::build_swarm_with_relay_client(
        key,
        &tcp_only(Duration::from_secs(60)),
        |_, relay_client| RelayedPeer {
            relay_client,
            rr: request_response::Behaviour::with_codec(
                MsgCodec::default()
                    .set_request_size_maximum(natter_proto::msg::MAX_MSG_WIRE_BYTES)
                    .set_response_size_maximum(64 * 1024),
                [(StreamProtocol::new(natter_proto::protocol::MSG), support)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(20))
                    .with_max_concurrent_streams(128),
            ),
        },
    )?)
}

/// Round trips of `make(i)` from a client to a bare echo server through a bare circuit relay
/// v2 (each of the three on its own runtime): what the relayed path costs libp2p itself, with
/// the same transport and codec as Natter's, and no hole punching.
pub async fn relay_echo_rtt(
    samples: usize,
    key: Keypair,
    make: impl Fn(u64) -> MsgRequest,
) -> anyhow::Result<Latencies> {
    let ((relay_peer, relay_addr), _relay) = remote(|| async {
        let key = Keypair::generate_ed25519();
        let mut swarm =
            natter_net::build_swarm(key, &tcp_only(Duration::from_secs(60)), |key| RelayServer {
                relay: libp2p::relay::Behaviour::new(
                    key.public().to_peer_id(),
                    libp2p::relay::Config {
                        max_circuit_duration: Duration::from_secs(3600),
                        max_circuit_bytes: 1 << 40,
                        ..Default::default()
                    },
                ),
            })?;
        let addr = listen_addr(&mut swarm).await?;
        // The relay hands its own address to the peers it serves: vouch for it.
        swarm.add_external_address(addr.clone());
        let peer = *swarm.local_peer_id();
        let serve: Serve = Box::pin(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Ok(((peer, addr), serve))
    })
    .await?;
    let circuit = relay_addr
        .with(libp2p::multiaddr::Protocol::P2p(relay_peer))
        .with(libp2p::multiaddr::Protocol::P2pCircuit);
    let (server_peer, _server) = remote({
        let circuit = circuit.clone();
        move || async move {
            let key = Keypair::generate_ed25519();
            let peer = key.public().to_peer_id();
            let mut swarm = relayed_swarm(key, ProtocolSupport::Inbound)?;
            swarm.listen_on(circuit)?;
            // Reserved once the relay accepted: the circuit address is then listened on.
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. }
                        if address
                            .iter()
                            .any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit) =>
                    {
                        break;
                    }
                    SwarmEvent::ListenerError { error, .. } => bail!("reservation: {error}"),
                    SwarmEvent::ListenerClosed {
                        reason: Err(error), ..
                    } => bail!("reservation: {error}"),
                    _ => {}
                }
            }
            let serve: Serve = Box::pin(async move {
                loop {
                    if let SwarmEvent::Behaviour(RelayedPeerEvent::Rr(
                        request_response::Event::Message {
                            message:
                                request_response::Message::Request {
                                    request, channel, ..
                                },
                            ..
                        },
                    )) = swarm.select_next_some().await
                    {
                        let response = match request {
                            MsgRequest::Ping { nonce, .. } => MsgResponse::Pong { nonce },
                            MsgRequest::Deliver { messages, .. } => MsgResponse::Stored {
                                stored: messages.len() as u32,
                                duplicates: 0,
                            },
                            MsgRequest::Presence { .. } => MsgResponse::Noted,
                        };
                        let _ = swarm.behaviour_mut().rr.send_response(channel, response);
                    }
                }
            });
            Ok((peer, serve))
        }
    })
    .await?;
    let mut client = relayed_swarm(key, ProtocolSupport::Outbound)?;
    client.dial(circuit.with(libp2p::multiaddr::Protocol::P2p(server_peer)))?;
    loop {
        match client.select_next_some().await {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if peer_id == server_peer && endpoint.is_relayed() => break,
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(p),
                error,
                ..
            } if p == server_peer => bail!("relayed dial: {error}"),
            _ => {}
        }
    }
    let mut lat = Latencies::new();
    for i in 0..samples + 10 {
        let request = make(i as u64);
        let start = Instant::now();
        client
            .behaviour_mut()
            .rr
            .send_request(&server_peer, request);
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(RelayedPeerEvent::Rr(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                })) => break,
                SwarmEvent::Behaviour(RelayedPeerEvent::Rr(
                    request_response::Event::OutboundFailure { error, .. },
                )) => bail!("relayed echo failed: {error}"),
                _ => {}
            }
        }
        if i >= 10 {
            lat.record(start.elapsed());
        }
    }
    Ok(lat)
}

// ---------------------------------------------------------------------------------------
// Kademlia

fn kad_swarm(
    key: Keypair,
    server: bool,
) -> anyhow::Result<Swarm<kad::Behaviour<kad::store::MemoryStore>>> {
    Ok(natter_net::build_swarm(
        key,
        &tcp_only(Duration::from_secs(120)),
        |key| {
            let peer = key.public().to_peer_id();
            let mut config = kad::Config::new(StreamProtocol::new(natter_proto::protocol::KAD));
            config.set_query_timeout(Duration::from_secs(10));
            let mut kad =
                kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), config);
            kad.set_mode(Some(if server {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            }));
            kad
        },
    )?)
}

/// A record value of a presence record's size.
fn record_value() -> Vec<u8> {
    vec![b'x'; 1200]
}

/// One DHT hop: a client whose routing table holds one server, which holds the record; time
/// from `get_record` to the end of the query (the daemon waits for the end too).
pub async fn kad_one_hop(samples: usize) -> anyhow::Result<Latencies> {
    let key = kad::RecordKey::new(&b"bench-one-hop".to_vec());
    let ((server_peer, addr), _server) = remote({
        let key = key.clone();
        move || async move {
            let mut server = kad_swarm(Keypair::generate_ed25519(), true)?;
            let peer = *server.local_peer_id();
            let addr = listen_addr(&mut server).await?;
            {
                use kad::store::RecordStore as _;
                server
                    .behaviour_mut()
                    .store_mut()
                    .put(kad::Record::new(key, record_value()))?;
            }
            let serve: Serve = Box::pin(async move {
                loop {
                    server.select_next_some().await;
                }
            });
            Ok(((peer, addr), serve))
        }
    })
    .await?;
    let mut client = kad_swarm(Keypair::generate_ed25519(), false)?;
    client.behaviour_mut().add_address(&server_peer, addr);
    let mut lat = Latencies::new();
    for i in 0..samples + 5 {
        let start = Instant::now();
        let query = client.behaviour_mut().get_record(key.clone());
        let mut found = false;
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            }) = client.select_next_some().await
                && id == query
            {
                if let kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(_))) = result {
                    found = true;
                }
                if step.last {
                    break;
                }
            }
        }
        if !found {
            bail!("the one-hop GET found no record");
        }
        if i >= 5 {
            lat.record(start.elapsed());
        }
    }
    Ok(lat)
}

/// What a full Kademlia walk cost in an in-process DHT.
#[derive(Debug, Default)]
pub struct Walk {
    /// `get_record` to the first record found (local store or a peer).
    pub first: Latencies,
    /// `get_record` to the end of the query, as the daemon waits.
    pub finished: Latencies,
    /// Requests sent per query.
    pub requests: Vec<u32>,
    pub nodes: usize,
    /// Routing table entries of one node after bootstrap.
    pub routing_entries: usize,
}

enum KadCmd {
    Put(kad::Record, oneshot::Sender<bool>),
    Get(
        kad::RecordKey,
        oneshot::Sender<(Option<Duration>, Duration, u32)>,
    ),
    Bootstrap(oneshot::Sender<()>),
    RoutingSize(oneshot::Sender<usize>),
}

/// Drives one DHT node: its swarm, and commands from the bench.
async fn kad_node(
    mut swarm: Swarm<kad::Behaviour<kad::store::MemoryStore>>,
    mut commands: mpsc::Receiver<KadCmd>,
) {
    struct Get {
        start: Instant,
        first: Option<Duration>,
        reply: oneshot::Sender<(Option<Duration>, Duration, u32)>,
    }
    let mut puts: HashMap<kad::QueryId, oneshot::Sender<bool>> = HashMap::new();
    let mut gets: HashMap<kad::QueryId, Get> = HashMap::new();
    let mut boots: HashMap<kad::QueryId, oneshot::Sender<()>> = HashMap::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(KadCmd::Put(record, reply)) => {
                    match swarm.behaviour_mut().put_record(record, kad::Quorum::One) {
                        Ok(q) => { puts.insert(q, reply); }
                        Err(_) => { let _ = reply.send(false); }
                    }
                }
                Some(KadCmd::Get(key, reply)) => {
                    let start = Instant::now();
                    let q = swarm.behaviour_mut().get_record(key);
                    gets.insert(q, Get { start, first: None, reply });
                }
                Some(KadCmd::Bootstrap(reply)) => match swarm.behaviour_mut().bootstrap() {
                    Ok(q) => { boots.insert(q, reply); }
                    Err(_) => { let _ = reply.send(()); }
                },
                Some(KadCmd::RoutingSize(reply)) => {
                    let n = swarm.behaviour_mut().kbuckets().map(|b| b.num_entries()).sum();
                    let _ = reply.send(n);
                }
            },
            event = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                    id, result, step, stats,
                }) = event {
                    match result {
                        kad::QueryResult::PutRecord(r) => {
                            if let Some(reply) = puts.remove(&id) {
                                let _ = reply.send(r.is_ok());
                            }
                        }
                        kad::QueryResult::GetRecord(r) => {
                            if let Some(g) = gets.get_mut(&id)
                                && matches!(r, Ok(kad::GetRecordOk::FoundRecord(_)))
                                && g.first.is_none()
                            {
                                g.first = Some(g.start.elapsed());
                            }
                            if step.last
                                && let Some(g) = gets.remove(&id)
                            {
                                let _ = g.reply.send((g.first, g.start.elapsed(), stats.num_requests()));
                            }
                        }
                        kad::QueryResult::Bootstrap(_) => {
                            if step.last && let Some(reply) = boots.remove(&id) {
                                let _ = reply.send(());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// An in-process DHT of `nodes` Kademlia servers on loopback TCP (Natter's protocol id,
/// k = 20, α = 3): `records` records put from random nodes, then `samples` GETs of random
/// records from random nodes, each a cold query.
pub async fn kad_walk(nodes: usize, records: usize, samples: usize) -> anyhow::Result<Walk> {
    let mut swarms = Vec::with_capacity(nodes);
    let mut known = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let mut swarm = kad_swarm(Keypair::generate_ed25519(), true)?;
        let addr = listen_addr(&mut swarm).await?;
        known.push((*swarm.local_peer_id(), addr));
        swarms.push(swarm);
    }
    // Every node is told every other's address, as identify tells Natter's superpeers: the
    // routing tables are those of a converged DHT (kad keeps at most k = 20 per bucket).
    let mut handles = Vec::with_capacity(nodes);
    let mut tasks = Vec::with_capacity(nodes);
    for mut swarm in swarms {
        let me = *swarm.local_peer_id();
        for (peer, addr) in known.iter().filter(|(p, _)| *p != me) {
            swarm.behaviour_mut().add_address(peer, addr.clone());
        }
        let (tx, rx) = mpsc::channel(16);
        tasks.push(AbortOnDrop(tokio::spawn(kad_node(swarm, rx))));
        handles.push(tx);
    }
    // One bootstrap round: every node connects to its neighbours.
    for _ in 0..1 {
        let mut waits = Vec::new();
        for h in &handles {
            let (tx, rx) = oneshot::channel();
            h.send(KadCmd::Bootstrap(tx)).await?;
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
    }
    let mut rng_state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand_idx = |n: usize| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state % n as u64) as usize
    };
    let keys: Vec<kad::RecordKey> = (0..records)
        .map(|i| kad::RecordKey::new(&format!("bench-walk-{i}").into_bytes()))
        .collect();
    for key in &keys {
        let (tx, rx) = oneshot::channel();
        handles[rand_idx(nodes)]
            .send(KadCmd::Put(
                kad::Record::new(key.clone(), record_value()),
                tx,
            ))
            .await?;
        rx.await?;
    }
    let mut walk = Walk {
        nodes,
        ..Walk::default()
    };
    for _ in 0..samples {
        let (tx, rx) = oneshot::channel();
        let key = keys[rand_idx(keys.len())].clone();
        handles[rand_idx(nodes)].send(KadCmd::Get(key, tx)).await?;
        let (found, finished, requests) = rx.await?;
        if let Some(f) = found {
            walk.first.record(f);
        }
        walk.finished.record(finished);
        walk.requests.push(requests);
    }
    let (tx, rx) = oneshot::channel();
    handles[nodes / 2].send(KadCmd::RoutingSize(tx)).await?;
    walk.routing_entries = rx.await?;
    drop(tasks);
    Ok(walk)
}

// ---------------------------------------------------------------------------------------
// The disk

/// `Store::receive` alone (one fsynced transaction per message, as the daemon stores each
/// message of a batch): messages per second for `window`.
pub fn store_receive_rate(window: Duration) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = natter_node::store::Store::open(dir.path())?;
    // A contact: the messages count against its share, not a contact request's.
    store.add_contact("alice")?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        store.receive(&natter_node::store::IncomingMessage {
            id: ulid(n),
            from: "alice".into(),
            text: text(n),
            sent_at_ms: 1_800_000_000_000,
            conv_seq: n + 1,
            received_at_ms: 1_800_000_000_001,
        })?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// What the sender's store does per delivered message: `Store::enqueue` (before any network
/// I/O), then `Store::mark_delivered` when the ack comes; two fsynced transactions.
pub fn store_sender_rate(window: Duration) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = natter_node::store::Store::open(dir.path())?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        let id = ulid(n);
        store.enqueue(&natter_node::store::OutgoingMessage {
            id: id.clone(),
            to: "bob".into(),
            text: text(n),
            sent_at_ms: 1_800_000_000_000,
        })?;
        store.mark_delivered(&id, "direct", 1_800_000_000_001)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// SQLite with the store's settings (WAL, `synchronous = FULL`), `batch` inserts per
/// transaction: what storing a whole delivered batch in one transaction would allow.
pub fn sqlite_batched_rate(window: Duration, batch: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = rusqlite::Connection::open(dir.path().join("batch.sqlite3"))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE inbox (arrival INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
           sender TEXT NOT NULL, text TEXT NOT NULL, sent_at_ms INTEGER NOT NULL,
           conv_seq INTEGER NOT NULL, received_at_ms INTEGER NOT NULL);",
    )?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        let tx = conn.transaction()?;
        for _ in 0..batch {
            tx.execute(
                "INSERT INTO inbox (id, sender, text, sent_at_ms, conv_seq, received_at_ms)
                 VALUES (?1, 'alice', ?2, 1, ?3, 2) ON CONFLICT (id) DO NOTHING",
                rusqlite::params![ulid(n), text(n), n as i64 + 1],
            )?;
            n += 1;
        }
        tx.commit()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
