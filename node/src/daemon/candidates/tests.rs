use super::*;

fn info(peer: PeerId, addrs: &[&str]) -> SuperpeerInfo {
    SuperpeerInfo {
        peer_id: peer.to_string(),
        addrs: addrs.iter().map(|a| a.to_string()).collect(),
        leaves: 0,
        capacity: 100,
    }
}

fn tcp(port: u16) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}")
}

fn host(peer: PeerId, verified: bool, failures: u32) -> Host {
    Host {
        peer_id: peer.to_string(),
        addrs: vec![tcp(1)],
        rtt_ms: None,
        leaves: None,
        capacity: None,
        last_seen: 1,
        failures,
        last_failure: None,
        verified,
    }
}

/// Only what the login server listed may enter the routing table: not hearsay, not the
/// addresses hearsay adds to a listed superpeer, not a host cache's word.
#[test]
fn only_the_login_servers_addresses_are_vouched_for() {
    let (listed, heard) = (PeerId::random(), PeerId::random());
    let mut c = Candidates::from_hosts(vec![host(heard, true, 0)], PeerId::random());
    assert!(
        c.vouched_addrs(heard).is_empty(),
        "reached once, per the cache"
    );
    c.heard(listed, info(listed, &[&tcp(2)]), Source::LoginServer);
    c.heard(listed, info(listed, &[&tcp(3)]), Source::Hearsay);
    assert_eq!(c.addrs(listed), [tcp(2), tcp(3)]);
    assert_eq!(c.vouched_addrs(listed), [tcp(2)]);
    c.reached(listed);
    c.heard(listed, info(listed, &[&tcp(4)]), Source::LoginServer);
    assert_eq!(c.vouched_addrs(listed), [tcp(4)]);
    c.heard(heard, info(heard, &[&tcp(5)]), Source::Hearsay);
    assert!(c.vouched_addrs(heard).is_empty());
    assert!(c.vouched_addrs(PeerId::random()).is_empty());
}

#[test]
fn entries_are_checked_one_by_one() {
    let p = PeerId::random();
    let ok = |addrs: &[&str]| check_entry(&info(p, addrs));
    assert_eq!(ok(&["/ip4/1.2.3.4/tcp/4001"]), Ok(p));
    assert_eq!(
        ok(&[
            "/ip6/::1/udp/9/quic-v1",
            "/dns4/sp.example/tcp/4001",
            &format!("/ip4/1.2.3.4/tcp/4001/p2p/{p}"),
        ]),
        Ok(p)
    );
    let bad = |addrs: &[&str]| match ok(addrs) {
        Err(BadEntry::Addr { why, .. }) => why,
        other => panic!("{addrs:?} accepted: {other:?}"),
    };
    let other = PeerId::random();
    bad(&[&format!("/ip4/1.2.3.4/tcp/4001/p2p/{other}/p2p-circuit")]);
    bad(&[&format!("/ip4/1.2.3.4/tcp/4001/p2p/{other}")]);
    bad(&["/ip4/0.0.0.0/tcp/4001"]);
    bad(&["/ip4/224.0.0.1/tcp/4001"]);
    bad(&["/ip4/1.2.3.4/tcp/0"]);
    bad(&["/ip4/1.2.3.4/udp/4001"]);
    bad(&["/ip4/1.2.3.4/udp/4001/quic-v1/webtransport"]);
    bad(&["/tcp/4001"]);
    bad(&["/unix/tmp%2Fsock"]);
    bad(&["not an address"]);
    bad(&[&format!("/dns4/{}/tcp/1", "a".repeat(MAX_ADDR_LEN))]);
    // One bad address spoils the entry: an honest superpeer announces none.
    bad(&["/ip4/1.2.3.4/tcp/4001", "/ip4/1.2.3.4/tcp/4001/p2p-circuit"]);
    assert_eq!(ok(&[]), Err(BadEntry::NoAddress));
    let many: Vec<String> = (1..=17).map(tcp).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(ok(&many), Err(BadEntry::TooManyAddrs(17)));
    assert_eq!(ok(&many[..16]), Ok(p));
    let mut wrong = info(p, &["/ip4/1.2.3.4/tcp/1"]);
    wrong.peer_id = "12D3KooWnot-a-peer-id".into();
    assert_eq!(check_entry(&wrong), Err(BadEntry::PeerId));
}

#[test]
fn a_list_is_cut_short_and_skips_bad_entries_me_and_the_sender() {
    let (me, from) = (PeerId::random(), PeerId::random());
    let good: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
    let mut list = vec![
        info(me, &["/ip4/1.2.3.4/tcp/1"]),
        info(from, &["/ip4/1.2.3.4/tcp/1"]),
        info(PeerId::random(), &["/ip4/1.2.3.4/tcp/1/p2p-circuit"]),
        info(good[0], &["/ip4/1.2.3.4/tcp/1"]),
    ];
    list.extend(good.iter().map(|p| info(*p, &["/ip4/5.6.7.8/tcp/2"])));
    let taken = take_list(list.clone(), me, Some(from), Source::Hearsay);
    let peers: Vec<PeerId> = taken.iter().map(|(p, _)| *p).collect();
    assert_eq!(peers, good[..MAX_FROM_SUPERPEER]);
    // The first of a repeated entry counts.
    assert_eq!(taken[0].1.addrs, ["/ip4/1.2.3.4/tcp/1"]);
    let taken = take_list(list, me, None, Source::LoginServer);
    assert_eq!(taken.len(), MAX_BOOTSTRAP_SUPERPEERS);
    assert_eq!(taken[0].0, from);
}

#[test]
fn reached_before_login_server_before_hearsay_failing_last() {
    let me = PeerId::random();
    let (reached, rumour, failing) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut c = Candidates::from_hosts(
        vec![
            host(failing, true, FAILING_AFTER),
            host(rumour, false, 0),
            host(reached, true, 0),
            host(me, true, 0),
        ],
        me,
    );
    assert_eq!(c.ranked().collect::<Vec<_>>(), [reached, rumour, failing]);
    // The login server's list goes before every rumour, whenever it comes.
    let listed = PeerId::random();
    assert!(c.heard(listed, info(listed, &[&tcp(2)]), Source::LoginServer));
    let gossip = PeerId::random();
    assert!(c.heard(gossip, info(gossip, &[&tcp(3)]), Source::Hearsay));
    assert_eq!(
        c.ranked().collect::<Vec<_>>(),
        [reached, listed, rumour, gossip, failing]
    );
    // Reaching one ranks it with the reached ones.
    assert!(c.reached(gossip));
    assert_eq!(
        c.ranked().collect::<Vec<_>>(),
        [reached, gossip, listed, rumour, failing]
    );
    assert_eq!(c.vouched().count(), 4);
    assert!(!c.vouched().any(|i| i.peer_id == rumour.to_string()));
    // Tiers: the reached, the listed, the rumours, then the failing.
    let tiers: Vec<u8> = c.tiered().map(|r| r.tier).collect();
    assert_eq!(tiers, [0, 0, 1, 2, 3]);
}

#[test]
fn hearsay_does_not_overwrite_better_knowledge() {
    let me = PeerId::random();
    let p = PeerId::random();
    let mut c = Candidates::from_hosts(vec![host(p, true, 0)], me);
    assert!(!c.heard(p, info(p, &[&tcp(9), &tcp(1)]), Source::Hearsay));
    assert_eq!(c.source(p), Some(Source::Reached));
    assert_eq!(c.addrs(p), [tcp(1), tcp(9)]);
    // The login server's word on a rumour upgrades it and replaces what was heard.
    let q = PeerId::random();
    c.heard(q, info(q, &[&tcp(5)]), Source::Hearsay);
    c.heard(q, info(q, &[&tcp(6)]), Source::LoginServer);
    assert_eq!(c.source(q), Some(Source::LoginServer));
    assert_eq!(c.addrs(q), [tcp(6)]);
}

#[test]
fn failures_drop_unreached_ones_and_sink_reached_ones() {
    let me = PeerId::random();
    let (reached, listed, rumour) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut c = Candidates::from_hosts(vec![host(reached, true, 0)], me);
    c.heard(listed, info(listed, &[&tcp(2)]), Source::LoginServer);
    c.heard(rumour, info(rumour, &[&tcp(3)]), Source::Hearsay);
    for _ in 1..UNVERIFIED_DROP_AFTER {
        assert!(!c.failed(rumour));
        assert!(!c.failed(listed));
    }
    assert!(c.failed(rumour));
    assert!(c.failed(listed));
    assert_eq!(c.ranked().collect::<Vec<_>>(), [reached]);
    // A reached one stays, below the others once it keeps failing.
    let other = PeerId::random();
    c.heard(other, info(other, &[&tcp(4)]), Source::Hearsay);
    for _ in 0..FAILING_AFTER {
        assert!(!c.failed(reached));
    }
    assert_eq!(c.ranked().collect::<Vec<_>>(), [other, reached]);
    assert!(c.reached(reached));
    assert_eq!(c.ranked().next(), Some(reached));
    assert!(!c.failed(PeerId::random()));
}

#[test]
fn hearsay_is_bounded_and_never_crowds_out_the_rest() {
    let me = PeerId::random();
    let reached: Vec<PeerId> = (0..MAX_CANDIDATES - 10).map(|_| PeerId::random()).collect();
    let hosts = reached.iter().map(|p| host(*p, true, 0)).collect();
    let mut c = Candidates::from_hosts(hosts, me);
    let fakes: Vec<PeerId> = (0..100).map(|_| PeerId::random()).collect();
    for f in &fakes {
        c.heard(*f, info(*f, &[&tcp(1)]), Source::Hearsay);
    }
    assert_eq!(c.len(), MAX_CANDIDATES);
    let ranked: Vec<PeerId> = c.ranked().collect();
    assert_eq!(ranked[..reached.len()], reached[..]);
    // The latest ones heard of stay.
    assert_eq!(ranked[reached.len()..], fakes[90..]);
    // Only hearsay beyond MAX_HEARSAY, however much room.
    let mut c = Candidates::default();
    for f in &fakes {
        c.heard(*f, info(*f, &[&tcp(1)]), Source::Hearsay);
    }
    assert_eq!(c.len(), MAX_HEARSAY);
    assert_eq!(c.ranked().collect::<Vec<_>>(), fakes[100 - MAX_HEARSAY..]);
}
