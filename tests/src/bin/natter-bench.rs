//! `natter-bench`: Natter's benchmark harness. Each suite prints a table of figures beside
//! their floors, measured in the same run, and says for each figure whether it comes from the
//! real binaries on loopback or from swarms inside this process over real loopback sockets.
//! Figures only: nothing here asserts a timing. The suites live in `natter_tests::bench`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use natter_tests::bench::{self, Mode, Report};

/// Natter benchmarks: figures side by side with their floor, measured in one run.
#[derive(Debug, Parser)]
struct Cli {
    /// Short runs (every suite in well under two minutes); the figures are then rough.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
    /// Suites to run, in order.
    #[arg(value_enum, required_unless_present = "floor_listener")]
    suites: Vec<Suite>,
    /// Internal: run as the scale suite's floor (a bare libp2p listener) until killed.
    #[arg(long, hide = true)]
    floor_listener: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Suite {
    /// Certificate issue/verify, argon2id alone, logins/s and renewals/s through the real
    /// login protocol (in-process server on loopback).
    Login,
    /// Message round trips (direct, relayed, after hole punching) and durable messages/s
    /// between real daemons, against raw TCP, a bare libp2p echo and the store alone.
    Msg,
    /// Lookup latency, cold and cached, with 10 (and in full mode 50 and 100) real superpeers,
    /// against one bare Kademlia hop and a bare Kademlia walk.
    Lookup,
    /// Superpeer memory per attached leaf, leaf daemon memory, presence record size and
    /// validation cost (the scaling model's inputs).
    Scale,
    /// A third of the superpeers killed at once under real leaves: time until every leaf is
    /// on two superpeers and every user findable again; messages lost or duplicated.
    Churn,
    /// Every suite above.
    All,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.floor_listener {
        return bench::carry::floor_listener();
    }
    // The bench's own log (the simulated leaves' warnings, say): `RUST_LOG`, warnings by
    // default. The daemons' logs go to their homes (`NATTER_BENCH_LOG`).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mode = if cli.quick { Mode::Quick } else { Mode::Full };
    let mut suites: Vec<Suite> = Vec::new();
    for s in &cli.suites {
        let expanded: &[Suite] = match s {
            Suite::All => &[
                Suite::Login,
                Suite::Msg,
                Suite::Lookup,
                Suite::Scale,
                Suite::Churn,
            ],
            one => std::slice::from_ref(one),
        };
        for s in expanded {
            if !suites.contains(s) {
                suites.push(*s);
            }
        }
    }
    let started = std::time::Instant::now();
    let load_before = load_average();
    let mut report = Report::default();
    for suite in &suites {
        eprintln!("natter-bench: running the {suite:?} suite ({mode:?} mode)");
        let part = match suite {
            Suite::Login => bench::login::run(mode),
            Suite::Msg => bench::msg::run(mode),
            Suite::Lookup => bench::lookup::run(mode),
            Suite::Scale => bench::scale::run(mode),
            Suite::Churn => bench::churn::run(mode),
            Suite::All => unreachable!("expanded above"),
        }
        .with_context(|| format!("the {suite:?} suite failed"))?;
        report.extend(part);
    }
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let load_after = load_average();
    println!(
        "natter-bench {mode:?} mode, {} UTC, {}, {:.0} s, load average {load_before} before \
         and {load_after} after (other work on the machine skews figures)\n",
        date(unix),
        bench::machine(),
        started.elapsed().as_secs_f64()
    );
    print!("{}", report.table());
    if let Some(path) = cli.json {
        let doc = serde_json::json!({
            "suites": suites,
            "mode": mode,
            "date": date(unix),
            "unix_time": unix,
            "machine": bench::machine(),
            "seconds": started.elapsed().as_secs_f64(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "rows": report.rows,
            "not_measured": report.not_measured,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The 1-minute load average (Linux), as text.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `YYYY-MM-DD HH:MM` of a Unix time (UTC), without a date crate.
fn date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}
