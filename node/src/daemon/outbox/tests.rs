//! The outbox state machine's tests, on tokio's paused time.

#![allow(clippy::unwrap_used)]

use super::*;

fn name(n: &str) -> UserName {
    UserName::parse(n).unwrap()
}

fn queued(id: &str, to: &str, seq: u64) -> QueuedMessage {
    QueuedMessage {
        id: id.into(),
        to: to.into(),
        text: format!("text {seq}"),
        sent_at_ms: 0,
        conv_seq: seq,
        attempts: 0,
        next_attempt_at_ms: 0,
        last_error: None,
        refused: false,
    }
}

/// An outbox with a route to bob, and `send`s m1..m3 to him waiting (waiters 1 to 3).
fn three_sends_to_bob() -> (Outbox<u32>, UserName) {
    let mut o: Outbox<u32> = Outbox::default();
    let bob = name("bob");
    o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
    o.queueing();
    for i in 1..=3 {
        o.queued(bob.clone(), format!("m{i}"), Some(i), Instant::now());
    }
    drain(&mut o);
    (o, bob)
}

/// The ids of the batches the next actions deliver.
fn delivered_ids<W>(actions: &[Action<W>]) -> Vec<Vec<String>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { messages, .. } => {
                Some(messages.iter().map(|m| m.id.clone()).collect())
            }
            _ => None,
        })
        .collect()
}

fn drain<W>(o: &mut Outbox<W>) -> Vec<Action<W>> {
    std::iter::from_fn(|| o.next_action()).collect()
}

/// The answers to `send`s among the next actions: who waited, and what they hear.
fn answers(o: &mut Outbox<u32>) -> Vec<(u32, SendOutcome)> {
    drain(o)
        .into_iter()
        .filter_map(|a| match a {
            Action::Answer {
                waiter, outcome, ..
            } => Some((waiter, outcome)),
            _ => None,
        })
        .collect()
}

fn reads<W>(actions: &[Action<W>]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::ReadDue { .. }))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_burst_to_a_known_route_makes_no_lookup_and_one_batch_in_flight() {
    let mut o: Outbox<u32> = Outbox::default();
    let bob = name("bob");
    let peer = PeerId::random();
    o.learn_route(bob.clone(), peer, vec![], Instant::now());
    for i in 0..100 {
        o.queueing();
        o.queued(bob.clone(), format!("m{i}"), None, Instant::now());
    }
    let actions = drain(&mut o);
    // One read, whatever the burst (the other 99 asked for one more pass).
    assert_eq!(reads(&actions), 1);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Lookup(_) | Action::CheckUser(_)))
    );
    let batch: Vec<QueuedMessage> = (0..100)
        .map(|i| queued(&format!("m{i}"), "bob", i))
        .collect();
    o.due_read(Some(vec![("bob".into(), batch.clone())]), Instant::now());
    let actions = drain(&mut o);
    let delivers: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver {
                messages, peer: p, ..
            } => Some((messages.len(), *p)),
            _ => None,
        })
        .collect();
    assert_eq!(delivers, vec![(MAX_BATCH, peer)]);
    // The second pass skips bob: a batch is in flight.
    let Some(Action::ReadDue { busy }) = actions.last() else {
        panic!("expected the pass asked for meanwhile: {actions:?}");
    };
    assert!(busy.contains("bob"));
    o.due_read(Some(vec![("bob".into(), batch)]), Instant::now());
    assert!(
        !drain(&mut o)
            .iter()
            .any(|a| matches!(a, Action::Deliver { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn the_read_is_asked_for_with_the_write_not_after_it() {
    let mut o: Outbox<u32> = Outbox::default();
    let bob = name("bob");
    o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
    o.queueing();
    assert_eq!(
        reads(&drain(&mut o)),
        1,
        "asked for before the write is durable"
    );
    // The write's commit comes back first (the store answers in order): no second read.
    o.queued(bob.clone(), "m1".into(), Some(1), Instant::now());
    assert_eq!(reads(&drain(&mut o)), 0);
    o.due_read(
        Some(vec![("bob".into(), vec![queued("m1", "bob", 1)])]),
        Instant::now(),
    );
    assert!(
        drain(&mut o)
            .iter()
            .any(|a| matches!(a, Action::Deliver { messages, .. } if messages.len() == 1))
    );
}

#[tokio::test(start_paused = true)]
async fn sends_to_a_user_without_a_route_share_one_check() {
    let mut o: Outbox<u32> = Outbox::default();
    let carol = name("carol");
    for i in 0..10 {
        o.queueing();
        o.queued(carol.clone(), format!("m{i}"), Some(i), Instant::now());
    }
    let checks = drain(&mut o)
        .into_iter()
        .filter(|a| matches!(a, Action::CheckUser(_)))
        .count();
    assert_eq!(checks, 1);
    o.user_unknown(&carol);
    let actions = drain(&mut o);
    let unknown = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Answer {
                    outcome: SendOutcome::UnknownUser,
                    ..
                }
            )
        })
        .count();
    assert_eq!(unknown, 10);
    assert!(
        matches!(actions.last(), Some(Action::Cancel { ids }) if ids.len() == 10),
        "{actions:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_backs_off_doubling_and_a_delivery_resets_it() {
    let mut o: Outbox<u32> = Outbox::default();
    let bob = name("bob");
    let due = || Some(vec![("bob".to_string(), vec![queued("m1", "bob", 1)])]);
    let delivers = |o: &mut Outbox<u32>| {
        drain(o)
            .iter()
            .filter(|a| matches!(a, Action::Deliver { .. }))
            .count()
    };
    let t0 = Instant::now();
    for (failures, wait_ms) in [(0u32, 1000u64), (1, 2000), (2, 4000)] {
        o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
        o.pump();
        o.due_read(due(), Instant::now());
        assert_eq!(delivers(&mut o), 1, "attempt after {failures} failures");
        o.failed(bob.clone(), "refused".into(), Instant::now());
        assert!(
            o.route(&bob, Instant::now()).is_none(),
            "the route is forgotten"
        );
        // Just before the backoff ends: held back.
        tokio::time::advance(Duration::from_millis(wait_ms - 10)).await;
        o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
        o.pump();
        o.due_read(due(), Instant::now());
        assert_eq!(delivers(&mut o), 0, "held back {wait_ms} ms");
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert!(t0.elapsed() >= Duration::from_secs(7));
    o.pump();
    o.due_read(due(), Instant::now());
    assert_eq!(delivers(&mut o), 1);
    o.delivered(&bob, "direct");
    // After a delivery, a failure waits 1 s again.
    o.pump();
    o.due_read(due(), Instant::now());
    assert_eq!(delivers(&mut o), 1);
    o.failed(bob.clone(), "gone".into(), Instant::now());
    tokio::time::advance(Duration::from_millis(1000)).await;
    o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
    o.pump();
    o.due_read(due(), Instant::now());
    assert_eq!(delivers(&mut o), 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_hear_delivered_or_queued_after_five_seconds() {
    let mut o: Outbox<u32> = Outbox::default();
    let bob = name("bob");
    o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
    o.queueing();
    o.queued(bob.clone(), "m1".into(), Some(1), Instant::now());
    o.queued(bob.clone(), "m2".into(), Some(2), Instant::now());
    drain(&mut o);
    o.due_read(
        Some(vec![("bob".into(), vec![queued("m1", "bob", 1)])]),
        Instant::now(),
    );
    drain(&mut o);
    o.delivered(&bob, "relayed");
    let answered = answers(&mut o);
    assert_eq!(answered, vec![(1, SendOutcome::Delivered("relayed"))]);
    tokio::time::advance(SEND_WAIT - Duration::from_millis(1)).await;
    o.tick(Instant::now());
    assert!(answers(&mut o).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    o.tick(Instant::now());
    let answered = answers(&mut o);
    assert_eq!(answered, vec![(2, SendOutcome::Queued)]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_refused_in_part_delivers_the_stored_ones_and_holds_the_rest() {
    let (mut o, bob) = three_sends_to_bob();
    let batch = (1..=3)
        .map(|i| queued(&format!("m{i}"), "bob", i))
        .collect();
    o.due_read(Some(vec![("bob".into(), batch)]), Instant::now());
    drain(&mut o);
    o.refused(
        bob.clone(),
        1,
        "direct",
        "inbox full".into(),
        Instant::now(),
    );
    let actions = drain(&mut o);
    let mut answered: Vec<(u32, SendOutcome)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer {
                waiter, outcome, ..
            } => Some((*waiter, outcome.clone())),
            _ => None,
        })
        .collect();
    answered.sort_by_key(|(w, _)| *w);
    let refused = SendOutcome::Refused("inbox full".into());
    assert_eq!(
        answered,
        vec![
            (1, SendOutcome::Delivered("direct")),
            (2, refused.clone()),
            (3, refused)
        ]
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::MarkDelivered { ids, .. } if ids == &["m1".to_owned()]))
    );
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Postpone { to, why } if *to == bob && why == "inbox full")
        )
    );
    // Held back like a failure: no new batch before the backoff ends.
    o.pump();
    o.due_read(
        Some(vec![("bob".into(), vec![queued("m2", "bob", 2)])]),
        Instant::now(),
    );
    assert!(
        !drain(&mut o)
            .iter()
            .any(|a| matches!(a, Action::Deliver { .. }))
    );
}

/// A recipient that refuses a batch as malformed: the batch goes again one message at a
/// time, at once, the refused one is parked (and its `send` told), the good ones are
/// delivered, and full batches resume once the refused batch is gone through. Before,
/// the whole batch was retried every 30 s for ever.
#[tokio::test(start_paused = true)]
async fn a_message_refused_as_malformed_is_found_and_parked_and_the_rest_delivered() {
    let (mut o, bob) = three_sends_to_bob();
    let all: Vec<QueuedMessage> = (1..=70)
        .map(|i| queued(&format!("m{i}"), "bob", i))
        .collect();
    let from = |first: usize| vec![("bob".to_owned(), all[first..].to_vec())];
    o.due_read(Some(from(0)), Instant::now());
    assert_eq!(delivered_ids(&drain(&mut o))[0].len(), MAX_BATCH);
    // m2 is malformed by bob's rules: the whole batch is refused.
    o.refused_for_good(bob.clone(), "sequence too large".into());
    let actions = drain(&mut o);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Postpone { .. })),
        "not a failure to back off from: {actions:?}"
    );
    o.due_read(Some(from(0)), Instant::now());
    assert_eq!(delivered_ids(&drain(&mut o)), [["m1"]]);
    o.delivered(&bob, "direct");
    assert_eq!(answers(&mut o), [(1, SendOutcome::Delivered("direct"))]);
    o.due_read(Some(from(1)), Instant::now());
    assert_eq!(delivered_ids(&drain(&mut o)), [["m2"]]);
    o.refused_for_good(bob.clone(), "sequence too large".into());
    let actions = drain(&mut o);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::RefuseForGood { id, why } if id == "m2" && why == "sequence too large"
    )));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Answer {
            waiter: 2,
            outcome: SendOutcome::RefusedForGood(_),
            ..
        }
    )));
    // The refused one found, the next batch is a full one again.
    o.due_read(Some(from(2)), Instant::now());
    let batches = delivered_ids(&drain(&mut o));
    assert_eq!(batches[0].len(), MAX_BATCH);
    assert_eq!(batches[0][0], "m3");
}

/// Good messages delivered one by one end the probe after as many as the refused batch
/// held, even if none of them is refused again (the recipient changed its mind).
#[tokio::test(start_paused = true)]
async fn a_probe_ends_after_the_refused_batch_however_it_goes() {
    let mut o: Outbox<u32> = Outbox::default();
    let bob = name("bob");
    o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
    let all: Vec<QueuedMessage> = (1..=10)
        .map(|i| queued(&format!("m{i}"), "bob", i))
        .collect();
    let from = |first: usize| vec![("bob".to_owned(), all[first..].to_vec())];
    o.pump();
    drain(&mut o);
    o.due_read(
        Some(vec![("bob".to_owned(), all[..3].to_vec())]),
        Instant::now(),
    );
    drain(&mut o);
    o.refused_for_good(bob.clone(), "bad".into());
    drain(&mut o);
    for first in 0..3 {
        o.due_read(Some(from(first)), Instant::now());
        assert_eq!(delivered_ids(&drain(&mut o))[0].len(), 1);
        o.delivered(&bob, "direct");
        drain(&mut o);
    }
    o.due_read(Some(from(3)), Instant::now());
    assert_eq!(delivered_ids(&drain(&mut o))[0].len(), 7);
}

#[tokio::test(start_paused = true)]
async fn routes_expire_after_a_minute() {
    let mut o: Outbox<u32> = Outbox::default();
    let bob = name("bob");
    o.learn_route(bob.clone(), PeerId::random(), vec![], Instant::now());
    tokio::time::advance(ROUTE_TTL - Duration::from_millis(1)).await;
    assert!(o.route(&bob, Instant::now()).is_some());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(o.route(&bob, Instant::now()).is_none());
    o.pump();
    drain(&mut o);
    o.due_read(
        Some(vec![("bob".into(), vec![queued("m1", "bob", 1)])]),
        Instant::now(),
    );
    let actions = drain(&mut o);
    assert!(
        matches!(actions.first(), Some(Action::Lookup(n)) if *n == bob),
        "{actions:?}"
    );
}

#[test]
fn backoff_doubles_to_thirty_seconds() {
    assert_eq!(backoff_ms(0), 1000);
    assert_eq!(backoff_ms(1), 2000);
    assert_eq!(backoff_ms(4), 16_000);
    assert_eq!(backoff_ms(5), 30_000);
    assert_eq!(backoff_ms(1000), 30_000);
}
