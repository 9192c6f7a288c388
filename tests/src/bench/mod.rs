//! The suites of `natter-bench`, as library functions so that a smoke test can run them at a
//! tiny size ([`Mode::Smoke`]).
//!
//! Every figure is printed beside the floor it is compared to, and the floor is measured in
//! the same run, on the same machine, a few seconds apart. Each row says how it was obtained
//! ([`How`]): real `natter`/`natter-login` processes on loopback, swarms or sockets inside the
//! bench process over real loopback sockets, or local computation. A figure that could not be
//! measured is listed in [`Report::not_measured`] with the reason, never filled in.
//!
//! Nothing here asserts a timing: these are figures, not tests.

pub mod carry;
pub mod churn;
pub mod floors;
pub mod leafsim;
pub mod login;
pub mod lookup;
pub mod msg;
pub mod net;
pub mod scale;
mod stats;

use std::fmt::Write as _;

use serde::Serialize;

pub use stats::Latencies;

/// Sizes to measure: the comma-separated list in environment variable `var`, else `default`;
/// sorted, without zeros or repeats.
pub(crate) fn sizes_from_env(var: &str, default: Vec<usize>) -> anyhow::Result<Vec<usize>> {
    let mut sizes = match std::env::var(var) {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{var}={list:?}: {e}"))?,
        Err(_) => default,
    };
    sizes.retain(|&n| n > 0);
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

/// How long and how big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A few samples of everything, for the CI smoke test (debug builds): the figures are
    /// meaningless, only the code paths are exercised.
    Smoke,
    /// `--quick`: every suite in well under two minutes; rough figures.
    Quick,
    /// The figures to publish.
    Full,
}

impl Mode {
    /// The value for this mode.
    pub fn pick<T>(self, smoke: T, quick: T, full: T) -> T {
        match self {
            Mode::Smoke => smoke,
            Mode::Quick => quick,
            Mode::Full => full,
        }
    }
}

/// How a figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// Real `natter up` / `natter-login` processes on loopback, driven through the control API
    /// or the CLI.
    RealBinaries,
    /// Swarms or sockets inside the bench process, talking over real loopback sockets.
    InProcess,
    /// Computation or local disk inside the bench process; no network.
    Local,
}

impl How {
    fn short(self) -> &'static str {
        match self {
            How::RealBinaries => "real",
            How::InProcess => "in-proc",
            How::Local => "local",
        }
    }
}

/// A target of the benchmark issue, and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable key, e.g. `msg.direct.ping.p50`; floors are referred to by it.
    pub id: String,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    /// Samples behind a percentile, operations behind a rate (0: not applicable).
    pub samples: u64,
    pub how: How,
    /// Id of the row this figure is compared to (its floor), measured in the same run.
    pub floor: Option<String>,
    pub target: Option<Target>,
    pub note: Option<String>,
}

/// A figure this run did not measure, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NotMeasured {
    pub figure: String,
    pub reason: String,
}

/// What a suite measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub not_measured: Vec<NotMeasured>,
}

impl Report {
    /// Adds a row; returns its id.
    pub fn add(
        &mut self,
        id: &str,
        figure: &str,
        value: f64,
        unit: &'static str,
        samples: u64,
        how: How,
    ) -> String {
        self.rows.push(Row {
            id: id.into(),
            figure: figure.into(),
            value,
            unit,
            samples,
            how,
            floor: None,
            target: None,
            note: None,
        });
        id.into()
    }

    /// Adds `<id>.p50` and `<id>.p99` rows in milliseconds, compared to `<floor>.p50` and
    /// `<floor>.p99` when a floor is given; nothing (a not-measured entry) without samples.
    pub fn latency(
        &mut self,
        id: &str,
        figure: &str,
        lat: &Latencies,
        how: How,
        floor: Option<&str>,
    ) {
        if lat.is_empty() {
            self.not_measured(figure, "no sample completed");
            return;
        }
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let row_id = format!("{id}.{name}");
            self.add(
                &row_id,
                &format!("{figure}, {name}"),
                lat.quantile_ms(q),
                "ms",
                lat.len(),
                how,
            );
            if let Some(f) = floor {
                self.floor(&row_id, &format!("{f}.{name}"));
            }
        }
    }

    /// Says which row `id` is compared to.
    pub fn floor(&mut self, id: &str, floor: &str) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.id == id) {
            r.floor = Some(floor.into());
        }
    }

    /// Attaches a target to row `id`, met when `met(value, floor value)` holds.
    pub fn target(&mut self, id: &str, text: &str, met: impl Fn(f64, Option<f64>) -> bool) {
        let floor = self
            .rows
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.floor.clone())
            .and_then(|f| self.value(&f));
        if let Some(r) = self.rows.iter_mut().find(|r| r.id == id) {
            r.target = Some(Target {
                text: text.into(),
                met: met(r.value, floor),
            });
        }
    }

    /// Attaches a note to row `id`.
    pub fn note(&mut self, id: &str, note: &str) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.id == id) {
            r.note = Some(note.into());
        }
    }

    pub fn not_measured(&mut self, figure: &str, reason: &str) {
        self.not_measured.push(NotMeasured {
            figure: figure.into(),
            reason: reason.into(),
        });
    }

    /// The value of row `id`.
    pub fn value(&self, id: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.id == id).map(|r| r.value)
    }

    pub fn extend(&mut self, other: Report) {
        self.rows.extend(other.rows);
        self.not_measured.extend(other.not_measured);
    }

    /// The report as a text table: every row with its floor and the ratio to it, then the
    /// targets, then what was not measured.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<58} {:>11} {:<6} {:>6} {:<7}  vs floor",
            "figure", "value", "unit", "n", "how"
        );
        for r in &self.rows {
            let floor = r.floor.as_deref().and_then(|f| {
                let row = self.rows.iter().find(|x| x.id == f)?;
                Some(format!(
                    "{} of \"{}\" ({} {})",
                    ratio(r.value, row.value),
                    row.figure,
                    fmt_value(row.value),
                    row.unit
                ))
            });
            let _ = writeln!(
                out,
                "{:<58} {:>11} {:<6} {:>6} {:<7}  {}",
                r.figure,
                fmt_value(r.value),
                r.unit,
                r.samples,
                r.how.short(),
                floor.unwrap_or_else(|| "-".into())
            );
        }
        let targets: Vec<&Row> = self.rows.iter().filter(|r| r.target.is_some()).collect();
        if !targets.is_empty() {
            let _ = writeln!(out, "\ntargets:");
            for r in targets {
                let t = r.target.as_ref().expect("filtered");
                let _ = writeln!(
                    out,
                    "  [{}] {}: {} {} (target: {})",
                    if t.met { "met" } else { "MISSED" },
                    r.figure,
                    fmt_value(r.value),
                    r.unit,
                    t.text
                );
            }
        }
        let notes: Vec<&Row> = self.rows.iter().filter(|r| r.note.is_some()).collect();
        if !notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for r in notes {
                let _ = writeln!(out, "  {}: {}", r.figure, r.note.as_deref().unwrap_or(""));
            }
        }
        if !self.not_measured.is_empty() {
            let _ = writeln!(out, "\nnot measured:");
            for n in &self.not_measured {
                let _ = writeln!(out, "  {}: {}", n.figure, n.reason);
            }
        }
        let _ = writeln!(
            out,
            "\nhow: real = real natter/natter-login processes on loopback; in-proc = swarms or \
             sockets inside the bench process over real loopback sockets; local = no network"
        );
        out
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn ratio(value: f64, floor: f64) -> String {
    if floor > 0.0 {
        format!("x{:.2}", value / floor)
    } else {
        "x?".into()
    }
}

/// A progress line on stderr: the suites take a while, and a hang should show where.
pub fn progress(what: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("[{:6.1} s] {what}", start.elapsed().as_secs_f64());
}

/// A short machine description for reports: cores and CPU model.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}
