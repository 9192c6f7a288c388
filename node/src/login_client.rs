//! Client side of the login protocol: register, log in, renew and ask whether a name exists.
//!
//! Each call opens its own short-lived connection to the login server (whose PeerId is pinned
//! by the `/p2p/` part of its address), sends one request and checks the answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity::Keypair};
use natter_proto::limits::{MAX_LOGIN_REQUEST_BYTES, MAX_LOGIN_RESPONSE_BYTES};
use natter_proto::login::{LoginRequest, LoginResponse, Password, Refusal, SuperpeerInfo};
use natter_proto::{CertError, Certificate, IssuerKey, UserName, protocol};

/// The codec of the login protocol, with Natter's size limits.
pub type LoginCodec = request_response::json::codec::Codec<LoginRequest, LoginResponse>;

/// How long one exchange with the login server may take, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// What a login address looks like, for error messages.
pub const LOGIN_ADDR_EXAMPLE: &str = "/ip4/203.0.113.7/tcp/4747/p2p/12D3KooW...";

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The server answered with a refusal; its message is meant for users.
    #[error("{0}")]
    Refused(Refusal),
    #[error(
        "login server {addr} is unreachable ({reason}): check the address and that `natter-login serve` runs there"
    )]
    Unreachable { addr: Multiaddr, reason: String },
    #[error("login server {0} did not answer within {1:?}")]
    Timeout(Multiaddr, Duration),
    #[error(
        "login address {0} lacks the server's peer id: it must end in /p2p/<peer id>, as `natter-login serve` prints it, e.g. {LOGIN_ADDR_EXAMPLE}"
    )]
    AddressWithoutPeerId(Multiaddr),
    #[error("{0:?} is not a multiaddr ({1}); a login address looks like {LOGIN_ADDR_EXAMPLE}")]
    BadAddress(String, String),
    #[error("login server sent an unexpected answer: {0}")]
    Protocol(String),
    #[error("login server issued an unusable certificate: {0}")]
    BadCertificate(String),
    #[error("network setup failed: {0}")]
    Transport(String),
}

impl From<CertError> for LoginError {
    fn from(e: CertError) -> Self {
        LoginError::BadCertificate(e.to_string())
    }
}

/// A certificate freshly issued to this device, checked against the issuer key it came with.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: Certificate,
    pub issuer_key: IssuerKey,
    pub superpeers: Vec<SuperpeerInfo>,
}

/// The login request-response behaviour with Natter's limits; `support` says which side we are.
pub fn behaviour(support: ProtocolSupport) -> request_response::Behaviour<LoginCodec> {
    let codec = LoginCodec::default()
        .set_request_size_maximum(MAX_LOGIN_REQUEST_BYTES)
        .set_response_size_maximum(MAX_LOGIN_RESPONSE_BYTES);
    request_response::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(protocol::LOGIN), support)],
        request_response::Config::default().with_request_timeout(DEFAULT_TIMEOUT),
    )
}

/// Parses a login server address as given on the command line: a multiaddr ending in
/// `/p2p/<peer id>`; the error shows an example.
pub fn parse_login_addr(text: &str) -> Result<Multiaddr, LoginError> {
    let addr: Multiaddr = text.trim().parse().map_err(|e: libp2p::multiaddr::Error| {
        LoginError::BadAddress(text.to_owned(), e.to_string())
    })?;
    server_peer_id(&addr)?;
    Ok(addr)
}

/// The login server's PeerId, from the `/p2p/` suffix of its address.
pub fn server_peer_id(addr: &Multiaddr) -> Result<PeerId, LoginError> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok(peer),
        _ => Err(LoginError::AddressWithoutPeerId(addr.clone())),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A client for one login server, acting as one device.
#[derive(Debug, Clone)]
pub struct LoginClient {
    key: Keypair,
    server: Multiaddr,
    timeout: Duration,
}

impl LoginClient {
    pub fn new(key: Keypair, server: Multiaddr) -> Result<Self, LoginError> {
        server_peer_id(&server)?;
        Ok(Self {
            key,
            server,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn server(&self) -> &Multiaddr {
        &self.server
    }

    pub async fn register(
        &self,
        name: &UserName,
        password: Password,
    ) -> Result<Issued, LoginError> {
        let req = LoginRequest::Register {
            name: name.to_string(),
            password,
        };
        self.expect_issued(req, Some(name)).await
    }

    pub async fn login(&self, name: &UserName, password: Password) -> Result<Issued, LoginError> {
        let req = LoginRequest::Login {
            name: name.to_string(),
            password,
        };
        self.expect_issued(req, Some(name)).await
    }

    /// Renews without a password, proving possession of the device key by the connection.
    pub async fn renew(&self, cert: &Certificate) -> Result<Issued, LoginError> {
        let name = cert.username().clone();
        self.expect_issued(LoginRequest::Renew { cert: cert.clone() }, Some(&name))
            .await
    }

    pub async fn exists(&self, name: &UserName) -> Result<bool, LoginError> {
        let req = LoginRequest::Exists {
            name: name.to_string(),
        };
        match self.request(req).await? {
            LoginResponse::Exists { exists, .. } => Ok(exists),
            LoginResponse::Refused(r) => Err(LoginError::Refused(r)),
            other => Err(LoginError::Protocol(format!("{other:?}"))),
        }
    }

    async fn expect_issued(
        &self,
        req: LoginRequest,
        name: Option<&UserName>,
    ) -> Result<Issued, LoginError> {
        match self.request(req).await? {
            LoginResponse::Issued {
                cert,
                issuer_key,
                superpeers,
                ..
            } => {
                cert.verify(&issuer_key, unix_now())?;
                if cert.peer_id() != self.key.public().to_peer_id() {
                    return Err(LoginError::BadCertificate(
                        "certificate names another device".into(),
                    ));
                }
                if name.is_some_and(|n| n != cert.username()) {
                    return Err(LoginError::BadCertificate(
                        "certificate names another user".into(),
                    ));
                }
                Ok(Issued {
                    cert,
                    issuer_key,
                    superpeers,
                })
            }
            LoginResponse::Refused(r) => Err(LoginError::Refused(r)),
            other => Err(LoginError::Protocol(format!("{other:?}"))),
        }
    }

    /// One request over a fresh connection.
    pub async fn request(&self, req: LoginRequest) -> Result<LoginResponse, LoginError> {
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .map_err(|_| LoginError::Timeout(self.server.clone(), self.timeout))?
    }

    async fn exchange(&self, req: LoginRequest) -> Result<LoginResponse, LoginError> {
        let server = server_peer_id(&self.server)?;
        let mut swarm = build_swarm(self.key.clone())?;
        let unreachable = |reason: String| LoginError::Unreachable {
            addr: self.server.clone(),
            reason,
        };
        swarm
            .dial(self.server.clone())
            .map_err(|e| unreachable(e.to_string()))?;
        let mut pending = Some(req);
        let mut request_id = None;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server => {
                    if let Some(req) = pending.take() {
                        request_id = Some(swarm.behaviour_mut().send_request(&server, req));
                    }
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(unreachable(dial_error_reason(&error)));
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id: id,
                            response,
                        },
                    ..
                }) if Some(id) == request_id => return Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id: id,
                    error,
                    ..
                }) if Some(id) == request_id => {
                    return Err(match error {
                        OutboundFailure::DialFailure | OutboundFailure::ConnectionClosed => {
                            unreachable(error.to_string())
                        }
                        OutboundFailure::Timeout => {
                            LoginError::Timeout(self.server.clone(), self.timeout)
                        }
                        OutboundFailure::UnsupportedProtocols => LoginError::Protocol(
                            "the peer at this address is not a Natter login server".into(),
                        ),
                        OutboundFailure::Io(e) => LoginError::Protocol(e.to_string()),
                    });
                }
                other => tracing::trace!(?other, "login client event"),
            }
        }
    }
}

/// Why a dial failed, in words a user can act on: the innermost cause ("Connection refused
/// (os error 111)") rather than libp2p's rendering, which nests it three times.
fn dial_error_reason(error: &libp2p::swarm::DialError) -> String {
    use libp2p::swarm::DialError;
    match error {
        DialError::WrongPeerId { obtained, .. } => format!(
            "another server answers there, with peer id {obtained}; copy the address `natter-login serve` prints"
        ),
        DialError::Transport(errors) => errors
            .iter()
            .map(|(_, e)| transport_reason(e))
            .next()
            .unwrap_or_else(|| error.to_string()),
        other => transport_reason(other),
    }
}

fn transport_reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    loop {
        if e.downcast_ref::<libp2p::dns::ResolveError>().is_some() {
            return "its host name does not resolve".to_owned();
        }
        match e.source() {
            Some(next) => e = next,
            None => return e.to_string(),
        }
    }
}

/// A swarm that speaks only the login protocol, as a client: what one-shot commands and load
/// generators use.
pub fn build_swarm(
    key: Keypair,
) -> Result<Swarm<request_response::Behaviour<LoginCodec>>, LoginError> {
    let config = natter_net::TransportConfig {
        idle_timeout: Duration::from_secs(5),
        quic: Some(natter_net::QuicConfig::LIBP2P_DEFAULTS),
        // One request per run: "not a Natter login server" is worth more than a round trip.
        optimistic_streams: false,
    };
    natter_net::build_swarm(key, &config, |_| behaviour(ProtocolSupport::Outbound))
        .map_err(|e| LoginError::Transport(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_addresses_need_a_peer_id_and_errors_show_an_example() {
        let good =
            "/ip4/127.0.0.1/tcp/4747/p2p/12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";
        assert_eq!(parse_login_addr(good).unwrap().to_string(), good);
        for bad in ["127.0.0.1:4747", "", "/ip4/127.0.0.1/tcp/4747"] {
            let err = parse_login_addr(bad).unwrap_err().to_string();
            assert!(err.contains(LOGIN_ADDR_EXAMPLE), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = parse_login_addr("/ip4/127.0.0.1/tcp/4747").unwrap_err();
        assert!(matches!(err, LoginError::AddressWithoutPeerId(_)), "{err}");
    }

    #[tokio::test]
    async fn unreachable_and_unresolvable_servers_give_one_plain_line() {
        let key = Keypair::generate_ed25519();
        let peer = PeerId::random();
        let refused: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}").parse().unwrap();
        let err = LoginClient::new(key.clone(), refused)
            .unwrap()
            .exists(&UserName::parse("alice").unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is unreachable (Connection refused"), "{err}");
        let nowhere: Multiaddr = format!("/dns4/natter-test.invalid/tcp/1/p2p/{peer}")
            .parse()
            .unwrap();
        let err = LoginClient::new(key, nowhere)
            .unwrap()
            .with_timeout(Duration::from_secs(10))
            .exists(&UserName::parse("alice").unwrap())
            .await
            .unwrap_err()
            .to_string();
        // Either the resolver says so, or (without any DNS server) the dial times out.
        assert!(
            err.contains("host name does not resolve") || err.contains("did not answer"),
            "{err}"
        );
        assert!(!err.contains("Query {"), "{err}");
    }
}
