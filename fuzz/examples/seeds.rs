//! Writes the seed corpus, `fuzz/seeds/<target>/`: a few valid encodings per target, signed
//! by the fixtures' issuer and devices, so that the fuzzer starts past the signature checks.
//! Run it again when a wire format or the fixtures change:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use std::fs;
use std::path::Path;

use natter_fuzz::{
    ALICE, BOB, MALLORY, NOW, SUPERPEER, cert, issuer, name, peer, record, revocation_list,
};
use natter_node::Identity;
use natter_node::daemon::api::{
    ControlRequest, ControlResponse, FollowEvent, InboxEdit, InboxItem,
};
use natter_proto::login::{
    LoginRequest, LoginResponse, Password, Refusal, RefusalCode, SuperpeerInfo,
};
use natter_proto::msg::{DirectMessage, MsgRefusal, MsgRequest, MsgResponse};
use natter_proto::overlay::{Introduction, IntroductionResponse, OverlayRequest, OverlayResponse};
use natter_proto::presence::Status;

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("seeds encode")
}

/// Several messages, one per line, for the targets that replay a conversation.
fn json_lines<T: serde::Serialize>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend(json(v));
        out.push(b'\n');
    }
    out
}

fn superpeers() -> Vec<SuperpeerInfo> {
    vec![SuperpeerInfo {
        peer_id: peer(SUPERPEER).to_string(),
        addrs: vec![
            "/ip4/192.0.2.9/tcp/4001".into(),
            "/ip6/2001:db8::9/udp/4001/quic-v1".into(),
        ],
        leaves: 3,
        capacity: 100,
    }]
}

fn cert_seeds() -> Seeds {
    let alice = cert("alice", ALICE);
    let identity = Identity {
        user: name("alice"),
        login: format!("/ip4/192.0.2.1/tcp/4747/p2p/{}", peer(SUPERPEER))
            .parse()
            .expect("valid multiaddr"),
        issuer_key: *issuer(),
        cert: alice.clone(),
    };
    vec![
        ("bytes", alice.to_bytes()),
        ("bytes-bob", cert("bob", BOB).to_bytes()),
        ("base64", alice.to_base64().into_bytes()),
        ("json", json(&alice)),
        ("issuer-key", issuer().to_bytes().to_vec()),
        ("issuer-key-base64", issuer().to_base64().into_bytes()),
        ("issuer-key-json", json(issuer())),
        ("identity", json(&identity)),
    ]
}

fn presence_seeds() -> Seeds {
    vec![
        (
            "online",
            record("alice", ALICE, 6, Status::Online).to_json(),
        ),
        (
            "offline",
            record("alice", ALICE, 7, Status::Offline).to_json(),
        ),
        (
            "same-as-stored",
            record("alice", ALICE, 5, Status::Online).to_json(),
        ),
        ("bob", record("bob", BOB, 1, Status::Away).to_json()),
        ("status", b"busy".to_vec()),
    ]
}

fn login_seeds() -> Seeds {
    let password = || Password::new("correct horse battery");
    vec![
        (
            "register",
            json(&LoginRequest::Register {
                name: "carol".into(),
                password: password(),
            }),
        ),
        (
            "login",
            json(&LoginRequest::Login {
                name: "Alice".into(),
                password: password(),
            }),
        ),
        (
            "renew",
            json(&LoginRequest::Renew {
                cert: cert("alice", ALICE),
            }),
        ),
        (
            "exists",
            json(&LoginRequest::Exists {
                name: "alice".into(),
            }),
        ),
        (
            "announce",
            json(&LoginRequest::Announce {
                cert: cert("alice", ALICE),
                addrs: vec![
                    "/ip4/192.0.2.7/tcp/4001".into(),
                    format!("/ip4/192.0.2.7/udp/4001/quic-v1/p2p/{}", peer(ALICE)),
                    "/dns/alice.example/tcp/4001".into(),
                    "/ip4/0.0.0.0/tcp/4001".into(),
                ],
                leaves: 3,
                capacity: 100,
            }),
        ),
        (
            "issued",
            json(&LoginResponse::Issued {
                cert: cert("alice", ALICE),
                issuer_key: *issuer(),
                superpeers: superpeers(),
                supply: Default::default(),
            }),
        ),
        (
            "announced",
            json(&LoginResponse::Announced {
                refresh_secs: 60,
                superpeers: superpeers(),
                supply: Default::default(),
            }),
        ),
        (
            "bootstrap",
            json(&LoginRequest::Bootstrap {
                cert: cert("alice", ALICE),
            }),
        ),
        (
            "withdraw",
            json(&LoginRequest::Withdraw {
                cert: cert("alice", ALICE),
            }),
        ),
        ("revocations", json(&LoginRequest::Revocations { since: 0 })),
        (
            "revocations-list",
            json(&LoginResponse::Revocations {
                list: Some(revocation_list()),
            }),
        ),
        (
            "refused",
            json(&LoginResponse::Refused(Refusal::retry_after(
                RefusalCode::RateLimited,
                7,
            ))),
        ),
        (
            "login-addr",
            format!("/dns/login.example/tcp/4747/p2p/{}", peer(SUPERPEER)).into_bytes(),
        ),
    ]
}

fn overlay_seeds() -> Seeds {
    // Senders take turns: alice, bob, carol (on the SUPERPEER device), alice, …
    let session = json_lines(&[
        OverlayRequest::Attach {
            cert: cert("alice", ALICE),
        },
        OverlayRequest::Attach {
            cert: cert("bob", BOB),
        },
        OverlayRequest::Attach {
            cert: cert("carol", SUPERPEER),
        },
        OverlayRequest::Publish {
            record: record("alice", ALICE, 6, Status::Online),
        },
        OverlayRequest::Lookup {
            name: "alice".into(),
        },
        OverlayRequest::IsAttached {
            peer_id: peer(ALICE).to_string(),
        },
        OverlayRequest::Publish {
            record: record("alice", ALICE, 5, Status::Busy),
        },
        OverlayRequest::Revocations { since: 0 },
        OverlayRequest::Attach {
            cert: cert("mallory", MALLORY),
        },
        OverlayRequest::Detach,
    ]);
    vec![
        ("session", session),
        (
            "responses",
            json_lines(&[
                OverlayResponse::Found {
                    record: record("bob", BOB, 1, Status::Online),
                    confirmed: true,
                    others: vec![],
                },
                OverlayResponse::Attached {
                    lease_secs: 90,
                    superpeers: superpeers(),
                },
                OverlayResponse::Full {
                    alternatives: superpeers(),
                },
                OverlayResponse::Revocations {
                    list: Some(revocation_list()),
                },
            ]),
        ),
        (
            "introduction",
            json_lines(&[Introduction {
                cert: cert("alice", ALICE),
            }]),
        ),
        (
            "introduction-response",
            json(&IntroductionResponse::Refused {
                message: "no".into(),
            }),
        ),
    ]
}

fn msg_seeds() -> Seeds {
    let message = DirectMessage {
        id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        to: "bob".into(),
        text: "hi bob".into(),
        sent_at_ms: NOW * 1000,
        conv_seq: 1,
    };
    vec![
        (
            "deliver",
            json(&MsgRequest::Deliver {
                cert: cert("alice", ALICE),
                messages: vec![
                    message.clone(),
                    DirectMessage {
                        id: "01ARZ3NDEKTSV4RRFFQ69G5FAW".into(),
                        conv_seq: 2,
                        ..message.clone()
                    },
                ],
            }),
        ),
        (
            "ping",
            json(&MsgRequest::Ping {
                cert: cert("alice", ALICE),
                nonce: 42,
            }),
        ),
        (
            "presence",
            json(&MsgRequest::Presence {
                record: record("alice", ALICE, 6, Status::Away),
            }),
        ),
        ("message", json(&message)),
        (
            "stored",
            json(&MsgResponse::Stored {
                stored: 1,
                duplicates: 1,
            }),
        ),
        (
            "refused",
            json(&MsgResponse::Refused {
                code: MsgRefusal::WrongRecipient,
                message: "not bob".into(),
            }),
        ),
    ]
}

fn revocation_seeds() -> Seeds {
    vec![
        ("list", json(&revocation_list())),
        ("entry", json(&revocation_list().revoked[1])),
    ]
}

fn name_seeds() -> Seeds {
    vec![
        ("plain", b"alice".to_vec()),
        ("folded", b"Alice.B_c-9".to_vec()),
        ("json", b"\"bob\"".to_vec()),
        ("longest", b"abcdefghijklmnopqrstuvwxyz012345".to_vec()),
    ]
}

fn control_seeds() -> Seeds {
    let token = "00".repeat(32);
    let request = |r: ControlRequest| json(&serde_json::json!({ "token": token, "request": r }));
    let reply = |r: ControlResponse| json(&serde_json::json!({ "ok": r }));
    let item = InboxItem {
        id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        from: "alice".into(),
        text: "hi".into(),
        sent_at: NOW * 1000,
        received_at: NOW * 1000 + 5,
    };
    vec![
        (
            "send",
            request(ControlRequest::Send {
                to: "bob".into(),
                text: "hi bob".into(),
                wait: true,
            }),
        ),
        (
            "ping",
            request(ControlRequest::Ping {
                name: "bob".into(),
                count: 3,
                interval_ms: Some(200),
            }),
        ),
        (
            "set-status",
            request(ControlRequest::SetStatus {
                status: Status::Busy,
            }),
        ),
        ("status", request(ControlRequest::Status)),
        (
            "edit",
            request(ControlRequest::Edit {
                edit: InboxEdit::Block {
                    name: "mallory".into(),
                },
            }),
        ),
        ("inbox", reply(ControlResponse::Inbox(vec![item.clone()]))),
        (
            "event",
            reply(ControlResponse::Event(FollowEvent::Message(item))),
        ),
        ("error", b"{\"error\":\"bad control token\"}\n".to_vec()),
    ]
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let targets: [(&str, Seeds); 8] = [
        ("cert", cert_seeds()),
        ("presence", presence_seeds()),
        ("login", login_seeds()),
        ("overlay", overlay_seeds()),
        ("msg", msg_seeds()),
        ("name", name_seeds()),
        ("control", control_seeds()),
        ("revocation", revocation_seeds()),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        for (label, bytes) in seeds {
            fs::write(dir.join(label), bytes)?;
        }
    }
    println!("seeds written to {}", root.display());
    Ok(())
}
