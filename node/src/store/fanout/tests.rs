//! Further devices and copies, on a real SQLite file.

use super::super::test_util::*;
use super::super::{HistoryKind, OutgoingMessage};
use super::*;

fn msg(n: u32, to: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: ulid(n),
        to: to.into(),
        text: format!("message {n}"),
        sent_at_ms: 1_000 + u64::from(n),
    }
}

fn target(owner: &str, device: Option<&str>) -> FanoutTarget {
    FanoutTarget {
        owner: owner.into(),
        device: device.map(Into::into),
    }
}

fn due(store: &Store, now: u64) -> Vec<(String, String, Vec<String>)> {
    store
        .fanout_due(now, 64, 64)
        .unwrap()
        .into_iter()
        .map(|b| {
            (
                b.owner,
                b.device,
                b.messages.into_iter().map(|m| m.id).collect(),
            )
        })
        .collect()
}

#[test]
fn a_delivered_message_goes_on_to_each_further_device_and_says_where_it_stands() {
    let (dir, store) = fresh();
    let m = store.enqueue(&msg(1, "bob")).unwrap();
    let targets = [target("bob", Some("phone")), target("alice", None)];
    let moved = store
        .mark_delivered_to(&[&m.id], "direct", 2_000, Some("laptop"), &targets)
        .unwrap();
    assert_eq!(moved, 1);
    // A second ack of the same message adds nothing.
    let again = store
        .mark_delivered_to(&[&m.id], "direct", 2_001, Some("laptop"), &targets)
        .unwrap();
    assert_eq!(again, 0);
    let store = reopen(&dir, store);
    let mut first = due(&store, 2_000);
    first.sort();
    assert_eq!(
        first,
        vec![
            ("alice".into(), String::new(), vec![m.id.clone()]),
            ("bob".into(), "phone".into(), vec![m.id.clone()]),
        ]
    );

    // Alice's devices become known: this one and her phone; only the phone gets a copy.
    let added = store
        .fanout_resolve("alice", &["me".into(), "alices-phone".into()], "me")
        .unwrap();
    assert_eq!(added, 1);
    let mut now = due(&store, 2_000);
    now.sort();
    assert_eq!(
        now,
        vec![
            ("alice".into(), "alices-phone".into(), vec![m.id.clone()]),
            ("bob".into(), "phone".into(), vec![m.id.clone()]),
        ]
    );

    // Bob's phone is offline: pushed back by its backoff, with the reason.
    let n = store
        .fanout_postpone("bob", "phone", 2_000, (1_000, 30_000), "device offline")
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(due(&store, 2_500).len(), 1);
    assert_eq!(due(&store, 3_000).len(), 2);
    store
        .fanout_postpone("bob", "phone", 3_000, (1_000, 30_000), "device offline")
        .unwrap();
    assert_eq!(due(&store, 3_100).len(), 1, "waiting 2 s now");
    // It is back: due at once.
    assert_eq!(store.fanout_wake("bob", "phone", 3_100).unwrap(), 1);
    assert_eq!(due(&store, 3_100).len(), 2);

    let done = store
        .fanout_done(
            "alice",
            "alices-phone",
            std::slice::from_ref(&m.id),
            "relayed",
            3_100,
        )
        .unwrap();
    assert_eq!(done, 1);
    let states = store.deliveries(&m.id).unwrap();
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states[0].owner, "alice");
    assert_eq!(states[0].path.as_deref(), Some("relayed"));
    assert_eq!(states[0].delivered_at_ms, Some(3_100));
    assert_eq!(states[1].owner, "bob");
    assert_eq!(states[1].path, None);
    assert_eq!(states[1].attempts, 2);
    assert_eq!(states[1].last_error.as_deref(), Some("device offline"));

    // The device that stored the message first never gets it again.
    let m2 = store.enqueue(&msg(2, "bob")).unwrap();
    store
        .mark_delivered_to(
            &[&m2.id],
            "direct",
            4_000,
            Some("laptop"),
            &[target("bob", None)],
        )
        .unwrap();
    store
        .fanout_resolve("bob", &["laptop".into(), "phone".into()], "me")
        .unwrap();
    let bob: Vec<_> = store
        .deliveries(&m2.id)
        .unwrap()
        .into_iter()
        .map(|d| d.device)
        .collect();
    assert_eq!(bob, ["phone"]);

    // Not reached within its time: given up.
    assert_eq!(
        store.fanout_expire(2_001).unwrap(),
        1,
        "bob's phone, message 1"
    );
    assert_eq!(store.deliveries(&m.id).unwrap().len(), 1);
}

#[test]
fn copies_are_kept_once_and_bounded() {
    let (_dir, mut store) = fresh();
    store.max_copies = 2;
    let copy = |n: u32| CopyMessage {
        id: ulid(n),
        to: "bob".into(),
        text: format!("copy {n}"),
        sent_at_ms: 1_000 + u64::from(n),
        conv_seq: u64::from(n),
        received_at_ms: 2_000 + u64::from(n),
    };
    let receipts = store.receive_copies("phone", &[copy(1), copy(1)]).unwrap();
    assert_eq!(receipts, [Receipt::Stored, Receipt::Duplicate]);
    // The same id from another device is another message.
    assert_eq!(
        store.receive_copies("tablet", &[copy(1)]).unwrap(),
        [Receipt::Stored]
    );
    store.receive_copies("phone", &[copy(3)]).unwrap();
    let kept: Vec<String> = store
        .history("bob", 10)
        .unwrap()
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert_eq!(kept, ["copy 1", "copy 3"], "the oldest went");
    let bad = CopyMessage {
        to: "Not A Name".into(),
        ..copy(4)
    };
    assert!(store.receive_copies("phone", &[bad]).is_err());
}

#[test]
fn one_order_per_pair_of_users_across_devices() {
    let (_dir, store) = fresh();
    assert_eq!(store.enqueue(&msg(1, "bob")).unwrap().conv_seq, 1);
    // Bob wrote number 7, and alice's phone sent bob number 9.
    store.receive(&incoming(2, "bob", 7)).unwrap();
    assert_eq!(store.enqueue(&msg(3, "bob")).unwrap().conv_seq, 8);
    let copy = CopyMessage {
        id: ulid(4),
        to: "bob".into(),
        text: "from the phone".into(),
        sent_at_ms: 1_004,
        conv_seq: 9,
        received_at_ms: 2_004,
    };
    store.receive_copies("phone", &[copy]).unwrap();
    assert_eq!(store.enqueue(&msg(5, "bob")).unwrap().conv_seq, 10);
    // Other conversations keep their own numbers.
    assert_eq!(store.enqueue(&msg(6, "carol")).unwrap().conv_seq, 1);
    // A peer sending a huge number moves the conversation on by a bounded step only.
    store
        .receive(&incoming(7, "bob", natter_proto::msg::MAX_FIELD))
        .unwrap();
    let next = store.enqueue(&msg(8, "bob")).unwrap().conv_seq;
    assert_eq!(next, 10 + super::super::outbox::MAX_SEQ_JUMP as u64 + 1);

    let history = store.history("bob", 100).unwrap();
    let kinds: Vec<(HistoryKind, u64)> = history.iter().map(|e| (e.kind, e.conv_seq)).collect();
    assert_eq!(
        kinds,
        [
            (HistoryKind::Queued, 1),
            (HistoryKind::Received, 7),
            (HistoryKind::Queued, 8),
            (HistoryKind::SentElsewhere, 9),
            (HistoryKind::Queued, 10),
            (HistoryKind::Queued, next),
            (HistoryKind::Received, natter_proto::msg::MAX_FIELD),
        ]
    );
    assert_eq!(store.history("bob", 2).unwrap().len(), 2);
}

#[test]
fn a_copy_for_this_users_devices_goes_while_the_message_is_still_queued() {
    let (_dir, store) = fresh();
    let copies = [target("alice", Some("alices-phone"))];
    let m = store.enqueue_with_copies(&msg(1, "bob"), &copies).unwrap();
    // Bob is unreachable: the message stays queued, and the phone's copy is due anyway.
    let due_now = store.fanout_due(m.sent_at_ms, 64, 64).unwrap();
    assert_eq!(due_now.len(), 1);
    assert_eq!(due_now[0].device, "alices-phone");
    assert_eq!(due_now[0].messages[0].to, "bob");
    assert_eq!(due_now[0].messages[0].text, "message 1");
    let history = store.history("bob", 10).unwrap();
    assert_eq!(history[0].kind, HistoryKind::Queued);
    assert_eq!(history[0].devices.len(), 1, "{history:?}");
    // Delivered later: the copy's row is not added twice, and keeps its state.
    store
        .fanout_done(
            "alice",
            "alices-phone",
            std::slice::from_ref(&m.id),
            "direct",
            1_500,
        )
        .unwrap();
    store
        .mark_delivered_to(&[&m.id], "direct", 2_000, Some("bobs-laptop"), &[])
        .unwrap();
    let states = store.deliveries(&m.id).unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].delivered_at_ms, Some(1_500));

    // A message taken out of the outbox takes its copies' rows along.
    let m2 = store.enqueue_with_copies(&msg(2, "bob"), &copies).unwrap();
    assert!(store.cancel(&m2.id).unwrap());
    assert!(store.deliveries(&m2.id).unwrap().is_empty());
}
