//! `natter`: the Natter peer's command line.

mod demo;

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use natter_node::config::FileConfig;
use natter_node::control::ControlClient;
use natter_node::daemon::api::{
    ControlRequest, ControlResponse, FollowEvent, InboxItem, LookupView, NetcheckView, StatusView,
};
use natter_node::daemon::{self, DaemonConfig};
use natter_node::{Home, Identity, Issued, LoginClient};
use natter_proto::login::Password;
use natter_proto::{Status, UserName};
use natter_superpeer::Role;
use tokio_util::sync::CancellationToken;

/// Natter: presence and direct messages over a hybrid peer-to-peer network.
#[derive(Debug, Parser)]
#[command(version, about)]
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
        /// Login server address, ending in /p2p/<its peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        login: Multiaddr,
    },
    /// Certify this device for an existing account. Password: stdin or prompt.
    Login {
        name: String,
        /// Login server address, ending in /p2p/<its peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        login: Multiaddr,
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
    },
    /// Sign off (others see offline with last seen) and stop the daemon.
    Down,
    /// Send a message. It is stored in the outbox first: "delivered" or "queued" (retried
    /// until delivered, across restarts).
    Send {
        name: String,
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Answer as soon as the message is queued, without waiting for delivery.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show received messages.
    Inbox {
        /// Print JSON (with --follow: one object per line).
        #[arg(long)]
        json: bool,
        /// Keep streaming new messages and contacts' presence changes.
        #[arg(long)]
        follow: bool,
    },
    /// Measure the round trip to a user's device and show the path (relayed or direct).
    Ping {
        name: String,
        /// Number of probes, one per second.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage contacts: they are told of status changes directly.
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
enum ContactsCommand {
    /// Add a contact.
    Add { name: String },
    /// Remove a contact.
    Remove { name: String },
    /// List contacts.
    List {
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
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, whatever the cause chain looks like.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    if let Command::Demo { dir } = cli.command {
        return runtime.block_on(demo::run(dir));
    }
    let home = Home::new(cli.home)?;
    match cli.command {
        Command::Demo { .. } => unreachable!("handled above"),
        Command::Register { name, login } => {
            let name = parse_name(&name)?;
            let client = LoginClient::new(home.device_key()?, login.clone())?;
            let password = read_password(&format!("new password for {name}: "), true)?;
            let issued = runtime.block_on(client.register(&name, password))?;
            save(&home, name, login, issued, "registered")
        }
        Command::Login { name, login } => {
            let name = parse_name(&name)?;
            let client = LoginClient::new(home.device_key()?, login.clone())?;
            let password = read_password(&format!("password for {name}: "), false)?;
            let issued = runtime.block_on(client.login(&name, password))?;
            save(&home, name, login, issued, "logged in as")
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
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                daemon::run(home, config, shutdown).await
            })
        }
        Command::Status { json } => {
            let view: StatusView = match runtime.block_on(call(&home, ControlRequest::Status))? {
                ControlResponse::Status(v) => v,
                other => bail!("unexpected answer from the daemon: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("user:         {}", view.user);
                println!("peer id:      {}", view.peer_id);
                println!("role:         {} ({})", view.role, view.role_reason);
                println!("reachability: {}", view.reachability);
                println!("presence:     {}", view.presence);
                if view.role == "superpeer" {
                    println!("leaves:       {} of {}", view.leaves, view.max_leaves);
                } else {
                    println!(
                        "primary:      {}",
                        view.primary.as_deref().unwrap_or("none")
                    );
                    println!(
                        "standby:      {}",
                        view.standby.as_deref().unwrap_or("none")
                    );
                }
            }
            Ok(())
        }
        Command::Lookup { name, json } => {
            let name = parse_name(&name)?;
            let request = ControlRequest::Lookup {
                name: name.to_string(),
            };
            let view: LookupView = match runtime.block_on(call(&home, request))? {
                ControlResponse::Lookup(v) => v,
                other => bail!("unexpected answer from the daemon: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                let seen = view
                    .last_seen
                    .filter(|_| view.status == "offline")
                    .map(|s| {
                        format!(
                            ", last seen {}",
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)
                            )
                        )
                    })
                    .unwrap_or_default();
                println!("{}: {}{seen}", view.user, view.status);
            }
            Ok(())
        }
        Command::Netcheck { json } => {
            let view: NetcheckView =
                match runtime.block_on(call(&home, ControlRequest::Netcheck))? {
                    ControlResponse::Netcheck(v) => v,
                    other => bail!("unexpected answer from the daemon: {other:?}"),
                };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("reachability: {}", view.reachability);
                println!("NAT:          {}", view.nat);
                for a in &view.external_addrs {
                    println!("public:       {a}");
                }
                for o in &view.observed_addrs {
                    println!("observed:     {} (by {})", o.observed, o.observer);
                }
            }
            Ok(())
        }
        Command::SetStatus { status } => {
            let status = match status {
                StatusArg::Online => Status::Online,
                StatusArg::Away => Status::Away,
                StatusArg::Busy => Status::Busy,
            };
            print_done(runtime.block_on(call(&home, ControlRequest::SetStatus { status }))?)
        }
        Command::Down => print_done(runtime.block_on(call(&home, ControlRequest::Down))?),
        Command::Send {
            name,
            text,
            json,
            no_wait,
        } => {
            let name = parse_name(&name)?;
            let request = ControlRequest::Send {
                to: name.to_string(),
                text,
                wait: !no_wait,
            };
            let view = match runtime.block_on(call(&home, request))? {
                ControlResponse::Sent(v) => v,
                other => bail!("unexpected answer from the daemon: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string(&view)?);
            } else if view.status == "delivered" {
                println!(
                    "delivered to {} ({})",
                    view.to,
                    view.path.as_deref().unwrap_or("?")
                );
            } else {
                println!(
                    "queued for {}: it will be delivered when {} is reachable",
                    view.to, view.to
                );
            }
            Ok(())
        }
        Command::Inbox { json, follow } => runtime.block_on(inbox(&home, json, follow)),
        Command::Ping { name, count, json } => {
            let name = parse_name(&name)?;
            runtime.block_on(ping(&home, name, count, json))
        }
        Command::Contacts(cmd) => {
            let (request, json) = match cmd {
                ContactsCommand::Add { name } => (
                    ControlRequest::ContactsAdd {
                        name: parse_name(&name)?.to_string(),
                    },
                    false,
                ),
                ContactsCommand::Remove { name } => (
                    ControlRequest::ContactsRemove {
                        name: parse_name(&name)?.to_string(),
                    },
                    false,
                ),
                ContactsCommand::List { json } => (ControlRequest::ContactsList, json),
            };
            match runtime.block_on(call(&home, request))? {
                ControlResponse::Contacts(list) if json => {
                    println!("{}", serde_json::to_string_pretty(&list)?)
                }
                ControlResponse::Contacts(list) => list.iter().for_each(|c| println!("{c}")),
                other => print_done(other)?,
            }
            Ok(())
        }
    }
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn print_item(item: &InboxItem) {
    println!("[{}] {}: {}", format_ms(item.sent_at), item.from, item.text);
}

async fn inbox(home: &Home, json: bool, follow: bool) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let request = ControlRequest::Inbox { follow };
    let mut client = ControlClient::connect(home.dir()).await?;
    if !follow {
        let items = match client.call(&request).await? {
            ControlResponse::Inbox(items) => items,
            other => bail!("unexpected answer from the daemon: {other:?}"),
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&items)?);
        } else {
            items.iter().for_each(print_item);
        }
        return Ok(());
    }
    let stream = client.stream::<_, ControlResponse>(&request).await?;
    futures::pin_mut!(stream);
    while let Some(next) = stream.next().await {
        match next? {
            ControlResponse::Event(event) if json => println!("{}", serde_json::to_string(&event)?),
            ControlResponse::Event(FollowEvent::Message(item)) => print_item(&item),
            ControlResponse::Event(FollowEvent::Presence { user, status, .. }) => {
                println!("* {user} is now {status}")
            }
            other => bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
    Ok(())
}

async fn ping(home: &Home, name: UserName, count: u32, json: bool) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let request = ControlRequest::Ping {
        name: name.to_string(),
        count,
        interval_ms: None,
    };
    let client = ControlClient::connect(home.dir()).await?;
    let stream = client.stream::<_, ControlResponse>(&request).await?;
    futures::pin_mut!(stream);
    let mut probes = Vec::new();
    while let Some(next) = stream.next().await {
        let probe = match next? {
            ControlResponse::Ping(p) => p,
            other => bail!("unexpected answer from the daemon: {other:?}"),
        };
        if !json {
            match (&probe.rtt_ms, &probe.path) {
                (Some(rtt), Some(path)) => {
                    println!("{name}: seq={} rtt={rtt:.2} ms via {path}", probe.seq)
                }
                _ => println!(
                    "{name}: seq={} failed: {}",
                    probe.seq,
                    probe.error.as_deref().unwrap_or("no answer")
                ),
            }
        }
        probes.push(probe);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&probes)?);
    }
    Ok(())
}

async fn call(home: &Home, request: ControlRequest) -> anyhow::Result<ControlResponse> {
    let mut client = ControlClient::connect(home.dir()).await?;
    Ok(client.call(&request).await?)
}

fn print_done(response: ControlResponse) -> anyhow::Result<()> {
    match response {
        ControlResponse::Done { message } => {
            println!("{message}");
            Ok(())
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}

fn parse_name(name: &str) -> anyhow::Result<UserName> {
    UserName::parse(name).map_err(|e| anyhow::anyhow!("invalid name {name:?}: {e}"))
}

fn save(
    home: &Home,
    user: UserName,
    login: Multiaddr,
    issued: Issued,
    verb: &str,
) -> anyhow::Result<()> {
    let expires = issued.cert.expires_at();
    home.save_identity(&Identity {
        user: user.clone(),
        login,
        issuer_key: issued.issuer_key,
        cert: issued.cert,
    })?;
    let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires);
    println!(
        "{verb} {user}; certificate valid until {}",
        humantime::format_rfc3339_seconds(until)
    );
    Ok(())
}

/// First line of stdin when it is not a terminal, else a prompt without echo. Never argv.
fn read_password(prompt: &str, confirm: bool) -> anyhow::Result<Password> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(Password::new(line.trim_end_matches(['\n', '\r'])));
    }
    let first = rpassword::prompt_password(prompt)?;
    if confirm && rpassword::prompt_password("repeat password: ")? != first {
        bail!("the passwords do not match");
    }
    Ok(Password::new(first))
}
