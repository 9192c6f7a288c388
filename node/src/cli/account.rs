//! `natter register` and `natter login`: certify this device for an account.

use natter_node::outln;
use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context as _, bail};
use libp2p::Multiaddr;
use natter_node::{Home, HomeError, Identity, Issued, LoginClient};
use natter_proto::UserName;
use natter_proto::login::Password;
use tokio::runtime::Runtime;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{Interrupted, connect, parse_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Register,
    Login,
}

/// Registers or logs in as `name` and stores the identity in `home`.
///
/// A home holds one user: replacing another user's identity takes `force`, and then their
/// message store is moved aside so that the new user neither reads their messages nor sends
/// their queued ones.
pub(crate) fn certify(
    runtime: &Runtime,
    home: &Home,
    name: &str,
    login: Multiaddr,
    force: bool,
    mode: Mode,
    json: bool,
) -> anyhow::Result<()> {
    let name = parse_name(name)?;
    let replaced = previous_user(home, &name, force)?;
    if let Some(previous) = &replaced
        && runtime.block_on(connect(home))?.is_some()
    {
        bail!(
            "natter is running for this home as {previous}: stop it first with `{} down`",
            home.command()
        );
    }
    let client = LoginClient::new(home.device_key()?, login.clone())?;
    // On a terminal, Ctrl-C must not kill the process while the password prompt has echo
    // turned off (rpassword raises SIGINT before it restores the terminal): with a handler in
    // place rpassword restores the terminal and returns, and we exit 130 ourselves.
    let mut sigint = if std::io::stdin().is_terminal() {
        let _runtime = runtime.enter();
        Some(signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?)
    } else {
        None
    };
    let (password, verb) = match mode {
        Mode::Register => (
            read_password(&format!("new password for {name}: "), true)?,
            "registered",
        ),
        Mode::Login => (
            read_password(&format!("password for {name}: "), false)?,
            "logged in as",
        ),
    };
    let issued = runtime.block_on(async {
        let exchange = async {
            match mode {
                Mode::Register => client.register(&name, password).await,
                Mode::Login => client.login(&name, password).await,
            }
        };
        interruptible(sigint.as_mut(), exchange).await
    })??;
    if let Some(previous) = replaced
        && let Some(aside) = home.retire_store(&previous)?
    {
        eprintln!(
            "replaced {previous}'s identity in this home; their messages and contacts were moved to {}",
            aside.display()
        );
    }
    save(home, name, login, issued, verb, json)
}

/// `fut`, unless Ctrl-C comes first (when `sigint` watches for it).
async fn interruptible<T>(
    sigint: Option<&mut Signal>,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, Interrupted> {
    match sigint {
        Some(sigint) => tokio::select! {
            out = fut => Ok(out),
            _ = sigint.recv() => Err(Interrupted),
        },
        None => Ok(fut.await),
    }
}

/// The user whose identity `home` holds when it is not `name` (to be replaced, with
/// `force`), or an error saying how to keep both.
fn previous_user(home: &Home, name: &UserName, force: bool) -> anyhow::Result<Option<UserName>> {
    let previous = match home.identity() {
        Ok(identity) => identity.user,
        Err(HomeError::NotLoggedIn { .. }) => return Ok(None),
        Err(_) if force => return Ok(None),
        Err(e) => bail!("{e}; use --force to replace it"),
    };
    if previous == *name {
        return Ok(None);
    }
    if !force {
        bail!(
            "this home ({}) already holds {previous}'s identity: use --home DIR to give {name} a home of their own on this machine, or --force to replace {previous}'s identity here",
            home.dir().display()
        );
    }
    Ok(Some(previous))
}

fn save(
    home: &Home,
    user: UserName,
    login: Multiaddr,
    issued: Issued,
    verb: &str,
    json: bool,
) -> anyhow::Result<()> {
    let expires = issued.cert.expires_at();
    let peer_id = issued.cert.peer_id();
    home.save_identity(&Identity {
        user: user.clone(),
        login,
        issuer_key: issued.issuer_key,
        cert: issued.cert,
    })?;
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "user": user.as_str(),
                "peer_id": peer_id.to_string(),
                "cert_expires_at": expires,
            })
        );
        return Ok(());
    }
    let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires);
    outln!(
        "{verb} {user}; certificate valid until {}",
        humantime::format_rfc3339_seconds(until)
    );
    Ok(())
}

/// First line of stdin when it is not a terminal, else a prompt without echo. Never argv.
fn read_password(question: &str, confirm: bool) -> anyhow::Result<Password> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(Password::new(line.trim_end_matches(['\n', '\r'])));
    }
    let first = prompt(question)?;
    if confirm && prompt("repeat password: ")? != first {
        bail!("the passwords do not match");
    }
    Ok(Password::new(first))
}

/// One prompt without echo; Ctrl-C is [`Interrupted`].
fn prompt(text: &str) -> anyhow::Result<String> {
    match rpassword::prompt_password(text) {
        Ok(password) => Ok(password),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(Interrupted.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot read the password")),
    }
}
