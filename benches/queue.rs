//! Queue throughput: enqueue, and claim+ack, in batches of 256.
//!
//! Always measures the embedded store (in a temp dir); measures Redis too
//! when `HOOKD_BENCH_REDIS_URL` is set (keys under a `bench_<pid>` prefix;
//! acked deliveries are removed, dedup keys expire after a minute).
//!
//! ```text
//! redis-server --port 6399 --save "" --appendonly no &
//! HOOKD_BENCH_REDIS_URL=redis://127.0.0.1:6399 cargo bench --bench queue
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookd::config::{Config, QueueConfig, Secret, SubscriptionName};
use hookd::ingest::EventId;
use hookd::queue::embedded::EmbeddedQueue;
use hookd::queue::redis::RedisQueue;
use hookd::queue::{now_ms, shard_of, Delivery, DeliveryId, NewEvent, Queue, Settlement};

/// Deliveries per enqueue, claim and settle call.
const BATCH: usize = 256;
/// Dedup window of the benchmark's events.
const WINDOW: Duration = Duration::from_secs(60);
/// Lease of the benchmark's claims.
const LEASE: Duration = Duration::from_secs(60);
/// Environment variable naming the Redis to measure.
const REDIS_URL_VAR: &str = "HOOKD_BENCH_REDIS_URL";

/// `n` fresh events of one delivery each, with a typical 300-byte body.
fn events(n: usize, shards: u16) -> Vec<NewEvent> {
    let subscription = SubscriptionName::parse("crm").expect("valid name");
    let body = Bytes::from(format!(
        r#"{{"type":"coupon.redeemed","timestamp":"2026-01-01T00:00:00.000Z","data":{{"coupon":"{}"}}}}"#,
        "x".repeat(200)
    ));
    (0..n)
        .map(|_| {
            let event_id = EventId::generate();
            let shard = shard_of(&event_id, shards);
            NewEvent {
                dedup_key: None,
                deliveries: vec![Delivery {
                    id: DeliveryId::new(shard),
                    event_id: event_id.clone(),
                    event_type: "coupon.redeemed".into(),
                    subscription: subscription.clone(),
                    created_at: now_ms(),
                    attempts: 0,
                    body: body.clone(),
                    last_error: None,
                    headers: None,
                    tenant: None,
                }],
                event_id,
            }
        })
        .collect()
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, queue: Arc<dyn Queue>, shards: u16) {
    let mut group = c.benchmark_group(format!("queue/{name}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));

    group.bench_function("enqueue_256", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = events(BATCH, shards);
                    let start = Instant::now();
                    queue.enqueue(&batch, WINDOW).await.expect("enqueue");
                    total += start.elapsed();
                }
                total
            })
        })
    });

    group.bench_function("claim_ack_256", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // Untimed: queue what the timed part drains.
                for _ in 0..iters {
                    queue.enqueue(&events(BATCH, shards), WINDOW).await.expect("enqueue");
                }
                let start = Instant::now();
                for _ in 0..iters {
                    let claimed = queue.claim(now_ms(), LEASE, BATCH).await.expect("claim");
                    let acks: Vec<Settlement> = claimed
                        .claims
                        .iter()
                        .map(|c| Settlement::Ack {
                            id: c.delivery.id.clone(),
                            lease: c.lease,
                        })
                        .collect();
                    queue.settle(&acks).await.expect("settle");
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn config() -> QueueConfig {
    let mut config = Config::from_toml("").expect("defaults are valid").queue;
    config.key_prefix = format!("bench_{}", std::process::id());
    config
}

fn queue_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut embedded = config();
    embedded.data_dir = dir.path().join("store");
    let queue: Arc<dyn Queue> = Arc::new(EmbeddedQueue::open(&embedded).expect("open the embedded store"));
    bench_backend(c, &rt, "embedded", queue, embedded.shards);

    match std::env::var(REDIS_URL_VAR) {
        Ok(url) => {
            let mut redis = config();
            redis.redis_url = Some(Secret::new(url));
            let queue: Arc<dyn Queue> = Arc::new(rt.block_on(RedisQueue::connect(&redis)).expect("connect to Redis"));
            bench_backend(c, &rt, "redis", queue, redis.shards);
        }
        Err(_) => eprintln!("{REDIS_URL_VAR} is not set: skipping the Redis benchmarks"),
    }
}

criterion_group!(benches, queue_benches);
criterion_main!(benches);
