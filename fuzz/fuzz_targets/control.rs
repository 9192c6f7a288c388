//! The control API between the CLI and the daemon: newline-delimited JSON on a Unix socket
//! (`node/src/control/wire.rs`).
//!
//! The line reader and the envelopes (`RawRequestLine`, `ReplyLine`) are private to
//! natter-node, so their decoding is replayed here with copies of the envelopes: the daemon
//! reads the first line (at most `MAX_REQUEST_BYTES`), decodes the envelope with the request
//! kept raw, and only then `serde_json::from_value::<ControlRequest>` (the public request
//! type); what it then parses of a request (names, texts) is checked as the daemon does, and
//! an inbox edit is carried out by the real `InboxEdit::apply` on a store in a temporary
//! directory. The client decodes reply lines as `ReplyLine<ControlResponse>`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_node::control::MAX_REQUEST_BYTES;
use natter_node::daemon::api::{ControlRequest, ControlResponse};
use natter_node::store::Store;
use natter_proto::UserName;
use natter_proto::msg::check_text;
use serde::Deserialize;

/// Copy of `wire::RawRequestLine`: the request stays raw JSON until the token is checked.
#[derive(Deserialize)]
struct RawRequestLine {
    #[allow(dead_code)]
    token: String,
    request: serde_json::Value,
}

/// Copy of `wire::ReplyLine`.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReplyLine<Resp> {
    Ok(Resp),
    Error(#[allow(dead_code)] String),
}

/// The store an inbox edit is carried out on (the CLI's and the daemon's own code), in a
/// temporary directory, for the whole fuzzing process.
struct Home {
    store: Store,
    _dir: tempfile::TempDir,
}

thread_local! {
    static HOME: Home = {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a fresh store");
        Home { store, _dir: dir }
    };
}

fuzz_target!(|data: &[u8]| {
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    if line.len() <= MAX_REQUEST_BYTES
        && let Ok(raw) = serde_json::from_slice::<RawRequestLine>(line)
        && let Ok(request) = serde_json::from_value::<ControlRequest>(raw.request)
    {
        let again = serde_json::to_vec(&request).expect("requests encode");
        assert_eq!(
            serde_json::from_slice::<ControlRequest>(&again).ok(),
            Some(request.clone())
        );
        daemon_checks(&request);
    }
    // Requests as the CLI writes them, without the envelope.
    let _ = serde_json::from_slice::<ControlRequest>(line);
    if let Ok(ReplyLine::Ok(response)) = serde_json::from_slice::<ReplyLine<ControlResponse>>(line)
    {
        let _ = serde_json::to_vec(&response).expect("responses encode");
    }
});

/// What the daemon parses of a request before acting on it (`daemon/commands.rs`,
/// `messaging.rs`, `ping.rs`, `offline.rs`).
fn daemon_checks(request: &ControlRequest) {
    match request {
        ControlRequest::Lookup { name }
        | ControlRequest::Ping { name, .. }
        | ControlRequest::ContactsAdd { name }
        | ControlRequest::ContactsRemove { name } => {
            let _ = UserName::parse(name);
        }
        ControlRequest::Send { to, text, .. } => {
            let _ = UserName::parse(to);
            let _ = check_text(text);
        }
        ControlRequest::SetStatus { status } => {
            let _ = status.as_str().parse::<natter_proto::Status>();
        }
        ControlRequest::Edit { edit } => {
            let me = UserName::parse("bob").expect("valid name");
            let _ = HOME.with(|home| edit.apply(&home.store, &me));
        }
        _ => {}
    }
}
