//! Revocations: the login server's signed list of revoked accounts and devices, kept fresh so
//! that a disabled user is cut off within a minute. A superpeer asks the login server every
//! [`ASK_LOGIN_EVERY`]; a leaf asks its primary and standby superpeers every
//! [`ASK_SUPERPEER_EVERY`] (the list is signed: an untrusted superpeer can only withhold a newer
//! one, the other may not, and the leaf takes only a newer one). The list held is applied everywhere a certificate counts: introductions
//! (the network task), attach, publish and lookup answers (the superpeer side), lookup
//! answers (the leaf side), and incoming messages, pings and presence.

use std::time::{Duration, Instant};

use natter_proto::RevocationList;
use natter_proto::login::LoginRequest;
use natter_proto::overlay::OverlayRequest;

use super::{Current, Daemon, LoginPending, OverlayPending};
use crate::net::Command;

/// How often a superpeer asks the login server (an unchanged list costs a short answer).
const ASK_LOGIN_EVERY: Duration = Duration::from_secs(10);
/// How often a leaf asks its primary superpeer.
const ASK_SUPERPEER_EVERY: Duration = Duration::from_secs(15);

impl Daemon {
    pub(super) fn revocation_tick(&mut self) {
        if self.going_down.is_some() {
            return;
        }
        let every = match self.role {
            Current::Superpeer => ASK_LOGIN_EVERY,
            Current::Leaf => ASK_SUPERPEER_EVERY,
        };
        if self.last_revocations.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        let since = self.revocations.issued_at();
        match self.role {
            Current::Superpeer => {
                self.last_revocations = Some(Instant::now());
                self.send_login(
                    LoginRequest::Revocations { since },
                    LoginPending::Revocations,
                );
            }
            Current::Leaf => {
                let attached = [self.attach.primary(), self.attach.standby()];
                for superpeer in attached.into_iter().flatten() {
                    self.last_revocations = Some(Instant::now());
                    self.send_overlay(
                        superpeer,
                        OverlayRequest::Revocations { since },
                        OverlayPending::Revocations(superpeer),
                    );
                }
            }
        }
    }

    /// A revocation list from `from` (none: the one held is current). Taken if it verifies
    /// under the pinned issuer key and is newer than the one held.
    pub(super) fn on_revocation_list(&mut self, from: &str, list: Option<RevocationList>) {
        let Some(list) = list else {
            return;
        };
        let revocations = match list.verify(&self.issuer) {
            Ok(revocations) => revocations,
            Err(e) => {
                tracing::warn!(from, error = %e, "revocation list refused");
                return;
            }
        };
        if !self.revocations.update(revocations) {
            return;
        }
        tracing::info!(
            from,
            entries = self.revocations.len(),
            issued_at = self.revocations.issued_at(),
            "revocation list updated"
        );
        self.net
            .send(Command::SetRevocations(self.revocations.clone()));
        for leaf in self.leaves.revoked(&self.revocations) {
            tracing::info!(%leaf, "leaf's certificate revoked: detached");
            self.net.send(Command::Disconnect(leaf));
        }
        if let Some(list) = self.revocations.list() {
            for name in list
                .revoked
                .iter()
                .filter_map(|r| natter_proto::UserName::parse_canonical(&r.name).ok())
            {
                self.lookups.invalidate(&name);
            }
        }
        if self.revocations.revokes(&self.identity.cert) {
            self.phase(
                "the login server revoked this device's certificate (account disabled or device \
                 revoked): peers refuse it; log in again if the account is still yours",
            );
        }
    }
}
