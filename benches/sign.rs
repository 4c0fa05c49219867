//! Signing cost per attempt: `Signer::sign` with one and two secrets, and
//! `content_digest`, over a typical ~300-byte event body.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use hookd::config::Secret;
use hookd::sign::{content_digest, Signer};

const BODY: &[u8] = br#"{"type":"coupon.redeemed","timestamp":"2024-05-01T12:00:00Z","data":{"coupon":"SPRING-2024-X1","customer":{"id":"cus_8f2a9c1e","email":"jane@example.com"},"store":"store_0042","amount":{"value":1250,"currency":"EUR"},"channel":"pos","redeemed_at":"2024-05-01T11:59:58Z","tags":["spring","loyalty"]}}"#;

fn signer(secrets: &[&str]) -> Signer {
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
    Signer::new(&secrets).expect("valid secrets")
}

fn bench(c: &mut Criterion) {
    let one = signer(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
    let two = signer(&[
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_dGhpcyBpcyBhIHNlY29uZCBzZWNyZXQga2V5IQ==",
    ]);
    let id = "01HZX3K5W8Q2V7N4M6P9R0T1YB";
    let timestamp = 1_714_564_800;

    let mut group = c.benchmark_group("sign");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    group.bench_function("one_secret", |b| {
        b.iter(|| one.sign(black_box(id), black_box(timestamp), black_box(BODY)))
    });
    group.bench_function("two_secrets", |b| {
        b.iter(|| two.sign(black_box(id), black_box(timestamp), black_box(BODY)))
    });
    group.bench_function("content_digest", |b| b.iter(|| content_digest(black_box(BODY))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
