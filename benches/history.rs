//! History throughput: `record` of batches of 256 entries.
//!
//! Always measures the embedded store (in a temp dir); measures Redis too
//! when `HOOKD_BENCH_REDIS_URL` is set (keys under a `bench_hist_<pid>`
//! prefix). Between timed calls, an untimed `trim` keeps the store at a
//! steady size, as the background trim does in hookd.
//!
//! - `attempted_256`: 256 deliveries, each delivered in one attempt
//!   recorded on its own (the attempt creates the summary): one entry per
//!   delivery, the cheapest way to log a delivery.
//! - `created_attempted_256`: 128 deliveries, each a `Created` entry (at
//!   fan-out) then an `Attempted` one: two entries per delivery, as the
//!   dispatcher is expected to write.
//!
//! ```text
//! redis-server --port 6399 --save "" --appendonly no &
//! HOOKD_BENCH_REDIS_URL=redis://127.0.0.1:6399 cargo bench --bench history
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookd::config::{Config, HistoryConfig, QueueConfig, Secret, SubscriptionName};
use hookd::history::embedded::EmbeddedHistory;
use hookd::history::redis::RedisHistory;
use hookd::history::{AttemptRecord, DeliveryState, DeliverySummary, Entry, History, REDACTED};
use hookd::ingest::EventId;
use hookd::queue::{now_ms, shard_of, DeliveryId};

/// Entries per `record` call.
const BATCH: usize = 256;
/// Deliveries the store keeps while measuring.
const KEEP: usize = 200_000;
/// Environment variable naming the Redis to measure.
const REDIS_URL_VAR: &str = "HOOKD_BENCH_REDIS_URL";

/// A fresh delivery and its successful first attempt, with typical headers
/// and a short response body.
fn delivery(subscription: &SubscriptionName, shards: u16) -> (DeliverySummary, AttemptRecord) {
    let event_id = EventId::generate();
    let id = DeliveryId::new(shard_of(&event_id, shards));
    let now = now_ms();
    let summary = DeliverySummary {
        id: id.clone(),
        event_id: event_id.clone(),
        event_type: "coupon.redeemed".into(),
        subscription: subscription.clone(),
        state: DeliveryState::Pending,
        attempts: 0,
        created_at: now,
        updated_at: now,
        last_status: None,
        last_error: None,
        next_attempt_at: None,
        note: None,
        tenant: None,
    };
    let header = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let attempt = AttemptRecord {
        delivery_id: id,
        event_id: event_id.clone(),
        event_type: "coupon.redeemed".into(),
        subscription: subscription.clone(),
        attempt: 1,
        started_at: now,
        duration_ms: 42,
        request_headers: vec![
            header("webhook-id", event_id.as_str()),
            header("webhook-timestamp", "1767225600"),
            header("webhook-signature", REDACTED),
            header("content-type", "application/json"),
            header(
                "content-digest",
                "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
            ),
            header("user-agent", "hookd/0.1.0"),
        ],
        status: Some(200),
        response_headers: vec![
            header("content-type", "application/json"),
            header("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ],
        response_body: r#"{"ok":true,"received":"coupon.redeemed"}"#.into(),
        error_kind: None,
        error: None,
        next_attempt_at: None,
        tenant: None,
    };
    (summary, attempt)
}

fn attempted(n: usize, shards: u16) -> Vec<Entry> {
    let subscription = SubscriptionName::parse("crm").expect("valid name");
    (0..n)
        .map(|_| Entry::Attempted {
            attempt: delivery(&subscription, shards).1,
            state: DeliveryState::Delivered,
        })
        .collect()
}

fn created_attempted(n: usize, shards: u16) -> Vec<Entry> {
    let subscription = SubscriptionName::parse("crm").expect("valid name");
    let pairs: Vec<_> = (0..n / 2).map(|_| delivery(&subscription, shards)).collect();
    let mut entries: Vec<Entry> = pairs.iter().map(|(s, _)| Entry::Created(s.clone())).collect();
    entries.extend(pairs.into_iter().map(|(_, attempt)| Entry::Attempted {
        attempt,
        state: DeliveryState::Delivered,
    }));
    entries
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, history: Arc<dyn History>, shards: u16) {
    let mut group = c.benchmark_group(format!("history/{name}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));

    let mut run = |label: &str, make: fn(usize, u16) -> Vec<Entry>| {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let batch = make(BATCH, shards);
                        let start = Instant::now();
                        history.record(&batch).await.expect("record");
                        total += start.elapsed();
                        history
                            .trim(now_ms(), Duration::from_secs(3600), KEEP)
                            .await
                            .expect("trim");
                    }
                    total
                })
            })
        });
    };
    run("attempted_256", attempted);
    run("created_attempted_256", created_attempted);
    group.finish();
}

fn configs() -> (QueueConfig, HistoryConfig) {
    let config = Config::from_toml("").expect("defaults are valid");
    let mut queue = config.queue;
    queue.key_prefix = format!("bench_hist_{}", std::process::id());
    (queue, config.history)
}

fn history_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let dir = tempfile::tempdir().expect("temp dir");
    let (mut queue, history) = configs();
    queue.data_dir = dir.path().join("store");
    let store: Arc<dyn History> = Arc::new(EmbeddedHistory::open(&queue, &history).expect("open the embedded history"));
    bench_backend(c, &rt, "embedded", store, queue.shards);

    match std::env::var(REDIS_URL_VAR) {
        Ok(url) => {
            let (mut queue, history) = configs();
            queue.redis_url = Some(Secret::new(url));
            let store: Arc<dyn History> = Arc::new(
                rt.block_on(RedisHistory::connect(&queue, &history))
                    .expect("connect to Redis"),
            );
            bench_backend(c, &rt, "redis", store, queue.shards);
        }
        Err(_) => eprintln!("{REDIS_URL_VAR} is not set: skipping the Redis benchmarks"),
    }
}

criterion_group!(benches, history_benches);
criterion_main!(benches);
