//! The fan-out state machine's tests, on tokio's paused time.

#![allow(clippy::unwrap_used)]

use super::*;

fn name(n: &str) -> UserName {
    UserName::parse(n).unwrap()
}

fn drain(f: &mut Fanout) -> Vec<FanAction> {
    std::iter::from_fn(|| f.next_action()).collect()
}

fn message(n: u32) -> FanoutMessage {
    FanoutMessage {
        id: format!("m{n}"),
        to: "bob".into(),
        text: format!("text {n}"),
        sent_at_ms: 0,
        conv_seq: u64::from(n),
    }
}

fn batch(owner: &str, device: &str, ids: &[u32]) -> FanoutBatch {
    FanoutBatch {
        owner: owner.into(),
        device: device.into(),
        messages: ids.iter().copied().map(message).collect(),
    }
}

fn device(peer: PeerId, live: bool) -> DeviceRoute {
    DeviceRoute {
        peer,
        addrs: vec![],
        live,
        status: if live {
            Status::Online
        } else {
            Status::Offline
        },
    }
}

/// A fan-out that asked for its first read.
fn started() -> (Fanout, PeerId) {
    let me = PeerId::random();
    let mut f = Fanout::new(me);
    f.tick(Instant::now());
    assert_eq!(drain(&mut f), [FanAction::Expire, FanAction::ReadDue]);
    (f, me)
}

#[tokio::test(start_paused = true)]
async fn unknown_devices_are_looked_up_once_then_resolved_without_this_one() {
    let (mut f, me) = started();
    let now = Instant::now();
    assert_eq!(f.further_devices(&name("alice"), None, now), None);
    f.due_read(
        Some(vec![batch("alice", "", &[1]), batch("alice", "", &[2])]),
        now,
    );
    assert_eq!(
        drain(&mut f),
        [FanAction::Lookup(name("alice"))],
        "one lookup"
    );

    let phone = PeerId::random();
    f.learned(
        name("alice"),
        vec![device(me, true), device(phone, false)],
        now,
    );
    assert_eq!(drain(&mut f), [FanAction::ReadDue]);
    f.due_read(Some(vec![batch("alice", "", &[1])]), now);
    assert_eq!(
        drain(&mut f),
        [
            FanAction::Resolve {
                owner: name("alice"),
                devices: vec![me, phone],
            },
            FanAction::ReadDue
        ]
    );
    // Known now: new rows name the phone at once, never this device.
    assert_eq!(
        f.further_devices(&name("alice"), None, now),
        Some(vec![phone])
    );
    // And stale after a while.
    tokio::time::advance(ROUTE_TTL).await;
    assert_eq!(
        f.further_devices(&name("alice"), None, Instant::now()),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_live_device_gets_one_batch_at_a_time_and_an_offline_one_waits() {
    let (mut f, _) = started();
    let now = Instant::now();
    let (laptop, phone, gone) = (PeerId::random(), PeerId::random(), PeerId::random());
    f.learned(
        name("bob"),
        vec![device(laptop, true), device(phone, false)],
        now,
    );
    assert_eq!(
        f.further_devices(&name("bob"), Some(laptop), now),
        Some(vec![phone])
    );
    f.due_read(
        Some(vec![
            batch("bob", &laptop.to_string(), &[1, 2]),
            batch("bob", &phone.to_string(), &[1]),
            batch("bob", &gone.to_string(), &[1]),
        ]),
        now,
    );
    let actions = drain(&mut f);
    assert!(
        matches!(&actions[0], FanAction::Deliver { peer, messages, .. }
            if *peer == laptop && messages.len() == 2),
        "{actions:?}"
    );
    assert_eq!(
        actions[1..],
        [
            FanAction::Postpone {
                owner: name("bob"),
                device: phone.to_string(),
                why: "the device is offline".into(),
            },
            FanAction::Postpone {
                owner: name("bob"),
                device: gone.to_string(),
                why: "the directory does not list the device".into(),
            },
        ]
    );
    // While the batch is out, the laptop's rows are not sent again.
    f.tick(Instant::now() + READ_EVERY);
    assert_eq!(drain(&mut f), [FanAction::ReadDue]);
    f.due_read(Some(vec![batch("bob", &laptop.to_string(), &[1, 2])]), now);
    assert_eq!(drain(&mut f), []);

    f.answered(
        laptop,
        FanOutcome::Partial {
            accepted: 1,
            path: "direct",
            why: "inbox full".into(),
        },
        now,
    );
    assert_eq!(
        drain(&mut f),
        [
            FanAction::Done {
                owner: name("bob"),
                peer: laptop,
                ids: vec!["m1".into()],
                path: "direct",
            },
            FanAction::Postpone {
                owner: name("bob"),
                device: laptop.to_string(),
                why: "inbox full".into(),
            },
            FanAction::ReadDue,
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_backs_off_and_asks_the_directory_again() {
    let (mut f, _) = started();
    let now = Instant::now();
    let laptop = PeerId::random();
    f.learned(name("bob"), vec![device(laptop, true)], now);
    f.due_read(Some(vec![batch("bob", &laptop.to_string(), &[1])]), now);
    drain(&mut f);
    f.answered(laptop, FanOutcome::Failed("dial failed".into()), now);
    assert_eq!(
        drain(&mut f),
        [
            FanAction::Postpone {
                owner: name("bob"),
                device: laptop.to_string(),
                why: "dial failed".into(),
            },
            FanAction::ReadDue,
        ]
    );
    f.due_read(Some(vec![batch("bob", &laptop.to_string(), &[1])]), now);
    assert_eq!(drain(&mut f), [FanAction::Lookup(name("bob"))]);
    f.lookup_failed(&name("bob"), "not attached");
    assert_eq!(
        drain(&mut f),
        [FanAction::Postpone {
            owner: name("bob"),
            device: laptop.to_string(),
            why: "cannot learn bob's devices: not attached".into(),
        }]
    );

    // Refused as malformed: given up for that device.
    f.learned(name("bob"), vec![device(laptop, true)], now);
    f.due_read(Some(vec![batch("bob", &laptop.to_string(), &[3])]), now);
    drain(&mut f);
    f.answered(laptop, FanOutcome::RefusedForGood("bad".into()), now);
    assert_eq!(
        drain(&mut f)[0],
        FanAction::Drop {
            owner: name("bob"),
            peer: laptop,
            ids: vec!["m3".into()],
            why: "bad".into(),
        }
    );
}

#[tokio::test(start_paused = true)]
async fn reads_are_coalesced_and_stop_with_the_node() {
    let (mut f, _) = started();
    let now = Instant::now();
    f.poke(now);
    f.poke(now);
    assert_eq!(drain(&mut f), []);
    f.due_read(Some(vec![]), now);
    assert_eq!(drain(&mut f), [FanAction::ReadDue], "one more pass");
    f.due_read(None, now);
    f.tick(now + READ_EVERY / 2);
    assert_eq!(drain(&mut f), [], "not before its time");
    f.stop();
    f.tick(now + READ_EVERY);
    f.poke(now + READ_EVERY);
    assert_eq!(drain(&mut f), []);
}

#[tokio::test(start_paused = true)]
async fn a_device_telling_its_presence_updates_what_is_known_and_names_the_others() {
    let (mut f, _) = started();
    let now = Instant::now();
    let (laptop, phone) = (PeerId::random(), PeerId::random());
    let alice = name("alice");
    f.due_read(Some(vec![]), now);
    // Nothing known of alice: nothing to say.
    assert_eq!(f.device_seen(&alice, device(phone, false), now), None);
    f.learned(
        alice.clone(),
        vec![device(laptop, false), device(phone, true)],
        now,
    );
    // The laptop comes back: what waits for it is due at once, and goes without another
    // lookup.
    assert_eq!(
        f.device_seen(&alice, device(laptop, true), now),
        Some(Status::Online),
        "the phone is still on"
    );
    assert_eq!(
        drain(&mut f),
        [
            FanAction::Wake {
                owner: alice.clone(),
                device: laptop.to_string()
            },
            FanAction::ReadDue
        ]
    );
    f.due_read(Some(vec![batch("alice", &laptop.to_string(), &[1])]), now);
    assert!(matches!(drain(&mut f)[..], [FanAction::Deliver { peer, .. }] if peer == laptop));
    // The phone signs off: the laptop is still on.
    assert_eq!(
        f.device_seen(&alice, device(phone, false), now),
        Some(Status::Online)
    );
    // Then the laptop too: nobody is.
    assert_eq!(f.device_seen(&alice, device(laptop, false), now), None);
}
