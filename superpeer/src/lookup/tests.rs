#![allow(clippy::unwrap_used)]

use natter_proto::IssuerSigningKey;

use super::*;
use crate::test_support::{NOW, issuer, peer, record_by};

/// `name`'s record (device key from `seed`), sequence `seq`, at home on `home`, as stored.
fn record(name: &str, seed: u8, seq: u64, home: PeerId, signer: &IssuerSigningKey) -> Vec<u8> {
    record_by(name, seed, seq, Some(home), signer).to_json()
}

fn drain(l: &mut Lookups<u32>) -> Vec<LookupAction<u32>> {
    std::iter::from_fn(|| l.next_action()).collect()
}

fn bob() -> UserName {
    UserName::parse("bob").unwrap()
}

#[test]
fn a_valid_record_ends_the_query_and_the_home_is_asked() {
    let me = peer(9);
    let home = peer(8);
    let mut l = Lookups::new(me, issuer().public());
    let t = Instant::now();
    l.start(bob(), 7, None, NOW, t).unwrap();
    let Some(LookupAction::Query { id, key }) = l.next_action() else {
        panic!("a query first");
    };
    assert_eq!(key, directory_key(&bob()));
    // Garbage and a forged record (another issuer) do not end it.
    l.found(id, b"garbage".to_vec(), NOW, |_| false, t);
    l.found(
        id,
        record("bob", 2, 5, home, &IssuerSigningKey::from_bytes(&[2; 32])),
        NOW,
        |_| false,
        t,
    );
    assert!(drain(&mut l).is_empty());
    l.found(id, record("bob", 2, 3, home, &issuer()), NOW, |_| false, t);
    // A valid record opens the gathering window; it answers when the window ends.
    assert!(drain(&mut l).is_empty());
    assert_eq!(l.deadline(), Some(t + GATHER));
    l.gathered(NOW, |_| false, t + GATHER - Duration::from_millis(1));
    assert!(drain(&mut l).is_empty());
    l.gathered(NOW, |_| false, t + GATHER);
    let actions = drain(&mut l);
    assert!(
        matches!(actions[0], LookupAction::Finish(i) if i == id),
        "{actions:?}"
    );
    let LookupAction::AskHome {
        home: asked,
        device,
        ..
    } = &actions[1]
    else {
        panic!("the home is asked: {actions:?}");
    };
    assert_eq!((*asked, *device), (home, peer(2)));
    l.liveness(id, Some(true), t);
    let LookupAction::Answer {
        requester,
        record,
        confirmed,
        ..
    } = l.next_action().unwrap()
    else {
        panic!("answered");
    };
    assert_eq!((requester, confirmed), (7, true));
    assert_eq!(record.unwrap().body.seq, 3);
    assert_eq!(l.running(), 0);
}

#[test]
fn the_highest_valid_sequence_wins_and_answers_are_cached() {
    let me = peer(9);
    let mut l = Lookups::new(me, issuer().public());
    let t = Instant::now();
    // This superpeer is the home: no question to ask, the leaf table answers.
    let local = record("bob", 2, 4, me, &issuer());
    l.start(bob(), 1, Some(local), NOW, t).unwrap();
    let Some(LookupAction::Query { id, .. }) = l.next_action() else {
        panic!("a query first");
    };
    l.query_done(id, NOW, |p| *p == peer(2), t);
    let actions = drain(&mut l);
    assert!(
        matches!(&actions[..], [LookupAction::Answer { confirmed: true, record: Some(r), .. }] if r.body.seq == 4),
        "{actions:?}"
    );
    // Within the cache's life: answered at once, no query.
    l.start(bob(), 2, None, NOW, t + Duration::from_secs(2))
        .unwrap();
    assert!(matches!(
        drain(&mut l)[..],
        [LookupAction::Answer {
            requester: 2,
            confirmed: true,
            ..
        }]
    ));
    // After it, and after an invalidation: a query again.
    l.start(bob(), 3, None, NOW, t + CACHE_TTL).unwrap();
    assert!(matches!(drain(&mut l)[..], [LookupAction::Query { .. }]));
    assert_eq!(l.started, 3);
}

/// A directory node replays an old, validly signed record of bob's and answers first:
/// the newer record that arrives within the window wins all the same.
#[test]
fn a_replayed_old_record_loses_to_a_newer_one_answering_later() {
    let me = peer(9);
    let home = peer(8);
    let mut l = Lookups::new(me, issuer().public());
    let t = Instant::now();
    l.start(bob(), 1, None, NOW, t).unwrap();
    let Some(LookupAction::Query { id, .. }) = l.next_action() else {
        panic!("a query first");
    };
    l.found(
        id,
        record("bob", 2, 100, home, &issuer()),
        NOW,
        |_| false,
        t,
    );
    assert!(drain(&mut l).is_empty(), "the first answer does not decide");
    let later = t + GATHER / 2;
    l.found(
        id,
        record("bob", 2, 200, home, &issuer()),
        NOW,
        |_| false,
        later,
    );
    l.gathered(NOW, |_| false, t + GATHER);
    drain(&mut l);
    l.liveness(id, Some(true), t + GATHER);
    let Some(LookupAction::Answer { record, .. }) = l.next_action() else {
        panic!("answered");
    };
    assert_eq!(record.unwrap().body.seq, 200);
}

/// Two devices of one user: both come back, and when the first one's home no longer has
/// it (a crashed laptop whose lease still runs), the next one is asked and answers.
#[test]
fn each_device_is_kept_and_the_first_confirmed_one_answers() {
    let me = peer(9);
    let (laptop_home, phone_home) = (peer(8), peer(7));
    let mut l = Lookups::new(me, issuer().public());
    let t = Instant::now();
    l.start(bob(), 1, None, NOW, t).unwrap();
    let Some(LookupAction::Query { id, .. }) = l.next_action() else {
        panic!("a query first");
    };
    // Two replicas, each with one of the devices (published through two superpeers).
    l.found(
        id,
        record("bob", 2, 300, laptop_home, &issuer()),
        NOW,
        |_| false,
        t,
    );
    l.found(
        id,
        record("bob", 3, 100, phone_home, &issuer()),
        NOW,
        |_| false,
        t,
    );
    l.query_done(id, NOW, |_| false, t);
    let asked: Vec<PeerId> = drain(&mut l)
        .into_iter()
        .filter_map(|a| match a {
            LookupAction::AskHome { home, .. } => Some(home),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![laptop_home], "the newest device is asked first");
    l.liveness(id, Some(false), t);
    let Some(LookupAction::AskHome { home, .. }) = l.next_action() else {
        panic!("the other device's home is asked next");
    };
    assert_eq!(home, phone_home);
    l.liveness(id, Some(true), t);
    let Some(LookupAction::Answer {
        record: Some(record),
        confirmed: true,
        others,
        ..
    }) = l.next_action()
    else {
        panic!("answered with the phone, confirmed");
    };
    assert_eq!(record.body.seq, 100);
    assert_eq!(
        others.iter().map(|r| r.body.seq).collect::<Vec<_>>(),
        vec![300]
    );
}

#[test]
fn enough_valid_answers_end_the_gathering_at_once() {
    let me = peer(9);
    let home = peer(8);
    let mut l = Lookups::new(me, issuer().public());
    let t = Instant::now();
    // The local copy counts as one.
    let local = record("bob", 2, 5, home, &issuer());
    l.start(bob(), 1, Some(local), NOW, t).unwrap();
    let Some(LookupAction::Query { id, .. }) = l.next_action() else {
        panic!("a query first");
    };
    l.found(id, record("bob", 2, 7, home, &issuer()), NOW, |_| false, t);
    assert!(drain(&mut l).is_empty());
    l.found(id, record("bob", 2, 6, home, &issuer()), NOW, |_| false, t);
    let actions = drain(&mut l);
    assert!(
        matches!(actions[0], LookupAction::Finish(i) if i == id),
        "{actions:?}"
    );
    assert!(
        matches!(actions[1], LookupAction::AskHome { .. }),
        "{actions:?}"
    );
    l.liveness(id, Some(true), t);
    let Some(LookupAction::Answer { record, .. }) = l.next_action() else {
        panic!("answered");
    };
    assert_eq!(record.unwrap().body.seq, 7);
    assert_eq!(l.deadline(), None);
}

#[test]
fn no_record_and_dead_homes_read_unconfirmed() {
    let me = peer(9);
    let mut l = Lookups::new(me, issuer().public());
    let t = Instant::now();
    l.start(bob(), 1, None, NOW, t).unwrap();
    let Some(LookupAction::Query { id, .. }) = l.next_action() else {
        panic!();
    };
    l.query_done(id, NOW, |_| false, t);
    assert!(matches!(
        drain(&mut l)[..],
        [LookupAction::Answer {
            record: None,
            confirmed: false,
            ..
        }]
    ));
    let carol = UserName::parse("carol").unwrap();
    l.start(carol, 2, None, NOW, t).unwrap();
    let Some(LookupAction::Query { id, .. }) = l.next_action() else {
        panic!();
    };
    l.found(
        id,
        record("carol", 3, 1, peer(8), &issuer()),
        NOW,
        |_| false,
        t,
    );
    l.query_done(id, NOW, |_| false, t);
    drain(&mut l);
    // The home could not be asked: offline, not online.
    l.liveness(id, None, t);
    assert!(matches!(
        drain(&mut l)[..],
        [LookupAction::Answer {
            record: Some(_),
            confirmed: false,
            ..
        }]
    ));
}

#[test]
fn lookups_are_bounded() {
    let mut l = Lookups::new(peer(9), issuer().public());
    let t = Instant::now();
    for i in 0..MAX_LOOKUPS {
        let name = UserName::parse(&format!("user{i}")).unwrap();
        l.start(name, 0, None, NOW, t).unwrap();
    }
    assert_eq!(
        l.start(bob(), 0, None, NOW, t),
        Err((LookupRefused::Busy(MAX_LOOKUPS), 0))
    );
}
