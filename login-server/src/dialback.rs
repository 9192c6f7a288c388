//! Dial-back: before a superpeer is listed, the login server reaches it itself on the
//! addresses it announced. Each address is dialed with the announcer's peer id; Noise proves
//! the peer id on the connection, so a connection is a proof that this peer answers at this
//! address, and an address where nobody (or somebody else) answers proves nothing.
//!
//! The dial-backs run in a task of their own ([`Prober`]) with a swarm of their own: the
//! login server's event loop only hands jobs over (never waiting: a job that finds the
//! channel full is dropped and handed out again at the superpeer's next announcement), and
//! the probe connections never count against the login swarm's connection limits (the
//! announcer already holds a connection to it). The probing swarm has a throwaway identity
//! (with the login server's, a superpeer could send its next login request over a probe
//! connection, which speaks no protocol) and no protocols; a probe connection closes a second
//! after it is established.
//!
//! Bounds: at most `max_in_flight` dial-backs at once and at most one per account, each
//! dialing at most [`MAX_ANNOUNCED_ADDRS`](natter_proto::limits::MAX_ANNOUNCED_ADDRS)
//! addresses; more wait in a queue of `max_queued` (the newest job of an account replaces its
//! older queued one) and beyond that are dropped. A dial-back reports after `timeout` at the
//! latest (addresses that have not answered by then are not listed), and keeps its slot until
//! the transport has given up on its last dial (libp2p's connection timeout, 10 s), so that
//! pending sockets stay bounded too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent, dummy};
use libp2p::{Multiaddr, PeerId, Swarm};
use natter_proto::UserName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::registry::DialBack;
use crate::service::Service;

/// `addr` as the login server would dial it for `peer`, or `None` if it is not worth a dial:
/// it must be an IP address (neither unspecified, `0.0.0.0` or `::`, nor broadcast or
/// multicast) or a DNS name, then `/tcp/<port>` or `/udp/<port>/quic-v1` (port not 0), and
/// nothing else but an optional `/p2p/<peer>` naming the announcer itself (dropped). Relayed
/// addresses (`/p2p-circuit`) prove nothing about the announcer. Loopback and private
/// addresses are plausible: a login server on the same host or network reaches them.
pub fn plausible(addr: &Multiaddr, peer: &PeerId) -> Option<Multiaddr> {
    let mut parts = addr.iter();
    let host = match parts.next()? {
        Protocol::Ip4(ip) if !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast() => {
            Protocol::Ip4(ip)
        }
        Protocol::Ip6(ip) if !ip.is_unspecified() && !ip.is_multicast() => Protocol::Ip6(ip),
        p @ (Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => p,
        _ => return None,
    };
    let mut out = Multiaddr::empty().with(host);
    match parts.next()? {
        Protocol::Tcp(port) if port != 0 => out.push(Protocol::Tcp(port)),
        Protocol::Udp(port) if port != 0 => {
            if parts.next()? != Protocol::QuicV1 {
                return None;
            }
            out.push(Protocol::Udp(port));
            out.push(Protocol::QuicV1);
        }
        _ => return None,
    }
    match parts.next() {
        None => {}
        Some(Protocol::P2p(p)) if p == *peer => {}
        Some(_) => return None,
    }
    parts.next().is_none().then_some(out)
}

/// Whether the login server may dial `addr` (from [`plausible`]) for a caller connected from
/// `ip`: an IP address must be the caller's own, so that an account cannot make the login
/// server connect to other hosts (internal ones included) on its word. A DNS name could name
/// any host, and a caller without an IP (relayed) proves none: neither is dialable.
pub fn from_caller(addr: &Multiaddr, ip: Option<std::net::IpAddr>) -> bool {
    let Some(ip) = ip else {
        return false;
    };
    match addr.iter().next() {
        Some(Protocol::Ip4(a)) => std::net::IpAddr::V4(a) == ip.to_canonical(),
        Some(Protocol::Ip6(a)) => std::net::IpAddr::V6(a) == ip,
        _ => false,
    }
}

/// What a dial-back produced, for the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// This address answered with the right peer id.
    Reached(DialBack, Multiaddr),
    /// The dial-back is over (every address answered or failed, or its time ran out): these
    /// addresses answered, no others are listed.
    Finished(DialBack, Vec<Multiaddr>),
    /// Not run (the queue is full): hand it out again at the next announcement.
    Dropped(DialBack),
}

#[derive(Debug)]
struct Running {
    job: DialBack,
    /// Dials with no answer yet.
    outstanding: HashMap<ConnectionId, Multiaddr>,
    reached: Vec<Multiaddr>,
    deadline: Instant,
    /// [`Outcome::Finished`] already given (the deadline passed); waiting for the
    /// transport to give up on the last dials.
    reported: bool,
}

/// The dial-backs in flight and queued, as a state machine: no I/O, no clock. `dial` starts
/// a dial of a peer at an address and names its connection, or `None` if the dial could
/// not even start (it counts as failed).
#[derive(Debug)]
pub(crate) struct DialBacks {
    max_in_flight: usize,
    max_queued: usize,
    timeout: Duration,
    running: HashMap<UserName, Running>,
    queue: VecDeque<DialBack>,
    /// Whose dial each connection is.
    dials: HashMap<ConnectionId, UserName>,
}

impl DialBacks {
    pub(crate) fn new(max_in_flight: usize, max_queued: usize, timeout: Duration) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            max_queued,
            timeout,
            running: HashMap::new(),
            queue: VecDeque::new(),
            dials: HashMap::new(),
        }
    }

    /// A new dial-back: started at once if there is a free slot and none runs for its
    /// account, queued otherwise (replacing an older queued one of the same account).
    pub(crate) fn submit(
        &mut self,
        job: DialBack,
        now: Instant,
        dial: &mut impl FnMut(PeerId, &Multiaddr) -> Option<ConnectionId>,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        if let Some(queued) = self.queue.iter_mut().find(|q| q.account == job.account) {
            // The older one is stale: the registry moved on to this generation.
            *queued = job;
        } else if !self.running.contains_key(&job.account)
            && self.running.len() < self.max_in_flight
        {
            self.start(job, now, dial, &mut out);
        } else if self.queue.len() < self.max_queued {
            self.queue.push_back(job);
        } else {
            out.push(Outcome::Dropped(job));
        }
        out
    }

    fn start(
        &mut self,
        job: DialBack,
        now: Instant,
        dial: &mut impl FnMut(PeerId, &Multiaddr) -> Option<ConnectionId>,
        out: &mut Vec<Outcome>,
    ) {
        let mut outstanding = HashMap::new();
        for addr in &job.addrs {
            if let Some(id) = dial(job.peer, addr) {
                outstanding.insert(id, addr.clone());
                self.dials.insert(id, job.account.clone());
            }
        }
        if outstanding.is_empty() {
            out.push(Outcome::Finished(job, Vec::new()));
            return;
        }
        self.running.insert(
            job.account.clone(),
            Running {
                job,
                outstanding,
                reached: Vec::new(),
                deadline: now + self.timeout,
                reported: false,
            },
        );
    }

    /// The dial on connection `id` reached its peer. `true` in the second value if `id` is
    /// one of these dial-backs' (a late one, of a job already reported, is not reported).
    pub(crate) fn connected(
        &mut self,
        id: ConnectionId,
        now: Instant,
        dial: &mut impl FnMut(PeerId, &Multiaddr) -> Option<ConnectionId>,
    ) -> (Vec<Outcome>, bool) {
        self.answered(id, true, now, dial)
    }

    /// The dial on connection `id` failed (nobody answered, or another peer id did).
    pub(crate) fn failed(
        &mut self,
        id: ConnectionId,
        now: Instant,
        dial: &mut impl FnMut(PeerId, &Multiaddr) -> Option<ConnectionId>,
    ) -> Vec<Outcome> {
        self.answered(id, false, now, dial).0
    }

    fn answered(
        &mut self,
        id: ConnectionId,
        reached: bool,
        now: Instant,
        dial: &mut impl FnMut(PeerId, &Multiaddr) -> Option<ConnectionId>,
    ) -> (Vec<Outcome>, bool) {
        let mut out = Vec::new();
        let Some(account) = self.dials.remove(&id) else {
            return (out, false);
        };
        let Some(running) = self.running.get_mut(&account) else {
            return (out, true);
        };
        let Some(addr) = running.outstanding.remove(&id) else {
            return (out, true);
        };
        if reached && !running.reported {
            running.reached.push(addr.clone());
            out.push(Outcome::Reached(running.job.clone(), addr));
        }
        if running.outstanding.is_empty() {
            if let Some(done) = self.running.remove(&account)
                && !done.reported
            {
                out.push(Outcome::Finished(done.job, done.reached));
            }
            self.start_queued(now, dial, &mut out);
        }
        (out, true)
    }

    fn start_queued(
        &mut self,
        now: Instant,
        dial: &mut impl FnMut(PeerId, &Multiaddr) -> Option<ConnectionId>,
        out: &mut Vec<Outcome>,
    ) {
        while self.running.len() < self.max_in_flight {
            let Some(i) = self
                .queue
                .iter()
                .position(|q| !self.running.contains_key(&q.account))
            else {
                return;
            };
            let Some(job) = self.queue.remove(i) else {
                return;
            };
            self.start(job, now, dial, out);
        }
    }

    /// Time passes: dial-backs past their deadline report what answered so far.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Outcome> {
        self.running
            .values_mut()
            .filter(|r| !r.reported && r.deadline <= now)
            .map(|r| {
                r.reported = true;
                Outcome::Finished(r.job.clone(), r.reached.clone())
            })
            .collect()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.running.len()
    }
}

/// The dial-back task: receives jobs from the login server's loop, runs them on its own
/// swarm, and reports each outcome to the [`Service`] (the registry).
pub(crate) struct Prober {
    swarm: Swarm<dummy::Behaviour>,
    jobs: mpsc::Receiver<DialBack>,
    service: Arc<Service>,
    state: DialBacks,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// How long a probe connection stays open once established (idle: nothing runs on it).
const PROBE_LINGER: Duration = Duration::from_secs(1);

/// Limits of the dial-backs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProberConfig {
    pub(crate) max_in_flight: usize,
    pub(crate) timeout: Duration,
}

impl Prober {
    /// The task and the sender its jobs go to (bounded: `max_in_flight` jobs).
    pub(crate) fn new(
        service: Arc<Service>,
        config: ProberConfig,
    ) -> Result<(mpsc::Sender<DialBack>, Self), Error> {
        let swarm = probe_swarm()?;
        let max = config.max_in_flight.max(1);
        let (tx, jobs) = mpsc::channel(max);
        Ok((
            tx,
            Self {
                swarm,
                jobs,
                service,
                state: DialBacks::new(max, max.saturating_mul(8), config.timeout),
            },
        ))
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let outcomes = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(job) = self.jobs.recv() => {
                    tracing::debug!(user = %job.account, peer = %job.peer, addrs = ?job.addrs, "dialing back");
                    let swarm = &mut self.swarm;
                    self.state.submit(job, Instant::now(), &mut |p, a| dial(swarm, p, a))
                }
                event = self.swarm.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { connection_id, peer_id, endpoint, .. } => {
                        // Noise has proved `peer_id` (the dial named it). The connection
                        // closes by itself after `PROBE_LINGER`.
                        let swarm = &mut self.swarm;
                        let (outcomes, ours) = self.state.connected(connection_id, Instant::now(), &mut |p, a| dial(swarm, p, a));
                        tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), ours, "dial-back connected");
                        outcomes
                    }
                    SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                        tracing::debug!(peer = ?peer_id, %error, "dial-back failed");
                        let swarm = &mut self.swarm;
                        self.state.failed(connection_id, Instant::now(), &mut |p, a| dial(swarm, p, a))
                    }
                    other => {
                        tracing::trace!(?other, "dial-back swarm event");
                        Vec::new()
                    }
                },
                _ = tick.tick() => self.state.tick(Instant::now()),
            };
            for outcome in outcomes {
                self.service.dial_back_outcome(outcome);
            }
        }
        tracing::debug!(in_flight = self.state.in_flight(), "dial-backs stopped");
    }
}

/// The probing swarm: a throwaway identity, no protocols, TCP and QUIC.
fn probe_swarm() -> Result<Swarm<dummy::Behaviour>, Error> {
    let transport = natter_net::TransportConfig {
        // A probe connection has no use once established; its protocols do nothing, so it
        // closes after this idle time. Not at once: the dialer's side of a TCP
        // connection is up before the listener has confirmed the muxer, and closing it
        // then leaves the superpeer with a failed connection in its logs.
        idle_timeout: PROBE_LINGER,
        quic: Some(natter_net::QuicConfig::LIBP2P_DEFAULTS),
        optimistic_streams: false,
    };
    natter_net::build_swarm(
        libp2p::identity::Keypair::generate_ed25519(),
        &transport,
        |_| dummy::Behaviour,
    )
    .map_err(|e| Error::Transport(e.to_string()))
}

/// One probe: `peer` at `addr` only (no other address learnt elsewhere), even while other
/// probes of the same peer run.
fn dial(
    swarm: &mut Swarm<dummy::Behaviour>,
    peer: PeerId,
    addr: &Multiaddr,
) -> Option<ConnectionId> {
    let opts = DialOpts::peer_id(peer)
        .addresses(vec![addr.clone()])
        .condition(PeerCondition::Always)
        .build();
    let id = opts.connection_id();
    match swarm.dial(opts) {
        Ok(()) => Some(id),
        Err(error) => {
            tracing::debug!(%peer, %addr, %error, "dial-back could not start");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_plausible_addresses_are_dialed() {
        let me = PeerId::random();
        let other = PeerId::random();
        for ok in [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/203.0.113.10/udp/4001/quic-v1",
            "/ip6/::1/tcp/4001",
            "/ip4/10.0.0.5/tcp/4001",
            "/dns4/seed.example.org/tcp/4001",
            "/dns/seed.example.org/udp/4001/quic-v1",
            "/dns6/seed.example.org/tcp/4001",
        ] {
            assert_eq!(plausible(&addr(ok), &me), Some(addr(ok)), "{ok}");
        }
        // The announcer's own /p2p/ suffix is dropped; anyone else's disqualifies.
        assert_eq!(
            plausible(&addr(&format!("/ip4/1.2.3.4/tcp/1/p2p/{me}")), &me),
            Some(addr("/ip4/1.2.3.4/tcp/1"))
        );
        assert_eq!(
            plausible(&addr(&format!("/ip4/1.2.3.4/tcp/1/p2p/{other}")), &me),
            None
        );
        for bad in [
            "/ip4/0.0.0.0/tcp/4001".to_string(),
            "/ip6/::/tcp/4001".into(),
            "/ip4/255.255.255.255/tcp/4001".into(),
            "/ip4/224.0.0.1/tcp/4001".into(),
            "/ip6/ff02::1/tcp/4001".into(),
            "/ip4/1.2.3.4/tcp/0".into(),
            "/ip4/1.2.3.4/udp/4001".into(),
            "/ip4/1.2.3.4/udp/4001/quic".into(),
            "/ip4/1.2.3.4/udp/0/quic-v1".into(),
            "/ip4/1.2.3.4/tcp/4001/ws".into(),
            "/ip4/1.2.3.4".into(),
            "/tcp/4001".into(),
            "/dnsaddr/example.org".into(),
            "/unix/tmp%2Fsock".into(),
            format!("/ip4/1.2.3.4/tcp/1/p2p/{other}/p2p-circuit"),
            format!("/ip4/1.2.3.4/tcp/1/p2p/{other}/p2p-circuit/p2p/{me}"),
            format!("/p2p/{me}"),
            String::new(),
        ] {
            assert_eq!(plausible(&addr(&bad), &me), None, "{bad}");
        }
    }

    #[test]
    fn only_the_callers_own_ip_is_dialed() {
        let v4 = Some("1.2.3.4".parse().unwrap());
        assert!(from_caller(&addr("/ip4/1.2.3.4/tcp/1"), v4));
        assert!(from_caller(&addr("/ip4/1.2.3.4/udp/1/quic-v1"), v4));
        // An IPv4 caller seen through an IPv6 socket, as a mapped address.
        assert!(from_caller(
            &addr("/ip4/1.2.3.4/tcp/1"),
            Some("::ffff:1.2.3.4".parse().unwrap())
        ));
        for other in [
            "/ip4/1.2.3.5/tcp/1",
            "/ip4/10.0.0.1/tcp/22",
            "/ip6/::1/tcp/1",
            "/dns4/internal.example/tcp/1",
        ] {
            assert!(!from_caller(&addr(other), v4), "{other}");
        }
        assert!(from_caller(
            &addr("/ip6/2001:db8::1/tcp/1"),
            Some("2001:db8::1".parse().unwrap())
        ));
        assert!(!from_caller(&addr("/ip4/1.2.3.4/tcp/1"), None), "relayed");
    }

    /// A dial function that hands out connection ids and records what it dialed.
    #[derive(Default)]
    struct Dialer {
        next: usize,
        dialed: Vec<(ConnectionId, PeerId, Multiaddr)>,
        refuse: Option<Multiaddr>,
    }

    impl Dialer {
        fn dial(&mut self, peer: PeerId, addr: &Multiaddr) -> Option<ConnectionId> {
            if self.refuse.as_ref() == Some(addr) {
                return None;
            }
            self.next += 1;
            let id = ConnectionId::new_unchecked(self.next);
            self.dialed.push((id, peer, addr.clone()));
            Some(id)
        }

        fn id_of(&self, a: &Multiaddr) -> ConnectionId {
            self.dialed.iter().rev().find(|(_, _, x)| x == a).unwrap().0
        }
    }

    fn job(account: &str, generation: u64, addrs: &[&str]) -> DialBack {
        DialBack {
            account: UserName::parse(account).unwrap(),
            peer: PeerId::random(),
            generation,
            addrs: addrs.iter().map(|a| addr(a)).collect(),
        }
    }

    #[test]
    fn every_address_is_dialed_and_only_answers_are_reported() {
        let t0 = Instant::now();
        let mut d = Dialer::default();
        let mut s = DialBacks::new(4, 8, Duration::from_secs(10));
        let j = job(
            "alice",
            1,
            &["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"],
        );
        assert!(s.submit(j.clone(), t0, &mut |p, a| d.dial(p, a)).is_empty());
        assert_eq!(d.dialed.len(), 2);
        assert!(d.dialed.iter().all(|(_, p, _)| *p == j.peer));
        let (one, two) = (j.addrs[0].clone(), j.addrs[1].clone());
        let (out, ours) = s.connected(d.id_of(&two), t0, &mut |p, a| d.dial(p, a));
        assert!(ours);
        assert_eq!(out, vec![Outcome::Reached(j.clone(), two.clone())]);
        let out = s.failed(d.id_of(&one), t0, &mut |p, a| d.dial(p, a));
        assert_eq!(out, vec![Outcome::Finished(j, vec![two])]);
        assert_eq!(s.in_flight(), 0);
        // A connection that is none of ours.
        let (out, ours) = s.connected(ConnectionId::new_unchecked(999), t0, &mut |p, a| {
            d.dial(p, a)
        });
        assert!(out.is_empty() && !ours);
        // Nothing could even be dialed: finished at once, unreached.
        d.refuse = Some(addr("/ip4/127.0.0.1/tcp/3"));
        let j = job("bob", 2, &["/ip4/127.0.0.1/tcp/3"]);
        let out = s.submit(j.clone(), t0, &mut |p, a| d.dial(p, a));
        assert_eq!(out, vec![Outcome::Finished(j, vec![])]);
    }

    #[test]
    fn bounded_in_flight_one_per_account_and_queue_then_drop() {
        let t0 = Instant::now();
        let mut d = Dialer::default();
        let mut s = DialBacks::new(1, 2, Duration::from_secs(10));
        let a1 = job("alice", 1, &["/ip4/127.0.0.1/tcp/1"]);
        let a2 = job("alice", 2, &["/ip4/127.0.0.1/tcp/2"]);
        let a3 = job("alice", 3, &["/ip4/127.0.0.1/tcp/3"]);
        let b = job("bob", 4, &["/ip4/127.0.0.1/tcp/4"]);
        let c = job("carol", 5, &["/ip4/127.0.0.1/tcp/5"]);
        assert!(
            s.submit(a1.clone(), t0, &mut |p, x| d.dial(p, x))
                .is_empty()
        );
        // The slot is taken: queued, and a newer job of an account replaces its queued one.
        assert!(s.submit(a2, t0, &mut |p, x| d.dial(p, x)).is_empty());
        assert!(
            s.submit(a3.clone(), t0, &mut |p, x| d.dial(p, x))
                .is_empty()
        );
        assert!(s.submit(b.clone(), t0, &mut |p, x| d.dial(p, x)).is_empty());
        assert_eq!(
            s.submit(c.clone(), t0, &mut |p, x| d.dial(p, x)),
            vec![Outcome::Dropped(c)]
        );
        assert_eq!(d.dialed.len(), 1);
        // The first one ends: the next queued (alice's newest) starts, then bob's.
        let out = s.failed(d.id_of(&a1.addrs[0]), t0, &mut |p, x| d.dial(p, x));
        assert_eq!(out, vec![Outcome::Finished(a1, vec![])]);
        assert_eq!(d.dialed.len(), 2);
        assert_eq!(d.dialed[1].2, a3.addrs[0]);
        let out = s.failed(d.id_of(&a3.addrs[0]), t0, &mut |p, x| d.dial(p, x));
        assert_eq!(out, vec![Outcome::Finished(a3, vec![])]);
        assert_eq!(d.dialed[2].2, b.addrs[0]);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn the_deadline_reports_but_the_slot_waits_for_the_last_dial() {
        let t0 = Instant::now();
        let mut d = Dialer::default();
        let mut s = DialBacks::new(1, 4, Duration::from_secs(10));
        let j = job(
            "alice",
            1,
            &["/ip4/127.0.0.1/tcp/1", "/ip4/192.0.2.1/tcp/1"],
        );
        s.submit(j.clone(), t0, &mut |p, a| d.dial(p, a));
        let fast = j.addrs[0].clone();
        s.connected(d.id_of(&fast), t0, &mut |p, a| d.dial(p, a));
        assert!(s.tick(t0 + Duration::from_secs(9)).is_empty());
        let late = t0 + Duration::from_secs(10);
        assert_eq!(s.tick(late), vec![Outcome::Finished(j.clone(), vec![fast])]);
        assert!(s.tick(late).is_empty(), "reported once");
        // Another job waits for the slot until the transport gives up on the slow dial; an
        // answer that late is not reported.
        let b = job("bob", 2, &["/ip4/127.0.0.1/tcp/2"]);
        assert!(s.submit(b, late, &mut |p, a| d.dial(p, a)).is_empty());
        assert_eq!(d.dialed.len(), 2);
        let (out, ours) = s.connected(d.id_of(&j.addrs[1]), late, &mut |p, a| d.dial(p, a));
        assert!(ours && out.is_empty());
        assert_eq!(d.dialed.len(), 3, "bob's dial-back started");
    }

    /// A peer listening on `addr` (TCP or QUIC on loopback) with `key`; the bound address.
    async fn listener(key: libp2p::identity::Keypair, addr: &str) -> Multiaddr {
        let config = natter_net::TransportConfig {
            quic: Some(natter_net::QuicConfig::LIBP2P_DEFAULTS),
            ..Default::default()
        };
        let mut swarm = natter_net::build_swarm(key, &config, |_| dummy::Behaviour).unwrap();
        swarm.listen_on(addr.parse().unwrap()).unwrap();
        let bound = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        bound
    }

    /// Dials `peer` at `addr` from a probe swarm: `true` if connected, `false` if it failed.
    async fn probe(peer: PeerId, addr: &Multiaddr) -> bool {
        let mut swarm = probe_swarm().unwrap();
        let id = dial(&mut swarm, peer, addr).expect("dial starts");
        let answer = async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { connection_id, .. }
                        if connection_id == id =>
                    {
                        return true;
                    }
                    SwarmEvent::OutgoingConnectionError { connection_id, .. }
                        if connection_id == id =>
                    {
                        return false;
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), answer)
            .await
            .expect("an answer within the transport's timeout")
    }

    #[tokio::test]
    async fn a_probe_proves_the_peer_id_over_tcp_and_quic() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        for transport in ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"] {
            let addr = listener(key.clone(), transport).await;
            assert!(probe(peer, &addr).await, "{addr} answers as {peer}");
            assert!(
                !probe(PeerId::random(), &addr).await,
                "{addr} does not answer as another peer"
            );
        }
        // Nobody listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!probe(peer, &addr(&format!("/ip4/127.0.0.1/tcp/{port}"))).await);
    }
}
