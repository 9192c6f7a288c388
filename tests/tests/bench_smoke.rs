//! The benchmark suites at their smoke size: every code path of `natter-bench` runs (real
//! daemons on loopback, in-process floors) and every row it reports is a finite, positive
//! figure. Nothing here checks how fast anything is.

use natter_tests::bench::{self, Mode, Report};

fn check(suite: &str, report: &Report) {
    assert!(!report.rows.is_empty(), "{suite}: no rows");
    for row in &report.rows {
        // A count per message the daemon should drive to zero (superpeer lookups during a
        // burst to a known route) is measured when it is zero; so are failures, and CPU at
        // rest over a smoke run's short window (the kernel counts it in 10 ms ticks).
        // Churn's counts of what went wrong, and of leaves that lost a superpeer (with a
        // handful of leaves, possibly none), are zero in a good run.
        let may_be_zero = (row.id == "msg.direct.lookups"
            || row.id.ends_with(".failures")
            || (row.id.starts_with("churn.") && row.unit != "s")
            || row.id.ends_with("cpu"))
            && row.value == 0.0;
        assert!(
            row.value.is_finite() && (row.value > 0.0 || may_be_zero),
            "{suite}: {} = {} is not a finite positive figure",
            row.figure,
            row.value
        );
        if let Some(floor) = &row.floor {
            assert!(
                report.value(floor).is_some(),
                "{suite}: {} refers to a floor {floor} that was not measured",
                row.figure
            );
        }
    }
    let table = report.table();
    assert!(table.contains(&report.rows[0].figure), "{table}");
    eprintln!("{table}");
}

#[test]
fn msg_suite_reports_every_figure() {
    let report = bench::msg::run(Mode::Smoke).unwrap_or_else(|e| panic!("{e:#}"));
    check("msg", &report);
}

#[test]
fn lookup_suite_reports_every_figure() {
    let report = bench::lookup::run(Mode::Smoke).unwrap_or_else(|e| panic!("{e:#}"));
    check("lookup", &report);
}

#[test]
fn login_suite_reports_every_figure() {
    let report = bench::login::run(Mode::Smoke).unwrap_or_else(|e| panic!("{e:#}"));
    check("login", &report);
}

#[test]
fn scale_suite_reports_every_figure() {
    let report = bench::scale::run(Mode::Smoke).unwrap_or_else(|e| panic!("{e:#}"));
    check("scale", &report);
}

/// Besides the figures: the network recovers from the kill, and no message sent meanwhile is
/// lost or delivered twice.
#[test]
fn churn_suite_reports_every_figure() {
    let report = bench::churn::run(Mode::Smoke).unwrap_or_else(|e| panic!("{e:#}"));
    check("churn", &report);
    for id in ["churn.attached", "churn.rehomed", "churn.findable"] {
        assert!(
            report.value(id).is_some(),
            "{id}: the network did not recover: {:?}",
            report.not_measured
        );
    }
    for id in [
        "churn.msgs.lost",
        "churn.msgs.duplicated",
        "churn.unrecovered",
    ] {
        assert_eq!(report.value(id), Some(0.0), "{id}\n{}", report.table());
    }
    assert!(report.value("churn.msgs.sent").is_some_and(|n| n > 0.0));
}
