//! The overlay and introduce protocols (JSON, libp2p's request-response json codec).
//!
//! An input is up to 16 lines, each one message, replayed against one fresh superpeer: line
//! `i` comes from alice's, bob's or carol's device in turn (`i % 3`), decoded as an
//! `OverlayRequest` and decided by the real `natter_superpeer::overlay::handle_request` (leaf
//! table with room for two, records it stores kept for later lines, mallory revoked). Each
//! line is also decoded as the answers a leaf reads (`OverlayResponse`: a found record is
//! checked as `daemon/leaf.rs` does, a revocation list verified) and as an `Introduction`,
//! checked as `node/src/net/mod.rs` does.

#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use libp2p::{Multiaddr, PeerId};
use natter_fuzz::{ALICE, BOB, NOW, SUPERPEER, issuer, lines, peer, revocations};
use natter_proto::login::SuperpeerInfo;
use natter_proto::overlay::{Introduction, IntroductionResponse, OverlayRequest, OverlayResponse};
use natter_proto::presence::directory_key;
use natter_superpeer::LeafTable;
use natter_superpeer::directory::DirectoryStats;
use natter_superpeer::overlay::{OverlayContext, OverlayDecision, handle_request};

/// The superpeer that answers: a fourth device.
static ME: LazyLock<PeerId> = LazyLock::new(|| peer(10));

fuzz_target!(|data: &[u8]| {
    let mut leaves = LeafTable::new(2);
    let mut stats = DirectoryStats::default();
    let directory: RefCell<HashMap<Vec<u8>, Vec<u8>>> = RefCell::default();
    let stored = |key: &[u8]| directory.borrow().get(key).cloned();
    let others = |_: PeerId| {
        vec![SuperpeerInfo {
            peer_id: peer(SUPERPEER).to_string(),
            addrs: vec!["/ip4/192.0.2.9/tcp/4001".into()],
            leaves: 1,
            capacity: 2,
        }]
    };
    let ctx = OverlayContext {
        me: *ME,
        is_superpeer: true,
        issuer: issuer(),
        revocations: revocations(),
        now: NOW,
        lease_secs: 90,
        asker_is_superpeer: false,
        stored: &stored,
        others: &others,
    };
    for (i, line) in lines(data).enumerate() {
        let sender = peer([ALICE, BOB, SUPERPEER][i % 3]);
        if let Ok(request) = serde_json::from_slice::<OverlayRequest>(line) {
            let again = serde_json::to_vec(&request).expect("requests encode");
            assert_eq!(
                serde_json::from_slice::<OverlayRequest>(&again).ok(),
                Some(request.clone())
            );
            match handle_request(&mut leaves, &mut stats, sender, request, &ctx) {
                OverlayDecision::Store(record) => {
                    let key = directory_key(record.username());
                    directory.borrow_mut().insert(key, record.to_json());
                }
                OverlayDecision::Answer(response) => {
                    let _ = serde_json::to_vec(&response).expect("responses encode");
                }
                OverlayDecision::Lookup(_) => {}
            }
        }
        if let Ok(response) = serde_json::from_slice::<OverlayResponse>(line) {
            leaf_checks(&response);
        }
        if let Ok(intro) = serde_json::from_slice::<Introduction>(line)
            && intro.cert.peer_id() == sender
            && intro.cert.verify(issuer(), NOW).is_ok()
        {
            let _ = revocations().revokes(&intro.cert);
        }
        let _ = serde_json::from_slice::<IntroductionResponse>(line);
    }
    assert!(leaves.len() <= leaves.capacity());
});

/// What a leaf does with an answer: check a found record (`check_answer`), keep the
/// superpeers it is offered.
fn leaf_checks(response: &OverlayResponse) {
    let offered = match response {
        OverlayResponse::Found { record, .. } => {
            let _ = record.verify(issuer(), NOW);
            let _ = revocations().revokes(&record.body.cert);
            let _ = record.is_live(NOW);
            return;
        }
        OverlayResponse::Revocations { list: Some(list) } => {
            if let Ok(fetched) = list.verify(issuer()) {
                let _ = revocations().clone().update(fetched);
            }
            return;
        }
        OverlayResponse::Attached { superpeers, .. } => superpeers,
        OverlayResponse::Full { alternatives } => alternatives,
        _ => return,
    };
    for info in offered {
        let _ = info.peer_id.parse::<PeerId>();
        for addr in &info.addrs {
            let _ = addr.parse::<Multiaddr>();
        }
    }
}
