//! The superpeers this node knows of: whom a leaf tries to attach to, whom a superpeer meets
//! and names to its leaves. Ranked, bounded, and checked on the way in.
//!
//! Where a superpeer was heard of decides its rank, because anybody can name a superpeer that
//! does not exist ([`Source`]): first those this node reached itself, then those the login
//! server lists, then those only other superpeers named (and the host cache's unverified
//! entries). A pile of names from one hostile superpeer therefore never stands between a leaf
//! and the login server's list. Lists from the network are cut short and checked entry by
//! entry ([`take_list`]); names that were never reached are bounded apart ([`MAX_HEARSAY`]) and
//! forgotten after [`UNVERIFIED_DROP_AFTER`] failures, like their host-cache entries.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use natter_proto::limits::{MAX_ADDR_LEN, MAX_ANNOUNCED_ADDRS, MAX_BOOTSTRAP_SUPERPEERS};
use natter_proto::login::SuperpeerInfo;

use super::attach::Ranked;
use crate::store::{FAILING_AFTER, Host, MAX_HOSTS, MAX_UNVERIFIED_HOSTS, UNVERIFIED_DROP_AFTER};

/// Most candidates kept, as many as the host cache keeps.
pub(crate) const MAX_CANDIDATES: usize = MAX_HOSTS;
/// Most candidates kept that only other superpeers named, as many as the host cache keeps
/// unverified.
pub(crate) const MAX_HEARSAY: usize = MAX_UNVERIFIED_HOSTS;
/// Most entries taken from one superpeer's list: as many as an honest superpeer sends
/// (`others` in the superpeer's overlay handler), so one answer cannot crowd the others out.
pub(crate) const MAX_FROM_SUPERPEER: usize = 8;

/// Where this node heard of a superpeer, most trusted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    /// This node reached it itself: it attached, or it answered an overlay request.
    Reached,
    /// The login server's bootstrap list: superpeers that announced themselves under a
    /// certificate, recently.
    LoginServer,
    /// Another superpeer's list, or an unverified host-cache entry: somebody's word only.
    Hearsay,
}

impl Source {
    /// Its place in the order of trust, 0 first.
    fn tier(self) -> u8 {
        match self {
            Source::Reached => 0,
            Source::LoginServer => 1,
            Source::Hearsay => 2,
        }
    }

    /// Most entries taken from one list of this source.
    fn max_per_list(self) -> usize {
        match self {
            Source::LoginServer => MAX_BOOTSTRAP_SUPERPEERS,
            Source::Reached | Source::Hearsay => MAX_FROM_SUPERPEER,
        }
    }
}

/// Why an entry of a superpeer list was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadEntry {
    #[error("not a valid peer id")]
    PeerId,
    #[error("no address")]
    NoAddress,
    #[error("{0} addresses, at most {MAX_ANNOUNCED_ADDRS}")]
    TooManyAddrs(usize),
    #[error("address {index}: {why}")]
    Addr { index: usize, why: &'static str },
}

#[derive(Debug, Clone)]
struct Candidate {
    peer: PeerId,
    info: SuperpeerInfo,
    source: Source,
    /// The addresses the login server last listed it at (it dialled the peer back there):
    /// the only ones that may enter the directory's routing table.
    listed: Vec<String>,
    /// Consecutive failures since it was last reached (or heard of for the first time).
    failures: u32,
    /// Order of arrival: among equals, the earlier ranks first (a list's own order is kept).
    arrival: u64,
}

impl Candidate {
    /// Best first: not failing ([`FAILING_AFTER`]) before failing, then by source, then by
    /// arrival.
    fn rank(&self) -> (bool, Source, u64) {
        (self.failures >= FAILING_AFTER, self.source, self.arrival)
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    /// Sorted by [`Candidate::rank`].
    list: Vec<Candidate>,
    arrivals: u64,
}

impl Candidates {
    /// The host cache's entries, in its order: verified ones as reached, the others as
    /// hearsay. Entries that are not a valid peer id, and `me`, are left out.
    pub(crate) fn from_hosts(hosts: Vec<Host>, me: PeerId) -> Self {
        let mut out = Self::default();
        for host in hosts {
            let Ok(peer) = host.peer_id.parse::<PeerId>() else {
                continue;
            };
            if peer == me {
                continue;
            }
            let source = if host.verified {
                Source::Reached
            } else {
                Source::Hearsay
            };
            let info = SuperpeerInfo {
                peer_id: host.peer_id,
                addrs: host.addrs,
                leaves: host.leaves.unwrap_or(0),
                capacity: host.capacity.unwrap_or(0),
            };
            out.insert(peer, info, source, host.failures);
        }
        out.settle();
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.len()
    }

    /// Peer ids, best first.
    #[cfg(test)]
    fn ranked(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.list.iter().map(|c| c.peer)
    }

    /// Peer ids, best first, with their tiers: candidates of one tier (failing or not, and
    /// the same [`Source`]) are equals, to be picked among at random.
    pub(crate) fn tiered(&self) -> impl Iterator<Item = Ranked> + '_ {
        self.list.iter().map(|c| {
            let (failing, source, _) = c.rank();
            Ranked {
                peer: c.peer,
                tier: u8::from(failing) * 3 + source.tier(),
            }
        })
    }

    /// Everything known, best first.
    pub(crate) fn infos(&self) -> impl Iterator<Item = &SuperpeerInfo> + '_ {
        self.list.iter().map(|c| &c.info)
    }

    /// Those that this node reached or the login server lists, best first: what a superpeer
    /// names to its leaves. Hearsay is not passed on, so a fake name does not spread.
    pub(crate) fn vouched(&self) -> impl Iterator<Item = &SuperpeerInfo> + '_ {
        self.list
            .iter()
            .filter(|c| c.source != Source::Hearsay)
            .map(|c| &c.info)
    }

    /// The addresses the login server last listed `peer` at (it dialled the peer back
    /// there): what may enter the directory's routing table. Addresses heard elsewhere, even
    /// of a listed superpeer, are not.
    pub(crate) fn vouched_addrs(&self, peer: PeerId) -> Vec<String> {
        self.find(peer)
            .map(|c| c.listed.clone())
            .unwrap_or_default()
    }

    /// The addresses known for `peer`.
    pub(crate) fn addrs(&self, peer: PeerId) -> Vec<String> {
        self.find(peer)
            .map(|c| c.info.addrs.clone())
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn source(&self, peer: PeerId) -> Option<Source> {
        self.find(peer).map(|c| c.source)
    }

    /// Heard of `peer` from `source` (an entry checked by [`take_list`]). `true` if it is new.
    ///
    /// A known candidate keeps the better of its sources. What is heard from a less trusted
    /// source than the one it has does not replace its addresses and load: the addresses only
    /// go after the known ones.
    pub(crate) fn heard(&mut self, peer: PeerId, info: SuperpeerInfo, source: Source) -> bool {
        let new = match self.list.iter_mut().find(|c| c.peer == peer) {
            Some(known) => {
                if source == Source::LoginServer {
                    known.listed.clone_from(&info.addrs);
                }
                if source <= known.source {
                    known.info = info;
                    known.source = source;
                } else {
                    for addr in info.addrs {
                        if known.info.addrs.len() >= MAX_ANNOUNCED_ADDRS {
                            break;
                        }
                        if !known.info.addrs.contains(&addr) {
                            known.info.addrs.push(addr);
                        }
                    }
                }
                false
            }
            None => {
                self.insert(peer, info, source, 0);
                true
            }
        };
        self.settle();
        new
    }

    /// This node reached `peer` itself: it ranks with the reached ones, its failures cleared.
    /// `false` if `peer` is not a candidate.
    pub(crate) fn reached(&mut self, peer: PeerId) -> bool {
        let Some(c) = self.list.iter_mut().find(|c| c.peer == peer) else {
            return false;
        };
        c.source = Source::Reached;
        c.failures = 0;
        self.settle();
        true
    }

    /// An attempt on `peer` failed. One that was never reached is forgotten after
    /// [`UNVERIFIED_DROP_AFTER`] failures; `true` if it was.
    pub(crate) fn failed(&mut self, peer: PeerId) -> bool {
        let Some(c) = self.list.iter_mut().find(|c| c.peer == peer) else {
            return false;
        };
        c.failures = c.failures.saturating_add(1);
        let drop = c.source != Source::Reached && c.failures >= UNVERIFIED_DROP_AFTER;
        if drop {
            self.list.retain(|c| c.peer != peer);
        }
        self.settle();
        drop
    }

    fn find(&self, peer: PeerId) -> Option<&Candidate> {
        self.list.iter().find(|c| c.peer == peer)
    }

    fn insert(&mut self, peer: PeerId, info: SuperpeerInfo, source: Source, failures: u32) {
        self.arrivals += 1;
        let listed = if source == Source::LoginServer {
            info.addrs.clone()
        } else {
            Vec::new()
        };
        self.list.push(Candidate {
            peer,
            info,
            source,
            listed,
            failures,
            arrival: self.arrivals,
        });
    }

    /// Sorts, then keeps within bounds: hearsay beyond [`MAX_HEARSAY`] goes, the earliest
    /// heard of first; then beyond [`MAX_CANDIDATES`], hearsay and the login server's entries
    /// (earliest first: a fresher list names them again if they still live), and only then
    /// the reached one ranked last.
    fn settle(&mut self) {
        let mut hearsay: Vec<u64> = self
            .list
            .iter()
            .filter(|c| c.source == Source::Hearsay)
            .map(|c| c.arrival)
            .collect();
        if hearsay.len() > MAX_HEARSAY {
            hearsay.sort_unstable();
            let first_kept = hearsay[hearsay.len() - MAX_HEARSAY];
            self.list
                .retain(|c| c.source != Source::Hearsay || c.arrival >= first_kept);
        }
        self.list.sort_by_key(Candidate::rank);
        while self.list.len() > MAX_CANDIDATES {
            let victim = self
                .list
                .iter()
                .enumerate()
                .filter(|(_, c)| c.source != Source::Reached)
                .min_by_key(|(_, c)| (std::cmp::Reverse(c.source), c.arrival))
                .map_or(self.list.len() - 1, |(i, _)| i);
            self.list.remove(victim);
        }
    }
}

/// The entries of a list from `source` worth keeping: checked one by one ([`check_entry`]),
/// without `me`, `from` (the superpeer that sent it, reached already) and repeats, at most as
/// many as one honest list of that source holds. A bad entry is skipped, not the whole list.
pub(crate) fn take_list(
    list: Vec<SuperpeerInfo>,
    me: PeerId,
    from: Option<PeerId>,
    source: Source,
) -> Vec<(PeerId, SuperpeerInfo)> {
    let max = source.max_per_list();
    let (offered, mut bad) = (list.len(), 0usize);
    let mut out: Vec<(PeerId, SuperpeerInfo)> = Vec::new();
    for info in list {
        if out.len() == max {
            break;
        }
        match check_entry(&info) {
            Ok(peer) if peer == me || Some(peer) == from => {}
            Ok(peer) if out.iter().any(|(p, _)| *p == peer) => {}
            Ok(peer) => out.push((peer, info)),
            Err(e) => {
                bad += 1;
                tracing::debug!(?from, ?source, error = %e, "superpeer list entry skipped");
            }
        }
    }
    if bad > 0 || offered > max {
        tracing::info!(
            ?from,
            ?source,
            offered,
            bad,
            kept = out.len(),
            "superpeer list cut short"
        );
    }
    out
}

/// Checks one entry of a superpeer list: a valid peer id and 1 to [`MAX_ANNOUNCED_ADDRS`]
/// addresses of the shape a superpeer announces ([`check_addr`]).
pub(crate) fn check_entry(info: &SuperpeerInfo) -> Result<PeerId, BadEntry> {
    let peer: PeerId = info.peer_id.parse().map_err(|_| BadEntry::PeerId)?;
    if info.addrs.is_empty() {
        return Err(BadEntry::NoAddress);
    }
    if info.addrs.len() > MAX_ANNOUNCED_ADDRS {
        return Err(BadEntry::TooManyAddrs(info.addrs.len()));
    }
    for (index, addr) in info.addrs.iter().enumerate() {
        check_addr(addr, peer).map_err(|why| BadEntry::Addr { index, why })?;
    }
    Ok(peer)
}

/// A superpeer's dialable address: an IP (unicast, not unspecified) or DNS name, then TCP or
/// UDP/QUIC on a non-zero port, then optionally `/p2p/` with the superpeer's own peer id.
/// Anything else (relay circuits above all: a superpeer is reached directly) is refused.
fn check_addr(text: &str, peer: PeerId) -> Result<(), &'static str> {
    if text.len() > MAX_ADDR_LEN {
        return Err("too long");
    }
    let addr: Multiaddr = text.parse().map_err(|_| "not a multiaddr")?;
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return Err("a relay circuit");
    }
    let mut parts = addr.iter();
    match parts.next() {
        Some(Protocol::Ip4(ip)) => {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                return Err("not a unicast IP address");
            }
        }
        Some(Protocol::Ip6(ip)) => {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err("not a unicast IP address");
            }
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => {}
        _ => return Err("does not start with an IP address or a DNS name"),
    }
    match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => {}
        Some(Protocol::Udp(port)) if port != 0 => {
            if parts.next() != Some(Protocol::QuicV1) {
                return Err("UDP without QUIC");
            }
        }
        _ => return Err("not TCP or UDP/QUIC on a port"),
    }
    match parts.next() {
        None => Ok(()),
        Some(Protocol::P2p(id)) if id == peer => match parts.next() {
            None => Ok(()),
            Some(_) => Err("protocols after the peer id"),
        },
        Some(Protocol::P2p(_)) => Err("another peer's id"),
        Some(_) => Err("unexpected protocol"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
