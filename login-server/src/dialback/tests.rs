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
                SwarmEvent::ConnectionEstablished { connection_id, .. } if connection_id == id => {
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
