use super::*;

fn leaf(reason: &str) -> Decision {
    Decision::Leaf(reason.into())
}

#[test]
fn a_short_dip_does_not_demote() {
    let mut gate = RoleGate::new(Hysteresis::default());
    let t0 = Instant::now();
    let s = |secs| t0 + Duration::from_secs(secs);
    assert_eq!(
        gate.observe(true, leaf("low memory"), false, s(0)),
        RoleChange::Stay
    );
    assert_eq!(
        gate.observe(true, leaf("low memory"), false, s(20)),
        RoleChange::Stay
    );
    assert_eq!(gate.pending(true, s(20)), Some(Duration::from_secs(10)));
    // The condition recovers before 30 s: the clock starts again.
    assert_eq!(
        gate.observe(true, Decision::Superpeer, false, s(25)),
        RoleChange::Stay
    );
    assert_eq!(gate.pending(true, s(25)), None);
    assert_eq!(
        gate.observe(true, leaf("low memory"), false, s(26)),
        RoleChange::Stay
    );
    assert_eq!(
        gate.observe(true, leaf("low memory"), false, s(55)),
        RoleChange::Stay
    );
    assert_eq!(
        gate.observe(true, leaf("low memory"), false, s(56)),
        RoleChange::Demote("low memory".into())
    );
}

#[test]
fn promotion_waits_briefly_and_forced_roles_act_at_once() {
    let mut gate = RoleGate::new(Hysteresis::default());
    let t0 = Instant::now();
    assert_eq!(
        gate.observe(false, Decision::Superpeer, false, t0),
        RoleChange::Stay
    );
    assert_eq!(
        gate.observe(
            false,
            Decision::Superpeer,
            false,
            t0 + Duration::from_secs(2)
        ),
        RoleChange::Promote
    );
    let mut forced = RoleGate::new(Hysteresis::default());
    assert_eq!(
        forced.observe(false, Decision::Superpeer, true, t0),
        RoleChange::Promote
    );
    assert_eq!(
        forced.observe(true, leaf("opted out"), true, t0),
        RoleChange::Demote("opted out".into())
    );
}

fn capable() -> Resources {
    Resources {
        cores: 4,
        free_memory_mib: Some(4096),
        uptime: Duration::from_secs(3600),
    }
}

#[test]
fn every_condition_is_needed_for_auto() {
    let t = Thresholds::default();
    assert_eq!(
        decide(Role::Auto, true, &capable(), &t, None, None, false),
        Decision::Superpeer
    );
    assert!(
        matches!(decide(Role::Auto, false, &capable(), &t, None, None, false), Decision::Leaf(r) if r.contains("AutoNAT"))
    );
    let few_cores = Resources {
        cores: 1,
        ..capable()
    };
    assert!(
        matches!(decide(Role::Auto, true, &few_cores, &t, None, None, false), Decision::Leaf(r) if r.contains("cores"))
    );
    let low_mem = Resources {
        free_memory_mib: Some(10),
        ..capable()
    };
    assert!(
        matches!(decide(Role::Auto, true, &low_mem, &t, None, None, false), Decision::Leaf(r) if r.contains("memory"))
    );
    let young = Resources {
        uptime: Duration::from_secs(5),
        ..capable()
    };
    assert!(
        matches!(decide(Role::Auto, true, &young, &t, None, None, false), Decision::Leaf(r) if r.contains("up 5 s"))
    );
    let lab = Thresholds {
        min_uptime: Duration::ZERO,
        ..t
    };
    assert_eq!(
        decide(Role::Auto, true, &young, &lab, None, None, false),
        Decision::Superpeer
    );
}

/// Too few superpeers, or too full ones: a young node promotes; with enough, it waits.
/// A superpeer is never demoted by the uptime rule when the need passes.
#[test]
fn need_waives_the_uptime_rule_for_promotion_only() {
    let t = Thresholds::default();
    let policy = NeedPolicy::default();
    let young = Resources {
        uptime: Duration::from_secs(5),
        ..capable()
    };
    let supply = |superpeers, leaves, capacity| Supply {
        superpeers,
        leaves,
        capacity,
    };
    assert_eq!(policy.need(None), None, "nothing known yet");
    let few = policy.need(Some(&supply(2, 0, 2000)));
    assert!(
        few.as_deref()
            .is_some_and(|r| r.contains("2 superpeer(s), fewer than 3"))
    );
    let full = policy.need(Some(&supply(4, 2100, 4000)));
    assert!(
        full.as_deref().is_some_and(|r| r.contains("52% full")),
        "{full:?}"
    );
    assert_eq!(policy.need(Some(&supply(4, 2000, 4000))), None);
    assert_eq!(policy.need(Some(&supply(3, 0, 0))), None);
    for need in [&few, &full] {
        assert_eq!(
            decide(Role::Auto, true, &young, &t, need.as_deref(), None, false),
            Decision::Superpeer
        );
    }
    assert!(matches!(
        decide(Role::Auto, true, &young, &t, None, None, false),
        Decision::Leaf(r) if r.contains("enough superpeers")
    ));
    assert_eq!(
        decide(Role::Auto, true, &young, &t, None, None, true),
        Decision::Superpeer,
        "a superpeer stays when the need passes"
    );
    // Need never waives reachability or resources.
    assert!(matches!(
        decide(Role::Auto, false, &young, &t, few.as_deref(), None, false),
        Decision::Leaf(_)
    ));
}

/// Too many superpeers for the load: the surplus rule holds a capable old leaf back and
/// demotes a sitting superpeer, with a gap to the need rule so that neither undoes the
/// other.
#[test]
fn surplus_is_more_than_the_minimum_with_the_rest_under_half_the_target() {
    let policy = NeedPolicy::default();
    let t = Thresholds::default();
    let supply = |superpeers, leaves, capacity| Supply {
        superpeers,
        leaves,
        capacity,
    };
    assert_eq!(policy.surplus(None, 1000), None, "nothing known yet");
    // Three are the minimum, however idle.
    assert_eq!(policy.surplus(Some(&supply(3, 0, 3000)), 1000), None);
    // Five, 1000 leaves: the other four would be 25% full, half the target.
    let surplus = policy.surplus(Some(&supply(5, 1000, 5000)), 1000);
    assert!(
        surplus.as_deref().is_some_and(|r| r.contains("25% full")),
        "{surplus:?}"
    );
    assert_eq!(policy.surplus(Some(&supply(5, 1001, 5000)), 1000), None);
    // One account claiming a huge capacity does not make the honest ones a surplus: the
    // others count at most as large as this one (3 x 1000 here, so 1000 leaves are 33%).
    let inflated = supply(4, 1000, 3000 + u64::from(u32::MAX));
    assert_eq!(policy.surplus(Some(&inflated), 1000), None);
    // After one demoted, the others are not surplus, and nobody is needed either.
    let after = supply(4, 1000, 4000);
    assert_eq!(policy.surplus(Some(&after), 1000), None);
    assert_eq!(policy.need(Some(&after)), None);
    // A leaf that would be one too many stays a leaf, even up long enough.
    let enough = policy.enough(Some(&supply(4, 0, 4000)), 1000);
    assert!(
        enough
            .as_deref()
            .is_some_and(|r| r.contains("enough superpeers (4, 0% full)")),
        "{enough:?}"
    );
    assert_eq!(policy.enough(Some(&supply(2, 0, 2000)), 1000), None);
    assert_eq!(policy.enough(Some(&supply(3, 1600, 3000)), 1000), None);
    assert!(matches!(
        decide(Role::Auto, true, &capable(), &t, None, enough.as_deref(), false),
        Decision::Leaf(r) if r.contains("enough superpeers")
    ));
    assert!(matches!(
        decide(Role::Auto, true, &capable(), &t, None, surplus.as_deref(), true),
        Decision::Leaf(r) if r.contains("more than the 3 it needs")
    ));
    // Forced roles are not the policy's to change.
    assert_eq!(
        decide(
            Role::Superpeer,
            true,
            &capable(),
            &t,
            None,
            surplus.as_deref(),
            true
        ),
        Decision::Superpeer
    );
}

/// A need is acted on only after the random wait and a fresh answer; without a need the
/// gate starts over.
#[test]
fn a_need_waits_then_asks_then_acts_on_the_fresh_answer() {
    let mut gate = NeedGate::default();
    let t0 = Instant::now();
    let s = |ms| t0 + Duration::from_millis(ms);
    let need = || Some("few".to_owned());
    let wait = || Duration::from_millis(3000);
    // Learned at start: wait 3 s.
    assert_eq!(
        gate.observe(need(), Some(t0), t0, wait),
        NeedStep::Wait(s(3000))
    );
    assert_eq!(
        gate.observe(need(), Some(t0), s(2999), wait),
        NeedStep::Wait(s(3000))
    );
    assert_eq!(gate.observe(need(), Some(t0), s(3000), wait), NeedStep::Ask);
    // Asked, no answer yet: no second ask for 10 s.
    assert_eq!(
        gate.observe(need(), Some(t0), s(5000), wait),
        NeedStep::Wait(s(3000))
    );
    assert_eq!(
        gate.observe(need(), Some(t0), s(13_000), wait),
        NeedStep::Ask
    );
    // The answer came after the wait and still says "needed".
    assert_eq!(
        gate.observe(need(), Some(s(13_100)), s(13_200), wait),
        NeedStep::Act(need())
    );
    // It says "enough": no need, and the gate starts over.
    assert_eq!(
        gate.observe(None, Some(s(14_000)), s(14_000), wait),
        NeedStep::Act(None)
    );
    assert_eq!(
        gate.observe(need(), Some(s(14_000)), s(15_000), wait),
        NeedStep::Wait(s(18_000))
    );
}

#[test]
fn explicit_roles_win() {
    let t = Thresholds::default();
    let weak = Resources {
        cores: 1,
        free_memory_mib: Some(1),
        uptime: Duration::ZERO,
    };
    assert_eq!(
        decide(Role::Superpeer, false, &weak, &t, None, None, false),
        Decision::Superpeer
    );
    assert!(matches!(
        decide(Role::Leaf, true, &capable(), &t, None, None, false),
        Decision::Leaf(_)
    ));
}

#[test]
fn meminfo_parsing() {
    let s = "MemTotal:       24000000 kB\nMemAvailable:    2097152 kB\n";
    assert_eq!(parse_mem_available(s), Some(2048));
    assert_eq!(parse_mem_available("garbage"), None);
}
