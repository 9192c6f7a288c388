//! The outbox and sent log's tests, on a real SQLite file.

use natter_proto::limits::MAX_MESSAGE_TEXT_BYTES;

use super::super::test_util::*;
use super::*;

fn msg(n: u32, to: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: ulid(n),
        to: to.into(),
        text: format!("message {n}"),
        sent_at_ms: 1_000 + u64::from(n),
    }
}

fn seqs(queued: &[QueuedMessage]) -> Vec<u64> {
    queued.iter().map(|m| m.conv_seq).collect()
}

#[test]
fn sequences_are_per_recipient_and_survive_reopen() {
    let (dir, store) = fresh();
    let a1 = store.enqueue(&msg(1, "alice")).unwrap();
    let b1 = store.enqueue(&msg(2, "bob")).unwrap();
    let a2 = store.enqueue(&msg(3, "alice")).unwrap();
    let a3 = store.enqueue(&msg(4, "alice")).unwrap();
    assert_eq!(
        [a1.conv_seq, a2.conv_seq, a3.conv_seq, b1.conv_seq],
        [1, 2, 3, 1]
    );
    assert_eq!(a1.attempts, 0);
    assert_eq!(a1.next_attempt_at_ms, a1.sent_at_ms);
    assert_eq!(a1.last_error, None);

    // Delivering everything does not reset the counter, nor does a restart.
    for id in [&a1.id, &a2.id, &a3.id] {
        assert!(store.mark_delivered(id, "direct", 5_000).unwrap());
    }
    let store = reopen(&dir, store);
    assert_eq!(store.queued_for("bob").unwrap(), [b1]);
    assert_eq!(store.enqueue(&msg(5, "alice")).unwrap().conv_seq, 4);
    assert_eq!(store.enqueue(&msg(6, "bob")).unwrap().conv_seq, 2);
    assert_eq!(store.enqueue(&msg(7, "carol")).unwrap().conv_seq, 1);
}

/// One statement pushes back every due message of a recipient by its own backoff, and
/// leaves other recipients, messages not yet due and parked ones alone.
#[test]
fn postpone_backs_off_each_due_message_without_reading_the_queue() {
    let (_dir, store) = fresh();
    let a1 = store.enqueue(&msg(1, "alice")).unwrap();
    let a2 = store.enqueue(&msg(2, "alice")).unwrap();
    let a3 = store.enqueue(&msg(3, "alice")).unwrap();
    let b1 = store.enqueue(&msg(4, "bob")).unwrap();
    store.reschedule(&a2.id, 5, 1_500, None).unwrap();
    store.reschedule(&a3.id, 0, 90_000, None).unwrap();
    assert_eq!(
        store
            .postpone("alice", 2_000, (1_000, 30_000), "down")
            .unwrap(),
        2
    );
    let queued = store.queued_for("alice").unwrap();
    // a1: first failure, 1 s; a2: its sixth, 32 s capped at 30 s; a3 was not due.
    assert_eq!(
        queued
            .iter()
            .map(|m| (m.attempts, m.next_attempt_at_ms, m.last_error.as_deref()))
            .collect::<Vec<_>>(),
        [
            (1, 3_000, Some("down")),
            (6, 32_000, Some("down")),
            (0, 90_000, None)
        ]
    );
    assert_eq!(queued[0].id, a1.id);
    assert_eq!(store.queued_for("bob").unwrap(), [b1]);
}

/// A message refused for good stays in the outbox, shown, not due, not at the head of
/// its queue (so it holds nothing back), and is taken out only by the user.
#[test]
fn a_message_refused_for_good_is_parked_until_dropped() {
    let (dir, store) = fresh();
    let a1 = store.enqueue(&msg(1, "alice")).unwrap();
    let a2 = store.enqueue(&msg(2, "alice")).unwrap();
    assert!(
        store
            .refuse_for_good(&a1.id, "too large for alice")
            .unwrap()
    );
    assert!(!store.refuse_for_good(&ulid(99), "not queued").unwrap());
    let store = reopen(&dir, store);
    assert_eq!(seqs(&store.due(u64::MAX, 100).unwrap()), [2]);
    assert_eq!(seqs(&store.queued_head("alice", 10).unwrap()), [2]);
    assert_eq!(
        store.postpone("alice", u64::MAX / 4, (1, 1), "x").unwrap(),
        1
    );
    assert!(store.due_recipients(u64::MAX / 4, 10).unwrap().is_empty());
    let all = store.outbox(100).unwrap();
    assert_eq!(seqs(&all), [1, 2]);
    assert!(all[0].refused && !all[1].refused);
    assert_eq!(all[0].last_error.as_deref(), Some("too large for alice"));
    assert_eq!(all[0].attempts, 1);
    assert_eq!(
        store
            .cancel_all(&[a1.id.clone(), a2.id.clone(), ulid(99)])
            .unwrap(),
        2
    );
    assert_eq!(store.outbox_len().unwrap(), 0);
}

#[test]
fn outbox_state_survives_reopen() {
    let (dir, store) = fresh();
    let q = store.enqueue(&msg(1, "alice")).unwrap();
    assert!(
        store
            .reschedule(&q.id, 3, 9_000, Some("no route to alice"))
            .unwrap()
    );
    let store = reopen(&dir, store);
    let expected = QueuedMessage {
        attempts: 3,
        next_attempt_at_ms: 9_000,
        last_error: Some("no route to alice".into()),
        ..q
    };
    assert_eq!(
        store.queued_for("alice").unwrap(),
        std::slice::from_ref(&expected)
    );
    assert_eq!(store.outbox_len().unwrap(), 1);
    assert!(store.due(8_999, 10).unwrap().is_empty());
    assert_eq!(store.due(9_000, 10).unwrap(), [expected]);
}

#[test]
fn delivered_moves_to_sent_and_survives_reopen() {
    let (dir, store) = fresh();
    let q = store.enqueue(&msg(1, "alice")).unwrap();
    store.reschedule(&q.id, 2, 1_500, Some("timeout")).unwrap();
    assert!(store.mark_delivered(&q.id, "relayed", 7_000).unwrap());
    assert_eq!(store.outbox_len().unwrap(), 0);
    assert!(store.queued_for("alice").unwrap().is_empty());
    assert!(store.due(u64::MAX, 10).unwrap().is_empty());
    let expected = SentMessage {
        id: q.id.clone(),
        to: "alice".into(),
        text: q.text.clone(),
        sent_at_ms: q.sent_at_ms,
        conv_seq: 1,
        attempts: 2,
        path: "relayed".into(),
        delivered_at_ms: 7_000,
    };
    assert_eq!(store.get_sent(&q.id).unwrap(), Some(expected.clone()));
    // A second ack changes nothing.
    assert!(!store.mark_delivered(&q.id, "direct", 8_000).unwrap());
    assert!(!store.reschedule(&q.id, 3, 1, None).unwrap());
    let store = reopen(&dir, store);
    assert_eq!(store.get_sent(&q.id).unwrap(), Some(expected));
    assert_eq!(store.get_sent(&ulid(99)).unwrap(), None);
    assert_eq!(store.outbox_len().unwrap(), 0);
}

#[test]
fn move_to_sent_is_atomic() {
    let (dir, store) = fresh();
    let q = store.enqueue(&msg(1, "alice")).unwrap();
    // Make the DELETE half fail after the INSERT half succeeded.
    store
        .conn()
        .execute_batch(
            "CREATE TRIGGER fail_delete BEFORE DELETE ON outbox
             BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
        )
        .unwrap();
    let err = store.mark_delivered(&q.id, "direct", 2_000).unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert_eq!(store.get_sent(&q.id).unwrap(), None, "insert rolled back");
    assert_eq!(store.queued_for("alice").unwrap(), std::slice::from_ref(&q));
    // And the other way round: the INSERT half fails.
    store
        .conn()
        .execute_batch("DROP TRIGGER fail_delete")
        .unwrap();
    store
        .conn()
        .execute(
            "INSERT INTO sent (id, recipient, text, sent_at_ms, conv_seq, attempts, path,
                               delivered_at_ms)
             VALUES (?1, 'zed', 'other', 0, 1, 0, 'direct', 0)",
            params![q.id],
        )
        .unwrap();
    assert!(store.mark_delivered(&q.id, "direct", 2_000).is_err());
    assert_eq!(store.queued_for("alice").unwrap(), std::slice::from_ref(&q));
    assert_eq!(store.get_sent(&q.id).unwrap().unwrap().to, "zed");
    // Nothing half-done reappears after a restart either.
    let store = reopen(&dir, store);
    assert_eq!(store.queued_for("alice").unwrap(), [q]);
}

#[test]
fn burst_of_1000_then_due_in_order() {
    let (dir, store) = fresh();
    let recipients = ["carol", "alice", "bob"];
    for n in 0..1_000u32 {
        store
            .enqueue(&msg(n, recipients[n as usize % recipients.len()]))
            .unwrap();
    }
    assert_eq!(store.outbox_len().unwrap(), 1_000);
    let due = store.due(u64::MAX, 5_000).unwrap();
    assert_eq!(due.len(), 1_000);
    let keys: Vec<(&str, u64)> = due.iter().map(|m| (m.to.as_str(), m.conv_seq)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "ordered by recipient then sequence");
    assert_eq!(due.iter().filter(|m| m.to == "alice").count(), 333);
    assert_eq!(
        seqs(&store.queued_for("alice").unwrap()),
        (1..=333).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&store.queued_for("carol").unwrap()),
        (1..=334).collect::<Vec<_>>()
    );
    assert_eq!(
        store.due_recipients(u64::MAX, 10).unwrap(),
        ["alice", "bob", "carol"]
    );
    assert_eq!(store.due_recipients(u64::MAX, 2).unwrap(), ["alice", "bob"]);
    assert!(store.due_recipients(0, 10).unwrap().is_empty());
    // The head of a queue alone, in order.
    assert_eq!(
        seqs(&store.queued_head("carol", 64).unwrap()),
        (1..=64).collect::<Vec<_>>()
    );
    // Within a conversation, sequence follows enqueue order.
    let carol = store.queued_for("carol").unwrap();
    assert!(carol.windows(2).all(|w| w[0].id < w[1].id));
    // `limit` bounds, and `now` filters (message n is due at 1_000 + n).
    assert_eq!(store.due(u64::MAX, 10).unwrap(), due[..10]);
    assert_eq!(store.due(1_009, 1_000).unwrap().len(), 10);
    assert!(store.due(999, 1_000).unwrap().is_empty());
    let store = reopen(&dir, store);
    assert_eq!(store.due(u64::MAX, 5_000).unwrap(), due);
}

#[test]
fn duplicate_ids_are_refused_without_using_a_sequence() {
    let (_dir, store) = fresh();
    let q = store.enqueue(&msg(1, "alice")).unwrap();
    assert!(matches!(
        store.enqueue(&msg(1, "alice")),
        Err(StoreError::DuplicateId(id)) if id == q.id
    ));
    store.mark_delivered(&q.id, "direct", 1).unwrap();
    assert!(matches!(
        store.enqueue(&msg(1, "bob")),
        Err(StoreError::DuplicateId(_))
    ));
    assert_eq!(store.enqueue(&msg(2, "alice")).unwrap().conv_seq, 2);
}

#[test]
fn outbox_is_bounded() {
    let (_dir, mut store) = fresh();
    store.max_outbox = 3;
    for n in 0..3 {
        store.enqueue(&msg(n, "alice")).unwrap();
    }
    assert!(matches!(
        store.enqueue(&msg(3, "bob")),
        Err(StoreError::OutboxFull { max: 3 })
    ));
    store.mark_delivered(&ulid(0), "direct", 1).unwrap();
    assert_eq!(store.enqueue(&msg(3, "bob")).unwrap().conv_seq, 1);
}

#[test]
fn text_up_to_64_kib_and_no_more() {
    let (dir, store) = fresh();
    let mut m = msg(1, "alice");
    // Multi-byte characters, exactly at the limit.
    m.text = "é".repeat(MAX_MESSAGE_TEXT_BYTES / 2);
    assert_eq!(m.text.len(), MAX_MESSAGE_TEXT_BYTES);
    store.enqueue(&m).unwrap();
    let store = reopen(&dir, store);
    assert_eq!(store.queued_for("alice").unwrap()[0].text, m.text);
    let mut big = msg(2, "alice");
    big.text = "x".repeat(MAX_MESSAGE_TEXT_BYTES + 1);
    assert!(matches!(
        store.enqueue(&big),
        Err(StoreError::TooLarge { .. })
    ));
}

#[test]
fn bad_input_is_refused_not_panicked_on() {
    let (_dir, store) = fresh();
    let mut m = msg(1, "Alice");
    assert!(matches!(store.enqueue(&m), Err(StoreError::BadName { .. })));
    m.to = "al".into();
    assert!(matches!(store.enqueue(&m), Err(StoreError::BadName { .. })));
    m.to = "alice".into();
    m.id = "not-a-ulid".into();
    assert!(matches!(store.enqueue(&m), Err(StoreError::Invalid { .. })));
    m.id = ulid(1);
    m.sent_at_ms = u64::MAX;
    assert!(matches!(store.enqueue(&m), Err(StoreError::Invalid { .. })));
    m.sent_at_ms = 0;
    m.text = "\u{0}nul and 'quotes'; DROP TABLE outbox;--".into();
    let q = store.enqueue(&m).unwrap();
    assert!(matches!(
        store.mark_delivered(&q.id, "carrier pigeon", 1),
        Err(StoreError::Invalid { .. })
    ));
    assert!(store.mark_delivered(&q.id, "direct", u64::MAX).is_err());
    assert!(store.reschedule(&q.id, 1, u64::MAX, None).is_err());
    assert_eq!(store.queued_for("alice").unwrap(), std::slice::from_ref(&q));
    // Unknown ids and names are simply absent.
    assert!(!store.mark_delivered("nope", "direct", 1).unwrap());
    assert!(!store.reschedule("nope", 1, 1, None).unwrap());
    assert!(store.queued_for("nobody at all").unwrap().is_empty());
    assert_eq!(store.due(0, 0).unwrap(), []);
    // Huge errors are cut at a character boundary.
    let long = "é".repeat(MAX_ERROR_BYTES);
    store.reschedule(&q.id, u32::MAX, 5, Some(&long)).unwrap();
    let q = &store.queued_for("alice").unwrap()[0];
    assert_eq!(q.attempts, u32::MAX);
    let err = q.last_error.as_deref().unwrap();
    assert_eq!(err.len(), MAX_ERROR_BYTES);
    assert!(long.starts_with(err));
}

#[test]
fn truncate_respects_char_boundaries() {
    assert_eq!(truncate("héllo", 2), "h");
    assert_eq!(truncate("héllo", 3), "hé");
    assert_eq!(truncate("abc", 10), "abc");
    assert_eq!(truncate("", 0), "");
}
