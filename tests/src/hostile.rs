//! Nodes that play an attacker, for the adversarial tests: real libp2p swarms on loopback with
//! a real account, speaking Natter's protocols, whose answers a test scripts.
//!
//! A [`HostileSuperpeer`] registers at the login server, announces itself as a superpeer (so
//! leaves find it in their bootstrap lists), accepts relay reservations, answers every overlay
//! request with what the test's script returns, and stores whatever is delivered to it: the
//! texts it swallowed are the evidence a test checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, relay};
use natter_node::login_client::LoginClient;
use natter_proto::login::{LoginRequest, LoginResponse, Password};
use natter_proto::msg::{MsgRequest, MsgResponse};
use natter_proto::overlay::{Introduction, IntroductionResponse, OverlayRequest, OverlayResponse};
use natter_proto::protocol;
use natter_proto::{Certificate, IssuerSigningKey, PresenceBody, PresenceRecord, Status, UserName};
use tokio_util::sync::CancellationToken;

type OverlayCodec = request_response::json::codec::Codec<OverlayRequest, OverlayResponse>;
type MsgCodec = request_response::json::codec::Codec<MsgRequest, MsgResponse>;
type IntroduceCodec = request_response::json::codec::Codec<Introduction, IntroductionResponse>;

/// Who the attacker is: what its script may use to forge answers.
#[derive(Debug, Clone)]
pub struct Attacker {
    pub key: Keypair,
    pub peer: PeerId,
    /// Its genuine certificate, for the account it registered.
    pub cert: Certificate,
    /// Where it listens (loopback TCP).
    pub addr: Multiaddr,
}

impl Attacker {
    /// A presence record for `victim` that routes to the attacker: a certificate for the
    /// victim's name under a signing key of the attacker's own (no login server issued it),
    /// naming the attacker's device key, signed by that key. Everything a leaf could check
    /// without the pinned issuer key looks right.
    pub fn forged_record(&self, victim: &UserName) -> PresenceRecord {
        let rogue = IssuerSigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let device = self
            .key
            .clone()
            .try_into_ed25519()
            .expect("ed25519 key")
            .public()
            .to_bytes();
        let now = natter_login_server::service::unix_now();
        let cert = rogue
            .issue(victim.clone(), device, 1, now - 10, 3600)
            .expect("issue");
        PresenceBody {
            cert,
            status: Status::Online,
            seq: now * 1000,
            last_seen: now,
            expires_at: now + 60,
            home: Some(self.peer.to_string()),
            relay_addrs: vec![],
            direct_addrs: vec![self.addr.to_string()],
        }
        .sign(&self.key)
        .expect("sign")
    }
}

/// The attacker's answer to one overlay request from `from`.
pub type Script = Box<dyn FnMut(&Attacker, PeerId, OverlayRequest) -> OverlayResponse + Send>;

/// What a hostile superpeer does with the usual requests, for scripts to fall back on:
/// attaches everyone (no standbys offered), takes every publication, finds nobody.
pub fn plain_superpeer(_: &Attacker, _: PeerId, request: OverlayRequest) -> OverlayResponse {
    match request {
        OverlayRequest::Attach { .. } => OverlayResponse::Attached {
            lease_secs: 120,
            superpeers: vec![],
        },
        OverlayRequest::Publish { .. } => OverlayResponse::Published,
        OverlayRequest::Lookup { .. } => OverlayResponse::NotFound,
        OverlayRequest::Detach => OverlayResponse::Detached,
        OverlayRequest::IsAttached { .. } => OverlayResponse::Attachment { attached: true },
        // Withholds every revocation.
        OverlayRequest::Revocations { .. } => OverlayResponse::Revocations { list: None },
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    relay: relay::Behaviour,
    /// Its genuine certificate, on every connection, as every node does.
    introduce: request_response::Behaviour<IntroduceCodec>,
    overlay: request_response::Behaviour<OverlayCodec>,
    msg: request_response::Behaviour<MsgCodec>,
}

/// A running hostile superpeer; stops when dropped.
#[derive(Debug)]
pub struct HostileSuperpeer {
    pub attacker: Attacker,
    swallowed: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl HostileSuperpeer {
    /// Registers `name` at `login`, listens on loopback, announces itself as a superpeer and
    /// serves `script` until dropped. Runs on the current tokio runtime.
    pub async fn start(login: &Multiaddr, name: &str, script: Script) -> anyhow::Result<Self> {
        let key = Keypair::generate_ed25519();
        let client = LoginClient::new(key.clone(), login.clone())?;
        let issued = client
            .register(&UserName::parse(name)?, Password::new("password1"))
            .await?;
        let tcp_only = natter_net::TransportConfig {
            quic: None,
            ..Default::default()
        };
        let mut swarm = natter_net::build_swarm(key.clone(), &tcp_only, |key| {
            let peer = key.public().to_peer_id();
            Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    protocol::IDENTIFY_VERSION.into(),
                    key.public(),
                )),
                relay: relay::Behaviour::new(peer, relay::Config::default()),
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
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default(),
                ),
                msg: request_response::Behaviour::new(
                    [(StreamProtocol::new(protocol::MSG), ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
            }
        })?;
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        swarm.add_external_address(addr.clone());
        let attacker = Attacker {
            peer: key.public().to_peer_id(),
            key,
            cert: issued.cert,
            addr,
        };
        announce(&client, &attacker).await?;
        let swallowed = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            swarm,
            client,
            attacker.clone(),
            script,
            swallowed.clone(),
            stop.clone(),
        ));
        Ok(Self {
            attacker,
            swallowed,
            stop,
        })
    }

    /// The texts of every message delivered to the attacker so far.
    pub fn swallowed(&self) -> Vec<String> {
        self.swallowed.lock().expect("lock").clone()
    }
}

impl Drop for HostileSuperpeer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn announce(client: &LoginClient, attacker: &Attacker) -> anyhow::Result<()> {
    let request = LoginRequest::Announce {
        cert: attacker.cert.clone(),
        addrs: vec![attacker.addr.to_string()],
        leaves: 0,
        capacity: 1000,
    };
    match client.request(request).await? {
        LoginResponse::Announced { .. } => Ok(()),
        other => anyhow::bail!("announcement refused: {other:?}"),
    }
}

async fn serve(
    mut swarm: libp2p::Swarm<Behaviour>,
    client: LoginClient,
    attacker: Attacker,
    mut script: Script,
    swallowed: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
) {
    let mut reannounce = tokio::time::interval(Duration::from_secs(10));
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            _ = reannounce.tick() => {
                // Stays in the bootstrap lists, like a live superpeer.
                if let Err(e) = announce(&client, &attacker).await {
                    tracing::warn!(error = %e, "hostile superpeer: announcement failed");
                }
                continue;
            }
            event = swarm.select_next_some() => event,
        };
        let event = match event {
            SwarmEvent::Behaviour(event) => event,
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                let cert = attacker.cert.clone();
                swarm
                    .behaviour_mut()
                    .introduce
                    .send_request(&peer_id, Introduction { cert });
                continue;
            }
            _ => continue,
        };
        match event {
            BehaviourEvent::Introduce(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) => {
                let _ = swarm
                    .behaviour_mut()
                    .introduce
                    .send_response(channel, IntroductionResponse::Admitted);
            }
            BehaviourEvent::Overlay(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => {
                let answer = script(&attacker, peer, request);
                let _ = swarm.behaviour_mut().overlay.send_response(channel, answer);
            }
            BehaviourEvent::Msg(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => {
                let answer = match request {
                    MsgRequest::Deliver { messages, .. } => {
                        let n = messages.len() as u32;
                        swallowed
                            .lock()
                            .expect("lock")
                            .extend(messages.into_iter().map(|m| m.text));
                        MsgResponse::Stored {
                            stored: n,
                            duplicates: 0,
                        }
                    }
                    MsgRequest::Ping { nonce, .. } => MsgResponse::Pong { nonce },
                    MsgRequest::Presence { .. } => MsgResponse::Noted,
                };
                let _ = swarm.behaviour_mut().msg.send_response(channel, answer);
            }
            _ => {}
        }
    }
}

/// A bare Kademlia peer speaking the directory's protocol, and the introduction when it has a
/// certificate: what the cert-less attacker, or a test's record forger, runs.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // libp2p's behaviours have none
pub struct KadPeer {
    pub kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
    pub introduce: request_response::Behaviour<IntroduceCodec>,
    /// Tells the protocols it speaks (the directory's, in server mode) and the addresses it
    /// claims (its external addresses), as a superpeer does.
    pub identify: identify::Behaviour,
}

/// A [`KadPeer`] on `key` (TCP only), in client mode, queries timing out after 20 s.
pub fn kad_peer(key: Keypair) -> anyhow::Result<libp2p::Swarm<KadPeer>> {
    use libp2p::kad;
    let tcp_only = natter_net::TransportConfig {
        quic: None,
        ..Default::default()
    };
    let mut swarm = natter_net::build_swarm(key, &tcp_only, |key| {
        let peer = key.public().to_peer_id();
        let mut config = kad::Config::new(StreamProtocol::new(protocol::KAD));
        config.set_query_timeout(Duration::from_secs(20));
        KadPeer {
            kad: kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), config),
            introduce: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(protocol::INTRODUCE),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                protocol::IDENTIFY_VERSION.into(),
                key.public(),
            )),
        }
    })?;
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Client));
    Ok(swarm)
}

/// Does what a node does by itself on `swarm` (introduces `cert`, if any, on each new
/// connection; answers introductions) and hands back the Kademlia events.
pub fn kad_peer_event(
    swarm: &mut libp2p::Swarm<KadPeer>,
    cert: Option<&Certificate>,
    event: SwarmEvent<KadPeerEvent>,
) -> Option<libp2p::kad::Event> {
    match event {
        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
            if let Some(cert) = cert {
                let cert = cert.clone();
                swarm
                    .behaviour_mut()
                    .introduce
                    .send_request(&peer_id, Introduction { cert });
            }
            None
        }
        SwarmEvent::Behaviour(KadPeerEvent::Introduce(request_response::Event::Message {
            message: request_response::Message::Request { channel, .. },
            ..
        })) => {
            let _ = swarm
                .behaviour_mut()
                .introduce
                .send_response(channel, IntroductionResponse::Admitted);
            None
        }
        SwarmEvent::Behaviour(KadPeerEvent::Kad(event)) => Some(event),
        _ => None,
    }
}
