//! The inbox service: what a request of the msg protocol gets (a pure request handler), and
//! what a stored batch is answered with. The daemon carries the decisions out: the store
//! thread keeps the batch, the network task sends the answer.

use std::collections::HashMap;

use libp2p::PeerId;
use natter_proto::msg::{self, DirectMessage, MAX_BATCH, MsgRefusal, MsgRequest, MsgResponse};
use natter_proto::{Certificate, IssuerKey, PresenceRecord, Revocations, UserName};

use crate::store::{CopyMessage, IncomingMessage, Receipt, StoreError};

/// What the daemon does with a msg request.
#[derive(Debug)]
// One per request, moved once.
#[allow(clippy::large_enum_variant)]
pub(crate) enum MsgDecision {
    /// Answer at once (a pong, or a refusal).
    Answer(MsgResponse),
    /// An authenticated, checked batch: store it in one transaction, in order, then answer
    /// with [`stored_answer`].
    Store(Vec<IncomingMessage>),
    /// An authenticated, checked batch from another device of this user: copies of what it
    /// sent, kept beside this device's own sent messages.
    Copies(Vec<CopyMessage>),
    /// A contact's own signed record: answer `Noted`, learn where the contact is, and tell
    /// the `inbox --follow` streams.
    Presence(PresenceRecord),
}

/// Most senders' certificates [`VerifiedCerts`] remembers; past it, it starts over.
const MAX_VERIFIED: usize = 4096;

/// The certificates senders proved, by peer: a sender's certificate is verified (an ed25519
/// signature check and a point decompression, about a sixth of a receiver's CPU per batch
/// when done each time) once, then only compared and its period checked, until the sender
/// shows another one. Bounded by [`MAX_VERIFIED`]; the revocation check stays per request.
#[derive(Debug)]
pub(crate) struct VerifiedCerts {
    issuer: IssuerKey,
    by_peer: HashMap<PeerId, Certificate>,
}

impl VerifiedCerts {
    /// Verifies under `issuer`, the pinned key.
    pub(crate) fn new(issuer: IssuerKey) -> Self {
        Self {
            issuer,
            by_peer: HashMap::new(),
        }
    }

    /// [`msg::authenticate`], remembered: the same certificate from the same peer is not
    /// verified again, only checked for expiry.
    pub(crate) fn authenticate(
        &mut self,
        cert: &Certificate,
        peer: &PeerId,
        now: u64,
    ) -> Result<(), (MsgRefusal, String)> {
        if self.by_peer.get(peer) == Some(cert) {
            return cert
                .check_period(now, 0)
                .map_err(|e| (MsgRefusal::NotAuthenticated, e.to_string()));
        }
        msg::authenticate(cert, &self.issuer, peer, now)?;
        if self.by_peer.len() >= MAX_VERIFIED {
            self.by_peer.clear();
        }
        self.by_peer.insert(*peer, cert.clone());
        Ok(())
    }
}

fn refuse((code, message): (MsgRefusal, String)) -> MsgDecision {
    MsgDecision::Answer(MsgResponse::Refused { code, message })
}

/// Decides what `peer`'s `request` gets on a device of `own`. The sender is only ever taken
/// from a certificate that names the connection's PeerId and verifies with the pinned
/// issuer key (`certs`).
pub(crate) fn handle_request(
    peer: PeerId,
    request: MsgRequest,
    certs: &mut VerifiedCerts,
    revocations: &Revocations,
    own: &UserName,
    now: u64,
    now_ms: u64,
) -> MsgDecision {
    let revoked = match &request {
        MsgRequest::Deliver { cert, .. } | MsgRequest::Ping { cert, .. } => {
            revocations.revokes(cert)
        }
        MsgRequest::Presence { record } => revocations.revokes(&record.body.cert),
    };
    if revoked {
        tracing::info!(%peer, "request under a revoked certificate refused");
        return refuse((
            MsgRefusal::NotAuthenticated,
            "the certificate was revoked by the login server".into(),
        ));
    }
    match request {
        MsgRequest::Deliver { cert, messages } => {
            if let Err(refusal) = certs.authenticate(&cert, &peer, now) {
                tracing::warn!(%peer, reason = %refusal.1, "unauthenticated message refused");
                return refuse(refusal);
            }
            if messages.is_empty() || messages.len() > MAX_BATCH {
                return refuse((
                    MsgRefusal::BadMessage,
                    format!("1 to {MAX_BATCH} messages per request"),
                ));
            }
            if cert.username() == own {
                return copies(messages, now_ms);
            }
            if let Some(refusal) = messages
                .iter()
                .find_map(|m| msg::check_message(m, own.as_str()).err())
            {
                return refuse(refusal);
            }
            let from = cert.username().to_string();
            MsgDecision::Store(
                messages
                    .into_iter()
                    .map(|m| IncomingMessage {
                        id: m.id,
                        from: from.clone(),
                        text: m.text,
                        sent_at_ms: m.sent_at_ms,
                        conv_seq: m.conv_seq,
                        received_at_ms: now_ms,
                    })
                    .collect(),
            )
        }
        MsgRequest::Ping { cert, nonce } => match certs.authenticate(&cert, &peer, now) {
            Ok(()) => MsgDecision::Answer(MsgResponse::Pong { nonce }),
            Err(refusal) => refuse(refusal),
        },
        MsgRequest::Presence { record } => {
            if let Err(e) = record.verify(&certs.issuer, now) {
                return refuse((MsgRefusal::NotAuthenticated, e.to_string()));
            }
            if record.body.cert.peer_id() != peer {
                return refuse((
                    MsgRefusal::NotAuthenticated,
                    "record is not the sender's own".into(),
                ));
            }
            MsgDecision::Presence(record)
        }
    }
}

/// A batch from another device of this user: what it sent to others, each message checked as
/// its recipient would check it.
fn copies(messages: Vec<DirectMessage>, now_ms: u64) -> MsgDecision {
    let check = |m: &DirectMessage| {
        UserName::parse_canonical(&m.to)
            .map_err(|e| (MsgRefusal::BadMessage, format!("recipient {:?}: {e}", m.to)))?;
        msg::check_message(m, &m.to)
    };
    if let Some(refusal) = messages.iter().find_map(|m| check(m).err()) {
        return refuse(refusal);
    }
    MsgDecision::Copies(
        messages
            .into_iter()
            .map(|m| CopyMessage {
                id: m.id,
                to: m.to,
                text: m.text,
                sent_at_ms: m.sent_at_ms,
                conv_seq: m.conv_seq,
                received_at_ms: now_ms,
            })
            .collect(),
    )
}

/// The answer to a batch the store kept (or could not keep), and how many were new.
pub(crate) fn stored_answer(receipts: &Result<Vec<Receipt>, StoreError>) -> (MsgResponse, u32) {
    match receipts {
        Ok(receipts) => {
            let stored = receipts.iter().filter(|r| **r == Receipt::Stored).count() as u32;
            let duplicates = receipts
                .iter()
                .filter(|r| **r == Receipt::Duplicate)
                .count() as u32;
            let refused = receipts
                .iter()
                .position(|r| matches!(r, Receipt::Refused(_)));
            match refused.map(|at| (at, receipts[at])) {
                Some((0, Receipt::Refused(quota))) => (
                    MsgResponse::Refused {
                        code: MsgRefusal::InboxFull,
                        message: quota.to_string(),
                    },
                    stored,
                ),
                Some((at, Receipt::Refused(quota))) => (
                    MsgResponse::Partial {
                        accepted: at as u32,
                        duplicates: receipts[..at]
                            .iter()
                            .filter(|r| **r == Receipt::Duplicate)
                            .count() as u32,
                        code: MsgRefusal::InboxFull,
                        message: quota.to_string(),
                    },
                    stored,
                ),
                _ => (MsgResponse::Stored { stored, duplicates }, stored),
            }
        }
        // Input the checks above let through but the store refuses: the same answer again
        // would follow, so not "retry later".
        Err(
            e @ (StoreError::Invalid { .. }
            | StoreError::TooLarge { .. }
            | StoreError::BadName { .. }),
        ) => {
            tracing::warn!(error = %e, "a batch the store refuses");
            (
                MsgResponse::Refused {
                    code: MsgRefusal::BadMessage,
                    message: e.to_string(),
                },
                0,
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "storing messages failed");
            (
                MsgResponse::Refused {
                    code: MsgRefusal::Unavailable,
                    message: "recipient cannot store messages now".into(),
                },
                0,
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use libp2p::identity::Keypair;
    use natter_proto::msg::DirectMessage;
    use natter_proto::{Certificate, IssuerSigningKey};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn issuer() -> IssuerSigningKey {
        IssuerSigningKey::from_bytes(&[1; 32])
    }

    fn device(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    fn cert(name: &str, seed: u8) -> Certificate {
        let public = device(seed).try_into_ed25519().unwrap().public().to_bytes();
        issuer()
            .issue(UserName::parse(name).unwrap(), public, 1, NOW - 10, 3600)
            .unwrap()
    }

    fn message(to: &str, seq: u64) -> DirectMessage {
        DirectMessage {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            to: to.into(),
            text: "hi".into(),
            sent_at_ms: 1,
            conv_seq: seq,
        }
    }

    /// The login server revoked mallory's account.
    fn revoked() -> Revocations {
        natter_proto::RevocationList::sign(
            &issuer(),
            NOW,
            vec![natter_proto::revocation::Revoked {
                name: "mallory".into(),
                device: None,
                revoked_at: NOW,
            }],
        )
        .unwrap()
        .verify(&issuer().public())
        .unwrap()
    }

    #[test]
    fn nothing_is_taken_under_a_revoked_certificate() {
        let mallory = device(5).public().to_peer_id();
        let d = handle(
            mallory,
            MsgRequest::Deliver {
                cert: cert("mallory", 5),
                messages: vec![message("bob", 1)],
            },
        );
        assert_eq!(refusal(&d), Some(MsgRefusal::NotAuthenticated));
        let d = handle(
            mallory,
            MsgRequest::Ping {
                cert: cert("mallory", 5),
                nonce: 1,
            },
        );
        assert_eq!(refusal(&d), Some(MsgRefusal::NotAuthenticated));
        let alice = device(2).public().to_peer_id();
        let d = handle(
            alice,
            MsgRequest::Deliver {
                cert: cert("alice", 2),
                messages: vec![message("bob", 1)],
            },
        );
        assert!(matches!(d, MsgDecision::Store(_)));
    }

    /// A remembered certificate is taken from its own device only, only while valid, and
    /// another certificate from the same device is verified afresh.
    #[test]
    fn a_verified_certificate_is_remembered_per_device_and_still_expires() {
        let mut certs = VerifiedCerts::new(issuer().public());
        let alice = device(2).public().to_peer_id();
        let mallory = device(3).public().to_peer_id();
        let good = cert("alice", 2);
        assert!(certs.authenticate(&good, &alice, NOW).is_ok());
        assert!(certs.authenticate(&good, &alice, NOW + 1).is_ok());
        assert_eq!(
            certs.authenticate(&good, &mallory, NOW).unwrap_err().0,
            MsgRefusal::NotAuthenticated
        );
        // Past its expiry, though remembered.
        let (code, why) = certs.authenticate(&good, &alice, NOW + 3600).unwrap_err();
        assert_eq!(code, MsgRefusal::NotAuthenticated);
        assert!(why.contains("expired"), "{why}");
        // The same body under another issuer's signature is not the remembered certificate.
        let public = device(2).try_into_ed25519().unwrap().public().to_bytes();
        let forged = IssuerSigningKey::from_bytes(&[9; 32])
            .issue(UserName::parse("alice").unwrap(), public, 1, NOW - 10, 3600)
            .unwrap();
        assert!(certs.authenticate(&forged, &alice, NOW).is_err());
        assert!(certs.authenticate(&good, &alice, NOW).is_ok());
        // Bounded: a new sender past MAX_VERIFIED starts it over.
        certs
            .by_peer
            .extend((1..MAX_VERIFIED).map(|_| (PeerId::random(), good.clone())));
        assert_eq!(certs.by_peer.len(), MAX_VERIFIED);
        assert!(
            certs
                .authenticate(&cert("carol", 4), &device(4).public().to_peer_id(), NOW)
                .is_ok()
        );
        assert_eq!(certs.by_peer.len(), 1);
    }

    fn handle(peer: PeerId, request: MsgRequest) -> MsgDecision {
        let own = UserName::parse("bob").unwrap();
        handle_request(
            peer,
            request,
            &mut VerifiedCerts::new(issuer().public()),
            &self::revoked(),
            &own,
            NOW,
            7,
        )
    }

    fn refusal(d: &MsgDecision) -> Option<MsgRefusal> {
        match d {
            MsgDecision::Answer(MsgResponse::Refused { code, .. }) => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn a_batch_is_taken_only_from_the_certified_sender_and_for_this_user() {
        let alice = device(2).public().to_peer_id();
        let deliver = |cert, messages| MsgRequest::Deliver { cert, messages };
        // Mallory's connection presenting alice's certificate.
        let mallory = device(3).public().to_peer_id();
        let d = handle(mallory, deliver(cert("alice", 2), vec![message("bob", 1)]));
        assert_eq!(refusal(&d), Some(MsgRefusal::NotAuthenticated));
        let d = handle(alice, deliver(cert("alice", 2), vec![]));
        assert_eq!(refusal(&d), Some(MsgRefusal::BadMessage));
        let d = handle(alice, deliver(cert("alice", 2), vec![message("carol", 1)]));
        assert_eq!(refusal(&d), Some(MsgRefusal::WrongRecipient));
        let d = handle(
            alice,
            deliver(cert("alice", 2), vec![message("bob", 1); MAX_BATCH + 1]),
        );
        assert_eq!(refusal(&d), Some(MsgRefusal::BadMessage));
        // Out of the store's range: refused for good, not "retry later" (issue 12).
        for (conv_seq, sent_at_ms) in [(u64::MAX, 1), (1, u64::MAX)] {
            let m = DirectMessage {
                conv_seq,
                sent_at_ms,
                ..message("bob", 1)
            };
            let d = handle(alice, deliver(cert("alice", 2), vec![message("bob", 2), m]));
            assert_eq!(refusal(&d), Some(MsgRefusal::BadMessage));
        }
        let d = handle(alice, deliver(cert("alice", 2), vec![message("bob", 1)]));
        let MsgDecision::Store(batch) = d else {
            panic!("stored: {d:?}");
        };
        assert_eq!(
            (batch[0].from.as_str(), batch[0].received_at_ms),
            ("alice", 7)
        );
    }

    /// Another device of bob's sends bob copies of what it sent others: kept as copies, and
    /// only from a device certified for bob.
    #[test]
    fn copies_come_only_from_the_users_own_devices() {
        let phone = device(5).public().to_peer_id();
        let deliver = |cert, messages| MsgRequest::Deliver { cert, messages };
        let d = handle(phone, deliver(cert("bob", 5), vec![message("carol", 1)]));
        let MsgDecision::Copies(copies) = d else {
            panic!("kept as copies: {d:?}");
        };
        assert_eq!(
            (copies[0].to.as_str(), copies[0].received_at_ms),
            ("carol", 7)
        );
        // Bob's certificate on another connection is not bob's device.
        let mallory = device(3).public().to_peer_id();
        let d = handle(mallory, deliver(cert("bob", 5), vec![message("carol", 1)]));
        assert_eq!(refusal(&d), Some(MsgRefusal::NotAuthenticated));
        // A copy is checked as its recipient would check it.
        let bad = DirectMessage {
            to: "Not A Name".into(),
            ..message("carol", 1)
        };
        let d = handle(phone, deliver(cert("bob", 5), vec![bad]));
        assert_eq!(refusal(&d), Some(MsgRefusal::BadMessage));
        let d = handle(
            phone,
            deliver(
                cert("bob", 5),
                vec![DirectMessage {
                    conv_seq: 0,
                    ..message("carol", 1)
                }],
            ),
        );
        assert_eq!(refusal(&d), Some(MsgRefusal::BadMessage));
    }

    #[test]
    fn pings_need_a_certificate_and_presence_the_senders_own_record() {
        let alice = device(2).public().to_peer_id();
        let d = handle(
            alice,
            MsgRequest::Ping {
                cert: cert("alice", 2),
                nonce: 9,
            },
        );
        assert!(matches!(
            d,
            MsgDecision::Answer(MsgResponse::Pong { nonce: 9 })
        ));
        let d = handle(
            alice,
            MsgRequest::Ping {
                cert: cert("carol", 4),
                nonce: 9,
            },
        );
        assert_eq!(refusal(&d), Some(MsgRefusal::NotAuthenticated));
    }

    #[test]
    fn a_batch_over_a_quota_is_answered_in_part_with_the_reason() {
        use crate::store::OverQuota;
        let over = Receipt::Refused(OverQuota::Blocked);
        let (answer, new) =
            stored_answer(&Ok(vec![Receipt::Duplicate, Receipt::Stored, over, over]));
        assert_eq!(new, 1);
        assert_eq!(
            answer,
            MsgResponse::Partial {
                accepted: 2,
                duplicates: 1,
                code: MsgRefusal::InboxFull,
                message: OverQuota::Blocked.to_string(),
            }
        );
        let (answer, new) = stored_answer(&Ok(vec![over]));
        assert_eq!(new, 0);
        assert!(matches!(
            answer,
            MsgResponse::Refused {
                code: MsgRefusal::InboxFull,
                ..
            }
        ));
    }

    #[test]
    fn stored_answers_count_duplicates_and_a_failed_store_is_retryable() {
        let (answer, new) = stored_answer(&Ok(vec![Receipt::Stored, Receipt::Duplicate]));
        assert_eq!(
            (answer, new),
            (
                MsgResponse::Stored {
                    stored: 1,
                    duplicates: 1
                },
                1
            )
        );
        let (answer, _) = stored_answer(&Err(StoreError::Invalid {
            what: "conversation sequence",
            reason: "too large".into(),
        }));
        assert!(matches!(
            answer,
            MsgResponse::Refused {
                code: MsgRefusal::BadMessage,
                ..
            }
        ));
        let (answer, _) = stored_answer(&Err(StoreError::Closed));
        assert!(matches!(
            answer,
            MsgResponse::Refused {
                code: MsgRefusal::Unavailable,
                ..
            }
        ));
    }
}
