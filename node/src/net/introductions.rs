//! The introduction protocol in the network task: this node's certificate sent on every new
//! connection, and a peer's admitted when its certificate is valid and names the connection's
//! key (see `admission.rs`).

use libp2p::PeerId;
use libp2p::request_response;
use natter_proto::overlay::{Introduction, IntroductionResponse};

use super::{MAX_REINTRODUCTIONS, Network};
use crate::daemon::unix_now;

impl Network {
    /// Sends this node's certificate to `peer`.
    pub(super) fn introduce(&mut self, peer: PeerId) {
        let request = Introduction {
            cert: self.cert.clone(),
        };
        self.swarm
            .behaviour_mut()
            .introduce
            .send_request(&peer, request);
    }

    /// A peer's introduction (admitted if its certificate is valid and names the connection's
    /// key), or the answer to ours.
    pub(super) fn on_introduce_event(
        &mut self,
        event: request_response::Event<Introduction, IntroductionResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let cert = request.cert;
                let verdict = if cert.peer_id() != peer {
                    Err("the certificate names another device key".to_owned())
                } else if self.revocations.revokes(&cert) {
                    Err("the certificate was revoked by the login server".to_owned())
                } else {
                    cert.verify(&self.issuer, unix_now())
                        .map_err(|e| e.to_string())
                };
                let response = match verdict {
                    Ok(()) => {
                        tracing::debug!(%peer, user = %cert.username(), "peer admitted");
                        self.admissions.admit(peer, &cert);
                        IntroductionResponse::Admitted
                    }
                    Err(message) => {
                        tracing::info!(%peer, %message, "peer's introduction refused");
                        IntroductionResponse::Refused { message }
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .introduce
                    .send_response(channel, response);
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        response: IntroductionResponse::Refused { message },
                        ..
                    },
                ..
            } => {
                tracing::warn!(%peer, %message, "peer refused this node's certificate");
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                let again = matches!(
                    error,
                    request_response::OutboundFailure::ConnectionClosed
                        | request_response::OutboundFailure::Timeout
                );
                if again && self.swarm.is_connected(&peer) {
                    // Its connection closed (one of two dialled at once, a retired relayed
                    // one) while another stays, or the answer did not come in time: without
                    // saying it again, the peer would hold every answer for this node until
                    // it gives up on it. A few times per peer, not forever.
                    let tries = self.reintroduced.entry(peer).or_insert(0);
                    if *tries < MAX_REINTRODUCTIONS {
                        *tries += 1;
                        tracing::debug!(%peer, %error, "introduction not answered; again");
                        self.introduce(peer);
                        return;
                    }
                }
                // Peers without accounts (the login server, AutoNAT probes) do not speak it.
                tracing::debug!(%peer, %error, "introduction not heard");
            }
            _ => {}
        }
    }
}
