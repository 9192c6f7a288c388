//! `send`, `inbox`, `outbox`, `history` and `contacts`. The store is local, so all but `inbox --follow`
//! work while the daemon is down: then they read and write the store themselves
//! ([`natter_node::offline`]).

use anyhow::bail;
use natter_node::Home;
use natter_node::control::ControlError;
use natter_node::daemon::api::{
    ControlRequest, ControlResponse, FollowEvent, InboxEdit, InboxItem, SendView,
};
use natter_node::offline::{HistoryItem, LocalStore, OutboxItem};
use natter_node::outln;
use natter_node::terminal::escape;

use super::{connect, format_ms, parse_name, print_done, print_message, unexpected};

pub(crate) async fn send(
    home: &Home,
    name: &str,
    text: String,
    json: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let name = parse_name(name)?;
    let text = if text == "-" {
        read_stdin_text()?
    } else {
        text
    };
    let view = match connect(home).await? {
        Some(mut client) => {
            let request = ControlRequest::Send {
                to: name.to_string(),
                text,
                wait,
            };
            match client.call(&request).await? {
                ControlResponse::Sent(v) => v,
                other => return unexpected(other),
            }
        }
        None => {
            let view = LocalStore::open(home)?.send(name.as_str(), text)?;
            eprintln!(
                "the daemon is not running; the message is queued and goes out when `{} up` runs",
                home.command()
            );
            view
        }
    };
    print_sent(&view, json)
}

/// `send NAME -`: the message from standard input, at most the largest message (one byte
/// more is read to tell), UTF-8, without the one trailing newline `echo` adds.
fn read_stdin_text() -> anyhow::Result<String> {
    use std::io::Read as _;
    let max = natter_proto::limits::MAX_MESSAGE_TEXT_BYTES;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(max as u64 + 2)
        .read_to_end(&mut bytes)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
    }
    if bytes.len() > max {
        bail!("the message on standard input is over {max} bytes; nothing was sent");
    }
    String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!("the message on standard input is not UTF-8; nothing was sent")
    })
}

fn print_sent(view: &SendView, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string(view)?);
        if view.status == "refused" {
            bail!("the recipient's node refused the message for good");
        }
    } else if view.status == "refused" {
        bail!(
            "{}'s node refused the message for good: {}; it stays in `natter outbox` (not tried \
             again) until `natter outbox drop {}`",
            view.to,
            escape(view.reason.as_deref().unwrap_or("no reason given")),
            view.id
        );
    } else if view.status == "delivered" {
        outln!(
            "delivered to {} ({})",
            view.to,
            view.path.as_deref().unwrap_or("?")
        );
    } else if let Some(reason) = &view.reason {
        outln!(
            "queued for {}, not delivered yet: {}; it is tried again later (`natter outbox`)",
            view.to,
            escape(reason)
        );
    } else {
        outln!(
            "queued for {}: it will be delivered when {} is reachable",
            view.to,
            view.to
        );
    }
    Ok(())
}

fn print_item(item: &InboxItem) {
    outln!(
        "[{}] {}: {}",
        format_ms(item.sent_at),
        escape(&item.from),
        escape(&item.text)
    );
}

/// `inbox`: from the store, page by page, whether the daemon runs or not (it is local).
/// `--follow` needs the daemon and ends with an error when the daemon stops.
pub(crate) async fn inbox(home: &Home, json: bool, follow: bool) -> anyhow::Result<()> {
    if !follow {
        return print_inbox(&LocalStore::open(home)?, json);
    }
    let Some(client) = connect(home).await? else {
        let not_running = ControlError::NotRunning {
            home: home.dir().to_owned(),
        };
        bail!("`inbox --follow` needs the daemon: {not_running}");
    };
    let request = ControlRequest::Inbox { follow };
    use futures::StreamExt as _;
    let stream = client.stream::<_, ControlResponse>(&request).await?;
    futures::pin_mut!(stream);
    while let Some(next) = stream.next().await {
        match next? {
            ControlResponse::Event(event) if json => outln!("{}", serde_json::to_string(&event)?),
            ControlResponse::Event(FollowEvent::Message(item)) => print_item(&item),
            ControlResponse::Event(FollowEvent::Presence { user, status, .. }) => {
                outln!("* {} is now {}", escape(&user), escape(&status))
            }
            other => return unexpected(other),
        }
    }
    bail!(
        "the daemon stopped, so no more messages will show: start it again with `{} up`",
        home.command()
    )
}

/// Every message of the inbox, oldest first, read and printed a page at a time (the JSON is
/// one array, written as it goes).
fn print_inbox(store: &LocalStore, json: bool) -> anyhow::Result<()> {
    let mut after = None;
    let mut first = true;
    loop {
        let (page, last) = store.inbox_page(after)?;
        if page.is_empty() {
            break;
        }
        for item in &page {
            if json {
                let open = if first { "[" } else { "," };
                outln!("{open}\n  {}", serde_json::to_string(item)?);
            } else {
                print_item(item);
            }
            first = false;
        }
        after = last;
    }
    if json {
        outln!("{}", if first { "[]" } else { "]" });
    }
    Ok(())
}

/// `inbox delete|clear`, `contacts accept|block`: through the daemon, or in the store when
/// it is down.
pub(crate) async fn edit(home: &Home, edit: InboxEdit, json: bool) -> anyhow::Result<()> {
    let Some(mut client) = connect(home).await? else {
        return print_message(&LocalStore::open(home)?.edit(&edit)?, json);
    };
    print_done(client.call(&ControlRequest::Edit { edit }).await?, json)
}

/// `outbox`: read from the store, whether the daemon runs or not.
pub(crate) fn outbox(home: &Home, json: bool) -> anyhow::Result<()> {
    let items = LocalStore::open(home)?.outbox()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if items.is_empty() {
        outln!("nothing is waiting for delivery");
    }
    items.iter().for_each(print_queued);
    Ok(())
}

/// `history NAME`: read from the store, whether the daemon runs or not.
pub(crate) fn history(home: &Home, name: &str, limit: usize, json: bool) -> anyhow::Result<()> {
    let items = LocalStore::open(home)?.history(name, limit)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if items.is_empty() {
        outln!("no messages with {}", escape(name));
    }
    items.iter().for_each(print_history);
    Ok(())
}

fn print_history(item: &HistoryItem) {
    let state = match item.state.as_str() {
        "received" => String::new(),
        "delivered" => {
            let further = item.devices.iter().filter(|d| d.state == "pending").count();
            let pending = match further {
                0 => String::new(),
                1 => "; 1 more device pending".into(),
                n => format!("; {n} more devices pending"),
            };
            format!(
                " ({}{pending})",
                item.path
                    .as_deref()
                    .map_or("delivered".into(), |p| format!("delivered {p}"))
            )
        }
        "sent_elsewhere" => " (sent from another device)".into(),
        other => format!(" ({other})"),
    };
    outln!(
        "[{}] {}: {}{state}",
        format_ms(item.sent_at),
        escape(&item.from),
        escape(&item.text)
    );
}

fn print_queued(item: &OutboxItem) {
    outln!(
        "[{}] to {}: {}",
        format_ms(item.sent_at),
        escape(&item.to),
        escape(&item.text)
    );
    if item.refused {
        outln!(
            "    refused for good by the recipient's node: {}; not tried again \
             (`natter outbox drop {}` takes it out)",
            escape(item.last_error.as_deref().unwrap_or("no reason given")),
            item.id
        );
        return;
    }
    let tries = match item.attempts {
        0 => "not tried yet".to_owned(),
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    };
    let error = item
        .last_error
        .as_deref()
        .map(|e| format!("; last error: {}", escape(e)))
        .unwrap_or_default();
    outln!(
        "    {tries}; next attempt {}{error}",
        format_ms(item.next_attempt_at)
    );
}

/// `contacts requests`: from the store, whether the daemon runs or not.
pub(crate) fn contact_requests(home: &Home, json: bool) -> anyhow::Result<()> {
    let requests = LocalStore::open(home)?.contact_requests()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&requests)?);
        return Ok(());
    }
    if requests.is_empty() {
        outln!("no contact requests");
    }
    for r in &requests {
        outln!(
            "{}: {} message(s), {} bytes (`natter contacts accept {}` or `block {}`)",
            escape(&r.from),
            r.messages,
            r.bytes,
            escape(&r.from),
            escape(&r.from)
        );
    }
    Ok(())
}

/// `contacts add|remove|list`, each with `--json`.
#[derive(Debug)]
pub(crate) enum Contacts {
    Add(String, bool),
    Remove(String, bool),
    List { json: bool },
}

/// `contacts add|remove|list`: through the daemon, or in the store when it is down.
pub(crate) async fn contacts(home: &Home, cmd: Contacts) -> anyhow::Result<()> {
    if let Contacts::Add(name, _) = &cmd
        && home
            .identity()
            .is_ok_and(|me| parse_name(name).is_ok_and(|n| n == me.user))
    {
        bail!("you cannot add yourself to your contacts");
    }
    let Some(mut client) = connect(home).await? else {
        let local = LocalStore::open(home)?;
        return match cmd {
            Contacts::Add(name, json) => print_message(&local.add_contact(&name)?, json),
            Contacts::Remove(name, json) => print_message(&local.remove_contact(&name)?, json),
            Contacts::List { json } => {
                let unknown = local
                    .contacts()?
                    .into_iter()
                    .map(ContactView::not_looked_up);
                print_contacts(&unknown.collect::<Vec<_>>(), json)
            }
        };
    };
    let (request, json) = match cmd {
        Contacts::Add(name, json) => (
            ControlRequest::ContactsAdd {
                name: parse_name(&name)?.to_string(),
            },
            json,
        ),
        Contacts::Remove(name, json) => (
            ControlRequest::ContactsRemove {
                name: parse_name(&name)?.to_string(),
            },
            json,
        ),
        Contacts::List { json } => (ControlRequest::ContactsList, json),
    };
    match client.call(&request).await? {
        ControlResponse::Contacts(list) => print_contacts(&with_presence(home, list).await, json),
        other => print_done(other, json),
    }
}

/// Contacts whose presence `contacts list` looks up, at most; the rest are listed without.
const MAX_CONTACT_LOOKUPS: usize = 100;
/// Lookups in flight at once.
const CONTACT_LOOKUPS_AT_ONCE: usize = 8;

/// One line of `natter contacts list --json`: the contact, and its presence as a lookup
/// through the running daemon found it (as `lookup` says it: "online", ..., "offline",
/// "unknown"); `null` when not looked up (the daemon is down, or past the first 100).
#[derive(Debug, Clone, serde::Serialize)]
struct ContactView {
    name: String,
    status: Option<String>,
    last_seen: Option<u64>,
}

impl ContactView {
    fn not_looked_up(name: String) -> Self {
        Self {
            name,
            status: None,
            last_seen: None,
        }
    }
}

/// The contacts' presence, looked up through the daemon a few at a time.
async fn with_presence(home: &Home, names: Vec<String>) -> Vec<ContactView> {
    use futures::StreamExt as _;
    let lookups = names.into_iter().enumerate().map(|(i, name)| async move {
        if i >= MAX_CONTACT_LOOKUPS {
            return ContactView::not_looked_up(name);
        }
        let request = ControlRequest::Lookup { name: name.clone() };
        match super::call(home, request).await {
            Ok(ControlResponse::Lookup(v)) => ContactView {
                name,
                status: Some(v.status),
                last_seen: v.last_seen,
            },
            _ => ContactView {
                status: Some("unknown".into()),
                ..ContactView::not_looked_up(name)
            },
        }
    });
    futures::stream::iter(lookups)
        .buffered(CONTACT_LOOKUPS_AT_ONCE)
        .collect()
        .await
}

fn print_contacts(list: &[ContactView], json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(list)?);
        return Ok(());
    }
    for c in list {
        let Some(status) = &c.status else {
            outln!("{}", escape(&c.name));
            continue;
        };
        let seen = match (status.as_str(), c.last_seen) {
            ("offline", Some(s)) => format!(", last seen {}", format_ms(s.saturating_mul(1000))),
            ("offline", None) => super::presence::NOT_SEEN_YET.into(),
            _ => String::new(),
        };
        outln!("{}: {}{seen}", escape(&c.name), escape(status));
    }
    Ok(())
}
