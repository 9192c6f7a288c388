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
        let may_be_zero = (row.id == "msg.direct.lookups"
            || row.id.ends_with(".failures")
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
