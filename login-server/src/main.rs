//! `natter-login`: run a Natter login server and manage its accounts.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use natter_login_server::accounts::{self, Accounts};
use natter_login_server::{Config, Registration, Server, config_file, keys};
use natter_proto::UserName;
use natter_proto::login::Password;
use std::io::Write as _;
use tokio_util::sync::CancellationToken;

/// `println!` for command output, through [`print_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

/// Natter login server: unique user names and signed identity certificates.
#[derive(Debug, Parser)]
#[command(name = "natter-login", version, about)]
struct Cli {
    /// Directory for the account database and keys (created 0700 if missing).
    #[arg(long, env = "NATTER_LOGIN_DATA", global = true)]
    data_dir: Option<PathBuf>,
    /// Configuration file for `serve` (default: natter-login.toml in the data directory, if
    /// present). Precedence: defaults < file < environment < flags.
    #[arg(long, env = "NATTER_LOGIN_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the login protocol until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on; repeat for several (default: TCP and QUIC on port 4747).
        /// Env: comma-separated.
        #[arg(
            long = "listen",
            value_name = "MULTIADDR",
            env = "NATTER_LOGIN_LISTEN",
            value_delimiter = ','
        )]
        listen: Vec<Multiaddr>,
        /// Whether users may create accounts themselves (default open).
        #[arg(long, value_enum, env = "NATTER_LOGIN_REGISTRATION")]
        registration: Option<Registration>,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9465 (default: off).
        #[arg(long, value_name = "ADDR", env = "NATTER_LOGIN_METRICS")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Manage accounts directly in the database (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// Print this server's peer id and issuer key.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account; the password is read from stdin (first line) or prompted.
    Add {
        name: String,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: no more logins or renewals, and its certificates are revoked
    /// (superpeers and peers refuse them within a minute).
    Disable {
        name: String,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one device of an account (its peer id, as `natter status` shows it, or its
    /// key in hex): its certificates stop working within a minute and it cannot renew; the
    /// owner can log in on it again with the password.
    RevokeDevice {
        name: String,
        device: String,
        /// Print JSON: {"message": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// List accounts.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .init();
}

/// Colour in logs only on a terminal, and never when `NO_COLOR` is set (no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn data_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &cli.data_dir {
        return Ok(dir.clone());
    }
    directories::ProjectDirs::from("", "", "natter-login")
        .map(|d| d.data_dir().to_owned())
        .context("no home directory: pass --data-dir")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = data_dir(&cli)?;
    match cli.command {
        Command::Serve {
            listen,
            registration,
            metrics,
        } => {
            // Precedence: defaults < file < environment < flags (clap puts the environment
            // under the flags).
            let mut config = Config::new(&dir);
            config_file::FileConfig::load(cli.config.as_deref(), &dir)
                .and_then(|file| file.apply(&mut config))
                .map_err(anyhow::Error::msg)?;
            if !listen.is_empty() {
                config.listen = listen;
            }
            if let Some(r) = registration {
                config.registration = r;
            }
            if metrics.is_some() {
                config.metrics = metrics;
            }
            serve(config)
        }
        Command::User(cmd) => user(&dir, cmd),
        Command::Info { json } => info(&dir, json),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        for addr in server.listen_addrs() {
            // Read by whoever started it; a closed stdout does not stop the server.
            let _ = writeln!(std::io::stdout(), "listening on {addr}");
        }
        if let Some(addr) = server.metrics_addr() {
            let _ = writeln!(std::io::stdout(), "metrics on http://{addr}/metrics");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        server.run(shutdown).await?;
        Ok(())
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}

/// What a `user` command did: a sentence, or `{"message": ...}` in JSON.
fn done(message: &str, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::json!({ "message": message }));
    } else {
        outln!("{message}");
    }
    Ok(())
}

fn user(dir: &std::path::Path, cmd: UserCommand) -> anyhow::Result<()> {
    keys::ensure_private_dir(dir)?;
    let db = Accounts::open(dir)?;
    match cmd {
        UserCommand::Add { name, json } => {
            let name = UserName::parse(&name)?;
            if db.exists(&name)? {
                bail!("the name {name} is already taken");
            }
            let password = read_password(&format!("password for {name}: "))?;
            password.check().map_err(anyhow::Error::msg)?;
            let hash = accounts::hash_password(&password)?;
            if !db.create(&name, &hash, natter_login_server::service::unix_now())? {
                bail!("the name {name} is already taken");
            }
            done(&format!("added {name}"), json)?;
        }
        UserCommand::Disable { name, json } => {
            let name = UserName::parse(&name)?;
            let now = natter_login_server::service::unix_now();
            if !db.set_disabled(&name, true, now)? {
                bail!("no user named {name}");
            }
            done(
                &format!(
                    "disabled {name}: no more logins or renewals; its certificates are revoked (refused everywhere within a minute)"
                ),
                json,
            )?;
        }
        UserCommand::RevokeDevice { name, device, json } => {
            let name = UserName::parse(&name)?;
            let key = device_key(&device)?;
            let now = natter_login_server::service::unix_now();
            if !db.revoke_device(&name, &key, now)? {
                bail!("no user named {name}");
            }
            done(
                &format!("revoked device {device} of {name} (refused everywhere within a minute)"),
                json,
            )?;
        }
        UserCommand::List { json } => {
            let list = db.list()?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "name": a.name.as_str(),
                            "created_at": a.created_at,
                            "disabled": a.disabled,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for a in list {
                    let state = if a.disabled { "disabled" } else { "active" };
                    outln!("{}\t{state}", a.name);
                }
            }
        }
    }
    Ok(())
}

/// A device as the operator names it: a peer id (`12D3KooW…`) or 64 hex digits of its
/// ed25519 key; the key in lower-case hex, as the database keeps it.
fn device_key(device: &str) -> anyhow::Result<String> {
    let hex = device.trim().to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(hex);
    }
    let peer: libp2p::PeerId = device
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{device:?} is neither a peer id nor 64 hex digits"))?;
    let key = natter_login_server::service::device_key_of(&peer)
        .ok_or_else(|| anyhow::anyhow!("{device} is not an ed25519 peer id"))?;
    Ok(natter_proto::revocation::device_hex(&key))
}

/// Writes `args` and a newline to standard output, for a command's output. When the reader
/// has gone (`natter-login user list | head`), the program ends quietly with status 0, where
/// `println!` would panic; any other write error ends it with status 1.
fn print_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

fn info(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    keys::ensure_private_dir(dir)?;
    let peer_id = keys::load_or_create_node_key(dir)?.public().to_peer_id();
    let issuer = keys::load_or_create_issuer_key(dir)?.public();
    if json {
        let v = serde_json::json!({
            "peer_id": peer_id.to_string(),
            "issuer_key": issuer.to_base64(),
            "issuer_key_id": issuer.key_id().to_string(),
            "data_dir": dir.display().to_string(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("peer id:       {peer_id}");
        outln!("issuer key:    {}", issuer.to_base64());
        outln!("issuer key id: {}", issuer.key_id());
        outln!("data dir:      {}", dir.display());
    }
    Ok(())
}

/// First line of stdin when it is not a terminal, else a prompt without echo. Never argv.
fn read_password(prompt: &str) -> anyhow::Result<Password> {
    if std::io::stdin().is_terminal() {
        Ok(Password::new(rpassword::prompt_password(prompt)?))
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(Password::new(line.trim_end_matches(['\n', '\r'])))
    }
}
