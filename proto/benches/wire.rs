//! Presence-record verification and the JSON codec of direct messages (pure CPU, one core):
//! the per-record cost a superpeer pays for every directory write it accepts, and the
//! per-message cost of the msg protocol's encoding.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natter_proto::msg::{DirectMessage, MsgRequest, MsgResponse};
use natter_proto::presence::directory_key;
use natter_proto::{IssuerSigningKey, PresenceBody, PresenceRecord, Status, UserName};
use std::hint::black_box;

const NOW: u64 = 1_800_000_000;

fn record(seq: u64) -> (PresenceRecord, natter_proto::IssuerKey) {
    let issuer = IssuerSigningKey::from_bytes(&[9u8; 32]);
    let device = libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32]).expect("valid seed");
    let public = device
        .clone()
        .try_into_ed25519()
        .expect("ed25519")
        .public()
        .to_bytes();
    let cert = issuer
        .issue(
            UserName::parse("alice").expect("name"),
            public,
            1,
            NOW - 60,
            86_400,
        )
        .expect("issue");
    let me = device.public().to_peer_id();
    let home = libp2p_identity::Keypair::ed25519_from_bytes([8u8; 32])
        .expect("valid seed")
        .public()
        .to_peer_id();
    // What a leaf attached to two superpeers publishes: four circuit addresses.
    let relay_addrs = [
        "tcp/4001",
        "udp/4001/quic-v1",
        "tcp/4002",
        "udp/4002/quic-v1",
    ]
    .iter()
    .map(|t| format!("/ip4/203.0.113.7/{t}/p2p/{home}/p2p-circuit/p2p/{me}"))
    .collect();
    let body = PresenceBody {
        cert,
        status: Status::Online,
        seq,
        last_seen: NOW,
        expires_at: NOW + 90,
        home: Some(home.to_string()),
        relay_addrs,
        direct_addrs: vec![],
    };
    (body.sign(&device).expect("sign"), issuer.public())
}

fn messages(n: usize) -> Vec<DirectMessage> {
    (0..n as u64)
        .map(|i| DirectMessage {
            id: format!("01JD{i:022}"),
            to: "bob".into(),
            text: format!("bench message {i:08}"),
            sent_at_ms: NOW * 1000,
            conv_seq: i + 1,
        })
        .collect()
}

fn presence(c: &mut Criterion) {
    let (rec, issuer) = record(2);
    let (older, _) = record(1);
    let key = directory_key(rec.username());
    let json = rec.to_json();
    let mut group = c.benchmark_group("presence");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify", |b| {
        b.iter(|| black_box(&rec).verify(&issuer, NOW + 1))
    });
    group.bench_function("validate_for_store (replacing an older record)", |b| {
        b.iter(|| black_box(&rec).validate_for_store(&key, &issuer, NOW + 1, Some(&older)))
    });
    group.bench_function("from_json+validate_for_store", |b| {
        b.iter(|| {
            PresenceRecord::from_json(black_box(&json))
                .and_then(|r| r.validate_for_store(&key, &issuer, NOW + 1, Some(&older)))
        })
    });
    group.bench_function("to_json", |b| b.iter(|| black_box(&rec).to_json()));
    group.finish();
}

fn codec(c: &mut Criterion) {
    let (rec, _) = record(1);
    let cert = rec.body.cert.clone();
    let mut group = c.benchmark_group("msg_json");
    for n in [1usize, 64] {
        let request = MsgRequest::Deliver {
            cert: cert.clone(),
            messages: messages(n),
        };
        let bytes = serde_json::to_vec(&request).expect("encode");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("encode deliver x{n}"), |b| {
            b.iter(|| serde_json::to_vec(black_box(&request)))
        });
        group.bench_function(format!("decode deliver x{n}"), |b| {
            b.iter(|| serde_json::from_slice::<MsgRequest>(black_box(&bytes)))
        });
    }
    group.throughput(Throughput::Elements(1));
    let ping = serde_json::to_vec(&MsgRequest::Ping { cert, nonce: 7 }).expect("encode");
    group.bench_function("decode ping", |b| {
        b.iter(|| serde_json::from_slice::<MsgRequest>(black_box(&ping)))
    });
    let stored = serde_json::to_vec(&MsgResponse::Stored {
        stored: 64,
        duplicates: 0,
    })
    .expect("encode");
    group.bench_function("decode stored", |b| {
        b.iter(|| serde_json::from_slice::<MsgResponse>(black_box(&stored)))
    });
    group.finish();
}

criterion_group!(benches, presence, codec);
criterion_main!(benches);
