//! The daemon's side of the login server: renewal (which also brings a fresh bootstrap list),
//! announcements, existence checks, and the candidate superpeers those answers carry.

use std::time::Instant;

use libp2p::PeerId;
use natter_proto::login::{LoginRequest, LoginResponse, SuperpeerInfo, Supply};

use super::candidates::{Source, take_list};
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

    /// Asks the login server for a bootstrap list and the supply, without renewing.
    pub(super) fn bootstrap(&mut self) {
        self.attach.bootstrap_asked(tokio::time::Instant::now());
        let request = LoginRequest::Bootstrap {
            cert: self.identity.cert.clone(),
        };
        self.send_login(request, LoginPending::Bootstrap);
    }

    /// Tells the login server this node is no longer a superpeer (it demoted, or signs off),
    /// so that bootstrap lists stop naming it now rather than when its announcement expires.
    pub(super) fn withdraw(&mut self) {
        let request = LoginRequest::Withdraw {
            cert: self.identity.cert.clone(),
        };
        self.send_login(request, LoginPending::Withdraw);
    }

    /// The login server's count of superpeers: promotion by need decides on it.
    fn learn_supply(&mut self, supply: Supply) {
        if self.supply != Some(supply) {
            tracing::debug!(
                superpeers = supply.superpeers,
                leaves = supply.leaves,
                capacity = supply.capacity,
                "network supply"
            );
        }
        self.supply = Some(supply);
        self.supply_at = Some(Instant::now());
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
                    supply,
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
                // The record in the directory carries the old certificate, and becomes
                // unusable when it expires: publish one with the new certificate now.
                self.last_publish = None;
                self.last_own_publish = None;
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
                self.learn_supply(supply);
                if self.merge_candidates(superpeers, Source::LoginServer, None) > 0 {
                    // A superpeer meets new ones now rather than at the next round: the
                    // first round may have passed before this answer, with nobody to meet.
                    self.last_bootstrap = None;
                }
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
            (LoginPending::Bootstrap, Ok(LoginResponse::Bootstrap { superpeers, supply })) => {
                tracing::debug!(superpeers = superpeers.len(), "bootstrap list");
                self.learn_supply(supply);
                if self.merge_candidates(superpeers, Source::LoginServer, None) > 0 {
                    self.last_bootstrap = None;
                }
            }
            (LoginPending::Withdraw, Ok(LoginResponse::Withdrawn)) => {
                tracing::info!("withdrawn from the login server's bootstrap lists");
            }
            (LoginPending::Withdraw, other) => {
                tracing::info!(?other, "withdrawing from the bootstrap lists failed");
            }
            (LoginPending::Bootstrap, other) => {
                tracing::info!(?other, "asking the login server for superpeers failed");
            }
            (
                LoginPending::Announce,
                Ok(LoginResponse::Announced {
                    superpeers, supply, ..
                }),
            ) => {
                self.learn_supply(supply);
                if self.merge_candidates(superpeers, Source::LoginServer, None) > 0 {
                    // New superpeers: meet them now rather than at the next round.
                    self.last_bootstrap = None;
                }
                // Superpeers met before the login server listed them enter the routing
                // table now that it does.
                let met: Vec<PeerId> = self.superpeers_seen.keys().copied().collect();
                for peer in met {
                    self.kad_add_vouched(peer);
                }
            }
            (LoginPending::Announce, other) => {
                tracing::warn!(?other, "announcement to the login server failed");
            }
            (LoginPending::Revocations, Ok(LoginResponse::Revocations { list })) => {
                self.on_revocation_list("login server", list);
            }
            (LoginPending::ContactExists { name, reply }, response) => {
                let exists = match response {
                    Ok(LoginResponse::Exists { exists, .. }) => Some(exists),
                    _ => None,
                };
                self.add_contact(name, exists, reply);
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

    /// Adds the superpeers of a list heard from `source` (`from`: the superpeer that sent it)
    /// to the candidates and, unverified, to the host cache: a list is somebody's word, and a
    /// host counts as seen only once this node reached it. The list is cut short and checked
    /// entry by entry first ([`take_list`]). Returns how many were new.
    pub(super) fn merge_candidates(
        &mut self,
        list: Vec<SuperpeerInfo>,
        source: Source,
        from: Option<PeerId>,
    ) -> usize {
        let mut new = 0;
        for (peer, sp) in take_list(list, self.peer_id(), from, source) {
            let (id, addrs, load) = (
                sp.peer_id.clone(),
                sp.addrs.clone(),
                (sp.leaves, sp.capacity),
            );
            self.store_write_lazy("host cache write", move |s| {
                s.learn_host(&id, &addrs, Some(load), unix_now())
            });
            if self.candidates.heard(peer, sp, source) {
                new += 1;
            }
        }
        new
    }

    /// This node reached superpeer `peer` itself (it attached, or answered an overlay
    /// request): from now on it counts as seen, in the candidates and the host cache.
    pub(super) fn host_reached(&mut self, peer: PeerId) {
        if !self.candidates.reached(peer) {
            // Dropped from the candidates while the attempt was in flight: no address to
            // remember it by.
            tracing::debug!(%peer, "reached a superpeer that is no longer a candidate");
            return;
        }
        let (id, addrs) = (peer.to_string(), self.candidates.addrs(peer));
        self.store_write_lazy("host cache write", move |s| {
            s.record_host(&id, &addrs, None, None, unix_now())
        });
    }

    /// An attempt on superpeer `peer` failed: it sinks in the candidates and the host cache,
    /// and one this node never reached is forgotten after a few failures.
    pub(super) fn host_failed(&mut self, peer: PeerId) {
        if self.candidates.failed(peer) {
            tracing::debug!(%peer, "unreached superpeer failed out of the candidates");
        }
        let id = peer.to_string();
        self.store_write_lazy("host cache write", move |s| {
            s.host_failed(&id, unix_now()).map(drop)
        });
    }
}
