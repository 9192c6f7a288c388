//! The overlay server's decisions: what a superpeer does with each request of the overlay
//! protocol (attach, publish, lookup, is-attached, detach). A pure request handler, after
//! rust-libp2p's rendezvous server: the node passes the request and what it knows, and carries
//! out the [`OverlayDecision`] (answer, store a record in the directory, start a lookup).

use libp2p::PeerId;
use natter_proto::login::SuperpeerInfo;
use natter_proto::overlay::{OverlayRefusal, OverlayRequest, OverlayResponse};
use natter_proto::presence::directory_key;
use natter_proto::{DeviceRecords, IssuerKey, PresenceRecord, Revocations, UserName};

use crate::directory::DirectoryStats;
use crate::leaves::{Admission, LeafTable};

/// What the handler needs to know besides the leaf table.
pub struct OverlayContext<'a> {
    /// This node.
    pub me: PeerId,
    /// Whether this node is a superpeer now (a leaf answers only `IsAttached`).
    pub is_superpeer: bool,
    pub issuer: &'a IssuerKey,
    /// The login server's newest revocation list this node holds.
    pub revocations: &'a Revocations,
    /// Unix seconds.
    pub now: u64,
    /// How long a leaf's record vouches for it, told to attaching leaves.
    pub lease_secs: u64,
    /// Whether the asking peer is a superpeer (it may look users up without attaching).
    pub asker_is_superpeer: bool,
    /// The value stored in the directory under a key, if any.
    pub stored: &'a dyn Fn(&[u8]) -> Option<Vec<u8>>,
    /// Other superpeers to offer a leaf (besides the asker), at most a few.
    pub others: &'a dyn Fn(PeerId) -> Vec<SuperpeerInfo>,
}

impl std::fmt::Debug for OverlayContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayContext")
            .field("me", &self.me)
            .field("is_superpeer", &self.is_superpeer)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// What the node does with a request.
#[derive(Debug)]
// One per request, moved once.
#[allow(clippy::large_enum_variant)]
pub enum OverlayDecision {
    /// Answer at once.
    Answer(OverlayResponse),
    /// A valid record from an attached leaf, already set in its leaf entry: put it in the
    /// directory, then answer [`OverlayResponse::Published`].
    Store(PresenceRecord),
    /// Resolve a lookup for this name and answer with its outcome.
    Lookup(UserName),
}

fn refuse(code: OverlayRefusal, message: &str) -> OverlayDecision {
    OverlayDecision::Answer(OverlayResponse::Refused {
        code,
        message: message.into(),
    })
}

/// Decides what `peer`'s `request` gets. Updates the leaf table (attach, detach, a leaf's
/// newest record) and the directory counters.
pub fn handle_request(
    leaves: &mut LeafTable,
    stats: &mut DirectoryStats,
    peer: PeerId,
    request: OverlayRequest,
    ctx: &OverlayContext<'_>,
) -> OverlayDecision {
    if let OverlayRequest::IsAttached { peer_id } = &request {
        let attached = peer_id
            .parse::<PeerId>()
            .is_ok_and(|p| leaves.contains(&p) || (p == ctx.me && ctx.is_superpeer));
        return OverlayDecision::Answer(OverlayResponse::Attachment { attached });
    }
    if !ctx.is_superpeer {
        return refuse(OverlayRefusal::NotSuperpeer, "this node is not a superpeer");
    }
    match request {
        OverlayRequest::Attach { cert } if ctx.revocations.revokes(&cert) => {
            tracing::info!(%peer, user = %cert.username(), "revoked certificate: leaf refused");
            refuse(
                OverlayRefusal::InvalidCertificate,
                "the certificate was revoked by the login server",
            )
        }
        OverlayRequest::Attach { cert } => match leaves.admit(peer, &cert, ctx.issuer, ctx.now) {
            Admission::Admitted | Admission::AlreadyAttached => {
                tracing::info!(%peer, user = %cert.username(), leaves = leaves.len(), "leaf attached");
                OverlayDecision::Answer(OverlayResponse::Attached {
                    lease_secs: ctx.lease_secs,
                    superpeers: (ctx.others)(peer),
                })
            }
            Admission::Full => {
                tracing::info!(%peer, "full: leaf refused");
                OverlayDecision::Answer(OverlayResponse::Full {
                    alternatives: (ctx.others)(peer),
                })
            }
            Admission::AccountFull => {
                tracing::info!(%peer, user = %cert.username(), "account at its device limit here: leaf refused");
                OverlayDecision::Answer(OverlayResponse::Full {
                    alternatives: (ctx.others)(peer),
                })
            }
            Admission::Refused(reason) => refuse(OverlayRefusal::InvalidCertificate, &reason),
        },
        OverlayRequest::Publish { record } => {
            if !leaves.contains(&peer) {
                return refuse(OverlayRefusal::NotAttached, "attach before publishing");
            }
            if record.body.cert.peer_id() != peer {
                stats.records_refused += 1;
                return refuse(
                    OverlayRefusal::InvalidRecord,
                    "record is not this leaf's own",
                );
            }
            if ctx.revocations.revokes(&record.body.cert) {
                stats.records_refused += 1;
                return refuse(
                    OverlayRefusal::InvalidRecord,
                    "the record's certificate was revoked by the login server",
                );
            }
            let key = directory_key(record.username());
            // The stale rule is per device: another device's newer record is no reason to
            // refuse this one.
            let stored = (ctx.stored)(&key)
                .and_then(|s| DeviceRecords::from_json(&s).ok())
                .and_then(|set| set.same_device(&record).cloned());
            // The certificate this leaf attached with was verified then.
            let known = leaves.get(&peer).map(|leaf| &leaf.cert);
            match record.validate_for_store_known(&key, ctx.issuer, ctx.now, stored.as_ref(), known)
            {
                Ok(()) => {
                    let _ = leaves.set_record(&peer, record.clone());
                    stats.records_stored += 1;
                    OverlayDecision::Store(record)
                }
                Err(e) => {
                    stats.records_refused += 1;
                    refuse(OverlayRefusal::InvalidRecord, &e.to_string())
                }
            }
        }
        OverlayRequest::Lookup { name } => {
            if !leaves.contains(&peer) && !ctx.asker_is_superpeer {
                return refuse(
                    OverlayRefusal::NotAttached,
                    "attach before looking users up",
                );
            }
            match UserName::parse(&name) {
                Ok(name) => OverlayDecision::Lookup(name),
                Err(e) => refuse(OverlayRefusal::InvalidName, &e.to_string()),
            }
        }
        OverlayRequest::Detach => {
            leaves.remove(&peer);
            OverlayDecision::Answer(OverlayResponse::Detached)
        }
        OverlayRequest::Revocations { since } => {
            if !leaves.contains(&peer) && !ctx.asker_is_superpeer {
                return refuse(OverlayRefusal::NotAttached, "attach before asking");
            }
            OverlayDecision::Answer(OverlayResponse::Revocations {
                list: ctx
                    .revocations
                    .list()
                    .filter(|l| l.issued_at > since)
                    .cloned(),
            })
        }
        OverlayRequest::IsAttached { .. } => unreachable!("answered above"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use natter_proto::Certificate;

    use super::*;
    use crate::test_support::{NOW, cert_by, device, issuer, record_by};

    fn cert(name: &str, seed: u8) -> Certificate {
        cert_by(name, seed, &issuer())
    }

    fn record(name: &str, seed: u8, seq: u64) -> PresenceRecord {
        record_by(name, seed, seq, None, &issuer())
    }

    struct Server {
        leaves: LeafTable,
        stats: DirectoryStats,
        issuer: IssuerKey,
        stored: Option<Vec<u8>>,
        is_superpeer: bool,
        revocations: Revocations,
    }

    impl Server {
        fn new() -> Self {
            Self {
                leaves: LeafTable::new(2),
                stats: DirectoryStats::default(),
                issuer: issuer().public(),
                stored: None,
                is_superpeer: true,
                revocations: Revocations::default(),
            }
        }

        fn ask(&mut self, peer: PeerId, request: OverlayRequest) -> OverlayDecision {
            let stored = self.stored.clone();
            let stored = move |_: &[u8]| stored.clone();
            let others = |_| Vec::new();
            let ctx = OverlayContext {
                me: device(99).public().to_peer_id(),
                is_superpeer: self.is_superpeer,
                issuer: &self.issuer,
                revocations: &self.revocations,
                now: NOW,
                lease_secs: 90,
                asker_is_superpeer: false,
                stored: &stored,
                others: &others,
            };
            handle_request(&mut self.leaves, &mut self.stats, peer, request, &ctx)
        }
    }

    fn refusal(d: &OverlayDecision) -> Option<OverlayRefusal> {
        match d {
            OverlayDecision::Answer(OverlayResponse::Refused { code, .. }) => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn attach_needs_the_connections_own_certificate_and_room() {
        let mut s = Server::new();
        let alice = device(2).public().to_peer_id();
        // Bob's certificate on alice's connection.
        let d = s.ask(
            alice,
            OverlayRequest::Attach {
                cert: cert("bob", 3),
            },
        );
        assert_eq!(refusal(&d), Some(OverlayRefusal::InvalidCertificate));
        let d = s.ask(
            alice,
            OverlayRequest::Attach {
                cert: cert("alice", 2),
            },
        );
        assert!(matches!(
            d,
            OverlayDecision::Answer(OverlayResponse::Attached { lease_secs: 90, .. })
        ));
        let bob = device(3).public().to_peer_id();
        s.ask(
            bob,
            OverlayRequest::Attach {
                cert: cert("bob", 3),
            },
        );
        let carol = device(4).public().to_peer_id();
        let d = s.ask(
            carol,
            OverlayRequest::Attach {
                cert: cert("carol", 4),
            },
        );
        assert!(matches!(
            d,
            OverlayDecision::Answer(OverlayResponse::Full { .. })
        ));
        // IsAttached answers for the leaves it holds.
        let d = s.ask(
            carol,
            OverlayRequest::IsAttached {
                peer_id: alice.to_string(),
            },
        );
        assert!(matches!(
            d,
            OverlayDecision::Answer(OverlayResponse::Attachment { attached: true })
        ));
        s.ask(alice, OverlayRequest::Detach);
        assert!(!s.leaves.contains(&alice));
    }

    #[test]
    fn publish_takes_only_an_attached_leafs_own_newer_record() {
        let mut s = Server::new();
        let alice = device(2).public().to_peer_id();
        let publish = |r| OverlayRequest::Publish { record: r };
        let d = s.ask(alice, publish(record("alice", 2, 5)));
        assert_eq!(refusal(&d), Some(OverlayRefusal::NotAttached));
        s.ask(
            alice,
            OverlayRequest::Attach {
                cert: cert("alice", 2),
            },
        );
        // Bob's record, from alice's connection.
        let d = s.ask(alice, publish(record("bob", 3, 5)));
        assert_eq!(refusal(&d), Some(OverlayRefusal::InvalidRecord));
        let d = s.ask(alice, publish(record("alice", 2, 5)));
        assert!(matches!(&d, OverlayDecision::Store(r) if r.body.seq == 5));
        assert!(s.leaves.get(&alice).unwrap().record.is_some());
        // Stored is seq 5 now: an older one is refused.
        s.stored = Some(record("alice", 2, 5).to_json());
        let d = s.ask(alice, publish(record("alice", 2, 4)));
        assert_eq!(refusal(&d), Some(OverlayRefusal::InvalidRecord));
        assert_eq!((s.stats.records_stored, s.stats.records_refused), (1, 2));
    }

    #[test]
    fn a_revoked_account_neither_attaches_nor_publishes_and_leaves_get_the_list() {
        use natter_proto::revocation::{RevocationList, Revoked};
        let mut s = Server::new();
        let (alice, mallory) = (
            device(2).public().to_peer_id(),
            device(5).public().to_peer_id(),
        );
        let attach = |name, seed| OverlayRequest::Attach {
            cert: cert(name, seed),
        };
        s.ask(alice, attach("alice", 2));
        s.ask(mallory, attach("mallory", 5));
        let ask_list = OverlayRequest::Revocations { since: 0 };
        assert!(matches!(
            s.ask(alice, ask_list.clone()),
            OverlayDecision::Answer(OverlayResponse::Revocations { list: None })
        ));
        let list = RevocationList::sign(
            &issuer(),
            NOW,
            vec![Revoked {
                name: "mallory".into(),
                device: None,
                revoked_at: NOW,
            }],
        )
        .unwrap();
        s.revocations = list.verify(&s.issuer).unwrap();
        // The node evicts attached leaves it revokes; a revoked one cannot come back.
        assert_eq!(s.leaves.revoked(&s.revocations), vec![mallory]);
        assert_eq!(
            refusal(&s.ask(mallory, attach("mallory", 5))),
            Some(OverlayRefusal::InvalidCertificate)
        );
        let d = s.ask(
            alice,
            OverlayRequest::Publish {
                record: record("mallory", 2, 1),
            },
        );
        assert_eq!(refusal(&d), Some(OverlayRefusal::InvalidRecord));
        assert!(matches!(
            s.ask(alice, ask_list),
            OverlayDecision::Answer(OverlayResponse::Revocations { list: Some(l) }) if l == list
        ));
        let current = OverlayRequest::Revocations { since: NOW };
        assert!(matches!(
            s.ask(alice, current.clone()),
            OverlayDecision::Answer(OverlayResponse::Revocations { list: None })
        ));
        assert_eq!(
            refusal(&s.ask(device(7).public().to_peer_id(), current)),
            Some(OverlayRefusal::NotAttached)
        );
    }

    #[test]
    fn lookups_need_an_attachment_and_a_valid_name_and_leaves_serve_nothing() {
        let mut s = Server::new();
        let alice = device(2).public().to_peer_id();
        let lookup = |n: &str| OverlayRequest::Lookup { name: n.into() };
        assert_eq!(
            refusal(&s.ask(alice, lookup("bob"))),
            Some(OverlayRefusal::NotAttached)
        );
        s.ask(
            alice,
            OverlayRequest::Attach {
                cert: cert("alice", 2),
            },
        );
        assert_eq!(
            refusal(&s.ask(alice, lookup("b!"))),
            Some(OverlayRefusal::InvalidName)
        );
        assert!(
            matches!(s.ask(alice, lookup("Bob")), OverlayDecision::Lookup(n) if n.as_str() == "bob")
        );
        s.is_superpeer = false;
        assert_eq!(
            refusal(&s.ask(alice, lookup("bob"))),
            Some(OverlayRefusal::NotSuperpeer)
        );
    }
}
