//! The NAT lab: Natter's real binaries on hosts behind real NATs, built from Linux network
//! namespaces and nftables with patchbay (DESIGN.md, "Testing layers", layer 4).
//!
//! This is its own program (`harness = false`) because `patchbay::init_userns()` must run
//! while the process has a single thread, and libtest starts threads. The order is therefore:
//! check the machine, build the binaries (cargo runs as a child process: still one thread),
//! enter the user namespace, and only then start the runtime and build the lab.
//!
//! `cargo test -p natter-tests --test natlab` runs it where the machine allows and otherwise
//! reports it ignored, with the reason; with `--include-ignored` (as CI passes) a machine that
//! cannot run it fails. Set `PATCHBAY_OUTDIR=DIR` to keep patchbay's event and per-namespace
//! logs, and `NATTER_LOG` to set the binaries' log filter (daemons log at info by default). The
//! work dir (homes, the login server's data, each daemon's stdout and log) is kept when
//! something fails, or always with `NATLAB_KEEP=1`; a failing check shows the tail of the
//! daemon concerned. The hole-punch counts (and `hole_punching`'s check that the logs show the
//! punch) read the daemons' `hole punch` lines, which natter logs at info: a `NATTER_LOG` that
//! hides natter_node's info lines makes `hole_punching` fail.

mod cli;
mod faults;
mod messaging;
mod nodes;
mod overlay;
mod prereq;
mod punches;
mod report;
mod runner;
mod scenarios;
mod topology;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nodes::{Binaries, Net};
use report::{Outcome, Report, Tally};

const NAME: &str = "natlab";
const NAT_BEHAVIOUR: &str = "natlab::nat_behaviour";
const LOGIN: &str = "natlab::login";
const PROMOTION: &str = "natlab::promotion";
const LOOKUP: &str = "natlab::lookup";
const MESSAGING: &str = "natlab::messaging";
const HOLE_PUNCHING: &str = "natlab::hole_punching";
const SUPERPEER_LOSS: &str = "natlab::superpeer_loss";
const LOGIN_DOWN: &str = "natlab::login_down";
const UPLINK_CUT: &str = "natlab::uplink_cut";
/// Every scenario, in the order they run.
const SCENARIOS: [&str; 9] = [
    NAT_BEHAVIOUR,
    LOGIN,
    PROMOTION,
    LOOKUP,
    MESSAGING,
    HOLE_PUNCHING,
    SUPERPEER_LOSS,
    LOGIN_DOWN,
    UPLINK_CUT,
];
/// The scenario each one builds on: it uses what that one left running (the login server, the
/// nodes). Selecting a scenario runs what it needs first; if that fails, it is not run and
/// counts as failed. The scenarios after `lookup` need only the overlay it checked, and run on
/// whatever the ones before them left (a dead superpeer, no login server): each stands alone.
const NEEDS: [(&str, &str); 7] = [
    (PROMOTION, LOGIN),
    (LOOKUP, PROMOTION),
    (MESSAGING, LOOKUP),
    (HOLE_PUNCHING, LOOKUP),
    (SUPERPEER_LOSS, LOOKUP),
    (LOGIN_DOWN, LOOKUP),
    (UPLINK_CUT, LOOKUP),
];

/// The lab takes a minute or two (the uplink cut waits for connections to time out); this
/// bounds a hang, whatever hangs.
const BUDGET: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let args = cli::Args::parse(std::env::args().skip(1));
    let selected: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| args.wants(NAME, s))
        .collect();
    if args.list {
        for s in &selected {
            println!("{s}: test");
        }
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let mut tally = Tally::default();
    println!();
    if selected.is_empty() {
        println!("running 0 tests ({NAME} filtered out)");
    } else {
        println!("running {NAME}: Natter behind real NATs in network namespaces");
        lab(&args, &mut tally);
    }
    tally.close(started.elapsed());
    if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

fn lab(args: &cli::Args, tally: &mut Tally) {
    if let Err(reason) = prereq::check_machine() {
        return unavailable(args, tally, reason);
    }
    let started = Instant::now();
    let bins = match build_binaries() {
        Ok(bins) => bins,
        Err(e) => return record(tally, NAME, Outcome::Failed(e)),
    };
    println!(
        "natter and natter-login built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = patchbay::init_userns() {
        return unavailable(args, tally, format!("cannot enter a user namespace: {e:#}"));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return record(tally, NAME, Outcome::Failed(e.into())),
    };
    let work = match tempfile::Builder::new().prefix("natlab-").tempdir() {
        Ok(dir) => dir,
        Err(e) => return record(tally, NAME, Outcome::Failed(e.into())),
    };
    runtime.block_on(async {
        // Dropping `run` (out of time) kills every process it started.
        if tokio::time::timeout(BUDGET, run(args, tally, bins, work.path()))
            .await
            .is_err()
        {
            let e = anyhow::anyhow!("the lab did not finish within {BUDGET:?}");
            record(tally, NAME, Outcome::Failed(e));
        }
    });
    if tally.failed > 0 || std::env::var_os("NATLAB_KEEP").is_some() {
        let kept = work.keep();
        eprintln!(
            "natlab: homes, data, stdout (*.out) and logs (*.log) kept in {}",
            kept.display()
        );
    }
}

/// `natter` and `natter-login` of this checkout, built by cargo before any thread exists.
fn build_binaries() -> anyhow::Result<Binaries> {
    std::panic::catch_unwind(|| Binaries {
        natter: natter_tests::bin("natter"),
        natter_login: natter_tests::bin("natter-login"),
    })
    .map_err(|_| anyhow::anyhow!("building natter and natter-login failed (see above)"))
}

async fn run(args: &cli::Args, tally: &mut Tally, bins: Binaries, work: &Path) {
    let lab = match patchbay::Lab::builder()
        .outdir_from_env()
        .label(NAME)
        .build()
        .await
    {
        Ok(lab) => lab,
        Err(e) => {
            let reason = format!("cannot create network namespaces: {e:#}");
            return unavailable(args, tally, reason);
        }
    };
    if let Err(e) = prereq::probe_nftables(&lab).await {
        return unavailable(args, tally, format!("{e:#}"));
    }

    let started = Instant::now();
    let topo = match topology::build(lab).await {
        Ok(topo) => topo,
        Err(e) => {
            let e = e.context("building the lab's topology");
            return record(tally, NAME, Outcome::Failed(e));
        }
    };
    println!(
        "lab of {} hosts and the login server built in {:.2}s",
        topo.hosts.len(),
        started.elapsed().as_secs_f64()
    );
    let mut report = Report::new(&topo);
    let mut net = Net::new(bins, work);
    let mut passed = Vec::new();

    for name in to_run(args) {
        let need = NEEDS.iter().find(|(s, _)| *s == name).map(|(_, n)| *n);
        if let Some(need) = need.filter(|n| !passed.contains(n)) {
            let e = anyhow::anyhow!("not run: it needs {need}, which failed");
            record(tally, name, Outcome::Failed(e));
            continue;
        }
        let started = Instant::now();
        let result = match name {
            NAT_BEHAVIOUR => scenarios::nat_behaviour(&topo, &mut report).await,
            LOGIN => scenarios::login(&topo, &mut net, &mut report).await,
            PROMOTION => overlay::promotion(&topo, &mut net, &mut report).await,
            LOOKUP => overlay::lookup(&topo, &net, &mut report).await,
            MESSAGING => messaging::messaging(&topo, &mut net, &mut report).await,
            HOLE_PUNCHING => messaging::hole_punching(&topo, &mut net, &mut report).await,
            SUPERPEER_LOSS => faults::superpeer_loss(&topo, &mut net, &mut report).await,
            LOGIN_DOWN => faults::login_down(&topo, &mut net, &mut report).await,
            UPLINK_CUT => faults::uplink_cut(&topo, &mut net, &mut report).await,
            other => Err(anyhow::anyhow!("no scenario called {other}")),
        };
        let outcome = match result {
            Ok(()) => {
                passed.push(name);
                Outcome::Passed(started.elapsed())
            }
            Err(e) => Outcome::Failed(e),
        };
        record(tally, name, outcome);
    }

    report.set_pairs(punches::pairs(&topo, &net));
    report.print();
    if let Err(e) = net.shutdown().await {
        record(tally, NAME, Outcome::Failed(e));
    }
}

/// The selected scenarios and those they need, in [`SCENARIOS`] order.
fn to_run(args: &cli::Args) -> Vec<&'static str> {
    let mut wanted: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| args.wants(NAME, s))
        .collect();
    // NEEDS lists each scenario after the one it needs, so one pass from the end suffices.
    for (scenario, need) in NEEDS.iter().rev() {
        if wanted.contains(scenario) && !wanted.contains(need) {
            wanted.push(need);
        }
    }
    SCENARIOS
        .into_iter()
        .filter(|s| wanted.contains(s))
        .collect()
}

fn record(tally: &mut Tally, name: &str, outcome: Outcome) {
    report::test_line(name, &outcome);
    tally.add(&outcome);
}

/// The machine cannot run the lab: a skip, unless the caller asked for ignored tests to run.
fn unavailable(args: &cli::Args, tally: &mut Tally, reason: String) {
    let outcome = if args.strict {
        Outcome::Failed(anyhow::anyhow!(
            "{reason} (the lab is required: --include-ignored)"
        ))
    } else {
        Outcome::Skipped(reason)
    };
    record(tally, NAME, outcome);
}
