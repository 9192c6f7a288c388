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
mod tests;
