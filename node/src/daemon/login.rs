//! The daemon's side of the login server: renewal (which also brings a fresh bootstrap list),
//! announcements, existence checks, and the candidate superpeers those answers carry.

use std::time::Instant;

use natter_proto::login::{LoginRequest, LoginResponse, SuperpeerInfo};

use super::{Daemon, LoginPending, LookupOutcome, unix_now};
use crate::net::{Command, OutRequest};

impl Daemon {
    pub(super) fn renew(&mut self) {
        self.attach.bootstrap_asked(tokio::time::Instant::now());
        let request = LoginRequest::Renew {
            cert: self.identity.cert.clone(),
        };
        self.send_login(request, LoginPending::Renew);
    }

    pub(super) fn send_login(&mut self, request: LoginRequest, pending: LoginPending) {
        let token = self.token();
        let login = self.identity.login.clone();
        self.net.request(
            token,
            self.login_peer,
            vec![login],
            OutRequest::Login(request),
        );
        self.login_pending.insert(token, pending);
    }

    pub(super) fn on_login_response(
        &mut self,
        pending: LoginPending,
        response: Result<LoginResponse, String>,
    ) {
        match (pending, response) {
            (
                LoginPending::Renew,
                Ok(LoginResponse::Issued {
                    cert,
                    issuer_key,
                    superpeers,
                }),
            ) => {
                if cert.verify(&issuer_key, unix_now()).is_err()
                    || cert.peer_id() != self.peer_id()
                    || issuer_key != self.issuer
                {
                    tracing::error!(
                        "login server issued an unusable certificate; keeping the old one"
                    );
                    return;
                }
                self.net
                    .send(crate::net::Command::SetCertificate(Box::new(cert.clone())));
                self.identity.cert = cert;
                self.renew_failed_at = None;
                if let Err(e) = self.home.save_identity(&self.identity) {
                    tracing::error!(error = %e, "cannot save the renewed certificate");
                }
                let text = format!(
                    "{}; {} superpeer(s) in the bootstrap list",
                    if self.renewed_once {
                        "certificate renewed"
                    } else {
                        "logged in"
                    },
                    superpeers.len()
                );
                if self.renewed_once {
                    tracing::info!("{text}");
                } else {
                    self.phase(&text);
                }
                self.renewed_once = true;
                self.merge_candidates(superpeers);
                for leaf in self.leaves.expired(&self.issuer, unix_now()) {
                    self.net.send(Command::Disconnect(leaf));
                }
            }
            (LoginPending::Renew, Ok(LoginResponse::Refused(r))) => {
                self.renew_failed_at = Some(Instant::now());
                self.phase(&format!("login server refused renewal: {}", r.message));
            }
            (LoginPending::Renew, Err(e)) => {
                self.renew_failed_at = Some(Instant::now());
                let valid = self.identity.cert.verify(&self.issuer, unix_now()).is_ok();
                self.phase(&format!(
                    "login server unreachable ({e}); {}",
                    if valid {
                        "continuing with the current certificate and the host cache"
                    } else {
                        "the certificate has expired: peers will refuse this node until it renews"
                    }
                ));
            }
            (LoginPending::Announce, Ok(LoginResponse::Announced { superpeers, .. })) => {
                let known = self.candidates.len();
                self.merge_candidates(superpeers);
                if self.candidates.len() > known {
                    // New superpeers: meet them now rather than at the next round.
                    self.last_bootstrap = None;
                }
            }
            (LoginPending::Announce, other) => {
                tracing::warn!(?other, "announcement to the login server failed");
            }
            (LoginPending::Exists { name, purpose }, response) => {
                let exists = match response {
                    Ok(LoginResponse::Exists { exists, .. }) => Some(exists),
                    _ => None,
                };
                self.on_lookup_result(name, purpose, LookupOutcome::NotFound { exists });
            }
            (pending, other) => tracing::debug!(?pending, ?other, "unexpected login answer"),
        }
    }

    /// Adds superpeers to the candidate list (bounded) and the host cache.
    pub(super) fn merge_candidates(&mut self, list: Vec<SuperpeerInfo>) {
        let me = self.peer_id().to_string();
        for sp in list {
            if sp.peer_id == me {
                continue;
            }
            let (peer, addrs, load) = (
                sp.peer_id.clone(),
                sp.addrs.clone(),
                (sp.leaves, sp.capacity),
            );
            self.store_write("host cache write", move |s| {
                s.record_host(&peer, &addrs, None, Some(load), unix_now())
                    .map(drop)
            });
            match self.candidates.iter_mut().find(|c| c.peer_id == sp.peer_id) {
                Some(existing) => *existing = sp,
                None => self.candidates.push(sp),
            }
        }
        if self.candidates.len() > 200 {
            self.candidates.drain(..self.candidates.len() - 200);
        }
    }
}
