#![allow(clippy::unwrap_used)]

use super::*;

fn drain(a: &mut Attach) -> Vec<AttachAction> {
    std::iter::from_fn(|| a.next_action()).collect()
}

fn first(_: usize) -> usize {
    0
}

const NONE: [PeerId; 0] = [];

#[test]
fn the_pick_is_among_the_best_tier_left_only() {
    let me = PeerId::random();
    let (reached, listed, rumour) = (PeerId::random(), PeerId::random(), PeerId::random());
    let ranked = [
        Ranked {
            peer: reached,
            tier: 0,
        },
        Ranked {
            peer: listed,
            tier: 1,
        },
        Ranked {
            peer: rumour,
            tier: 2,
        },
    ];
    let last = |n: usize| n - 1;
    let mut s = Attach::default();
    s.bootstrap_asked(Instant::now());
    s.tick(ranked, me, Instant::now(), last);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(reached)]);
    s.failed(reached, Instant::now());
    drain(&mut s);
    // The one the login server lists comes before the rumour, whatever the pick.
    s.tick(ranked, me, Instant::now(), last);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(listed)]);
    s.failed(listed, Instant::now());
    drain(&mut s);
    s.tick(ranked, me, Instant::now(), last);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(rumour)]);
    // Equals are picked among.
    let (x, y) = (PeerId::random(), PeerId::random());
    let mut s = Attach::default();
    s.tick([x, y], me, Instant::now(), last);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(y)]);
}

#[tokio::test(start_paused = true)]
async fn attaches_primary_then_standby_and_fails_over() {
    let me = PeerId::random();
    let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut s = Attach::default();
    s.tick([a, b, c], me, Instant::now(), first);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(a)]);
    // One attempt at a time.
    s.tick([a, b, c], me, Instant::now(), first);
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.attached(a), Some(Slot::Primary));
    s.tick([a, b, c], me, Instant::now(), first);
    assert_eq!(
        drain(&mut s),
        vec![
            AttachAction::Attached(a, Slot::Primary),
            AttachAction::Attach(b)
        ]
    );
    assert_eq!(s.attached(b), Some(Slot::Standby));
    drain(&mut s);
    // The primary dies: the standby takes over at once, and a new standby is sought
    // among the others (the lost one is backed off).
    s.lost(a, Instant::now());
    assert_eq!((s.primary(), s.standby()), (Some(b), None));
    s.tick([a, b, c], me, Instant::now(), first);
    assert_eq!(
        drain(&mut s),
        vec![
            AttachAction::PrimaryChanged {
                lost: a,
                new: Some(b)
            },
            AttachAction::Attach(c)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_are_skipped_for_a_minute_failures_back_off_doubling() {
    let me = PeerId::random();
    let a = PeerId::random();
    let mut s = Attach::default();
    s.bootstrap_asked(Instant::now());
    s.tick([a], me, Instant::now(), first);
    drain(&mut s);
    s.refused(a, Instant::now());
    // Unattached, and the only candidate is skipped: it is tried again all the same
    // rather than staying unreachable... after its refusal it is the one whose wait ends
    // first.
    s.tick([a], me, Instant::now(), first);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(a)]);
    // Failures: 1 s, then 2 s, then 4 s before the candidate list offers it again.
    let b = PeerId::random();
    let mut s = Attach::default();
    s.attached(a);
    drain(&mut s);
    s.bootstrap_asked(Instant::now());
    for wait in [1u64, 2, 4] {
        s.tick([b], me, Instant::now(), first);
        assert_eq!(drain(&mut s), vec![AttachAction::Attach(b)]);
        s.failed(b, Instant::now());
        assert_eq!(drain(&mut s), vec![AttachAction::HostFailed(b)]);
        tokio::time::advance(Duration::from_millis(wait * 1000 - 1)).await;
        s.tick([b], me, Instant::now(), first);
        assert!(
            drain(&mut s).is_empty(),
            "{b} offered again before {wait} s"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_without_answer_times_out_and_nothing_left_asks_the_login_server() {
    let me = PeerId::random();
    let (a, b) = (PeerId::random(), PeerId::random());
    let mut s = Attach::default();
    s.tick([a, b], me, Instant::now(), first);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(a)]);
    tokio::time::advance(ATTACH_TIMEOUT - Duration::from_millis(1)).await;
    s.tick([a, b], me, Instant::now(), |_| 1);
    assert!(drain(&mut s).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    s.tick([a, b], me, Instant::now(), |_| 1);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(b)]);
    // No candidates at all: a fresh bootstrap list, at most every 10 s (±20%).
    let mut s = Attach::default();
    s.tick(NONE, me, Instant::now(), first);
    assert_eq!(drain(&mut s), vec![AttachAction::Bootstrap]);
    tokio::time::advance(Duration::from_secs(7)).await;
    s.tick(NONE, me, Instant::now(), first);
    assert!(drain(&mut s).is_empty());
    tokio::time::advance(Duration::from_secs(6)).await;
    s.tick(NONE, me, Instant::now(), first);
    assert_eq!(drain(&mut s), vec![AttachAction::Bootstrap]);
}

#[tokio::test(start_paused = true)]
async fn a_loss_with_no_other_candidate_asks_the_login_server_at_once() {
    let me = PeerId::random();
    let (a, b) = (PeerId::random(), PeerId::random());
    let mut s = Attach::default();
    s.bootstrap_asked(Instant::now());
    s.tick([a, b], me, Instant::now(), first);
    s.attached(a);
    s.tick([a, b], me, Instant::now(), first);
    s.attached(b);
    drain(&mut s);
    tokio::time::advance(Duration::from_secs(3)).await;
    // Both known superpeers held, then the primary dies: the only other name known is
    // the dead one, backing off. A fresh list now, not 20 s after the last one.
    s.lost(a, Instant::now());
    s.tick([a, b], me, Instant::now(), first);
    assert_eq!(
        drain(&mut s),
        vec![
            AttachAction::PrimaryChanged {
                lost: a,
                new: Some(b)
            },
            AttachAction::Bootstrap
        ]
    );
    // Once per loss: the usual wait holds again after it.
    tokio::time::advance(Duration::from_secs(2)).await;
    s.tick([a, b], me, Instant::now(), |_| 0);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(a)]);
    s.failed(a, Instant::now());
    drain(&mut s);
    s.tick([a, b], me, Instant::now(), first);
    assert!(drain(&mut s).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lone_superpeer_that_keeps_failing_does_not_stop_bootstrap_requests() {
    // Its only superpeer came back on another port: retrying the old address alone would
    // never reach it; the login server's list has the new one.
    let me = PeerId::random();
    let a = PeerId::random();
    let mut s = Attach::default();
    s.bootstrap_asked(Instant::now());
    let mut asked = 0;
    for _ in 0..80 {
        s.tick([a], me, Instant::now(), first);
        for action in drain(&mut s) {
            match action {
                AttachAction::Attach(p) => s.failed(p, Instant::now()),
                AttachAction::Bootstrap => asked += 1,
                _ => {}
            }
        }
        drain(&mut s);
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    // 40 s unattached: a fresh list about every 10 s, then backing off.
    assert!((3..=4).contains(&asked), "asked {asked} times in 40 s");
}

#[tokio::test(start_paused = true)]
async fn failing_attempts_ask_the_login_server_again_though_candidates_are_left() {
    // A poisoned list: more names than can be tried before the first backs off, none of
    // them answering. Attempts alone would go round them for ever.
    let me = PeerId::random();
    let fakes: Vec<PeerId> = (0..40).map(|_| PeerId::random()).collect();
    let mut s = Attach::default();
    s.bootstrap_asked(Instant::now());
    let start = Instant::now();
    let mut asked = Vec::new();
    for _ in 0..30 {
        s.tick(fakes.iter().copied(), me, Instant::now(), first);
        for action in drain(&mut s) {
            match action {
                AttachAction::Attach(p) => s.failed(p, Instant::now()),
                AttachAction::Bootstrap => asked.push(Instant::now() - start),
                _ => {}
            }
        }
        drain(&mut s);
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    // Once FAILURES_BEFORE_BOOTSTRAP attempts failed, as soon as the last list is 10 s
    // (±20%) old; not before, and once only in 15 s.
    assert_eq!(asked.len(), 1, "asked at {asked:?}");
    assert!(
        (BOOTSTRAP_EVERY * 4 / 5..=BOOTSTRAP_EVERY * 6 / 5 + Duration::from_millis(500))
            .contains(&asked[0]),
        "asked at {asked:?}"
    );
    // With a primary, failed standby attempts do not hurry the login server.
    let mut s = Attach::default();
    s.attached(PeerId::random());
    s.bootstrap_asked(Instant::now());
    for _ in 0..30 {
        s.tick(fakes.iter().copied(), me, Instant::now(), first);
        for action in drain(&mut s) {
            match action {
                AttachAction::Attach(p) => s.failed(p, Instant::now()),
                AttachAction::Bootstrap => panic!("asked with a primary and candidates left"),
                _ => {}
            }
        }
        drain(&mut s);
        tokio::time::advance(Duration::from_millis(500)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_candidate_no_longer_listed_is_not_retried_while_it_backs_off() {
    // A name that failed out of the candidates (never reached, failed twice) is gone:
    // waiting out its backoff must not bring it back.
    let me = PeerId::random();
    let (gone, real) = (PeerId::random(), PeerId::random());
    let mut s = Attach::default();
    s.bootstrap_asked(Instant::now());
    s.tick([gone], me, Instant::now(), first);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(gone)]);
    s.failed(gone, Instant::now());
    drain(&mut s);
    s.tick(NONE, me, Instant::now(), first);
    assert!(drain(&mut s).is_empty());
    s.tick([real], me, Instant::now(), first);
    assert_eq!(drain(&mut s), vec![AttachAction::Attach(real)]);
}

/// Unattached with nothing to try, a node asks the login server less and less often, at
/// times spread by its id; attaching resets the backoff. Before, every 10 s for ever.
#[tokio::test(start_paused = true)]
async fn bootstrap_requests_back_off_with_jitter_and_reset_on_attach() {
    let me = PeerId::random();
    let mut s = Attach::default();
    let start = Instant::now();
    let mut asked = Vec::new();
    for _ in 0..(600 * 2) {
        s.tick(NONE, me, Instant::now(), first);
        if drain(&mut s).contains(&AttachAction::Bootstrap) {
            asked.push((Instant::now() - start).as_secs_f64());
        }
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    let gaps: Vec<f64> = asked.windows(2).map(|w| w[1] - w[0]).collect();
    let bases = [10.0, 10.0, 20.0, 40.0, 80.0, 80.0];
    for (gap, base) in gaps.iter().zip(bases) {
        assert!(
            (base * 0.8..=base * 1.2 + 0.5).contains(gap),
            "gaps {gaps:?}"
        );
    }
    // 10 minutes: asked at about 10, 20, 30, 50, 90, 170, 250, 330, 410, 490, 570 s: 10
    // to 12 requests, not 60.
    assert!((10..=12).contains(&asked.len()), "asked at {asked:?}");
    // Two nodes started together do not keep asking together.
    let other = PeerId::random();
    let spread: Vec<Duration> = (1..5)
        .map(|r| bootstrap_every(r, false, me).abs_diff(bootstrap_every(r, false, other)))
        .collect();
    assert!(spread.iter().any(|d| *d > Duration::ZERO), "{spread:?}");
    // Attached: the backoff starts over.
    s.attached(PeerId::random());
    assert_eq!(s.bootstrap_rounds, 0);
}

#[test]
fn clearing_hands_back_both_slots() {
    let mut s = Attach::default();
    let (a, b) = (PeerId::random(), PeerId::random());
    s.attached(a);
    s.attached(b);
    assert_eq!(s.clear(), vec![a, b]);
    assert!(!s.holds(a) && !s.holds(b));
}
