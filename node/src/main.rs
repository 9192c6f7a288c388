//! `natter`: the Natter peer's command line.

mod cli;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use natter_node::Home;
use natter_node::config::FileConfig;
use natter_node::daemon::api::InboxEdit;
use natter_node::daemon::{self, DaemonConfig};
use natter_superpeer::Role;
use tokio_util::sync::CancellationToken;

/// Natter: presence and direct messages over a hybrid peer-to-peer network.
#[derive(Debug, Parser)]
#[command(name = "natter", version, about)]
struct Cli {
    /// Home directory: device key, certificate, message store (default: the platform data dir).
    #[arg(long, env = "NATTER_HOME", global = true)]
    home: Option<PathBuf>,
    /// Configuration file for `up` (default: natter.toml in the home directory, if present).
    /// Precedence: defaults < file < environment < flags.
    #[arg(long, env = "NATTER_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account and certify this device for it. Password: stdin or prompt.
    Register {
        name: String,
        /// Login server address, ending in /p2p/<its peer id>, as `natter-login serve` prints
        /// it.
        #[arg(long, value_name = "MULTIADDR", value_parser = login_addr)]
        login: Multiaddr,
        /// Replace the identity of another user in this home (their messages and contacts
        /// are moved aside). For a second user on one machine, use another --home instead.
        #[arg(long)]
        force: bool,
        /// Print JSON: {"user", "peer_id", "cert_expires_at"}.
        #[arg(long)]
        json: bool,
    },
    /// Certify this device for an existing account. Password: stdin or prompt.
    Login {
        name: String,
        /// Login server address, ending in /p2p/<its peer id>, as `natter-login serve` prints
        /// it.
        #[arg(long, value_name = "MULTIADDR", value_parser = login_addr)]
        login: Multiaddr,
        /// Replace the identity of another user in this home (their messages and contacts
        /// are moved aside). For a second user on one machine, use another --home instead.
        #[arg(long)]
        force: bool,
        /// Print JSON: {"user", "peer_id", "cert_expires_at"}.
        #[arg(long)]
        json: bool,
    },
    /// Run the node: attach, publish presence, and promote to superpeer when reachable and
    /// capable. Runs in the foreground until Ctrl-C, SIGTERM or `natter down`.
    Up {
        /// Address to listen on; repeat for several (default: TCP and QUIC, all IPv4
        /// interfaces, ports chosen by the system). Env: comma-separated.
        #[arg(
            long = "listen",
            value_name = "MULTIADDR",
            env = "NATTER_LISTEN",
            value_delimiter = ','
        )]
        listen: Vec<Multiaddr>,
        /// auto: promote when reachable and capable; leaf: never; superpeer: always (seeds).
        /// Default auto.
        #[arg(long, value_enum, env = "NATTER_ROLE")]
        role: Option<RoleArg>,
        /// Leaves this node accepts as a superpeer (default 1000).
        #[arg(long, env = "NATTER_MAX_LEAVES")]
        max_leaves: Option<usize>,
        /// Seconds the node must be up before it may promote itself (default 600).
        #[arg(long, value_name = "SECS", env = "NATTER_MIN_UPTIME")]
        min_uptime: Option<u64>,
        /// CPU cores needed to promote (default 2).
        #[arg(long, env = "NATTER_MIN_CORES")]
        min_cores: Option<usize>,
        /// Available memory (MiB) needed to promote (default 256).
        #[arg(long, value_name = "MIB", env = "NATTER_MIN_FREE_MEMORY")]
        min_free_memory: Option<u64>,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464 (default: off).
        #[arg(long, value_name = "ADDR", env = "NATTER_METRICS")]
        metrics: Option<std::net::SocketAddr>,
        /// Do not publish this node's IP addresses in the directory (leaves): others reach it
        /// through its superpeers' relays, then hole punching may upgrade to direct.
        #[arg(long, env = "NATTER_NO_DIRECT")]
        no_direct: bool,
        /// Seconds this node's presence record vouches for it, 15 to 120 (default 90): if the
        /// node dies, others read it offline within this time. It re-publishes every third.
        #[arg(long, value_name = "SECS", env = "NATTER_LEASE")]
        lease: Option<u64>,
        /// Print the progress lines as JSON, one object per line: {"at", "phase"} (`at` in
        /// milliseconds since the epoch).
        #[arg(long)]
        json: bool,
    },
    /// Show this node's role, reachability and superpeers.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Look a user up: online, away, busy, offline (with last seen) or unknown.
    Lookup {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show reachability, observed addresses and what can be told of the NAT.
    Netcheck {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set the status others see.
    SetStatus {
        #[arg(value_enum)]
        status: StatusArg,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Sign off (others see offline with last seen) and stop the daemon. Not an error when
    /// it is not running.
    Down {
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Send a message. It is stored in the outbox first: "delivered" or "queued" (retried
    /// until delivered, across restarts). Works while the daemon is down: then it is queued.
    Send {
        name: String,
        /// The message; `-` reads it from standard input (one trailing newline dropped).
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Answer as soon as the message is queued, without waiting for delivery.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show received messages, oldest first (read from the local store, page by page), or
    /// delete them.
    Inbox {
        /// Print JSON (with --follow: one object per line).
        #[arg(long)]
        json: bool,
        /// Keep streaming new messages and contacts' presence changes (needs the daemon).
        #[arg(long)]
        follow: bool,
        #[command(subcommand)]
        edit: Option<InboxCommand>,
    },
    /// Show the conversation with a user, both ways and from every device of yours, in
    /// conversation order (read from the local store).
    History {
        name: String,
        /// How many of the last messages (1 to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the messages still waiting for delivery: to whom, attempts, next attempt and the
    /// last error; and those the recipient refused for good. Or drop messages.
    Outbox {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        edit: Option<OutboxCommand>,
    },
    /// Measure the round trip to a user's device and show the path (relayed or direct).
    Ping {
        name: String,
        /// Number of probes (1 to 1000).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// Seconds between probes (e.g. 0.2).
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage contacts: they are told of status changes directly. Works while the daemon is
    /// down.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Run a whole network on loopback (login server, three self-promoting nodes, two users),
    /// narrating each phase; keeps running until Ctrl-C.
    Demo {
        /// Keep the network's state in this directory instead of a temporary one.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum InboxCommand {
    /// Delete messages by id (as `inbox --json` shows them).
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Delete every message, or every message from one user.
    Clear {
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Take messages out of the outbox by id (as `outbox --json` shows them): refused ones,
    /// or queued ones no longer wanted (one already on its way may still arrive).
    Drop {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContactsCommand {
    /// Add a contact: their messages are taken without the contact-request quota.
    Add {
        name: String,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Accept a contact request (add the sender as a contact; unblocks a blocked one).
    Accept {
        name: String,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Refuse a user's messages from now on (and remove them from the contacts).
    Block {
        name: String,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Remove a contact.
    Remove {
        name: String,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// List contacts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List contact requests: senders not in the contacts whose messages wait in the inbox
    /// under the request quota (answer with `accept` or `block`).
    Requests {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Auto,
    Leaf,
    Superpeer,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatusArg {
    Online,
    Away,
    Busy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(natter_node::terminal::stderr_color())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::report(&e),
    }
}

/// `--login`: a multiaddr ending in `/p2p/<peer id>`; a usage error with an example otherwise.
fn login_addr(text: &str) -> Result<Multiaddr, String> {
    natter_node::login_client::parse_login_addr(text).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The daemon runs on one thread (its store has a thread of its own): the control
    // connections, the network task and the event loop hand each message on to one another
    // several times, and on one thread that is a function call, not a wake-up of another
    // thread (the bench's `msg` suite measures the difference; see docs/BENCHMARKS.md).
    let runtime = if matches!(cli.command, Command::Up { .. }) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
    .context("starting the runtime")?;
    if let Command::Demo { dir } = cli.command {
        return runtime.block_on(demo::run(dir));
    }
    let home = Home::new(cli.home)?;
    let rt = &runtime;
    match cli.command {
        Command::Demo { .. } => unreachable!("handled above"),
        Command::Register {
            name,
            login,
            force,
            json,
        } => {
            let mode = cli::account::Mode::Register;
            cli::account::certify(rt, &home, &name, login, force, mode, json)
        }
        Command::Login {
            name,
            login,
            force,
            json,
        } => {
            let mode = cli::account::Mode::Login;
            cli::account::certify(rt, &home, &name, login, force, mode, json)
        }
        Command::Up {
            listen,
            role,
            max_leaves,
            min_uptime,
            min_cores,
            min_free_memory,
            metrics,
            no_direct,
            lease,
            json,
        } => {
            // Precedence: defaults < file < environment < flags (clap already put the
            // environment under the flags).
            let file = FileConfig::load(cli.config.as_deref(), home.dir())?;
            let mut config = DaemonConfig::default();
            if let Some(l) = (!listen.is_empty()).then_some(listen).or(file.listen) {
                config.listen = l;
            }
            let file_role = match file.role.as_deref() {
                None => None,
                Some("auto") => Some(RoleArg::Auto),
                Some("leaf") => Some(RoleArg::Leaf),
                Some("superpeer") => Some(RoleArg::Superpeer),
                Some(other) => bail!("config: role {other:?} is not auto, leaf or superpeer"),
            };
            config.role = match role.or(file_role).unwrap_or(RoleArg::Auto) {
                RoleArg::Auto => Role::Auto,
                RoleArg::Leaf => Role::Leaf,
                RoleArg::Superpeer => Role::Superpeer,
            };
            let t = &mut config.thresholds;
            config.max_leaves = max_leaves.or(file.max_leaves).unwrap_or(config.max_leaves);
            if let Some(secs) = min_uptime.or(file.min_uptime_secs) {
                t.min_uptime = std::time::Duration::from_secs(secs);
            }
            t.min_cores = min_cores.or(file.min_cores).unwrap_or(t.min_cores);
            t.min_free_memory_mib = min_free_memory
                .or(file.min_free_memory_mib)
                .unwrap_or(t.min_free_memory_mib);
            config.metrics = metrics.or(file.metrics);
            config.publish_direct = !no_direct && file.publish_direct_addrs.unwrap_or(true);
            if let Some(secs) = lease.or(file.lease_secs) {
                config.set_lease(std::time::Duration::from_secs(secs));
            }
            config.json = json;
            if let Some(inbox) = &file.inbox {
                inbox.apply(&mut config.inbox, &mut config.retention);
            }
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
            // libp2p would share a port that another process listens on (SO_REUSEPORT)
            // instead of failing: refuse it before the daemon starts.
            for addr in &config.listen {
                natter_net::ensure_port_free(addr)?;
            }
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                daemon::run(home, config, shutdown).await
            })
        }
        Command::Status { json } => rt.block_on(cli::presence::status(&home, json)),
        Command::Lookup { name, json } => rt.block_on(cli::presence::lookup(&home, &name, json)),
        Command::Netcheck { json } => rt.block_on(cli::presence::netcheck(&home, json)),
        Command::SetStatus { status, json } => {
            let status = match status {
                StatusArg::Online => natter_proto::Status::Online,
                StatusArg::Away => natter_proto::Status::Away,
                StatusArg::Busy => natter_proto::Status::Busy,
            };
            rt.block_on(cli::presence::set_status(&home, status, json))
        }
        Command::Down { json } => rt.block_on(cli::presence::down(&home, json)),
        Command::Ping {
            name,
            count,
            interval,
            json,
        } => {
            let interval_ms = (interval * 1000.0).round() as u64;
            rt.block_on(cli::presence::ping(&home, &name, count, interval_ms, json))
        }
        Command::Send {
            name,
            text,
            json,
            no_wait,
        } => rt.block_on(cli::messages::send(&home, &name, text, json, !no_wait)),
        Command::Inbox {
            edit: Some(edit), ..
        } => {
            let (edit, json) = match edit {
                InboxCommand::Delete { ids, json } => (InboxEdit::Delete { ids }, json),
                InboxCommand::Clear { from, json } => (InboxEdit::Clear { from }, json),
            };
            rt.block_on(cli::messages::edit(&home, edit, json))
        }
        Command::Inbox { json, follow, .. } => {
            rt.block_on(cli::messages::inbox(&home, json, follow))
        }
        Command::Outbox {
            edit: Some(OutboxCommand::Drop { ids, json }),
            ..
        } => rt.block_on(cli::messages::edit(&home, InboxEdit::Drop { ids }, json)),
        Command::Outbox { json, .. } => cli::messages::outbox(&home, json),
        Command::History { name, limit, json } => {
            cli::messages::history(&home, &name, limit as usize, json)
        }
        Command::Contacts(cmd) => {
            let cmd = match cmd {
                ContactsCommand::Add { name, json } => cli::messages::Contacts::Add(name, json),
                ContactsCommand::Remove { name, json } => {
                    cli::messages::Contacts::Remove(name, json)
                }
                ContactsCommand::List { json } => cli::messages::Contacts::List { json },
                ContactsCommand::Accept { name, json } => {
                    let edit = InboxEdit::Accept { name };
                    return rt.block_on(cli::messages::edit(&home, edit, json));
                }
                ContactsCommand::Block { name, json } => {
                    let edit = InboxEdit::Block { name };
                    return rt.block_on(cli::messages::edit(&home, edit, json));
                }
                ContactsCommand::Requests { json } => {
                    return cli::messages::contact_requests(&home, json);
                }
            };
            rt.block_on(cli::messages::contacts(&home, cmd))
        }
    }
}

/// `--interval`: seconds between 0.001 and 60.
fn parse_interval(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 0.5)"))?;
    if (0.001..=60.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("{s} s is outside 0.001 to 60 s"))
    }
}

/// Stops the daemon gracefully on Ctrl-C, SIGTERM or SIGHUP (the terminal it runs in was
/// closed): it signs off and its store is closed cleanly.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    shutdown.cancel();
}
