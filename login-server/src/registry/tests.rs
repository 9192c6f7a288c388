use super::*;

fn name(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

fn registry(ttl_secs: u64, max: usize) -> Registry {
    Registry::new(Duration::from_secs(ttl_secs), max, Recheck::default())
}

/// Announces and completes the dial-back with every address reached.
fn listed(reg: &mut Registry, account: &str, peer: PeerId, load: (u32, u32), now: Instant) {
    let addrs = vec![addr(1000 + reg.entries.len() as u16)];
    let job = reg
        .announce(&name(account), peer, addrs.clone(), load, now)
        .unwrap()
        .expect("a new entry is checked");
    assert_eq!(reg.finished(&job, &addrs, now), Some(true));
}

/// The supply counts listed superpeers and those whose first check runs, not those that
/// failed it or expired, and sums their (clamped) load.
#[test]
fn supply_counts_listed_and_checking_superpeers() {
    let mut reg = registry(150, 1000);
    let now = Instant::now();
    listed(&mut reg, "ann", PeerId::random(), (10, 100), now);
    let checking = reg
        .announce(
            &name("ben"),
            PeerId::random(),
            vec![addr(2000)],
            (5, 50),
            now,
        )
        .unwrap()
        .unwrap();
    let failed = reg
        .announce(
            &name("cat"),
            PeerId::random(),
            vec![addr(2001)],
            (1, 10),
            now,
        )
        .unwrap()
        .unwrap();
    assert_eq!(reg.finished(&failed, &[], now), Some(false));
    assert_eq!(
        reg.supply(now),
        Supply {
            superpeers: 2,
            leaves: 15,
            capacity: 150
        }
    );
    assert_eq!(reg.finished(&checking, &[], now), Some(false));
    assert_eq!(reg.supply(now).superpeers, 1);
    assert_eq!(
        reg.supply(now + Duration::from_secs(3600)),
        Supply::default()
    );
}

fn ids(list: &[SuperpeerInfo]) -> Vec<String> {
    list.iter().map(|s| s.peer_id.clone()).collect()
}

#[test]
fn unverified_entries_are_never_listed() {
    let t0 = Instant::now();
    let mut reg = registry(150, 1000);
    let peer = PeerId::random();
    let job = reg
        .announce(&name("alice"), peer, vec![addr(1), addr(2)], (0, 10), t0)
        .unwrap()
        .unwrap();
    assert_eq!(job.addrs, vec![addr(1), addr(2)]);
    assert!(
        reg.bootstrap(t0, None).is_empty(),
        "listed before any dial-back"
    );
    // Refreshes while the dial-back runs neither list it nor start a second one.
    for s in 1..5 {
        let later = t0 + Duration::from_secs(s);
        let again = reg.announce(&name("alice"), peer, vec![addr(2), addr(1)], (0, 10), later);
        assert_eq!(again, Ok(None));
        assert!(reg.bootstrap(later, None).is_empty());
    }
    // Nothing answered: still not listed.
    assert_eq!(reg.finished(&job, &[], t0), Some(false));
    assert!(reg.bootstrap(t0, None).is_empty());
    assert_eq!(reg.listed_count(t0), 0);
    // Tried again after `retry_unreached`; one address answers: it alone is listed, and
    // as soon as it answered.
    let retry = t0 + Recheck::default().retry_unreached;
    let job = reg
        .announce(&name("alice"), peer, vec![addr(1), addr(2)], (0, 10), retry)
        .unwrap()
        .expect("retried");
    assert!(reg.reached(&job, &addr(2)));
    assert_eq!(
        reg.bootstrap(retry, None)[0].addrs,
        vec![addr(2).to_string()]
    );
    assert_eq!(reg.finished(&job, &[addr(2)], retry), Some(true));
    let list = reg.bootstrap(retry, None);
    assert_eq!(ids(&list), vec![peer.to_string()]);
    assert_eq!(list[0].addrs, vec!["/ip4/127.0.0.1/tcp/2"]);
    // A dial-back the server could not start is handed out at the next refresh.
    let other = PeerId::random();
    let job = reg
        .announce(&name("bob"), other, vec![addr(3)], (0, 10), retry)
        .unwrap()
        .unwrap();
    reg.dropped(&job);
    assert!(
        reg.announce(&name("bob"), other, vec![addr(3)], (0, 10), retry)
            .unwrap()
            .is_some()
    );
    assert_eq!(reg.listed_count(retry), 1);
}

#[test]
fn same_addresses_keep_the_proof_changed_ones_are_checked_again() {
    let t0 = Instant::now();
    let mut reg = registry(150, 1000);
    let peer = PeerId::random();
    let alice = name("alice");
    let job = reg
        .announce(&alice, peer, vec![addr(1)], (0, 10), t0)
        .unwrap()
        .unwrap();
    reg.finished(&job, &[addr(1)], t0);
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(
        reg.announce(&alice, peer, vec![addr(1)], (5, 10), t1),
        Ok(None)
    );
    assert_eq!(reg.bootstrap(t1, None)[0].leaves, 5);

    // A new address: checked; the proved one stays listed meanwhile, the new one only
    // once it answered.
    let job = reg
        .announce(&alice, peer, vec![addr(1), addr(9)], (5, 10), t1)
        .unwrap()
        .expect("changed addresses are checked");
    assert_eq!(reg.bootstrap(t1, None)[0].addrs, vec![addr(1).to_string()]);
    assert_eq!(reg.finished(&job, &[addr(1), addr(9)], t1), Some(true));
    assert_eq!(reg.bootstrap(t1, None)[0].addrs.len(), 2);
    // The old address dropped from the announcement is no longer listed.
    let job = reg
        .announce(&alice, peer, vec![addr(9)], (5, 10), t1)
        .unwrap()
        .unwrap();
    assert_eq!(reg.bootstrap(t1, None)[0].addrs, vec![addr(9).to_string()]);
    // A late result of an older check is ignored.
    let stale = DialBack {
        generation: job.generation - 1,
        ..job.clone()
    };
    assert_eq!(reg.finished(&stale, &[], t1), None);
    assert!(!reg.reached(&stale, &addr(9)));
    assert_eq!(reg.listed_count(t1), 1);
    // The proof is renewed after `reverify`; the entry stays listed while that runs, and
    // is unlisted if nothing answers any more.
    reg.finished(&job, &[addr(9)], t1);
    let reverify = Recheck::default().reverify;
    let minute = Duration::from_secs(60);
    let mut t = t1 + minute;
    while t < t1 + reverify {
        assert_eq!(
            reg.announce(&alice, peer, vec![addr(9)], (5, 10), t),
            Ok(None)
        );
        t += minute;
    }
    let t2 = t1 + reverify;
    let job = reg
        .announce(&alice, peer, vec![addr(9)], (5, 10), t2)
        .unwrap()
        .expect("reverified");
    assert_eq!(reg.listed_count(t2), 1);
    assert_eq!(reg.finished(&job, &[], t2), Some(false));
    assert_eq!(reg.listed_count(t2), 0);
    // A dial-back that never reports is handed out again once stale.
    let t3 = t2 + Recheck::default().retry_unreached;
    assert!(
        reg.announce(&alice, peer, vec![addr(9)], (5, 10), t3)
            .unwrap()
            .is_some()
    );
    let t4 = t3 + Recheck::default().stale;
    assert!(
        reg.announce(&alice, peer, vec![addr(9)], (5, 10), t4)
            .unwrap()
            .is_some()
    );
}

#[test]
fn one_entry_per_account() {
    let t0 = Instant::now();
    let mut reg = registry(150, 1000);
    let devices: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
    for (i, device) in devices.iter().enumerate() {
        listed(
            &mut reg,
            "mallory",
            *device,
            (0, u32::MAX),
            t0 + Duration::from_secs(i as u64),
        );
    }
    let now = t0 + Duration::from_secs(5);
    let list = reg.bootstrap(now, None);
    assert_eq!(
        ids(&list),
        vec![devices[3].to_string()],
        "the latest device replaced the others"
    );
    assert_eq!(reg.listed_count(now), 1);
    // A replacing device is listed only once reached itself.
    let job = reg
        .announce(&name("mallory"), devices[0], vec![addr(1)], (0, 1), now)
        .unwrap()
        .unwrap();
    assert!(reg.bootstrap(now, None).is_empty());
    // A late result for the replaced device changes nothing.
    let old = DialBack {
        peer: devices[3],
        ..job.clone()
    };
    assert_eq!(reg.finished(&old, &[addr(1)], now), None);
    assert!(reg.bootstrap(now, None).is_empty());
    // Other accounts have entries of their own.
    listed(&mut reg, "alice", PeerId::random(), (1, 10), now);
    reg.finished(&job, &[addr(1)], now);
    assert_eq!(reg.listed_count(now), 2);
    // Removal by peer (a refused certificate): only that device's entry goes.
    reg.remove(&devices[3]);
    assert_eq!(reg.listed_count(now), 2);
    reg.remove(&devices[0]);
    assert_eq!(reg.listed_count(now), 1);
    assert!(
        reg.announce(&name("mallory"), devices[1], vec![addr(1)], (0, 1), now)
            .unwrap()
            .is_some()
    );
}

#[test]
fn lists_are_not_ordered_by_claimed_load() {
    let t0 = Instant::now();
    let mut reg = registry(150, 1000);
    let liar = PeerId::random();
    listed(&mut reg, "liar", liar, (0, u32::MAX), t0);
    for i in 0..10 {
        listed(
            &mut reg,
            &format!("honest{i}"),
            PeerId::random(),
            (100, 100),
            t0,
        );
    }
    let (samples, n) = (11_000, 11);
    let mut first = 0;
    for _ in 0..samples {
        let list = reg.bootstrap(t0, None);
        assert_eq!(list.len(), n);
        first += usize::from(list[0].peer_id == liar.to_string());
    }
    // Uniform: 1 in 11 (1,000 of 11,000; the standard deviation is about 30). Ranked by
    // claimed load, the liar would be first every time.
    let expected = samples / n;
    assert!(
        first.abs_diff(expected) < expected / 4,
        "the liar came first {first} times in {samples}, expected about {expected}"
    );
    // Claims are clamped.
    let shown = reg
        .bootstrap(t0, None)
        .into_iter()
        .find(|s| s.peer_id == liar.to_string())
        .unwrap();
    assert_eq!((shown.leaves, shown.capacity), (0, MAX_CAPACITY));
}

#[test]
fn more_entries_than_a_list_holds_are_sampled_uniformly() {
    let t0 = Instant::now();
    let mut reg = registry(150, 1000);
    let liar = PeerId::random();
    listed(&mut reg, "liar", liar, (0, u32::MAX), t0);
    for i in 0..49 {
        listed(
            &mut reg,
            &format!("honest{i}"),
            PeerId::random(),
            (100, 100),
            t0,
        );
    }
    let samples = 5_000;
    let mut included = 0;
    for _ in 0..samples {
        let list = reg.bootstrap(t0, None);
        assert_eq!(list.len(), MAX_BOOTSTRAP_SUPERPEERS);
        included += usize::from(list.iter().any(|s| s.peer_id == liar.to_string()));
    }
    // 20 of 50: in 40 % of the lists (2,000 of 5,000; standard deviation about 35).
    let expected = samples * MAX_BOOTSTRAP_SUPERPEERS / 50;
    assert!(
        included.abs_diff(expected) < expected / 5,
        "the liar was in {included} lists of {samples}, expected about {expected}"
    );
    // A superpeer is not told about itself.
    assert!((0..50).all(|_| !ids(&reg.bootstrap(t0, Some(&liar))).contains(&liar.to_string())));
}

#[test]
fn entries_expire_and_leaves_never_exceed_capacity() {
    let t0 = Instant::now();
    let mut reg = registry(150, 1000);
    let peer = PeerId::random();
    listed(&mut reg, "alice", peer, (50, 10), t0);
    let shown = &reg.bootstrap(t0, None)[0];
    assert_eq!((shown.leaves, shown.capacity), (10, 10));
    assert!(
        reg.bootstrap(t0 + Duration::from_secs(150), None)
            .is_empty()
    );
    // Back after its entry expired: checked again from scratch.
    let later = t0 + Duration::from_secs(200);
    let job = reg
        .announce(&name("alice"), peer, vec![addr(1000)], (0, 10), later)
        .unwrap();
    assert!(job.is_some());
    assert!(reg.bootstrap(later, None).is_empty());
}

#[test]
fn table_is_bounded_but_expired_entries_make_room() {
    let t0 = Instant::now();
    let mut reg = registry(10, 2);
    let mut announce = |account: &str, at: Instant| {
        reg.announce(&name(account), PeerId::random(), vec![addr(1)], (0, 1), at)
    };
    assert!(announce("aaa", t0).is_ok());
    assert!(announce("bbb", t0).is_ok());
    assert_eq!(announce("ccc", t0), Err(Full));
    // Another device of an account already in the table is not a new entry.
    assert!(announce("bbb", t0).is_ok());
    assert!(announce("ddd", t0 + Duration::from_secs(11)).is_ok());
    assert_eq!(reg.entries.len(), 1);
}
