//! The direct message protocol (JSON, libp2p's request-response json codec), as a recipient
//! (bob) decodes a request from alice's device and as a sender decodes the answer.
//!
//! The node's request handler (`daemon/inbox.rs` `handle_request`) is private to natter-node,
//! so its steps are replayed here from the public checks it is made of: the revocation list
//! (mallory's account is revoked), `msg::authenticate`,
//! the batch bound, `msg::check_message` for every message (also called on messages of
//! unauthenticated requests, which random input always is), and a pushed record's `verify`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_fuzz::{ALICE, NOW, issuer, peer, revocations};
use natter_proto::msg::{
    self, DirectMessage, MAX_BATCH, MsgRefusal, MsgRequest, MsgResponse, check_message, check_text,
    is_ulid,
};

const OWN: &str = "bob";

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<MsgRequest>(data) {
        let again = serde_json::to_vec(&request).expect("requests encode");
        assert_eq!(
            serde_json::from_slice::<MsgRequest>(&again).ok(),
            Some(request.clone())
        );
        handle(request);
    }
    if let Ok(response) = serde_json::from_slice::<MsgResponse>(data) {
        let _ = serde_json::to_vec(&response).expect("responses encode");
    }
    if let Ok(message) = serde_json::from_slice::<DirectMessage>(data) {
        let _ = check_message(&message, OWN);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = check_text(text);
        let _ = is_ulid(text);
    }
});

/// `daemon/inbox.rs` `handle_request`, step by step; returns the refusal it would answer.
fn handle(request: MsgRequest) -> Option<MsgRefusal> {
    let sender = peer(ALICE);
    let cert = match &request {
        MsgRequest::Deliver { cert, .. } | MsgRequest::Ping { cert, .. } => Some(cert),
        MsgRequest::Presence { record } => Some(&record.body.cert),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    if cert.is_some_and(|c| revocations().revokes(c)) {
        return Some(MsgRefusal::NotAuthenticated);
    }
    match request {
        MsgRequest::Deliver { cert, messages } => {
            let checked: Vec<_> = messages.iter().map(|m| check_message(m, OWN)).collect();
            if let Err((code, _)) = msg::authenticate(&cert, issuer(), &sender, NOW) {
                return Some(code);
            }
            if messages.is_empty() || messages.len() > MAX_BATCH {
                return Some(MsgRefusal::BadMessage);
            }
            if let Some(Err((code, _))) = checked.into_iter().find(Result::is_err) {
                return Some(code);
            }
            let _from = cert.username().to_string();
            None
        }
        MsgRequest::Ping { cert, .. } => msg::authenticate(&cert, issuer(), &sender, NOW)
            .err()
            .map(|(code, _)| code),
        MsgRequest::Presence { record } => {
            if record.verify(issuer(), NOW).is_err() || record.body.cert.peer_id() != sender {
                return Some(MsgRefusal::NotAuthenticated);
            }
            None
        }
        // A request type added later is decoded and re-encoded above; replay it here too.
        #[allow(unreachable_patterns)]
        _ => None,
    }
}
