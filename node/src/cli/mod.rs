//! The subcommands of `natter` other than `up` and `demo`: each is a client of the daemon's
//! control API, or of the local store when the daemon is not running and the command needs
//! no network.
//!
//! Human output escapes whatever other users wrote ([`natter_node::terminal::escape`]);
//! `--json` output is exact.

pub(crate) mod account;
pub(crate) mod messages;
pub(crate) mod presence;

use natter_node::outln;
use std::process::ExitCode;

use anyhow::bail;
use natter_node::Home;
use natter_node::config::ConfigError;
use natter_node::control::{ControlClient, ControlError};
use natter_node::daemon::api::{ControlRequest, ControlResponse};
use natter_node::terminal::escape;
use natter_proto::UserName;

/// The user pressed Ctrl-C: exit 130, as a shell reports an interrupted command.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub(crate) struct Interrupted;

/// Prints `e` for the user and returns the exit code: one line on stderr, exit 1.
///
/// Configuration errors keep their lines (toml shows the offending line and a caret under
/// the mistake); every line is escaped, since error sentences may quote other users' text.
pub(crate) fn report(e: &anyhow::Error) -> ExitCode {
    if e.is::<Interrupted>() {
        eprintln!("interrupted");
        return ExitCode::from(130);
    }
    if let Some(config) = e.downcast_ref::<ConfigError>() {
        let text = config.to_string();
        let mut lines = text.lines();
        eprintln!("error: {}", escape(lines.next().unwrap_or_default()));
        for line in lines {
            eprintln!("{}", escape(line));
        }
    } else {
        eprintln!("error: {}", escape(&format!("{e:#}").replace('\n', " ")));
    }
    ExitCode::FAILURE
}

/// A client of the daemon for `home`, or `None` when it is not running.
pub(crate) async fn connect(home: &Home) -> Result<Option<ControlClient>, ControlError> {
    match ControlClient::connect(home.dir()).await {
        Ok(client) => Ok(Some(client)),
        Err(ControlError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One request, one answer; the daemon must be running.
pub(crate) async fn call(home: &Home, request: ControlRequest) -> anyhow::Result<ControlResponse> {
    let mut client = ControlClient::connect(home.dir()).await?;
    Ok(client.call(&request).await?)
}

pub(crate) fn print_done(response: ControlResponse, json: bool) -> anyhow::Result<()> {
    match response {
        ControlResponse::Done { message } => print_message(&message, json),
        other => unexpected(other),
    }
}

/// What a command that changes something did: a sentence, or `{"message": ...}` in JSON.
pub(crate) fn print_message(message: &str, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::json!({ "message": message }));
    } else {
        outln!("{}", escape(message));
    }
    Ok(())
}

pub(crate) fn unexpected<T>(answer: ControlResponse) -> anyhow::Result<T> {
    bail!("unexpected answer from the daemon: {answer:?}")
}

pub(crate) fn parse_name(name: &str) -> anyhow::Result<UserName> {
    UserName::parse(name).map_err(|e| anyhow::anyhow!("invalid name {name:?}: {e}"))
}

/// Unix milliseconds as an RFC 3339 time, to the second.
pub(crate) fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
