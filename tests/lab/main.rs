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
//! logs, and `NATTER_LOG` to raise the binaries' log level (their stderr is shown on failure).

mod cli;
mod prereq;
mod report;
mod runner;
mod scenarios;
mod topology;

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::{Outcome, Report, Tally};
use scenarios::Binaries;

const NAME: &str = "natlab";
const NAT_BEHAVIOUR: &str = "natlab::nat_behaviour";
const LOGIN: &str = "natlab::login";
/// Every scenario, in the order they run. Later ones (promotion, lookup, messaging, hole
/// punching) join when their features exist; see the list at the top of scenarios.rs.
const SCENARIOS: [&str; 2] = [NAT_BEHAVIOUR, LOGIN];

/// The lab takes seconds; this bounds a hang, whatever hangs.
const BUDGET: Duration = Duration::from_secs(180);

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
    runtime.block_on(async {
        if tokio::time::timeout(BUDGET, run(args, tally, &bins))
            .await
            .is_err()
        {
            let e = anyhow::anyhow!("the lab did not finish within {BUDGET:?}");
            record(tally, NAME, Outcome::Failed(e));
        }
    });
}

/// `natter` and `natter-login` of this checkout, built by cargo before any thread exists.
fn build_binaries() -> anyhow::Result<Binaries> {
    std::panic::catch_unwind(|| Binaries {
        natter: natter_tests::bin("natter"),
        natter_login: natter_tests::bin("natter-login"),
    })
    .map_err(|_| anyhow::anyhow!("building natter and natter-login failed (see above)"))
}

async fn run(args: &cli::Args, tally: &mut Tally, bins: &Binaries) {
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
    let work = match tempfile::Builder::new().prefix("natlab-").tempdir() {
        Ok(dir) => dir,
        Err(e) => return record(tally, NAME, Outcome::Failed(e.into())),
    };
    let mut report = Report::new(&topo);

    if args.wants(NAME, NAT_BEHAVIOUR) {
        let body = scenarios::nat_behaviour(&topo, &mut report);
        scenario(tally, NAT_BEHAVIOUR, body).await;
    }
    if args.wants(NAME, LOGIN) {
        let body = scenarios::login(&topo, bins, work.path(), &mut report);
        scenario(tally, LOGIN, body).await;
    }
    // Later scenarios (promotion, lookup, messaging, hole punching) go here, in that order;
    // see the list at the top of scenarios.rs.

    report.print();
    if tally.failed > 0 {
        let kept = work.keep();
        eprintln!("natlab: homes, data and logs kept in {}", kept.display());
    }
}

async fn scenario(tally: &mut Tally, name: &str, body: impl Future<Output = anyhow::Result<()>>) {
    let started = Instant::now();
    let outcome = match body.await {
        Ok(()) => Outcome::Passed(started.elapsed()),
        Err(e) => Outcome::Failed(e),
    };
    record(tally, name, outcome);
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
