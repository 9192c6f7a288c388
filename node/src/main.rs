//! `natter`: the Natter peer's command line.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use natter_node::{Home, Identity, Issued, LoginClient};
use natter_proto::UserName;
use natter_proto::login::Password;

/// Natter: presence and direct messages over a hybrid peer-to-peer network.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Home directory: device key, certificate, message store (default: the platform data dir).
    #[arg(long, env = "NATTER_HOME", global = true)]
    home: Option<PathBuf>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
    let home = Home::new(cli.home)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    match cli.command {
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
    }
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
