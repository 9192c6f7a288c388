//! The superpeer side: promotion and demotion at runtime, leaf admission, the directory
//! (validated Kademlia records), lookups with liveness confirmation, announcements to the
//! login server, and the relay gate.

use std::time::{Duration, Instant};

use libp2p::request_response::ResponseChannel;
use libp2p::{PeerId, kad};
use natter_proto::login::LoginRequest;
use natter_proto::overlay::{OverlayRefusal, OverlayRequest, OverlayResponse};
use natter_proto::presence::directory_key;
use natter_proto::{DeviceRecords, PresenceRecord, Status, UserName};
use natter_superpeer::Role;
use natter_superpeer::directory::{Answer, admit_record};
use natter_superpeer::lookup::{LookupAction, LookupId};
use natter_superpeer::overlay::{OverlayContext, OverlayDecision, handle_request};
use natter_superpeer::promotion::{Decision, NeedPolicy, NeedStep, Resources, RoleChange, decide};

use super::{Current, Daemon, LoginPending, LookupFor, OverlayPending, unix_now};
use crate::net::{Command, Token};

/// The most a node that sees a need for superpeers waits before asking again (random).
const NEED_JITTER_MS: u64 = 10_000;
/// A superpeer that sees a surplus waits a random 0 to 20 s, plus a second per leaf it carries
/// (at most a minute more), before asking again: the least loaded tend to go first, one at
/// a time.
const SURPLUS_JITTER_MS: u64 = 20_000;
const SURPLUS_PER_LEAF: Duration = Duration::from_secs(1);
const SURPLUS_LOAD_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long after meeting a superpeer the login server does not list this node asks for the
/// list every 5 s rather than every minute.
const UNLISTED_WAIT: Duration = Duration::from_secs(120);

/// Who asked for a lookup this superpeer is resolving.
pub(crate) enum Requester {
    Remote(ResponseChannel<OverlayResponse>),
    Local(LookupFor),
}

impl Daemon {
    /// Applies the promotion policy; promotes or demotes when the answer changed.
    pub(super) fn evaluate_role(&mut self) {
        if self.going_down.is_some() {
            return;
        }
        let resources = Resources::probe(self.started.elapsed());
        let is_superpeer = self.role == Current::Superpeer;
        let policy = NeedPolicy::default();
        let capacity = self.leaves.capacity() as u64;
        let mut need = policy.need(self.supply.as_ref());
        let mut surplus = None;
        let mut waiting = None;
        let mut acted_on_need = false;
        let mut acted_on_surplus = false;
        // Only where the need decides: a young, reachable leaf that may promote. It waits a
        // random 0 to 10 s and asks again, so that nodes started together do not all promote.
        if self.config.role == Role::Auto
            && !is_superpeer
            && !self.confirmed.is_empty()
            && resources.uptime < self.config.thresholds.min_uptime
        {
            let delay = || Duration::from_millis(rand::random_range(0..=NEED_JITTER_MS));
            let step = self
                .need_gate
                .observe(need.take(), self.supply_at, Instant::now(), delay);
            match step {
                NeedStep::Act(n) => {
                    acted_on_need = n.is_some();
                    need = n;
                }
                NeedStep::Ask => {
                    self.bootstrap();
                    waiting = Some(Instant::now());
                }
                NeedStep::Wait(at) => waiting = Some(at),
            }
        }
        if self.config.role == Role::Auto && !is_superpeer && need.is_none() {
            // Up long enough, but one more would be one too many.
            surplus = policy.enough(self.supply.as_ref(), capacity);
        }
        // A sitting `auto` superpeer the network would do without: staggered like the need,
        // so that one goes at a time and the supply is asked again in between.
        if self.config.role == Role::Auto && is_superpeer {
            let leaves = u32::try_from(self.leaves.len()).unwrap_or(u32::MAX);
            let delay = || {
                Duration::from_millis(rand::random_range(0..=SURPLUS_JITTER_MS))
                    + SURPLUS_PER_LEAF
                        .saturating_mul(leaves)
                        .min(SURPLUS_LOAD_WAIT_MAX)
            };
            let seen = policy.surplus(self.supply.as_ref(), capacity);
            match self
                .surplus_gate
                .observe(seen, self.supply_at, Instant::now(), delay)
            {
                NeedStep::Act(s) => {
                    acted_on_surplus = s.is_some();
                    surplus = s;
                }
                NeedStep::Ask => self.bootstrap(),
                NeedStep::Wait(_) => {}
            }
        }
        let decision = decide(
            self.config.role,
            !self.confirmed.is_empty(),
            &resources,
            &self.config.thresholds,
            need.as_deref(),
            surplus.as_deref(),
            is_superpeer,
        );
        if let (Decision::Leaf(reason), false) = (&decision, is_superpeer) {
            self.role_reason = match (waiting, self.supply) {
                (Some(at), Some(supply)) => format!(
                    "the network has {} superpeer(s), fewer than it needs: promoting in {} s \
                     unless others have by then",
                    supply.superpeers,
                    at.saturating_duration_since(Instant::now()).as_secs()
                ),
                _ => reason.clone(),
            };
        }
        // The need gate has waited already: a need it acted on promotes at once, so that the
        // login server lists this node before others ask again.
        let forced = self.config.role != Role::Auto || acted_on_need || acted_on_surplus;
        match self
            .role_gate
            .observe(is_superpeer, decision, forced, Instant::now())
        {
            RoleChange::Promote => self.promote(need),
            RoleChange::Demote(reason) => self.demote(reason),
            RoleChange::Stay => {}
        }
    }

    /// Puts `peer` in the directory's routing table at the addresses vouched for (see
    /// `Candidates::vouched_addrs`), if any. What a peer claims (identify's listen addresses)
    /// never goes in by itself: any account holder could otherwise make every superpeer route
    /// directory queries to it, or to an address of its choosing.
    pub(super) fn kad_add_vouched(&mut self, peer: PeerId) {
        for addr in self.candidates.vouched_addrs(peer) {
            if let Ok(addr) = addr.parse::<libp2p::Multiaddr>()
                && !super::is_relayed(&addr)
            {
                self.net.send(Command::KadAddAddress(peer, addr));
            }
        }
    }

    /// Why the node has its role, for `status`: a sitting `auto` superpeer also says what
    /// would demote it (or that it is about to).
    pub(super) fn role_text(&self) -> String {
        if self.role != Current::Superpeer || self.config.role != Role::Auto {
            return self.role_reason.clone();
        }
        let policy = NeedPolicy::default();
        let hint = match self.surplus_gate.pending() {
            Some(at) => format!(
                "the network would do without it: demoting in {} s unless it needs it again \
                 by then",
                at.saturating_duration_since(Instant::now()).as_secs()
            ),
            None => format!(
                "it demotes when the network has more than {} superpeers and the others could \
                 carry every leaf at {}% of their capacity, or when it loses its public address",
                policy.min_superpeers,
                policy.target_load_percent / 2
            ),
        };
        format!("{}; {hint}", self.role_reason)
    }

    /// A node that may promote but has no public address confirmed probes again now and then:
    /// libp2p's AutoNAT client never retries an address whose first test went wrong.
    pub(super) fn reprobe_tick(&mut self) {
        let waiting = self.config.role == Role::Auto
            && self.role == Current::Leaf
            && self.confirmed.is_empty()
            && self.listeners.iter().any(|a| !super::is_relayed(a));
        if self.reprobe.due(waiting, Instant::now()) {
            self.net.send(Command::Reprobe {
                server: self.login_peer,
                addr: self.identity.login.clone(),
            });
        }
    }

    /// Same process, same PeerId, same listeners: only the behaviours' status flips.
    fn promote(&mut self, need: Option<String>) {
        self.role = Current::Superpeer;
        // A later need (after a demotion) waits and asks again afresh; so does a surplus.
        self.need_gate = Default::default();
        self.surplus_gate = Default::default();
        self.role_reason = match (self.config.role, need) {
            (Role::Superpeer, _) => "role is superpeer (forced)".into(),
            (_, Some(need)) => format!(
                "public address confirmed and resources sufficient; {need}, so the uptime rule \
                 ({} s) was waived",
                self.config.thresholds.min_uptime.as_secs()
            ),
            _ => "public address confirmed, resources sufficient, up long enough".into(),
        };
        self.net.send(Command::SetSuperpeer(true));
        // A superpeer serves itself: drop any attachment it had as a leaf.
        self.attached_at.clear();
        self.home_since = None;
        for sp in self.attach.clear() {
            self.send_overlay(sp, OverlayRequest::Detach, OverlayPending::Detach);
        }
        let addrs: Vec<String> = self.public_addrs().iter().map(|a| a.to_string()).collect();
        if self.confirmed.is_empty() {
            // A forced seed vouches for its listen addresses itself: the relay hands them to
            // the leaves it serves, and identify tells peers.
            for addr in self.public_addrs() {
                self.net.send(Command::AddExternalAddress(addr));
            }
        }
        self.phase(&format!(
            "promoted to superpeer ({}; public address {})",
            self.role_reason,
            addrs.first().map(String::as_str).unwrap_or("none")
        ));
        self.last_announce = None;
        self.last_own_publish = None;
        self.last_bootstrap = None;
        self.superpeer_tick();
    }

    fn demote(&mut self, reason: String) {
        self.phase(&format!("demoted to leaf: {reason}"));
        self.role = Current::Leaf;
        self.role_reason = reason;
        self.net.send(Command::SetSuperpeer(false));
        self.withdraw();
        // Leaves find another superpeer through their standby.
        let leaves: Vec<PeerId> = self.leaves.peers().copied().collect();
        for leaf in leaves {
            self.leaves.remove(&leaf);
            self.net.send(Command::Disconnect(leaf));
        }
        self.last_publish = None;
    }

    pub(super) fn superpeer_tick(&mut self) {
        if self.going_down.is_some() {
            return;
        }
        let now = Instant::now();
        // Meet the other superpeers, so the directory has a routing table: every 30 s, every
        // 5 s while lonely: no other superpeer met that the login server lists (besides the
        // peers Kademlia inserts itself after dialling them, the only ones that enter the
        // routing table).
        let lonely = !self
            .superpeers_seen
            .keys()
            .any(|p| !self.candidates.vouched_addrs(*p).is_empty());
        // A superpeer met in the last two minutes that the login server does not list yet
        // (a newly promoted one, typically): ask for the list every 5 s, so it enters the
        // routing table within seconds of being listed. Bounded in time, so that a peer that
        // only claims to be a superpeer does not keep this node asking.
        let unlisted = self.superpeers_seen.iter().any(|(p, met)| {
            now.duration_since(*met) < UNLISTED_WAIT && self.candidates.vouched_addrs(*p).is_empty()
        });
        let meet_every = Duration::from_secs(if lonely { 5 } else { 30 });
        if self.last_bootstrap.is_none_or(|t| now - t > meet_every) {
            self.last_bootstrap = Some(now);
            let me = self.peer_id().to_string();
            let known: Vec<_> = self
                .candidates
                .infos()
                .filter(|c| c.peer_id != me)
                .take(20)
                .cloned()
                .collect();
            for c in &known {
                if let Ok(peer) = c.peer_id.parse::<PeerId>() {
                    let addrs: Vec<libp2p::Multiaddr> =
                        c.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    // Hearsay is dialled, not put in the routing table: Kademlia adds a peer
                    // this node dialled by itself, at the address that answered.
                    self.kad_add_vouched(peer);
                    self.net.send(Command::AddAddresses(peer, addrs));
                    self.net.send(Command::Dial(peer));
                }
            }
            if !self.superpeers_seen.is_empty() {
                self.net.send(Command::KadBootstrap);
            }
        }
        // Announce every minute; every 5 s while no other superpeer is known, so that
        // superpeers starting together find each other quickly, or while the leaf count moved
        // by a quarter of the capacity since the last announcement, so that promotion by load
        // and demotion of a surplus see the load soon.
        let moved =
            self.leaves.len().abs_diff(self.announced_leaves) * 4 >= self.leaves.capacity().max(4);
        let announce_every = Duration::from_secs(if lonely || unlisted || moved { 5 } else { 60 });
        if self.last_announce.is_none_or(|t| now - t > announce_every) {
            let addrs: Vec<String> = self
                .public_addrs()
                .iter()
                .map(|a| a.to_string())
                .take(natter_proto::limits::MAX_ANNOUNCED_ADDRS)
                .collect();
            if !addrs.is_empty() {
                self.last_announce = Some(now);
                self.announced_leaves = self.leaves.len();
                let request = LoginRequest::Announce {
                    cert: self.identity.cert.clone(),
                    addrs,
                    leaves: self.leaves.len() as u32,
                    capacity: self.leaves.capacity() as u32,
                };
                self.send_login(request, LoginPending::Announce);
            }
        }
        if self
            .last_own_publish
            .is_none_or(|t| now - t > self.config.publish_interval)
        {
            self.last_own_publish = Some(now);
            let status = self.presence;
            self.publish_own(status);
        }
    }

    /// A superpeer's user is its own home: its record goes straight into the directory.
    pub(super) fn publish_own(&mut self, status: Status) {
        let me = self.peer_id();
        if let Some(record) = self.own_record(status, Some(me)) {
            self.put_record(record);
        }
        if status != Status::Offline {
            self.announce_online();
        }
    }

    /// Stores `record` beside the user's other devices' records held here, and sends that
    /// value to the closest superpeers (each merges it with what it holds).
    fn put_record(&mut self, record: PresenceRecord) {
        let key = directory_key(record.username());
        self.lookups.invalidate(record.username());
        let mut devices = self
            .stored_value(&key)
            .and_then(|v| DeviceRecords::from_json(&v).ok())
            .unwrap_or_default();
        devices.expire(unix_now());
        devices.merge(record);
        let kad_record = kad::Record {
            key: kad::RecordKey::new(&key),
            value: devices.to_json(),
            publisher: None,
            expires: Some(
                Instant::now() + Duration::from_secs(natter_proto::limits::MAX_RECORD_LEASE_SECS),
            ),
        };
        self.net.send(Command::KadPut(kad_record));
    }

    fn stored_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.records.value(key)
    }

    fn respond(&mut self, channel: ResponseChannel<OverlayResponse>, response: OverlayResponse) {
        self.net.send(Command::RespondOverlay { channel, response });
    }

    /// A request of the overlay protocol: decided by the superpeer crate's handler, carried
    /// out here.
    pub(super) fn on_overlay_request(
        &mut self,
        peer: PeerId,
        request: OverlayRequest,
        channel: ResponseChannel<OverlayResponse>,
    ) {
        let me = self.peer_id();
        let records = &self.records;
        let candidates = &self.candidates;
        let stored = |key: &[u8]| records.value(key);
        let others = |except: PeerId| {
            let (me, except) = (me.to_string(), except.to_string());
            // Only superpeers vouched for (reached, or listed by the login server): what this
            // node merely heard of is not passed on.
            candidates
                .vouched()
                .filter(|c| c.peer_id != me && c.peer_id != except)
                .take(8)
                .cloned()
                .collect()
        };
        let ctx = OverlayContext {
            me,
            is_superpeer: self.role == Current::Superpeer,
            issuer: &self.issuer,
            revocations: &self.revocations,
            now: unix_now(),
            lease_secs: self.config.lease.as_secs(),
            asker_is_superpeer: self.superpeers_seen.contains_key(&peer),
            stored: &stored,
            others: &others,
        };
        match handle_request(&mut self.leaves, &mut self.stats, peer, request, &ctx) {
            OverlayDecision::Answer(response) => self.respond(channel, response),
            OverlayDecision::Store(record) => {
                self.put_record(record);
                self.respond(channel, OverlayResponse::Published);
            }
            OverlayDecision::Lookup(name) => self.start_lookup(name, Requester::Remote(channel)),
        }
    }

    /// Looks `name` up in the directory (see `natter_superpeer::lookup`).
    pub(super) fn start_lookup(&mut self, name: UserName, requester: Requester) {
        self.stats.lookups += 1;
        let local = self.stored_value(&directory_key(&name));
        if let Err((refused, requester)) =
            self.lookups
                .start(name.clone(), requester, local, unix_now(), Instant::now())
        {
            match requester {
                Requester::Remote(channel) => self.respond(
                    channel,
                    OverlayResponse::Refused {
                        code: OverlayRefusal::Unavailable,
                        message: refused.to_string(),
                    },
                ),
                Requester::Local(purpose) => {
                    self.answer_own_lookup(name, purpose, Err(refused.to_string()));
                }
            }
        }
        self.run_lookups();
    }

    /// Carries out what the lookups decided.
    pub(super) fn run_lookups(&mut self) {
        while let Some(action) = self.lookups.next_action() {
            match action {
                LookupAction::Query { id, key } => {
                    let token = self.token();
                    self.net.send(Command::KadGet {
                        token,
                        key: kad::RecordKey::new(&key),
                    });
                    self.queries.insert(token, id);
                }
                LookupAction::Finish(id) => {
                    if let Some(token) = self
                        .queries
                        .iter()
                        .find(|(_, l)| **l == id)
                        .map(|(t, _)| *t)
                    {
                        self.queries.remove(&token);
                        self.net.send(Command::KadFinish(token));
                    }
                }
                LookupAction::AskHome { id, home, device } => {
                    let request = OverlayRequest::IsAttached {
                        peer_id: device.to_string(),
                    };
                    self.send_overlay(home, request, OverlayPending::Liveness { lookup: id });
                }
                LookupAction::Answer {
                    requester,
                    name,
                    record,
                    confirmed,
                    others,
                } => self.answer(
                    requester,
                    name,
                    Answer {
                        record,
                        confirmed,
                        others,
                    },
                ),
            }
        }
    }

    /// A peer asks to store a directory record: validated first, like every record.
    pub(super) fn on_kad_put(&mut self, source: PeerId, record: kad::Record) {
        let key = record.key.to_vec();
        let stored = self.stored_value(&key);
        match admit_record(
            &key,
            &record.value,
            &self.issuer,
            unix_now(),
            stored.as_deref(),
        ) {
            Ok(merged) => {
                use kad::store::RecordStore as _;
                if let Some(any) = merged.records().next() {
                    self.lookups.invalidate(any.username());
                }
                // What is stored is the offered value merged with the user's other devices.
                let record = kad::Record {
                    value: merged.to_json(),
                    ..record
                };
                if let Err(e) = self.records.put(record) {
                    tracing::warn!(error = %e, "record store full");
                } else {
                    self.stats.records_stored += 1;
                }
            }
            Err(e) => {
                self.stats.records_refused += 1;
                tracing::warn!(peer = %source, error = %e, "directory record refused");
            }
        }
    }

    /// A value for one of this node's directory GETs.
    pub(super) fn on_kad_found(&mut self, token: Token, value: Vec<u8>) {
        let Some(&id) = self.queries.get(&token) else {
            return;
        };
        let leaves = &self.leaves;
        self.lookups.found(
            id,
            value,
            unix_now(),
            |p| leaves.contains(p),
            Instant::now(),
        );
        self.run_lookups();
    }

    /// One of this node's directory GETs ended.
    pub(super) fn on_kad_done(&mut self, token: Token) {
        let Some(id) = self.queries.remove(&token) else {
            return;
        };
        let leaves = &self.leaves;
        self.lookups
            .query_done(id, unix_now(), |p| leaves.contains(p), Instant::now());
        self.run_lookups();
    }

    /// Lookups whose gathering window ended answer with the freshest record they have.
    pub(super) fn on_lookups_gathered(&mut self) {
        let leaves = &self.leaves;
        self.lookups
            .gathered(unix_now(), |p| leaves.contains(p), Instant::now());
        self.run_lookups();
    }

    /// A home superpeer's answer to "is this device attached to you?".
    pub(super) fn on_liveness(&mut self, id: LookupId, attached: Option<bool>) {
        self.lookups.liveness(id, attached, Instant::now());
        self.run_lookups();
    }

    fn answer(&mut self, requester: Requester, name: UserName, found: Answer) {
        // A revoked device's last record may still be in the directory: nobody is told of it.
        let revoked = |r: &PresenceRecord| self.revocations.revokes(&r.body.cert);
        let confirmed = found.confirmed && found.record.as_ref().is_some_and(|r| !revoked(r));
        let mut devices = found
            .record
            .into_iter()
            .chain(found.others)
            .filter(|r| !revoked(r));
        let response = match devices.next() {
            Some(record) => OverlayResponse::Found {
                record,
                confirmed,
                others: devices.collect(),
            },
            None => OverlayResponse::NotFound,
        };
        match requester {
            Requester::Remote(channel) => self.respond(channel, response),
            Requester::Local(purpose) => self.answer_own_lookup(name, purpose, Ok(response)),
        }
    }

    /// Only attached leaves may hold a relay reservation here: the relay is for them.
    pub(super) fn on_relay_reservation(&mut self, peer: PeerId) {
        if !self.leaves.contains(&peer) && !self.superpeers_seen.contains_key(&peer) {
            tracing::info!(%peer, "relay reservation without attachment: banned for a minute");
            self.net
                .send(Command::Ban(peer, std::time::Duration::from_secs(60)));
        }
    }
}
