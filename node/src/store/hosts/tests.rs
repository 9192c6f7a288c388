use super::super::test_util::*;
use super::*;

fn addrs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn ids(hosts: &[Host]) -> Vec<&str> {
    hosts.iter().map(|h| h.peer_id.as_str()).collect()
}

#[test]
fn record_and_read_back_survives_reopen() {
    let (dir, store) = fresh();
    let a = addrs(&["/ip4/1.2.3.4/tcp/4001", "/ip4/1.2.3.4/udp/4001/quic-v1"]);
    store
        .record_host("12D3KooWA", &a, Some(42), Some((10, 500)), 1_000)
        .unwrap();
    store.host_failed("12D3KooWA", 1_010).unwrap();
    let expected = Host {
        peer_id: "12D3KooWA".into(),
        addrs: a,
        rtt_ms: Some(42),
        leaves: Some(10),
        capacity: Some(500),
        last_seen: 1_000,
        failures: 1,
        last_failure: Some(1_010),
        verified: true,
    };
    assert_eq!(store.hosts(10).unwrap(), std::slice::from_ref(&expected));
    let store = reopen(&dir, store);
    assert_eq!(store.hosts(10).unwrap(), [expected]);
}

#[test]
fn upsert_merges_addrs_keeps_measurements_and_clears_failures() {
    let (_dir, store) = fresh();
    store
        .record_host("p", &addrs(&["/a", "/b"]), Some(30), Some((1, 10)), 100)
        .unwrap();
    store.host_failed("p", 101).unwrap();
    store.host_failed("p", 102).unwrap();
    // A sighting without addresses, RTT or load (say, from a bootstrap list).
    store.record_host("p", &[], None, None, 200).unwrap();
    let h = &store.hosts(1).unwrap()[0];
    assert_eq!(h.addrs, ["/a", "/b"]);
    assert_eq!(
        (h.rtt_ms, h.leaves, h.capacity),
        (Some(30), Some(1), Some(10))
    );
    assert_eq!((h.last_seen, h.failures, h.last_failure), (200, 0, None));
    // New measurements replace; new addresses go first, known ones follow, no repeats.
    store
        .record_host(
            "p",
            &addrs(&["/c", "/b", "/c"]),
            Some(7),
            Some((2, 20)),
            300,
        )
        .unwrap();
    let h = &store.hosts(1).unwrap()[0];
    assert_eq!(h.addrs, ["/c", "/b", "/a"]);
    assert_eq!(
        (h.rtt_ms, h.leaves, h.capacity),
        (Some(7), Some(2), Some(20))
    );
}

#[test]
fn at_most_16_addrs_freshest_kept() {
    let (_dir, store) = fresh();
    let old: Vec<String> = (0..10).map(|i| format!("/old/{i}")).collect();
    let new: Vec<String> = (0..20).map(|i| format!("/new/{i}")).collect();
    store.record_host("p", &old, None, None, 1).unwrap();
    store.record_host("p", &new[..10], None, None, 2).unwrap();
    let h = &store.hosts(1).unwrap()[0];
    assert_eq!(h.addrs.len(), MAX_HOST_ADDRS);
    assert_eq!(h.addrs[..10], new[..10]);
    assert_eq!(h.addrs[10..], old[..6]);
    store.record_host("p", &new, None, None, 3).unwrap();
    assert_eq!(store.hosts(1).unwrap()[0].addrs, new[..16]);
}

#[test]
fn bounded_by_evicting_least_recently_seen() {
    let (dir, store) = fresh();
    for i in 1..=(MAX_HOSTS as u64 + 5) {
        store
            .record_host(&format!("peer{i:03}"), &[], None, None, i)
            .unwrap();
    }
    let all = store.hosts(usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_HOSTS);
    assert_eq!(all[0].peer_id, "peer205");
    assert_eq!(all[MAX_HOSTS - 1].peer_id, "peer006");
    // Refreshing an old host saves it; the next oldest goes instead.
    store
        .record_host("peer006", &[], None, None, 1_000)
        .unwrap();
    store
        .record_host("newcomer", &[], None, None, 1_001)
        .unwrap();
    let all = store.hosts(usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_HOSTS);
    assert_eq!(ids(&all[..2]), ["newcomer", "peer006"]);
    assert!(!ids(&all).contains(&"peer007"));
    // A newcomer is never its own victim, even when it ties with everything.
    let (_dir2, tie) = fresh();
    for i in 0..=MAX_HOSTS {
        tie.record_host(&format!("z{i:03}"), &[], None, None, 5)
            .unwrap();
    }
    let all = tie.hosts(usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_HOSTS);
    assert!(ids(&all).contains(&"z200"));
    let store = reopen(&dir, store);
    assert_eq!(store.hosts(usize::MAX).unwrap().len(), MAX_HOSTS);
}

#[test]
fn ordering_recent_then_rtt_failing_last() {
    let (_dir, store) = fresh();
    store
        .record_host("old-fast", &[], Some(1), None, 10)
        .unwrap();
    store
        .record_host("new-slow", &[], Some(90), None, 20)
        .unwrap();
    store
        .record_host("new-fast", &[], Some(5), None, 20)
        .unwrap();
    store
        .record_host("new-unmeasured", &[], None, None, 20)
        .unwrap();
    store
        .record_host("newest-broken", &[], Some(1), None, 30)
        .unwrap();
    assert_eq!(
        ids(&store.hosts(10).unwrap()),
        [
            "newest-broken",
            "new-fast",
            "new-slow",
            "new-unmeasured",
            "old-fast"
        ]
    );
    // A failure or two does not demote; FAILING_AFTER consecutive ones do.
    for t in 0..FAILING_AFTER - 1 {
        assert!(
            store
                .host_failed("newest-broken", 31 + u64::from(t))
                .unwrap()
        );
    }
    assert_eq!(store.hosts(1).unwrap()[0].peer_id, "newest-broken");
    store.host_failed("newest-broken", 40).unwrap();
    let order = store.hosts(10).unwrap();
    assert_eq!(order[4].peer_id, "newest-broken");
    assert_eq!(order[4].failures, FAILING_AFTER);
    assert_eq!(ids(&store.hosts(2).unwrap()), ["new-fast", "new-slow"]);
    // Answering again restores its rank.
    store
        .record_host("newest-broken", &[], None, None, 50)
        .unwrap();
    assert_eq!(store.hosts(1).unwrap()[0].peer_id, "newest-broken");
}

#[test]
fn remove_and_unknown_hosts() {
    let (_dir, store) = fresh();
    assert!(!store.host_failed("ghost", 1).unwrap());
    assert!(!store.remove_host("ghost").unwrap());
    store.record_host("p", &[], None, None, 1).unwrap();
    assert!(store.remove_host("p").unwrap());
    assert!(store.hosts(10).unwrap().is_empty());
    assert!(store.hosts(0).unwrap().is_empty());
}

#[test]
fn bad_input_is_refused_not_panicked_on() {
    let (_dir, store) = fresh();
    assert!(matches!(
        store.record_host("", &[], None, None, 1),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.record_host(&"p".repeat(129), &[], None, None, 1),
        Err(StoreError::TooLarge { .. })
    ));
    assert!(matches!(
        store.record_host("p", &["/x".repeat(200)], None, None, 1),
        Err(StoreError::TooLarge { .. })
    ));
    assert!(matches!(
        store.record_host("p", &[], None, None, u64::MAX),
        Err(StoreError::Invalid { .. })
    ));
    assert!(store.host_failed("p", u64::MAX).is_err());
    // Odd but bounded strings are stored verbatim.
    let odd = "pe\u{0}er'\"; DROP TABLE hosts;--\u{1F600}";
    let odd_addrs = addrs(&["\u{0}", "\"]", ""]);
    store
        .record_host(odd, &odd_addrs, Some(u32::MAX), Some((u32::MAX, 0)), 0)
        .unwrap();
    let h = &store.hosts(1).unwrap()[0];
    assert_eq!(h.peer_id, odd);
    assert_eq!(h.addrs, odd_addrs);
    assert_eq!(h.rtt_ms, Some(u32::MAX));
}

#[test]
fn failure_counter_saturates() {
    let (_dir, store) = fresh();
    store.record_host("p", &[], None, None, 1).unwrap();
    store
        .conn()
        .execute("UPDATE hosts SET failures = ?1", params![u32::MAX])
        .unwrap();
    store.host_failed("p", 2).unwrap();
    assert_eq!(store.hosts(1).unwrap()[0].failures, u32::MAX);
}

#[test]
fn damaged_row_is_skipped_then_repaired() {
    let (_dir, store) = fresh();
    store.record_host("p", &[], None, None, 1).unwrap();
    store
        .record_host("q", &addrs(&["/q"]), None, None, 2)
        .unwrap();
    store
        .conn()
        .execute(
            "UPDATE hosts SET addrs = 'not json' WHERE peer_id = 'p'",
            [],
        )
        .unwrap();
    assert_eq!(ids(&store.hosts(10).unwrap()), ["q"]);
    store
        .record_host("p", &addrs(&["/p"]), None, None, 3)
        .unwrap();
    let hosts = store.hosts(10).unwrap();
    assert_eq!(ids(&hosts), ["p", "q"]);
    assert_eq!(hosts[0].addrs, ["/p"]);
}

#[test]
fn heard_of_hosts_stay_unverified_until_reached() {
    let (dir, store) = fresh();
    store
        .learn_host("p", &addrs(&["/told"]), Some((1, 10)), 100)
        .unwrap();
    let h = &store.hosts(1).unwrap()[0];
    assert!(!h.verified);
    assert_eq!((h.last_seen, h.failures), (100, 0));
    // Heard of again: fresher addresses and load, still unverified.
    store
        .learn_host("p", &addrs(&["/told2"]), Some((2, 10)), 150)
        .unwrap();
    let h = &store.hosts(1).unwrap()[0];
    assert!(!h.verified);
    assert_eq!(h.addrs, ["/told2", "/told"]);
    assert_eq!((h.leaves, h.last_seen), (Some(2), 150));
    // Reached: verified, the address it answered on first.
    store
        .record_host("p", &addrs(&["/real"]), None, None, 200)
        .unwrap();
    store.host_failed("p", 201).unwrap();
    let h = store.hosts(1).unwrap()[0].clone();
    assert!(h.verified);
    assert_eq!(h.addrs, ["/real", "/told2", "/told"]);
    // What others say of a verified host changes neither its rank nor its failures nor
    // its load; their addresses only go after the ones it was reached on.
    store
        .learn_host("p", &addrs(&["/lie", "/real"]), Some((999, 1000)), 300)
        .unwrap();
    let after = &store.hosts(1).unwrap()[0];
    assert_eq!(after.addrs, ["/real", "/told2", "/told", "/lie"]);
    assert_eq!(
        (
            after.last_seen,
            after.failures,
            after.leaves,
            after.verified
        ),
        (200, 1, Some(2), true)
    );
    let store = reopen(&dir, store);
    assert!(store.hosts(1).unwrap()[0].verified);
}

#[test]
fn ordering_verified_then_unverified_then_failing() {
    let (_dir, store) = fresh();
    store
        .record_host("old-verified", &[], None, None, 10)
        .unwrap();
    store.learn_host("fresh-rumour", &[], None, 50).unwrap();
    store.learn_host("old-rumour", &[], None, 5).unwrap();
    store.record_host("broken", &[], None, None, 40).unwrap();
    for t in 0..FAILING_AFTER {
        store.host_failed("broken", 41 + u64::from(t)).unwrap();
    }
    // However fresh, a rumour ranks below every verified host that is not failing.
    assert_eq!(
        ids(&store.hosts(10).unwrap()),
        ["old-verified", "fresh-rumour", "old-rumour", "broken"]
    );
    // One failure does not move a rumour: at UNVERIFIED_DROP_AFTER it is gone instead.
    store.host_failed("fresh-rumour", 60).unwrap();
    assert_eq!(store.hosts(2).unwrap()[1].peer_id, "fresh-rumour");
}

#[test]
fn unverified_hosts_that_fail_are_dropped_verified_ones_stay() {
    let (_dir, store) = fresh();
    store.learn_host("rumour", &[], None, 1).unwrap();
    store.record_host("real", &[], None, None, 1).unwrap();
    assert!(store.host_failed("rumour", 2).unwrap());
    assert_eq!(store.hosts(10).unwrap().len(), 2);
    // Being named again does not wipe the failure out.
    store.learn_host("rumour", &[], None, 3).unwrap();
    assert_eq!(
        store
            .hosts(10)
            .unwrap()
            .iter()
            .find(|h| h.peer_id == "rumour")
            .unwrap()
            .failures,
        1
    );
    for _ in 1..UNVERIFIED_DROP_AFTER {
        assert!(store.host_failed("rumour", 4).unwrap());
    }
    assert_eq!(ids(&store.hosts(10).unwrap()), ["real"]);
    for t in 0..10 {
        store.host_failed("real", 5 + t).unwrap();
    }
    let h = &store.hosts(10).unwrap()[0];
    assert_eq!((h.peer_id.as_str(), h.failures), ("real", 10));
    // Reaching a rumour before it failed out makes it verified, failures cleared.
    store.learn_host("lucky", &[], None, 20).unwrap();
    store.host_failed("lucky", 21).unwrap();
    store.record_host("lucky", &[], None, None, 22).unwrap();
    for t in 0..UNVERIFIED_DROP_AFTER {
        store.host_failed("lucky", 23 + u64::from(t)).unwrap();
    }
    assert!(ids(&store.hosts(10).unwrap()).contains(&"lucky"));
}

#[test]
fn unverified_hosts_are_bounded_and_never_push_verified_ones_out() {
    let (_dir, store) = fresh();
    // A flood of names: only the MAX_UNVERIFIED_HOSTS most recently heard of stay.
    for i in 0..(MAX_UNVERIFIED_HOSTS as u64 + 50) {
        store
            .learn_host(&format!("fake{i:03}"), &[], None, i)
            .unwrap();
    }
    let all = store.hosts(usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_UNVERIFIED_HOSTS);
    assert_eq!(all[0].peer_id, "fake081");
    assert_eq!(all[MAX_UNVERIFIED_HOSTS - 1].peer_id, "fake050");
    // Names heard in the same second as every other: the newest one stays.
    store.learn_host("tie", &[], None, 81).unwrap();
    assert!(ids(&store.hosts(usize::MAX).unwrap()).contains(&"tie"));
    // A full cache of verified hosts: unverified ones go first, and a newcomer that is
    // only heard of cannot take a verified host's place.
    let (_dir, store) = fresh();
    store.learn_host("rumour", &[], None, 1_000).unwrap();
    for i in 0..MAX_HOSTS as u64 {
        store
            .record_host(&format!("real{i:03}"), &[], None, None, i)
            .unwrap();
    }
    let all = store.hosts(usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_HOSTS);
    assert!(all.iter().all(|h| h.verified));
    store.learn_host("newcomer", &[], None, 2_000).unwrap();
    let all = store.hosts(usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_HOSTS);
    assert!(all.iter().all(|h| h.verified), "{:?}", ids(&all));
    assert!(ids(&all).contains(&"real000"));
}
