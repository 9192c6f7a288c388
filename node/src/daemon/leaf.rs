//! The leaf side: attaching to two superpeers (primary and standby) with relay reservations on
//! both, publishing the signed presence record through the primary, failing over when the
//! primary goes, and lookups through the superpeer.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use natter_proto::overlay::{OverlayRequest, OverlayResponse};
use natter_proto::presence::dialable_shape;
use natter_proto::{PresenceBody, PresenceRecord, Status, UserName};

use super::attach::{AttachAction, Ranked, Slot};
use super::candidates::Source;
use super::{Current, Daemon, LoginPending, LookupFor, LookupOutcome, OverlayPending, unix_now};
use crate::net::Command;

mod answers;

pub(super) use answers::lookup_view;
use answers::{Distrust, check_answer, check_others};

/// How long a superpeer that forged an answer stays banned.
const DISTRUST: Duration = Duration::from_secs(600);

impl Daemon {
    pub(super) fn leaf_tick(&mut self) {
        if self.going_down.is_some() {
            return;
        }
        self.attach_next();
        // A superpeer whose reservation did not work out (refused before its relay was on,
        // lost with the connection) is asked again every 10 s: without a relay address a
        // leaf behind NAT cannot be reached at all.
        for sp in [self.attach.primary(), self.attach.standby()]
            .into_iter()
            .flatten()
        {
            let has_relay = self
                .relay_addrs
                .iter()
                .any(|a| a.iter().any(|p| p == Protocol::P2p(sp)));
            let recently = self
                .reserve_tried
                .get(&sp)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if !has_relay && !recently {
                self.reserve_relay(sp);
            }
        }
        let due = self
            .last_publish
            .is_none_or(|t| t.elapsed() >= self.config.publish_interval);
        if self.attach.primary().is_some() && due {
            self.publish_record(false);
        }
    }

    /// With a slot free, tries the next superpeer now (and carries out what the attachment
    /// decided): the tick does it every 500 ms, and after a loss or a failed attempt the leaf
    /// need not wait for it.
    fn attach_next(&mut self) {
        if self.going_down.is_none() && self.role == Current::Leaf {
            let me = self.peer_id();
            let candidates: Vec<Ranked> = self.candidates.tiered().collect();
            self.attach
                .tick(candidates, me, tokio::time::Instant::now(), |n| {
                    rand::random_range(0..n)
                });
        }
        self.run_attach();
    }

    /// Carries out what the attachment decided.
    fn run_attach(&mut self) {
        while let Some(action) = self.attach.next_action() {
            match action {
                AttachAction::Attach(peer) => {
                    tracing::debug!(%peer, "attaching");
                    let request = OverlayRequest::Attach {
                        cert: self.identity.cert.clone(),
                    };
                    self.send_overlay(peer, request, OverlayPending::Attach(peer));
                }
                AttachAction::Attached(peer, slot) => {
                    self.attached_at.insert(peer, super::messaging::now_ms());
                    if slot == Slot::Primary {
                        self.last_publish = None;
                    }
                    self.phase(&format!("attached to {peer} ({})", slot.as_str()));
                    self.reserve_relay(peer);
                    self.host_reached(peer);
                }
                AttachAction::Bootstrap => self.bootstrap(),
                AttachAction::PrimaryChanged { lost, new } => {
                    self.last_publish = None;
                    self.attached_at.remove(&lost);
                    self.home_since = None;
                    // The record moves to the new primary at once, not at the next tick:
                    // until then no live superpeer vouches for this device.
                    if new.is_some() && self.going_down.is_none() {
                        self.publish_record(false);
                    }
                    match new {
                        Some(new) => self.phase(&format!(
                            "primary superpeer {lost} lost; standby {new} takes over"
                        )),
                        None => self.phase(&format!(
                            "primary superpeer {lost} lost; looking for another"
                        )),
                    }
                }
                AttachAction::StandbyLost(peer) => {
                    self.attached_at.remove(&peer);
                    self.phase(&format!(
                        "standby superpeer {peer} lost; looking for another"
                    ));
                }
                AttachAction::HostFailed(peer) => self.host_failed(peer),
            }
        }
    }

    pub(super) fn on_attach_result(
        &mut self,
        peer: PeerId,
        response: Result<OverlayResponse, String>,
    ) {
        let now = tokio::time::Instant::now();
        match response {
            Ok(OverlayResponse::Attached { superpeers, .. }) => {
                if self.role == Current::Superpeer {
                    return;
                }
                if self.attach.attached(peer).is_some() {
                    // What it says of others is hearsay until this node reaches them.
                    self.merge_candidates(superpeers, Source::Hearsay, Some(peer));
                }
            }
            Ok(OverlayResponse::Full { alternatives }) => {
                self.phase(&format!("superpeer {peer} is full; trying another"));
                // It answered as a superpeer: reached, though it had no room.
                self.host_reached(peer);
                self.attach.refused(peer, now);
                self.merge_candidates(alternatives, Source::Hearsay, Some(peer));
            }
            Ok(OverlayResponse::Refused { message, .. }) => {
                tracing::warn!(%peer, %message, "attach refused");
                self.attach.refused(peer, now);
            }
            other => {
                tracing::info!(%peer, ?other, "attach failed");
                self.attach.failed(peer, now);
            }
        }
        self.attach_next();
    }

    fn addrs_of(&self, peer: PeerId) -> Vec<String> {
        self.candidates.addrs(peer)
    }

    /// Reserves a relay slot on `peer`, so others reach this leaf through
    /// `<addr>/p2p/<peer>/p2p-circuit/p2p/<leaf>`. One reservation per superpeer: a second
    /// one over the same connection would replace the first.
    fn reserve_relay(&mut self, peer: PeerId) {
        self.reserve_tried.insert(peer, Instant::now());
        let Some(addr) = self
            .addrs_of(peer)
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .min_by_key(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)))
        else {
            tracing::warn!(%peer, "no address to reserve a relay slot on");
            return;
        };
        let base: Multiaddr = addr
            .iter()
            .take_while(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        let circuit = base.with(Protocol::P2p(peer)).with(Protocol::P2pCircuit);
        self.net.send(Command::ListenOn(circuit.clone()));
        self.reserving.insert(peer, circuit);
    }

    /// A superpeer this leaf was attached to is gone: the standby takes over.
    pub(super) fn lost_superpeer(&mut self, peer: PeerId) {
        self.relay_addrs
            .retain(|a| !a.iter().any(|p| p == Protocol::P2p(peer)));
        self.reserving.remove(&peer);
        self.attach.lost(peer, tokio::time::Instant::now());
        self.attach_next();
    }

    /// Superpeer `peer` answered something no honest superpeer sends: drop it for a while
    /// (the standby takes over) and say so in the log.
    fn distrust_superpeer(&mut self, peer: PeerId, why: &str) {
        if peer == self.peer_id() {
            // This superpeer's own directory validated the record: a bug, not an attacker.
            tracing::error!(%why, "own directory answered a record that does not verify");
            return;
        }
        tracing::warn!(%peer, %why, "superpeer sent a forged answer: dropping it for {} min", DISTRUST.as_secs() / 60);
        self.net.send(Command::Ban(peer, DISTRUST));
        self.lost_superpeer(peer);
    }

    /// A superpeer this leaf holds left a publication or a revocation poll unanswered (or
    /// failed it): whatever the connection says, it is not serving this leaf. A process that
    /// hangs, or a machine that vanished without closing its connections, would otherwise
    /// keep its leaves until TCP gives up, many minutes later. The standby takes over.
    fn unresponsive_superpeer(&mut self, peer: PeerId, error: &str) {
        if !self.attach.holds(peer) {
            return;
        }
        tracing::warn!(%peer, %error, "superpeer not answering: dropping it");
        self.net.send(Command::Disconnect(peer));
        self.lost_superpeer(peer);
    }

    /// Monotonic across restarts: milliseconds since the epoch, bumped when equal.
    pub(super) fn next_seq(&mut self) -> u64 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.seq = now_ms.max(self.seq + 1);
        self.seq
    }

    /// This node's signed presence record as of now.
    pub(super) fn own_record(
        &mut self,
        status: Status,
        home: Option<PeerId>,
    ) -> Option<PresenceRecord> {
        let now = unix_now();
        // Only shapes every verifier accepts: one odd address would make the whole record
        // refused.
        let me = self.peer_id();
        let relay_addrs = match self.role {
            Current::Leaf => self
                .relay_addrs
                .iter()
                .filter(|a| dialable_shape(a, &me, true))
                .map(|a| a.to_string())
                .take(8)
                .collect(),
            Current::Superpeer => Vec::new(),
        };
        let hide = self.role == Current::Leaf && !self.config.publish_direct;
        let direct_addrs = self
            .public_addrs()
            .into_iter()
            .filter(|_| !hide)
            .map(|a| a.with_p2p(me).unwrap_or_else(|a| a))
            .filter(|a| dialable_shape(a, &me, false))
            .map(|a| a.to_string())
            .take(8)
            .collect();
        let body = PresenceBody {
            cert: self.identity.cert.clone(),
            status,
            seq: self.next_seq(),
            last_seen: now,
            expires_at: now + self.config.lease.as_secs(),
            home: home.map(|h| h.to_string()),
            relay_addrs,
            direct_addrs,
        };
        match body.sign(&self.key) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the presence record");
                None
            }
        }
    }

    pub(super) fn publish_record(&mut self, down: bool) {
        let Some(primary) = self.attach.primary() else {
            return;
        };
        let status = if down { Status::Offline } else { self.presence };
        let Some(record) = self.own_record(status, Some(primary)) else {
            return;
        };
        self.last_publish = Some(Instant::now());
        self.send_overlay(
            primary,
            OverlayRequest::Publish { record },
            OverlayPending::Publish {
                peer: primary,
                down,
            },
        );
    }

    /// Looks `name` up: through the directory if this node is a superpeer, else through both
    /// its superpeers (the freshest valid record wins, see `gather.rs`). The answer goes to
    /// `on_lookup_result`.
    pub(super) fn lookup(&mut self, name: UserName, purpose: LookupFor) {
        if self.role == Current::Superpeer {
            self.start_lookup(name, super::superpeer::Requester::Local(purpose));
            return;
        }
        let Some(primary) = self.attach.primary() else {
            self.on_lookup_result(
                name,
                purpose,
                LookupOutcome::Failed(
                    "not attached to any superpeer yet; try again in a few seconds".into(),
                ),
            );
            return;
        };
        let asked: Vec<PeerId> = std::iter::once(primary)
            .chain(self.attach.standby().filter(|s| *s != primary))
            .collect();
        let text = name.to_string();
        let lookup = match self.asking.open(name.clone(), purpose, asked.len()) {
            Ok(id) => id,
            Err(purpose) => {
                let why = super::gather::TOO_MANY.into();
                self.on_lookup_result(name, purpose, LookupOutcome::Failed(why));
                return;
            }
        };
        for peer in asked {
            let request = OverlayRequest::Lookup { name: text.clone() };
            self.send_overlay(peer, request, OverlayPending::Lookup { peer, lookup });
        }
    }

    /// A superpeer's own lookup, through the directory: the same checks as a leaf's answer.
    pub(super) fn answer_own_lookup(
        &mut self,
        name: UserName,
        purpose: LookupFor,
        answer: Result<OverlayResponse, String>,
    ) {
        match self.asking.open(name.clone(), purpose, 1) {
            Ok(lookup) => self.answer_lookup(self.peer_id(), lookup, answer),
            Err(purpose) => {
                let why = super::gather::TOO_MANY.into();
                self.on_lookup_result(name, purpose, LookupOutcome::Failed(why));
            }
        }
    }

    /// A lookup is decided: asks the login server whether the name exists when there
    /// is no record (not needed when only routing).
    fn lookup_decided(&mut self, name: UserName, purpose: LookupFor, outcome: LookupOutcome) {
        if matches!(outcome, LookupOutcome::NotFound { exists: None })
            && !matches!(purpose, LookupFor::Route | LookupFor::Push)
        {
            let request = natter_proto::login::LoginRequest::Exists {
                name: name.to_string(),
            };
            self.send_login(request, LoginPending::Exists { name, purpose });
            return;
        }
        self.on_lookup_result(name, purpose, outcome);
    }

    /// Lookups whose other superpeer is still silent a while after a record came in.
    pub(super) fn gather_tick(&mut self) {
        for (name, purpose, outcome) in self.asking.expired(std::time::Instant::now()) {
            self.lookup_decided(name, purpose, outcome);
        }
    }

    /// Turns superpeer `peer`'s answer into its part of lookup `lookup`.
    ///
    /// A superpeer is any user's node, so its answer is evidence, not truth: a record is used
    /// only if it is the record of the name asked for, signed by that user's certified device
    /// under a certificate of the pinned issuer, and within its validity. The route it gives
    /// is then the certified device's peer id, which Noise authenticates on every delivery.
    pub(super) fn answer_lookup(
        &mut self,
        peer: PeerId,
        lookup: u64,
        answer: Result<OverlayResponse, String>,
    ) {
        let Some(name) = self.asking.name(lookup).cloned() else {
            return;
        };
        let outcome = match answer {
            Ok(OverlayResponse::Found { record, .. })
                if self.revocations.revokes(&record.body.cert) =>
            {
                LookupOutcome::Failed(format!(
                    "{name}'s certificate was revoked by the login server"
                ))
            }
            Ok(OverlayResponse::Found {
                record,
                confirmed,
                others,
            }) => {
                let now = unix_now();
                match check_answer(&record, &name, &self.issuer, now)
                    .and_then(|()| check_others(&record, others, &name, &self.issuer, now))
                {
                    Ok(others) => LookupOutcome::Found {
                        record,
                        confirmed,
                        others: others
                            .into_iter()
                            .filter(|r| !self.revocations.revokes(&r.body.cert))
                            .collect(),
                    },
                    Err(Distrust::Forged(why)) => {
                        self.distrust_superpeer(peer, &why);
                        LookupOutcome::Failed(format!(
                            "superpeer {peer} answered a forged record for {name} ({why}); \
                             asking another superpeer, try again in a few seconds"
                        ))
                    }
                    Err(Distrust::Unusable(why)) => {
                        tracing::warn!(%peer, user = %name, %why, "lookup answer unusable");
                        LookupOutcome::Failed(format!("lookup answer for {name} unusable: {why}"))
                    }
                }
            }
            Ok(OverlayResponse::NotFound) => LookupOutcome::NotFound { exists: None },
            Ok(OverlayResponse::Refused { message, .. }) => {
                LookupOutcome::Failed(format!("lookup refused: {message}"))
            }
            Ok(other) => LookupOutcome::Failed(format!("unexpected lookup answer: {other:?}")),
            Err(e) => LookupOutcome::Failed(format!("lookup failed: {e}")),
        };
        if let Some((name, purpose, outcome)) =
            self.asking
                .answer(lookup, outcome, std::time::Instant::now())
        {
            self.lookup_decided(name, purpose, outcome);
        }
    }

    /// Routes an answer to a request this node sent.
    pub(super) fn on_overlay_response(
        &mut self,
        pending: OverlayPending,
        answer: Result<OverlayResponse, String>,
    ) {
        match pending {
            OverlayPending::Attach(peer) => self.on_attach_result(peer, answer),
            OverlayPending::Publish { peer, down } => {
                match &answer {
                    Ok(OverlayResponse::Published) => {
                        tracing::debug!(%peer, "presence published");
                        let primary = self.attach.primary() == Some(peer);
                        if primary && self.home_since.is_none_or(|(home, _)| home != peer) {
                            self.home_since = Some((peer, super::messaging::now_ms()));
                        }
                        if !down {
                            self.announce_online();
                        }
                    }
                    other => {
                        tracing::warn!(%peer, ?other, "publishing presence failed");
                        self.last_publish = Some(
                            Instant::now() - self.config.publish_interval + Duration::from_secs(3),
                        );
                        if let Err(e) = other
                            && !down
                        {
                            let e = e.clone();
                            self.unresponsive_superpeer(peer, &e);
                        }
                    }
                }
                if down {
                    if let Some(primary) = self.attach.primary() {
                        self.send_overlay(primary, OverlayRequest::Detach, OverlayPending::Detach);
                    }
                    self.finish_down();
                }
            }
            OverlayPending::Lookup { peer, lookup } => self.answer_lookup(peer, lookup, answer),
            OverlayPending::Liveness { lookup } => {
                let attached = matches!(answer, Ok(OverlayResponse::Attachment { attached: true }));
                self.on_liveness(lookup, Some(attached));
            }
            OverlayPending::Detach => {}
            OverlayPending::Revocations(peer) => match answer {
                Ok(OverlayResponse::Revocations { list }) => {
                    self.on_revocation_list(&peer.to_string(), list);
                }
                Err(e) => self.unresponsive_superpeer(peer, &e),
                other => tracing::debug!(%peer, ?other, "revocation list not had"),
            },
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
