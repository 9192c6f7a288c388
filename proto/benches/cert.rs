//! Certificate issue and verify throughput (pure CPU, one core).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natter_proto::{Certificate, IssuerSigningKey, UserName};
use std::hint::black_box;

fn device_key() -> [u8; 32] {
    libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32])
        .expect("valid seed")
        .try_into_ed25519()
        .expect("ed25519")
        .public()
        .to_bytes()
}

fn bench(c: &mut Criterion) {
    let issuer = IssuerSigningKey::from_bytes(&rand::random());
    let public = issuer.public();
    let name = UserName::parse("alice").expect("valid name");
    let device = device_key();
    let now = 1_800_000_000;

    let mut group = c.benchmark_group("certificate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("issue", |b| {
        b.iter(|| issuer.issue(black_box(name.clone()), device, 1, now, 86_400))
    });
    let cert = issuer
        .issue(name.clone(), device, 1, now, 86_400)
        .expect("issue");
    group.bench_function("verify", |b| {
        b.iter(|| black_box(&cert).verify(&public, now + 1))
    });
    let bytes = cert.to_bytes();
    group.bench_function("decode+verify", |b| {
        b.iter(|| {
            Certificate::from_bytes(black_box(&bytes)).and_then(|c| c.verify(&public, now + 1))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
