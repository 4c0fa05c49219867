//! One suite, written once against `dyn History`, run against every
//! backend: Redis (a real redis-server per test), Redis Cluster (one node
//! owning all slots), the embedded store (a temp dir per test) and
//! PostgreSQL (a real server per test, fresh from initdb).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hookd::config::{HistoryConfig, QueueConfig, Secret, SubscriptionName};
use hookd::history::activity::{MAX_MINUTES, MINUTE_MS};
use hookd::history::embedded::EmbeddedHistory;
use hookd::history::postgres::PostgresHistory;
use hookd::history::redis::RedisHistory;
use hookd::history::{
    redact_headers, Activity, AttemptCounts, AttemptRecord, DeliveryState, DeliverySummary, Entry, Error, ErrorKind,
    EventRecord, History, ListFilter, SubscriptionStats, TenantVolume, REDACTED,
};
use hookd::ingest::EventId;
use hookd::model::TenantId;
use hookd::queue::{shard_of, DeliveryId, Millis};
use support::postgres::PostgresServer;
use support::{queue_config, test_config, unique_prefix, Home};

/// A fixed "now" the tests' times are relative to.
const T0: Millis = 1_700_000_000_000;
/// The start of a minute, shortly after [`T0`]: the activity cases' times
/// are relative to it.
const M: Millis = 1_700_000_040_000;
/// The response body limit of the tests' stores.
const BODY_LIMIT: usize = 64;
/// Secret values the redaction test sends; none may reach storage.
const SECRETS: [&str; 3] = ["v1,c2lnbmF0dXJlLXNlY3JldA==", "Bearer tok-7f3a9", "key-19b2e"];

/// A backend under test.
struct Fixture {
    /// How to open it again: the queue's connection settings.
    queue: QueueConfig,
    /// Retention, body limit, and the PostgreSQL URL if there is one.
    history: HistoryConfig,
    /// Its data: Redis, or a temp dir.
    home: Home,
    /// The PostgreSQL server holding the log, for that backend.
    postgres: Option<PostgresServer>,
    /// The open history.
    store: Option<Arc<dyn History>>,
}

/// What a backend's test starts from.
struct Setup {
    queue: QueueConfig,
    home: Home,
    postgres: Option<PostgresServer>,
}

/// How each backend's tests start.
mod setup {
    use super::*;

    pub fn redis(name: &str) -> Setup {
        let (queue, home) = Home::redis(name);
        Setup {
            queue,
            home,
            postgres: None,
        }
    }

    pub fn redis_cluster(name: &str) -> Setup {
        let (queue, home) = Home::redis_cluster(name);
        Setup {
            queue,
            home,
            postgres: None,
        }
    }

    pub fn embedded(name: &str) -> Setup {
        let (queue, home) = Home::embedded(name);
        Setup {
            queue,
            home,
            postgres: None,
        }
    }

    /// A PostgreSQL server of its own (and a temp dir as the queue's home,
    /// unused by the log).
    pub fn postgres(name: &str) -> Setup {
        let (queue, home) = Home::embedded(name);
        Setup {
            queue,
            home,
            postgres: Some(PostgresServer::start()),
        }
    }
}

impl Fixture {
    async fn open(setup: Setup) -> Fixture {
        let mut history = test_config().history;
        history.response_body_limit = BODY_LIMIT;
        history.postgres_url = setup.postgres.as_ref().map(|pg| Secret::new(pg.url()));
        let mut fx = Fixture {
            queue: setup.queue,
            history,
            home: setup.home,
            postgres: setup.postgres,
            store: None,
        };
        fx.store = Some(fx.connect().await);
        fx
    }

    async fn connect(&self) -> Arc<dyn History> {
        if self.postgres.is_some() {
            return Arc::new(
                PostgresHistory::connect(&self.history)
                    .await
                    .expect("connect to the test PostgreSQL"),
            );
        }
        match self.home {
            Home::Redis(_) => Arc::new(
                RedisHistory::connect(&self.queue, &self.history)
                    .await
                    .expect("connect to the test redis"),
            ),
            Home::Embedded { .. } => {
                Arc::new(EmbeddedHistory::open(&self.queue, &self.history).expect("open the embedded history"))
            }
        }
    }

    fn h(&self) -> Arc<dyn History> {
        self.store.clone().expect("history is open")
    }

    /// Closes the history, restarts Redis (from its append-only file), and
    /// opens the history again.
    async fn reopen(&mut self) {
        let store = self.store.take().expect("history is open");
        assert_eq!(Arc::strong_count(&store), 1, "a test still holds the history");
        drop(store);
        self.home.restart();
        if let Some(pg) = &mut self.postgres {
            pg.restart();
        }
        self.store = Some(self.connect().await);
    }

    /// Everything the backend stored, as text: every key and value of the
    /// test's prefix in Redis; the embedded file's bytes (after a close,
    /// so every commit is on disk).
    async fn raw(&mut self) -> String {
        if let Some(pg) = &self.postgres {
            return pg.dump();
        }
        match &self.home {
            Home::Redis(server) => {
                let keys = server.command(&["KEYS", &format!("{}:*", self.queue.key_prefix)]);
                let mut out = String::new();
                for key in keys.lines() {
                    out.push_str(key);
                    out.push('\n');
                    let value = match server.command(&["TYPE", key]).as_str() {
                        "hash" => server.command(&["HGETALL", key]),
                        "list" => server.command(&["LRANGE", key, "0", "-1"]),
                        "set" => server.command(&["SMEMBERS", key]),
                        "zset" => server.command(&["ZRANGE", key, "0", "-1"]),
                        _ => server.command(&["GET", key]),
                    };
                    out.push_str(&value);
                    out.push('\n');
                }
                out
            }
            Home::Embedded { .. } => {
                let store = self.store.take().expect("history is open");
                assert_eq!(Arc::strong_count(&store), 1, "a test still holds the history");
                drop(store);
                let path = self.queue.data_dir.join(hookd::history::embedded::FILE_NAME);
                let bytes = std::fs::read(&path).expect("read the history file");
                self.store = Some(self.connect().await);
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    fn shards(&self) -> u16 {
        self.queue.shards
    }
}

/// A new delivery of `event` to `subscription`, created at `at`, placed in
/// the event's shard as the queue places it.
fn created(event: &str, subscription: &str, at: Millis, shards: u16) -> DeliverySummary {
    let event_id = EventId::parse(event).expect("valid event id");
    DeliverySummary {
        id: DeliveryId::new(shard_of(&event_id, shards)),
        event_id,
        event_type: "coupon.redeemed".into(),
        subscription: SubscriptionName::parse(subscription).expect("valid name"),
        state: DeliveryState::Pending,
        attempts: 0,
        created_at: at,
        updated_at: at,
        last_status: None,
        last_error: None,
        next_attempt_at: None,
        note: None,
        tenant: None,
    }
}

/// Attempt `n` of `d`, started at `at`, answered `status` with `body`.
fn attempt(d: &DeliverySummary, n: u32, at: Millis, status: u16, body: &str) -> AttemptRecord {
    let failed = !(200..300).contains(&status);
    AttemptRecord {
        delivery_id: d.id.clone(),
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        subscription: d.subscription.clone(),
        attempt: n,
        started_at: at,
        duration_ms: 25,
        request_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("webhook-id".into(), d.event_id.to_string()),
        ],
        status: Some(status),
        response_headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        response_body: body.into(),
        error_kind: failed.then_some(ErrorKind::Status),
        error: failed.then(|| format!("status {status}")),
        next_attempt_at: failed.then_some(at + 5_000),
        tenant: d.tenant.clone(),
    }
}

fn attempted(attempt: AttemptRecord, state: DeliveryState) -> Entry {
    Entry::Attempted { attempt, state }
}

/// Attempt `n` of `d` started at `at`, answered `status` (`None`: timed
/// out) after `ms`, as the dispatcher records it.
fn timed(d: &DeliverySummary, n: u32, at: Millis, status: Option<u16>, ms: u64) -> Entry {
    let mut a = attempt(d, n, at, status.unwrap_or(0), "");
    a.status = status;
    a.duration_ms = ms;
    if status.is_none() {
        a.error_kind = Some(ErrorKind::Timeout);
        a.error = Some("timeout".into());
    }
    let state = if a.error.is_none() {
        DeliveryState::Delivered
    } else {
        DeliveryState::Retrying
    };
    attempted(a, state)
}

/// A minute as the cases check it: (start, succeeded, failed, p50, p99).
type Minute = (Millis, u64, u64, Option<u64>, Option<u64>);

/// Every minute of `activity`, as [`Minute`]s.
fn minutes(activity: &Activity) -> Vec<Minute> {
    activity
        .minutes
        .iter()
        .map(|m| {
            let c = &m.counts;
            (m.at, c.succeeded, c.failed, c.p50_ms(), c.p99_ms())
        })
        .collect()
}

/// Counts of `succeeded` and `failed` attempts whose latencies fell in the
/// buckets of `durations` (ms).
fn counts(succeeded: u64, failed: u64, durations: &[u64]) -> AttemptCounts {
    let mut c = AttemptCounts {
        succeeded,
        failed,
        ..AttemptCounts::default()
    };
    for &ms in durations {
        c.latency[hookd::history::activity::latency_bucket(ms)] += 1;
    }
    c
}

fn volume(tenant_id: &str, attempts: u64) -> TenantVolume {
    TenantVolume {
        tenant: tenant(tenant_id),
        attempts,
    }
}

/// `n` deliveries to `subscription`, created one ms apart from `start`.
fn many(prefix: &str, subscription: &str, start: Millis, n: usize, shards: u16) -> Vec<DeliverySummary> {
    (0..n)
        .map(|i| created(&format!("{prefix}_{i}"), subscription, start + i as Millis, shards))
        .collect()
}

/// A tenant, by id.
fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).expect("valid tenant id")
}

/// A new delivery of `tenant`'s `event` to `subscription`, created at `at`.
fn created_for(tenant: &TenantId, event: &str, subscription: &str, at: Millis, shards: u16) -> DeliverySummary {
    DeliverySummary {
        tenant: Some(tenant.clone()),
        ..created(event, subscription, at, shards)
    }
}

/// The record of `tenant`'s `event`, accepted at `at`, with `body`.
fn tenant_record(tenant: &TenantId, event: &str, at: Millis, body: &[u8]) -> EventRecord {
    EventRecord {
        tenant: Some(tenant.clone()),
        ..event_record(event, at, body)
    }
}

/// Only the tenant's deliveries, with `more` of the other filters.
fn of_tenant(tenant: &TenantId, more: ListFilter) -> ListFilter {
    ListFilter {
        tenant: Some(tenant.clone()),
        ..more
    }
}

/// Every page of a listing, following cursors, checking that every page
/// is full but the last and that none is empty: an index entry whose
/// delivery is gone (left behind by trimming) would make a page short.
async fn exact_pages(h: &dyn History, filter: &ListFilter, limit: usize) -> Vec<DeliverySummary> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = h.list(filter, cursor.as_deref(), limit).await.expect("list");
        match page.next_cursor {
            Some(next) => {
                assert_eq!(page.items.len(), limit, "a page before the last is full ({filter:?})");
                out.extend(page.items);
                cursor = Some(next);
            }
            None => {
                assert!(
                    !page.items.is_empty() || cursor.is_none(),
                    "no empty last page after a cursor ({filter:?})"
                );
                out.extend(page.items);
                return out;
            }
        }
    }
}

async fn record_created(h: &dyn History, deliveries: &[DeliverySummary]) {
    let entries: Vec<Entry> = deliveries.iter().cloned().map(Entry::Created).collect();
    h.record(&entries).await.expect("record");
}

/// The record of `event`, accepted at `at`, with `body`.
fn event_record(event: &str, at: Millis, body: &[u8]) -> EventRecord {
    EventRecord {
        id: EventId::parse(event).expect("valid event id"),
        event_type: "coupon.redeemed".into(),
        created_at: at,
        body: Bytes::copy_from_slice(body),
        tenant: None,
    }
}

/// Records of `n` events, accepted one ms apart from `start`.
fn many_events(prefix: &str, start: Millis, n: usize) -> Vec<EventRecord> {
    (0..n)
        .map(|i| {
            let body = format!(r#"{{"type":"coupon.redeemed","data":{{"n":{i}}}}}"#);
            event_record(&format!("{prefix}_{i}"), start + i as Millis, body.as_bytes())
        })
        .collect()
}

/// Calls trim until it removes nothing; returns how many it removed.
async fn trim_all(h: &dyn History, now: Millis, max_age: Duration, max_count: usize) -> u64 {
    let mut removed = 0;
    loop {
        match h.trim(now, max_age, max_count).await.expect("trim") {
            0 => return removed,
            n => removed += n,
        }
    }
}

/// Every page of a listing, following cursors.
async fn all_pages(h: &dyn History, filter: &ListFilter, limit: usize) -> Vec<DeliverySummary> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = h.list(filter, cursor.as_deref(), limit).await.expect("list");
        assert!(page.items.len() <= limit);
        out.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

fn ids(items: &[DeliverySummary]) -> Vec<DeliveryId> {
    items.iter().map(|s| s.id.clone()).collect()
}

/// `items`' ids, newest first as listings return them.
fn newest_first(items: &[DeliverySummary]) -> Vec<DeliveryId> {
    let mut sorted: Vec<&DeliverySummary> = items.iter().collect();
    sorted.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    sorted.into_iter().map(|s| s.id.clone()).collect()
}

mod cases {
    use super::*;

    pub async fn a_delivery_reads_back_with_its_attempts(fx: &mut Fixture) {
        let h = fx.h();
        let d = created("evt_readback", "crm", T0, fx.shards());
        let long_body = format!("{}é{}", "x".repeat(BODY_LIMIT - 1), "y".repeat(100));
        let first = attempt(&d, 1, T0 + 10, 503, &long_body);
        let second = attempt(&d, 2, T0 + 5_010, 200, "ok");
        h.record(&[Entry::Created(d.clone())]).await.unwrap();
        h.record(&[
            attempted(first.clone(), DeliveryState::Retrying),
            attempted(second.clone(), DeliveryState::Delivered),
        ])
        .await
        .unwrap();

        let (summary, attempts) = h.delivery(&d.id).await.unwrap().expect("recorded");
        assert_eq!(summary.id, d.id);
        assert_eq!(summary.event_id, d.event_id);
        assert_eq!(summary.subscription, d.subscription);
        assert_eq!(summary.state, DeliveryState::Delivered);
        assert_eq!(summary.attempts, 2);
        assert_eq!(summary.created_at, T0);
        assert_eq!(summary.updated_at, T0 + 5_010 + 25);
        assert_eq!(summary.last_status, Some(200));
        assert_eq!(summary.last_error, None);
        assert_eq!(summary.next_attempt_at, None);

        assert_eq!(attempts.len(), 2);
        let mut cut = first.clone();
        // The é straddles the limit: cut before it, never inside it.
        cut.response_body = "x".repeat(BODY_LIMIT - 1);
        assert_eq!(attempts[0], cut);
        assert_eq!(attempts[1], second);
        assert_eq!(attempts[0].error_kind, Some(ErrorKind::Status));
        assert_eq!(attempts[0].next_attempt_at, Some(T0 + 5_010));

        assert!(h.delivery(&DeliveryId::new(0)).await.unwrap().is_none());
    }

    pub async fn entries_apply_in_order_and_tolerate_gaps(fx: &mut Fixture) {
        let h = fx.h();
        let d = created("evt_gaps", "crm", T0, fx.shards());
        // An attempt of a delivery never created creates it from the attempt.
        let lone = attempt(&d, 1, T0 + 100, 500, "");
        h.record(&[attempted(lone, DeliveryState::Retrying)]).await.unwrap();
        let (s, attempts) = h.delivery(&d.id).await.unwrap().expect("created by its attempt");
        assert_eq!(
            (s.state, s.attempts, s.created_at),
            (DeliveryState::Retrying, 1, T0 + 100)
        );
        assert_eq!(s.last_error.as_deref(), Some("status 500"));
        assert_eq!(attempts.len(), 1);

        // A late Created changes nothing; a State entry of an unknown
        // delivery is ignored; a State entry moves a known one.
        let unknown = DeliveryId::new(0);
        h.record(&[
            Entry::Created(d.clone()),
            Entry::State {
                id: unknown.clone(),
                state: DeliveryState::Parked,
                at: T0,
                note: None,
            },
            Entry::State {
                id: d.id.clone(),
                state: DeliveryState::Parked,
                at: T0 + 200,
                note: Some("subscription disabled".into()),
            },
        ])
        .await
        .unwrap();
        assert!(h.delivery(&unknown).await.unwrap().is_none());
        let (s, _) = h.delivery(&d.id).await.unwrap().unwrap();
        assert_eq!(s.state, DeliveryState::Parked);
        assert_eq!(s.created_at, T0 + 100, "Created after the attempt changed nothing");
        assert_eq!(s.updated_at, T0 + 200);
        assert_eq!(s.note.as_deref(), Some("subscription disabled"));
        assert_eq!(s.attempts, 1);

        // An empty note and an empty error are kept as given, not dropped.
        let e = created("evt_gaps_2", "crm", T0, fx.shards());
        let mut odd = attempt(&e, 1, T0, 500, "");
        odd.error = Some(String::new());
        h.record(&[
            Entry::Created(e.clone()),
            attempted(odd, DeliveryState::Retrying),
            Entry::State {
                id: e.id.clone(),
                state: DeliveryState::Pending,
                at: T0 + 1,
                note: Some(String::new()),
            },
        ])
        .await
        .unwrap();
        let (s, _) = h.delivery(&e.id).await.unwrap().unwrap();
        assert_eq!(s.last_error.as_deref(), Some(""));
        assert_eq!(s.note.as_deref(), Some(""));
        assert_eq!(s.state, DeliveryState::Pending);
    }

    pub async fn an_event_lists_its_deliveries_across_subscriptions(fx: &mut Fixture) {
        let h = fx.h();
        let subs = ["crm", "billing", "analytics"];
        let mine: Vec<DeliverySummary> = subs
            .iter()
            .enumerate()
            .map(|(i, s)| created("evt_fanout", s, T0 + i as Millis, fx.shards()))
            .collect();
        let other = created("evt_other", "crm", T0, fx.shards());
        record_created(&*h, &mine).await;
        record_created(&*h, std::slice::from_ref(&other)).await;
        h.record(&[attempted(
            attempt(&mine[1], 1, T0 + 50, 200, "ok"),
            DeliveryState::Delivered,
        )])
        .await
        .unwrap();

        let found = h.event(None, &mine[0].event_id).await.unwrap();
        assert_eq!(ids(&found), ids(&mine), "oldest first, every subscription");
        assert_eq!(found[1].state, DeliveryState::Delivered);
        let names: HashSet<&str> = found.iter().map(|s| s.subscription.as_str()).collect();
        assert_eq!(names, subs.into_iter().collect());
        assert!(h
            .event(None, &EventId::parse("evt_never").unwrap())
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn lists_filter_by_subscription_state_and_time(fx: &mut Fixture) {
        let h = fx.h();
        let crm = many("evt_crm", "crm", T0, 10, fx.shards());
        let billing = many("evt_bill", "billing", T0 + 5, 10, fx.shards());
        record_created(&*h, &crm).await;
        record_created(&*h, &billing).await;
        // crm 0..3 delivered, crm 3..5 retrying, billing 0..2 dead.
        let mut entries = Vec::new();
        for d in &crm[..3] {
            entries.push(attempted(attempt(d, 1, T0 + 100, 200, ""), DeliveryState::Delivered));
        }
        for d in &crm[3..5] {
            entries.push(attempted(attempt(d, 1, T0 + 100, 500, ""), DeliveryState::Retrying));
        }
        for d in &billing[..2] {
            entries.push(attempted(attempt(d, 6, T0 + 100, 500, ""), DeliveryState::Dead));
        }
        h.record(&entries).await.unwrap();

        let all = all_pages(&*h, &ListFilter::default(), 100).await;
        let everything: Vec<DeliverySummary> = crm.iter().chain(&billing).cloned().collect();
        assert_eq!(ids(&all), newest_first(&everything));

        let by_sub = |s: &str| ListFilter {
            subscription: Some(SubscriptionName::parse(s).unwrap()),
            ..ListFilter::default()
        };
        assert_eq!(ids(&all_pages(&*h, &by_sub("crm"), 100).await), newest_first(&crm));
        assert_eq!(
            ids(&all_pages(&*h, &by_sub("billing"), 3).await),
            newest_first(&billing)
        );
        assert!(all_pages(&*h, &by_sub("nobody"), 10).await.is_empty());

        let by_state = |s: DeliveryState| ListFilter {
            state: Some(s),
            ..ListFilter::default()
        };
        assert_eq!(
            ids(&all_pages(&*h, &by_state(DeliveryState::Delivered), 2).await),
            newest_first(&crm[..3])
        );
        assert_eq!(
            ids(&all_pages(&*h, &by_state(DeliveryState::Dead), 100).await),
            newest_first(&billing[..2])
        );
        let pending: Vec<DeliverySummary> = crm[5..].iter().chain(&billing[2..]).cloned().collect();
        assert_eq!(
            ids(&all_pages(&*h, &by_state(DeliveryState::Pending), 4).await),
            newest_first(&pending)
        );
        let both = ListFilter {
            subscription: Some(SubscriptionName::parse("crm").unwrap()),
            state: Some(DeliveryState::Retrying),
            ..ListFilter::default()
        };
        let listed = all_pages(&*h, &both, 100).await;
        assert_eq!(ids(&listed), newest_first(&crm[3..5]));
        assert!(listed.iter().all(|s| s.state == DeliveryState::Retrying));

        // [from, to) on creation time: crm 2..8 are T0+2 ..= T0+7, billing
        // 0..3 are T0+5 ..= T0+7.
        let range = ListFilter {
            from: Some(T0 + 2),
            to: Some(T0 + 8),
            ..ListFilter::default()
        };
        let expected: Vec<DeliverySummary> = crm[2..8].iter().chain(&billing[..3]).cloned().collect();
        assert_eq!(ids(&all_pages(&*h, &range, 4).await), newest_first(&expected));
        let crm_range = ListFilter {
            subscription: Some(SubscriptionName::parse("crm").unwrap()),
            state: Some(DeliveryState::Pending),
            from: Some(T0 + 6),
            to: None,
            tenant: None,
        };
        assert_eq!(ids(&all_pages(&*h, &crm_range, 1).await), newest_first(&crm[6..]));
        let empty = ListFilter {
            from: Some(T0 + 8),
            to: Some(T0 + 8),
            ..ListFilter::default()
        };
        assert!(all_pages(&*h, &empty, 10).await.is_empty());
    }

    pub async fn cursors_neither_repeat_nor_skip_while_entries_arrive(fx: &mut Fixture) {
        let h = fx.h();
        let shards = fx.shards();
        // Ties on creation time across shards, broken by id.
        let mut originals = many("evt_page", "crm", T0, 20, shards);
        originals.extend(many("evt_tie", "crm", T0 + 10, 15, shards).into_iter().map(|mut d| {
            d.created_at = T0 + 10;
            d.updated_at = T0 + 10;
            d
        }));
        record_created(&*h, &originals).await;

        for (pass, filter) in [
            ListFilter::default(),
            ListFilter {
                subscription: Some(SubscriptionName::parse("crm").unwrap()),
                ..ListFilter::default()
            },
        ]
        .into_iter()
        .enumerate()
        {
            let mut seen: Vec<DeliverySummary> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut round = 0;
            let mut newer_ids = HashSet::new();
            loop {
                let page = h.list(&filter, cursor.as_deref(), 4).await.unwrap();
                seen.extend(page.items);
                // Between pages: newer deliveries, older ones, ties, and
                // attempts that move existing ones to another state.
                round += 1;
                let newer = created(
                    &format!("evt_new_{pass}_{round}"),
                    "crm",
                    T0 + 100_000 * (pass as Millis + 1) + round,
                    shards,
                );
                let mut tie = created(&format!("evt_tie_new_{pass}_{round}"), "crm", T0 + 10, shards);
                tie.updated_at = T0 + 10;
                newer_ids.insert(newer.id.clone());
                let older = created(&format!("evt_old_{pass}_{round}"), "crm", T0 - 1_000, shards);
                record_created(&*h, &[newer, tie, older]).await;
                let moved = &originals[(round as usize * 3) % originals.len()];
                h.record(&[attempted(
                    attempt(moved, 1, T0 + 2_000, 200, ""),
                    DeliveryState::Delivered,
                )])
                .await
                .unwrap();
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            let listed = ids(&seen);
            let unique: HashSet<&DeliveryId> = listed.iter().collect();
            assert_eq!(unique.len(), listed.len(), "no delivery listed twice");
            for d in &originals {
                assert!(unique.contains(&d.id), "{} was skipped", d.id);
            }
            let keys: Vec<(Millis, &DeliveryId)> = seen.iter().map(|s| (s.created_at, &s.id)).collect();
            assert!(keys.windows(2).all(|w| w[0] > w[1]), "strictly newest first");
            assert!(
                seen.iter().all(|s| !newer_ids.contains(&s.id)),
                "nothing newer than the first page came later"
            );
        }
    }

    pub async fn bad_cursors_are_refused(fx: &mut Fixture) {
        let h = fx.h();
        for cursor in ["", "nope", "0000018bcfe56800", "0000018bcfe56800dlv_zz"] {
            let err = h
                .list(&ListFilter::default(), Some(cursor), 10)
                .await
                .expect_err("not a cursor");
            assert!(matches!(err, Error::Cursor { .. }), "{cursor}: {err}");
        }
    }

    pub async fn stats_count_retained_deliveries_by_state(fx: &mut Fixture) {
        let h = fx.h();
        let crm = many("evt_stats", "crm", T0, 8, fx.shards());
        let other = many("evt_stats_other", "billing", T0, 2, fx.shards());
        record_created(&*h, &crm).await;
        record_created(&*h, &other).await;
        use DeliveryState::{Dead, Delivered, Filtered, Retrying};
        // 0: fails, then delivered. 1, 2: delivered. 3: retrying. 4: dead. 5: filtered.
        let entries = vec![
            attempted(attempt(&crm[0], 1, T0 + 10, 500, ""), Retrying),
            attempted(attempt(&crm[0], 2, T0 + 20, 200, ""), Delivered),
            attempted(attempt(&crm[1], 1, T0 + 30, 200, ""), Delivered),
            attempted(attempt(&crm[2], 1, T0 + 40, 204, ""), Delivered),
            attempted(attempt(&crm[3], 1, T0 + 50, 500, ""), Retrying),
            attempted(attempt(&crm[4], 6, T0 + 60, 500, ""), Dead),
            Entry::State {
                id: crm[5].id.clone(),
                state: Filtered,
                at: T0 + 70,
                note: Some("dropped by plugin".into()),
            },
            attempted(attempt(&other[0], 1, T0 + 80, 200, ""), Delivered),
        ];
        h.record(&entries).await.unwrap();

        let crm_name = SubscriptionName::parse("crm").unwrap();
        assert_eq!(
            h.stats(&crm_name).await.unwrap(),
            SubscriptionStats {
                delivered: 3,
                retrying: 1,
                dead: 1,
                filtered: 1,
                last_success_at: Some(T0 + 40),
                last_failure_at: Some(T0 + 60),
            }
        );
        let billing = h.stats(&SubscriptionName::parse("billing").unwrap()).await.unwrap();
        assert_eq!(
            (billing.delivered, billing.last_success_at, billing.last_failure_at),
            (1, Some(T0 + 80), None)
        );
        assert_eq!(
            h.stats(&SubscriptionName::parse("nobody").unwrap()).await.unwrap(),
            SubscriptionStats::default()
        );

        // Replay: dead → pending leaves the dead count.
        h.record(&[Entry::State {
            id: crm[4].id.clone(),
            state: DeliveryState::Pending,
            at: T0 + 90,
            note: Some("replayed".into()),
        }])
        .await
        .unwrap();
        assert_eq!(h.stats(&crm_name).await.unwrap().dead, 0);
    }

    pub async fn event_records_read_back_byte_exact_and_the_last_accepted_wins(fx: &mut Fixture) {
        let h = fx.h();
        let json = event_record(
            "evt_rec_json",
            T0,
            br#"{"type":"coupon.redeemed","timestamp":"2026-01-01T00:00:00.000Z","data":{"amount":12}}"#,
        );
        let binary = event_record("evt_rec_bin", T0 + 1, b"\x00\xff\xfe not utf-8 \r\n\x00{\"a\":1}");
        let empty = event_record("evt_rec_empty", T0 + 2, b"");
        // With a delivery of one of them in the same call, across shards.
        let d = created("evt_rec_json", "crm", T0, fx.shards());
        h.record(&[
            Entry::Event(json.clone()),
            Entry::Created(d.clone()),
            Entry::Event(binary.clone()),
            Entry::Event(empty.clone()),
        ])
        .await
        .unwrap();
        for want in [&json, &binary, &empty] {
            let got = h.event_record(None, &want.id).await.unwrap().expect("recorded");
            assert_eq!(&got, want, "read back exactly as recorded");
        }
        assert!(h.delivery(&d.id).await.unwrap().is_some());

        // Repeats (a batch written again) do nothing, within a call or
        // later; so does a record accepted earlier than the one kept (from
        // a process whose batch landed late). One accepted later (the id
        // reused after the dedup window) replaces it: the log keeps the
        // body last taken, which a replay sends.
        let mut earlier = binary.clone();
        earlier.body = Bytes::from_static(b"older");
        earlier.created_at = T0;
        let mut later = binary.clone();
        later.body = Bytes::from_static(b"something else");
        later.event_type = "coupon.expired".into();
        later.created_at = T0 + 50;
        let twice = event_record("evt_rec_twice", T0 + 3, b"first");
        let reused = event_record("evt_rec_twice", T0 + 20, b"second");
        h.record(&[
            Entry::Event(binary.clone()),
            Entry::Event(earlier),
            Entry::Event(twice.clone()),
            Entry::Event(reused.clone()),
            Entry::Event(twice.clone()),
        ])
        .await
        .unwrap();
        assert_eq!(h.event_record(None, &binary.id).await.unwrap().as_ref(), Some(&binary));
        assert_eq!(h.event_record(None, &twice.id).await.unwrap().as_ref(), Some(&reused));
        h.record(&[Entry::Event(later.clone())]).await.unwrap();
        assert_eq!(h.event_record(None, &binary.id).await.unwrap().as_ref(), Some(&later));
        // A replaced record is trimmed by its new time: one record per key.
        assert_eq!(
            trim_all(&*h, T0 + 11, Duration::from_millis(1), 1_000_000).await,
            3,
            "the json and empty records go with the delivery; the replaced ones are younger"
        );
        assert_eq!(h.event_record(None, &json.id).await.unwrap(), None);
        assert_eq!(h.event_record(None, &binary.id).await.unwrap().as_ref(), Some(&later));
        let (binary, twice) = (later, reused);

        let unknown = EventId::parse("evt_rec_unknown").unwrap();
        assert_eq!(h.event_record(None, &unknown).await.unwrap(), None);
        assert!(
            h.event(None, &binary.id).await.unwrap().is_empty(),
            "a record is not a delivery"
        );

        drop(h);
        fx.reopen().await;
        assert_eq!(fx.h().event_record(None, &twice.id).await.unwrap(), Some(twice));
        assert_eq!(fx.h().event_record(None, &binary.id).await.unwrap(), Some(binary));
    }

    pub async fn event_records_are_trimmed_by_age(fx: &mut Fixture) {
        let h = fx.h();
        let old = many_events("evt_rec_old", T0 - 10_000, 5);
        let young = many_events("evt_rec_young", T0, 5);
        let deliveries = many("evt_rec_young", "crm", T0, 5, fx.shards());
        let mut entries: Vec<Entry> = old.iter().chain(&young).cloned().map(Entry::Event).collect();
        entries.extend(deliveries.iter().cloned().map(Entry::Created));
        h.record(&entries).await.unwrap();

        // Keep the last 5s: the old records go, the young ones and their
        // deliveries stay.
        let removed = trim_all(&*h, T0 + 1_000, Duration::from_secs(5), 1_000_000).await;
        assert_eq!(removed, 5);
        for e in &old {
            assert_eq!(h.event_record(None, &e.id).await.unwrap(), None, "{} survived", e.id);
        }
        for e in &young {
            assert_eq!(h.event_record(None, &e.id).await.unwrap().as_ref(), Some(e));
        }
        assert_eq!(all_pages(&*h, &ListFilter::default(), 100).await.len(), 5);

        // Once they are old too, records and deliveries go together.
        let removed = trim_all(&*h, T0 + 60_000, Duration::from_secs(5), 1_000_000).await;
        assert_eq!(removed, 10);
        for e in &young {
            assert_eq!(h.event_record(None, &e.id).await.unwrap(), None);
        }
    }

    pub async fn event_records_are_trimmed_by_count(fx: &mut Fixture) {
        let h = fx.h();
        let shards = usize::from(fx.shards());
        let all = many_events("evt_rec_count", T0, 40);
        let entries: Vec<Entry> = all.iter().cloned().map(Entry::Event).collect();
        h.record(&entries).await.unwrap();
        let keep = 2 * shards;
        let removed = trim_all(&*h, T0, Duration::from_secs(3600), keep).await;
        let mut kept = Vec::new();
        for e in &all {
            if let Some(found) = h.event_record(None, &e.id).await.unwrap() {
                kept.push(found);
            }
        }
        // Redis keeps ceil(max_count / shards) per shard; the embedded
        // store keeps max_count overall. Either way: about `keep`, and
        // always the newest of each shard.
        assert_eq!(kept.len() as u64 + removed, 40);
        assert!(
            kept.len() <= keep && kept.len() >= keep.min(40) / 2,
            "{} kept",
            kept.len()
        );
        let shard = |e: &EventRecord| shard_of(&e.id, fx.shards());
        for e in &all {
            if kept.iter().any(|k| k.id == e.id) {
                continue;
            }
            let newer_trimmed_first = kept.iter().any(|k| shard(k) == shard(e) && k.created_at < e.created_at);
            assert!(!newer_trimmed_first, "{} was trimmed before an older record", e.id);
        }
    }

    pub async fn trim_by_age_removes_the_oldest_entirely(fx: &mut Fixture) {
        let h = fx.h();
        let old = many("evt_old", "crm", T0 - 10_000, 5, fx.shards());
        let young = many("evt_young", "crm", T0, 5, fx.shards());
        record_created(&*h, &old).await;
        record_created(&*h, &young).await;
        let mut entries = Vec::new();
        for d in old.iter().chain(&young) {
            entries.push(attempted(
                attempt(d, 1, d.created_at + 1, 200, "ok"),
                DeliveryState::Delivered,
            ));
        }
        h.record(&entries).await.unwrap();
        let crm = SubscriptionName::parse("crm").unwrap();
        assert_eq!(h.stats(&crm).await.unwrap().delivered, 10);

        // Keep the last 5s: the old ones go, with everything about them.
        let mut removed = 0;
        loop {
            let n = h.trim(T0 + 1_000, Duration::from_secs(5), 1_000_000).await.unwrap();
            if n == 0 {
                break;
            }
            removed += n;
        }
        assert_eq!(removed, 5);
        for d in &old {
            assert!(h.delivery(&d.id).await.unwrap().is_none(), "{} survived", d.id);
            assert!(h.event(None, &d.event_id).await.unwrap().is_empty());
        }
        for d in &young {
            let (_, attempts) = h.delivery(&d.id).await.unwrap().expect("young ones stay");
            assert_eq!(attempts.len(), 1);
        }
        let left = all_pages(&*h, &ListFilter::default(), 3).await;
        assert_eq!(ids(&left), newest_first(&young));
        let delivered = ListFilter {
            subscription: Some(crm.clone()),
            state: Some(DeliveryState::Delivered),
            ..ListFilter::default()
        };
        assert_eq!(ids(&all_pages(&*h, &delivered, 100).await), newest_first(&young));
        let stats = h.stats(&crm).await.unwrap();
        assert_eq!(stats.delivered, 5);
        assert_eq!(
            stats.last_success_at,
            Some(T0 + 5),
            "last success is not lowered by trimming"
        );
        assert_eq!(h.trim(T0 + 1_000, Duration::from_secs(5), 1_000_000).await.unwrap(), 0);
    }

    pub async fn trim_by_count_keeps_the_newest(fx: &mut Fixture) {
        let h = fx.h();
        let shards = usize::from(fx.shards());
        let all = many("evt_count", "crm", T0, 40, fx.shards());
        record_created(&*h, &all).await;
        let keep = 2 * shards;
        let mut removed = 0;
        loop {
            let n = h.trim(T0, Duration::from_secs(3600), keep).await.unwrap();
            if n == 0 {
                break;
            }
            removed += n;
        }
        let left = all_pages(&*h, &ListFilter::default(), 100).await;
        // Redis keeps ceil(max_count / shards) per shard; the embedded
        // store keeps max_count overall. Either way: about `keep`, and
        // always the newest of each shard.
        assert_eq!(left.len() as u64 + removed, 40);
        assert!(
            left.len() <= keep && left.len() >= keep.min(40) / 2,
            "{} left",
            left.len()
        );
        // Within each shard, what is kept is the newest: no trimmed
        // delivery is newer than a kept one of the same shard.
        for d in &all {
            if left.iter().any(|s| s.id == d.id) {
                continue;
            }
            assert!(h.delivery(&d.id).await.unwrap().is_none(), "{} half trimmed", d.id);
            let newer_kept = left
                .iter()
                .any(|s| s.id.shard() == d.id.shard() && s.created_at < d.created_at);
            assert!(!newer_kept, "{} was trimmed before an older delivery", d.id);
        }
        let pending = ListFilter {
            state: Some(DeliveryState::Pending),
            ..ListFilter::default()
        };
        assert_eq!(all_pages(&*h, &pending, 100).await.len(), left.len());
    }

    pub async fn secrets_are_never_stored(fx: &mut Fixture) {
        let h = fx.h();
        let d = created("evt_secret", "crm", T0, fx.shards());
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-signature", SECRETS[0].parse().unwrap());
        headers.insert("authorization", SECRETS[1].parse().unwrap());
        headers.insert("x-api-key", SECRETS[2].parse().unwrap());
        headers.insert("webhook-id", "evt_secret".parse().unwrap());
        let mut redacted = attempt(&d, 1, T0, 200, "");
        redacted.request_headers = redact_headers(&headers, &["x-api-key"]);
        // A caller that forgot to redact: the store still does.
        let mut raw = attempt(&d, 2, T0 + 1, 200, "");
        raw.request_headers = vec![
            ("Webhook-Signature".into(), SECRETS[0].into()),
            ("authorization".into(), SECRETS[1].into()),
        ];
        raw.response_headers = vec![("set-cookie".into(), format!("sid={}", SECRETS[2]))];
        h.record(&[
            Entry::Created(d.clone()),
            attempted(redacted, DeliveryState::Delivered),
            attempted(raw, DeliveryState::Delivered),
        ])
        .await
        .unwrap();

        let (_, attempts) = h.delivery(&d.id).await.unwrap().unwrap();
        let value = |a: &AttemptRecord, name: &str| {
            a.request_headers
                .iter()
                .chain(&a.response_headers)
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        for a in &attempts {
            assert_eq!(value(a, "webhook-signature").as_deref(), Some(REDACTED));
            assert_eq!(value(a, "authorization").as_deref(), Some(REDACTED));
        }
        assert_eq!(value(&attempts[0], "x-api-key").as_deref(), Some(REDACTED));
        assert_eq!(value(&attempts[0], "webhook-id").as_deref(), Some("evt_secret"));
        assert_eq!(value(&attempts[1], "set-cookie").as_deref(), Some(REDACTED));

        drop(h);
        let raw = fx.raw().await;
        assert!(raw.contains("evt_secret"), "the dump holds the records");
        for secret in SECRETS {
            assert!(!raw.contains(secret), "{secret} reached the store");
        }
    }

    pub async fn data_survives_a_restart(fx: &mut Fixture) {
        let h = fx.h();
        let d = created("evt_durable", "crm", T0, fx.shards());
        h.record(&[
            Entry::Created(d.clone()),
            attempted(attempt(&d, 1, T0 + 1, 500, "down"), DeliveryState::Retrying),
            attempted(attempt(&d, 2, T0 + 2, 200, "up"), DeliveryState::Delivered),
        ])
        .await
        .unwrap();
        drop(h);
        fx.reopen().await;
        let h = fx.h();
        let (summary, attempts) = h.delivery(&d.id).await.unwrap().expect("survived");
        assert_eq!(summary.state, DeliveryState::Delivered);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].response_body, "down");
        assert_eq!(ids(&h.event(None, &d.event_id).await.unwrap()), vec![d.id.clone()]);
        assert_eq!(
            ids(&all_pages(&*h, &ListFilter::default(), 10).await),
            vec![d.id.clone()]
        );
        let stats = h.stats(&d.subscription).await.unwrap();
        assert_eq!((stats.delivered, stats.last_failure_at), (1, Some(T0 + 1)));
        let activity = h.activity(None, T0, T0 + 1).await.unwrap();
        assert_eq!(activity.totals(), counts(1, 1, &[25, 25]), "the activity survives too");
    }

    pub async fn the_same_event_id_is_one_record_per_tenant(fx: &mut Fixture) {
        let h = fx.h();
        let shards = fx.shards();
        let (a, b) = (tenant("a"), tenant("b"));
        let id = "evt_shared";
        let rec_a = tenant_record(&a, id, T0, br#"{"who":"a"}"#);
        let rec_b = tenant_record(&b, id, T0 + 1, b"b's \x00 body");
        let rec_none = event_record(id, T0 + 2, br#"{"who":"nobody"}"#);
        // a's event goes to two of a's subscriptions and to the operator's
        // crm; b's to one of b's; the untenanted one to crm.
        let of_a = vec![
            created_for(&a, id, "sub_a1", T0, shards),
            created_for(&a, id, "sub_a2", T0 + 3, shards),
            created_for(&a, id, "crm", T0 + 4, shards),
        ];
        let of_b = vec![created_for(&b, id, "sub_b1", T0 + 1, shards)];
        let of_none = vec![created(id, "crm", T0 + 2, shards)];
        let mut entries = vec![
            Entry::Event(rec_a.clone()),
            Entry::Event(rec_b.clone()),
            Entry::Event(rec_none.clone()),
        ];
        entries.extend(of_a.iter().chain(&of_b).chain(&of_none).cloned().map(Entry::Created));
        h.record(&entries).await.unwrap();
        // Repeats win nothing, and one tenant's write cannot touch another's:
        // a's id accepted again later replaces a's record alone.
        let rec_a = tenant_record(&a, id, T0 + 9, b"second a");
        h.record(&[
            Entry::Event(rec_a.clone()),
            Entry::Event(rec_b.clone()),
            Entry::Event(rec_none.clone()),
        ])
        .await
        .unwrap();

        let event = EventId::parse(id).unwrap();
        let check = |h: Arc<dyn History>| {
            let (a, b) = (a.clone(), b.clone());
            let (rec_a, rec_b, rec_none) = (rec_a.clone(), rec_b.clone(), rec_none.clone());
            let (of_a, of_b, of_none) = (of_a.clone(), of_b.clone(), of_none.clone());
            let event = event.clone();
            async move {
                assert_eq!(h.event_record(Some(&a), &event).await.unwrap(), Some(rec_a));
                assert_eq!(h.event_record(Some(&b), &event).await.unwrap(), Some(rec_b));
                assert_eq!(h.event_record(None, &event).await.unwrap(), Some(rec_none));
                assert_eq!(h.event_record(Some(&tenant("c")), &event).await.unwrap(), None);
                for (who, want) in [(Some(&a), &of_a), (Some(&b), &of_b), (None, &of_none)] {
                    let found = h.event(who, &event).await.unwrap();
                    assert_eq!(ids(&found), ids(want), "deliveries of {who:?}'s {event}, oldest first");
                    assert!(found.iter().all(|s| s.tenant.as_ref() == who));
                }
                assert!(h.event(Some(&tenant("c")), &event).await.unwrap().is_empty());
            }
        };
        check(h.clone()).await;
        drop(h);
        fx.reopen().await;
        check(fx.h()).await;
    }

    pub async fn a_note_logged_after_the_first_attempt_is_kept(fx: &mut Fixture) {
        // A replay's deliveries are logged by the API while the dispatcher
        // may already have logged their first attempt.
        let h = fx.h();
        let d = created("evt_note", "crm", T0, fx.shards());
        h.record(&[attempted(attempt(&d, 1, T0, 500, ""), DeliveryState::Retrying)])
            .await
            .unwrap();
        let noted = DeliverySummary {
            note: Some("replay of event evt_note".into()),
            ..d.clone()
        };
        h.record(&[Entry::Created(noted.clone()), Entry::Created(d.clone())])
            .await
            .unwrap();
        let (summary, attempts) = h.delivery(&d.id).await.unwrap().expect("logged");
        assert_eq!(summary.note.as_deref(), Some("replay of event evt_note"));
        assert_eq!(summary.state, DeliveryState::Retrying, "the attempt's state stays");
        assert_eq!(attempts.len(), 1);
        let listed = h.list(&ListFilter::default(), None, 10).await.unwrap();
        assert_eq!(ids(&listed.items), vec![d.id.clone()], "listed once");
        assert_eq!(h.stats(&d.subscription).await.unwrap().retrying, 1, "counted once");
    }

    pub async fn an_attempt_first_files_its_delivery_under_its_tenant(fx: &mut Fixture) {
        // The dispatcher's first attempt is often the first word the log
        // has of a delivery: it must land in its tenant's log and event.
        let h = fx.h();
        let shards = fx.shards();
        let a = tenant("a");
        let d = created_for(&a, "evt_first", "sub_a1", T0, shards);
        let op = created_for(&a, "evt_first", "crm", T0 + 1, shards);
        let entries: Vec<Entry> = [&d, &op]
            .into_iter()
            .map(|x| attempted(attempt(x, 1, x.created_at, 500, ""), DeliveryState::Retrying))
            .collect();
        h.record(&entries).await.unwrap();
        let listed = h.list(&of_tenant(&a, ListFilter::default()), None, 10).await.unwrap();
        assert_eq!(
            ids(&listed.items),
            vec![d.id.clone()],
            "the owner's log holds it, not the operator's"
        );
        assert_eq!(listed.items[0].tenant.as_ref(), Some(&a));
        let of_event = h.event(Some(&a), &d.event_id).await.unwrap();
        assert_eq!(of_event.len(), 2, "both deliveries are a's event's: {of_event:?}");
        assert!(h.event(None, &d.event_id).await.unwrap().is_empty());
    }

    pub async fn a_tenant_lists_the_deliveries_it_owns(fx: &mut Fixture) {
        let h = fx.h();
        let shards = fx.shards();
        let (a, b) = (tenant("a"), tenant("b"));
        // a's events, each to a's sub_a1 (and every other one to sub_a2),
        // and all of them to the operator's crm; b's and untenanted events
        // interleaved in time, some to subscriptions named sub_….
        let mut mine = Vec::new();
        let mut others = Vec::new();
        for i in 0..12 {
            let at = T0 + 10 * i;
            let ev = format!("evt_own_{i}");
            mine.push(created_for(&a, &ev, "sub_a1", at, shards));
            if i % 2 == 0 {
                mine.push(created_for(&a, &ev, "sub_a2", at + 1, shards));
            }
            others.push(created_for(&a, &ev, "crm", at + 2, shards));
            others.push(created_for(&b, &format!("evt_b_{i}"), "sub_b1", at + 3, shards));
            others.push(created(&format!("evt_none_{i}"), "crm", at + 4, shards));
            others.push(created(&format!("evt_none_{i}"), "sub_x", at + 5, shards));
        }
        // b's event to a subscription named like a's: in b's log, not a's.
        others.push(created_for(&b, "evt_b_odd", "sub_a1", T0 + 7, shards));
        let everything: Vec<DeliverySummary> = mine.iter().chain(&others).cloned().collect();
        record_created(&*h, &everything).await;
        // Move some of a's to delivered and dead, and a's crm ones too.
        let delivered: Vec<DeliverySummary> = mine.iter().step_by(3).cloned().collect();
        let dead: Vec<DeliverySummary> = mine.iter().skip(1).step_by(5).cloned().collect();
        let mut entries = Vec::new();
        for d in &delivered {
            entries.push(attempted(
                attempt(d, 1, d.created_at + 1, 200, "ok"),
                DeliveryState::Delivered,
            ));
        }
        for d in &dead {
            entries.push(attempted(attempt(d, 6, d.created_at + 1, 500, ""), DeliveryState::Dead));
        }
        for d in others.iter().filter(|d| d.subscription.as_str() == "crm") {
            entries.push(attempted(
                attempt(d, 1, d.created_at + 1, 200, ""),
                DeliveryState::Delivered,
            ));
        }
        h.record(&entries).await.unwrap();

        let listed = exact_pages(&*h, &of_tenant(&a, ListFilter::default()), 4).await;
        assert_eq!(
            ids(&listed),
            newest_first(&mine),
            "exactly a's sub_… deliveries, newest first"
        );
        assert!(listed
            .iter()
            .all(|s| s.tenant.as_ref() == Some(&a) && s.owner() == Some(&a)));
        assert_eq!(
            ids(&exact_pages(&*h, &of_tenant(&b, ListFilter::default()), 5).await),
            newest_first(
                &others[..]
                    .iter()
                    .filter(|d| d.owner() == Some(&b))
                    .cloned()
                    .collect::<Vec<_>>()
            )
        );
        assert!(h
            .list(&of_tenant(&tenant("c"), ListFilter::default()), None, 10)
            .await
            .unwrap()
            .items
            .is_empty());

        // With a state: the state indices moved with the attempts.
        let state = |s: DeliveryState| ListFilter {
            state: Some(s),
            ..ListFilter::default()
        };
        let in_state = |want: DeliveryState| -> Vec<DeliverySummary> {
            let moved: Vec<&DeliverySummary> = delivered.iter().chain(&dead).collect();
            mine.iter()
                .filter(|d| {
                    let now = if dead.iter().any(|x| x.id == d.id) {
                        DeliveryState::Dead
                    } else if moved.iter().any(|x| x.id == d.id) {
                        DeliveryState::Delivered
                    } else {
                        DeliveryState::Pending
                    };
                    now == want
                })
                .cloned()
                .collect()
        };
        for s in [DeliveryState::Delivered, DeliveryState::Dead, DeliveryState::Pending] {
            let listed = exact_pages(&*h, &of_tenant(&a, state(s)), 2).await;
            assert!(!in_state(s).is_empty());
            assert_eq!(ids(&listed), newest_first(&in_state(s)), "a's {s}");
            assert!(listed.iter().all(|x| x.state == s));
        }

        // With a subscription, and with both.
        let sub = |name: &str| ListFilter {
            subscription: Some(SubscriptionName::parse(name).unwrap()),
            ..ListFilter::default()
        };
        let to = |name: &str| -> Vec<DeliverySummary> {
            mine.iter()
                .filter(|d| d.subscription.as_str() == name)
                .cloned()
                .collect()
        };
        assert_eq!(
            ids(&exact_pages(&*h, &of_tenant(&a, sub("sub_a1")), 5).await),
            newest_first(&to("sub_a1"))
        );
        assert_eq!(
            ids(&exact_pages(&*h, &of_tenant(&a, sub("sub_a2")), 2).await),
            newest_first(&to("sub_a2"))
        );
        let pending_a1: Vec<DeliverySummary> = in_state(DeliveryState::Pending)
            .into_iter()
            .filter(|d| d.subscription.as_str() == "sub_a1")
            .collect();
        let both = ListFilter {
            state: Some(DeliveryState::Pending),
            ..sub("sub_a1")
        };
        assert_eq!(
            ids(&exact_pages(&*h, &of_tenant(&a, both), 2).await),
            newest_first(&pending_a1)
        );
        // The operator's crm received a's events: none of it is a's.
        assert!(exact_pages(&*h, &of_tenant(&a, sub("crm")), 3).await.is_empty());
        let crm_delivered = ListFilter {
            state: Some(DeliveryState::Delivered),
            ..sub("crm")
        };
        assert!(exact_pages(&*h, &of_tenant(&a, crm_delivered.clone()), 3)
            .await
            .is_empty());
        assert_eq!(
            exact_pages(&*h, &crm_delivered, 100).await.len(),
            others.iter().filter(|d| d.subscription.as_str() == "crm").count(),
            "still listed without the tenant filter"
        );
        // With a time range: [T0 + 30, T0 + 81) holds a's events 3..=8.
        let range = ListFilter {
            from: Some(T0 + 30),
            to: Some(T0 + 81),
            ..ListFilter::default()
        };
        let in_range: Vec<DeliverySummary> = mine
            .iter()
            .filter(|d| (T0 + 30..T0 + 81).contains(&d.created_at))
            .cloned()
            .collect();
        assert_eq!(
            ids(&exact_pages(&*h, &of_tenant(&a, range), 2).await),
            newest_first(&in_range)
        );

        // Summaries keep the tenant through attempts, in every read.
        let (summary, _) = h.delivery(&delivered[0].id).await.unwrap().unwrap();
        assert_eq!(
            (summary.state, summary.tenant.as_ref()),
            (DeliveryState::Delivered, Some(&a))
        );
        let crm_of_a = &others[0];
        let (summary, _) = h.delivery(&crm_of_a.id).await.unwrap().unwrap();
        assert_eq!(
            (summary.tenant.as_ref(), summary.owner()),
            (Some(&a), None),
            "a's event, the operator's subscription"
        );
        let untenanted = others.iter().find(|d| d.tenant.is_none()).unwrap();
        assert_eq!(h.delivery(&untenanted.id).await.unwrap().unwrap().0.tenant, None);
    }

    pub async fn trimming_removes_tenant_records_and_index_entries(fx: &mut Fixture) {
        let h = fx.h();
        let shards = fx.shards();
        let a = tenant("a");
        let mut old = Vec::new();
        let mut young = Vec::new();
        let mut records = Vec::new();
        for i in 0..6 {
            for (list, ev, at) in [
                (&mut old, format!("evt_trim_old_{i}"), T0 - 10_000 + i),
                (&mut young, format!("evt_trim_young_{i}"), T0 + i),
            ] {
                list.push(created_for(&a, &ev, "sub_a1", at, shards));
                list.push(created_for(&a, &ev, "crm", at, shards));
                records.push(tenant_record(&a, &ev, at, ev.as_bytes()));
            }
        }
        let mut entries: Vec<Entry> = records.iter().cloned().map(Entry::Event).collect();
        entries.extend(old.iter().chain(&young).cloned().map(Entry::Created));
        for d in old.iter().chain(&young).step_by(2) {
            entries.push(attempted(
                attempt(d, 1, d.created_at + 1, 200, ""),
                DeliveryState::Delivered,
            ));
        }
        h.record(&entries).await.unwrap();
        let owned = |list: &[DeliverySummary]| -> Vec<DeliverySummary> {
            list.iter().filter(|d| d.owner() == Some(&a)).cloned().collect()
        };
        let all_of_a = of_tenant(&a, ListFilter::default());
        let delivered_of_a = of_tenant(
            &a,
            ListFilter {
                state: Some(DeliveryState::Delivered),
                ..ListFilter::default()
            },
        );
        let a1_of_a = of_tenant(
            &a,
            ListFilter {
                subscription: Some(SubscriptionName::parse("sub_a1").unwrap()),
                ..ListFilter::default()
            },
        );
        let both: Vec<DeliverySummary> = old.iter().chain(&young).cloned().collect();
        assert_eq!(ids(&exact_pages(&*h, &all_of_a, 1).await), newest_first(&owned(&both)));

        // By age: the old ones go, records and index entries with them.
        let removed = trim_all(&*h, T0 + 1_000, Duration::from_secs(5), 1_000_000).await;
        assert_eq!(removed, 12 + 6, "12 old deliveries and 6 old records");
        for d in &old {
            assert!(h.delivery(&d.id).await.unwrap().is_none(), "{} survived", d.id);
            assert!(h.event(Some(&a), &d.event_id).await.unwrap().is_empty());
            assert_eq!(h.event_record(Some(&a), &d.event_id).await.unwrap(), None);
        }
        for d in &young {
            let found = h.event(Some(&a), &d.event_id).await.unwrap();
            assert_eq!(found.len(), 2, "{}: sub_a1 and crm", d.event_id);
            assert!(h.event_record(Some(&a), &d.event_id).await.unwrap().is_some());
        }
        assert_eq!(ids(&exact_pages(&*h, &all_of_a, 1).await), newest_first(&owned(&young)));
        assert_eq!(ids(&exact_pages(&*h, &a1_of_a, 1).await), newest_first(&owned(&young)));
        let young_delivered: Vec<DeliverySummary> = owned(&young)
            .into_iter()
            .filter(|d| young.iter().step_by(2).any(|x| x.id == d.id))
            .collect();
        assert_eq!(
            ids(&exact_pages(&*h, &delivered_of_a, 1).await),
            newest_first(&young_delivered)
        );

        // By count: keep about 2 per shard, the newest.
        let keep = 2 * usize::from(shards);
        trim_all(&*h, T0 + 1_000, Duration::from_secs(3600), keep).await;
        let left = exact_pages(&*h, &ListFilter::default(), 100).await;
        assert!(left.len() <= keep, "{} left", left.len());
        let listed = exact_pages(&*h, &all_of_a, 1).await;
        assert_eq!(
            ids(&listed),
            newest_first(&owned(&left)),
            "only kept deliveries are a's"
        );
        let mut kept_records = 0;
        for d in &young {
            if h.event_record(Some(&a), &d.event_id).await.unwrap().is_some() {
                kept_records += 1;
            }
        }
        assert!(kept_records / 2 <= keep, "{} records left", kept_records / 2);

        // Down to nothing: no index entry of a's is left behind.
        trim_all(&*h, T0 + 1_000, Duration::from_secs(3600), 0).await;
        for filter in [&all_of_a, &delivered_of_a, &a1_of_a] {
            let page = h.list(filter, None, 1).await.unwrap();
            assert!(
                page.items.is_empty() && page.next_cursor.is_none(),
                "{filter:?}: {page:?}"
            );
        }
        for d in &young {
            assert!(h.event(Some(&a), &d.event_id).await.unwrap().is_empty());
            assert_eq!(h.event_record(Some(&a), &d.event_id).await.unwrap(), None);
        }
        if let Home::Redis(_) = fx.home {
            drop(h);
            let raw = fx.raw().await;
            for gone in ["tenant:", "evt_trim", "event:"] {
                assert!(!raw.contains(gone), "`{gone}` left in Redis:\n{raw}");
            }
        }
    }

    pub async fn concurrent_writers_keep_counts_consistent(fx: &mut Fixture) {
        let h = fx.h();
        let all = many("evt_conc", "crm", T0, 64, fx.shards());
        record_created(&*h, &all).await;
        let tasks: Vec<_> = all
            .chunks(8)
            .map(|chunk| {
                let h = h.clone();
                let chunk = chunk.to_vec();
                tokio::spawn(async move {
                    for d in &chunk {
                        h.record(&[
                            attempted(attempt(d, 1, T0 + 1, 500, ""), DeliveryState::Retrying),
                            attempted(attempt(d, 2, T0 + 2, 200, ""), DeliveryState::Delivered),
                        ])
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let stats = h.stats(&SubscriptionName::parse("crm").unwrap()).await.unwrap();
        assert_eq!((stats.delivered, stats.retrying), (64, 0));
        let retrying = ListFilter {
            state: Some(DeliveryState::Retrying),
            ..ListFilter::default()
        };
        assert!(all_pages(&*h, &retrying, 100).await.is_empty());
        let activity = h.activity(None, T0, T0 + 1).await.unwrap();
        assert_eq!(
            activity.totals(),
            counts(64, 64, &[25; 128]),
            "no attempt lost or counted twice"
        );
    }

    /// A batch written again, as the recorder retries one whose commit it
    /// could not confirm (the answer was lost after the store kept it),
    /// records each attempt once and counts it once. (PostgreSQL only so
    /// far: see `postgres_only`.)
    pub async fn a_batch_written_twice_records_each_attempt_once(fx: &mut Fixture) {
        let h = fx.h();
        let acme = tenant("acme");
        let d = created_for(&acme, "evt_twice", "sub_a1", M, fx.shards());
        let batch = [
            Entry::Created(d.clone()),
            timed(&d, 1, M + 1_000, Some(500), 30),
            timed(&d, 2, M + 6_000, Some(200), 40),
        ];
        h.record(&batch).await.unwrap();
        h.record(&batch).await.unwrap();

        let (summary, attempts) = h.delivery(&d.id).await.unwrap().expect("recorded");
        assert_eq!(
            attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
            vec![1, 2],
            "each attempt once"
        );
        assert_eq!((summary.state, summary.attempts), (DeliveryState::Delivered, 2));
        let stats = h.stats(&d.subscription).await.unwrap();
        assert_eq!(
            (stats.delivered, stats.retrying, stats.dead),
            (1, 0, 0),
            "one delivery, delivered: {stats:?}"
        );
        let activity = h.activity(None, M + 6_000, M + 6_001).await.unwrap();
        assert_eq!(
            minutes(&activity),
            vec![(M, 1, 1, Some(50), Some(50))],
            "each attempt counted once"
        );
        assert_eq!(activity.tenants, vec![volume("acme", 2)]);
        // A replay's attempts start over at 1, later: recorded beside them.
        let again = timed(&d, 1, M + 20_000, Some(200), 20);
        h.record(&[again]).await.unwrap();
        let (_, attempts) = h.delivery(&d.id).await.unwrap().expect("recorded");
        assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), vec![1, 2, 1]);
    }

    pub async fn activity_counts_attempts_per_minute_by_outcome_and_owner(fx: &mut Fixture) {
        let h = fx.h();
        let shards = fx.shards();
        assert_eq!(M % MINUTE_MS, 0, "M starts a minute");
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let a1 = created_for(&acme, "evt_act_1", "sub_a1", M, shards);
        let g1 = created_for(&globex, "evt_act_2", "sub_g1", M, shards);
        // The operator's subscription gets acme's event: nobody owns it.
        let ops = created_for(&acme, "evt_act_3", "crm", M, shards);
        let plain = created("evt_act_4", "crm", M, shards);
        record_created(&*h, &[a1.clone(), g1.clone(), ops.clone(), plain.clone()]).await;
        let m2 = M + 2 * MINUTE_MS;
        // Two batches, minutes M and M + 2 in each: deltas add up.
        h.record(&[
            timed(&a1, 1, M + 1_000, Some(500), 3),
            timed(&a1, 2, M + 30_000, Some(200), 40),
            timed(&plain, 1, m2 + 5, Some(204), 45_000),
        ])
        .await
        .unwrap();
        h.record(&[
            timed(&g1, 1, M + MINUTE_MS - 1, Some(201), 150),
            timed(&ops, 1, M, None, 10_000),
            timed(&a1, 3, m2, Some(200), 1),
        ])
        .await
        .unwrap();

        // Every attempt, minute by minute, quiet ones included; quantiles
        // are bucket bounds, 30,000 for one past the last.
        let all = h.activity(None, M + 30_000, m2 + 1).await.unwrap();
        assert_eq!((all.from, all.to), (M, M + 3 * MINUTE_MS), "whole minutes");
        assert_eq!(
            minutes(&all),
            vec![
                (M, 2, 2, Some(50), Some(10_000)),
                (M + MINUTE_MS, 0, 0, None, None),
                (m2, 2, 0, Some(1), Some(30_000)),
            ]
        );
        assert_eq!(all.minutes[0].counts, counts(2, 2, &[3, 40, 150, 10_000]));
        assert_eq!(all.minutes[2].counts, counts(2, 0, &[1, 45_000]));
        let totals = all.totals();
        assert_eq!(totals, counts(4, 2, &[3, 40, 150, 10_000, 1, 45_000]));
        assert_eq!((totals.p50_ms(), totals.p99_ms()), (Some(50), Some(30_000)));
        assert_eq!(
            all.tenants,
            vec![volume("acme", 3), volume("globex", 1)],
            "by owner, most first: the operator's attempt is nobody's"
        );

        // A tenant's view: the attempts to the subscriptions it owns.
        let of_acme = h.activity(Some(&acme), M, m2 + 1).await.unwrap();
        assert_eq!(
            minutes(&of_acme),
            vec![
                (M, 1, 1, Some(5), Some(50)),
                (M + MINUTE_MS, 0, 0, None, None),
                (m2, 1, 0, Some(1), Some(1)),
            ]
        );
        assert!(of_acme.tenants.is_empty(), "volumes are the all view's");
        let of_globex = h.activity(Some(&globex), M, m2 + 1).await.unwrap();
        assert_eq!(of_globex.totals(), counts(1, 0, &[150]));
        let nobody = h.activity(Some(&tenant("nobody")), M, m2 + 1).await.unwrap();
        assert_eq!(nobody.minutes.len(), 3);
        assert_eq!(nobody.totals(), AttemptCounts::default());

        // Window bounds: `to` is exclusive, `from` counts from its minute;
        // volumes are the window's.
        let first_two = h.activity(None, M, m2).await.unwrap();
        assert_eq!(
            first_two.minutes.iter().map(|m| m.at).collect::<Vec<_>>(),
            vec![M, M + MINUTE_MS]
        );
        assert_eq!(first_two.tenants, vec![volume("acme", 2), volume("globex", 1)]);
        let last = h.activity(None, M + MINUTE_MS, m2 + MINUTE_MS).await.unwrap();
        assert_eq!(last.tenants, vec![volume("acme", 1)]);
        assert!(h.activity(None, m2, m2).await.unwrap().minutes.is_empty());
        // A day ending in m2 is 1,441 minutes; a longer window its latest.
        let day = h.activity(None, m2 - 24 * 60 * MINUTE_MS, m2 + 1).await.unwrap();
        assert_eq!(day.minutes.len(), MAX_MINUTES);
        assert_eq!((day.from, day.to), (m2 - 24 * 60 * MINUTE_MS, m2 + MINUTE_MS));
        assert_eq!(day.totals(), totals);
        let week = h.activity(None, m2 - 7 * 24 * 60 * MINUTE_MS, m2 + 1).await.unwrap();
        assert_eq!(week, day);
    }

    pub async fn activity_outlives_the_log_and_expires_after_a_day(fx: &mut Fixture) {
        let h = fx.h();
        let shards = fx.shards();
        let acme = tenant("acme");
        let old = created_for(&acme, "evt_act_old", "sub_a1", M, shards);
        let young = created_for(&acme, "evt_act_young", "sub_a1", M + 24 * 3_600_000, shards);
        record_created(&*h, &[old.clone(), young.clone()]).await;
        h.record(&[
            timed(&old, 1, M, Some(200), 20),
            timed(&young, 1, young.created_at, Some(500), 20),
        ])
        .await
        .unwrap();
        let of = |at: Millis| {
            let h = h.clone();
            let acme = acme.clone();
            async move {
                let all = h.activity(None, at, at + 1).await.unwrap().totals().attempts();
                let own = h.activity(Some(&acme), at, at + 1).await.unwrap().totals().attempts();
                (all, own)
            }
        };

        // Trimming the log does not lower the counts.
        trim_all(&*h, M + 3_600_000, Duration::from_secs(60), 1_000).await;
        assert!(h.delivery(&old.id).await.unwrap().is_none(), "the log is trimmed");
        assert!(h.delivery(&young.id).await.unwrap().is_some());
        assert_eq!(of(M).await, (1, 1), "counts outlive the log's retention");
        match &fx.home {
            Home::Embedded { .. } => {
                // Trim removes minutes older than 25 h before its `now`.
                trim_all(&*h, M + 26 * 3_600_000, Duration::from_secs(7 * 24 * 3600), 1_000).await;
                assert_eq!(of(M).await, (0, 0), "the old minute is gone");
                assert_eq!(of(young.created_at).await, (1, 1), "a day later: kept");
            }
            Home::Redis(server) => {
                // Keys expire a bit over a day after their last count.
                let prefix = &fx.queue.key_prefix;
                for tenant in [None, Some("acme")] {
                    let key = hookd::history::redis::activity_key(prefix, shards, M, tenant);
                    let ttl: u64 = server.command(&["TTL", &key]).parse().expect("a TTL");
                    assert!((24 * 3600..=25 * 3600).contains(&ttl), "{key}: TTL {ttl}");
                }
            }
        }
    }
}

/// One test of one case on one backend.
macro_rules! case {
    ($open:path, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let mut fx = Fixture::open($open(stringify!($case))).await;
            cases::$case(&mut fx).await;
        }
    };
}

/// Instantiates every case for one backend.
macro_rules! conformance {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            case!($open, a_delivery_reads_back_with_its_attempts);
            case!($open, entries_apply_in_order_and_tolerate_gaps);
            case!($open, an_event_lists_its_deliveries_across_subscriptions);
            case!($open, lists_filter_by_subscription_state_and_time);
            case!($open, cursors_neither_repeat_nor_skip_while_entries_arrive);
            case!($open, bad_cursors_are_refused);
            case!($open, stats_count_retained_deliveries_by_state);
            case!($open, trim_by_age_removes_the_oldest_entirely);
            case!($open, trim_by_count_keeps_the_newest);
            case!(
                $open,
                event_records_read_back_byte_exact_and_the_last_accepted_wins
            );
            case!($open, event_records_are_trimmed_by_age);
            case!($open, event_records_are_trimmed_by_count);
            case!($open, secrets_are_never_stored);
            case!($open, data_survives_a_restart);
            case!($open, concurrent_writers_keep_counts_consistent);
            case!($open, the_same_event_id_is_one_record_per_tenant);
            case!($open, a_tenant_lists_the_deliveries_it_owns);
            case!($open, an_attempt_first_files_its_delivery_under_its_tenant);
            case!($open, a_note_logged_after_the_first_attempt_is_kept);
            case!($open, trimming_removes_tenant_records_and_index_entries);
            case!($open, activity_counts_attempts_per_minute_by_outcome_and_owner);
            case!($open, activity_outlives_the_log_and_expires_after_a_day);
        }
    };
}

conformance!(redis, setup::redis);
conformance!(redis_cluster, setup::redis_cluster);
conformance!(embedded, setup::embedded);
conformance!(postgres, setup::postgres);

/// What only the embedded backend does.
mod embedded_only {
    use super::*;

    #[tokio::test]
    async fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let queue = queue_config(&unique_prefix("twice"), None, dir.path());
        let history = test_config().history;
        let first = EmbeddedHistory::open(&queue, &history).unwrap();
        let err = EmbeddedHistory::open(&queue, &history)
            .err()
            .expect("the file is in use");
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        drop(first);
        EmbeddedHistory::open(&queue, &history).expect("free again once the first is closed");
    }

    #[tokio::test]
    async fn it_lives_beside_the_embedded_queue() {
        let dir = tempfile::tempdir().unwrap();
        let queue_cfg = queue_config(&unique_prefix("beside"), None, dir.path());
        let _queue = hookd::queue::embedded::EmbeddedQueue::open(&queue_cfg).unwrap();
        let history = EmbeddedHistory::open(&queue_cfg, &test_config().history).expect("its own file");
        assert_eq!(history.path(), dir.path().join("history.redb"));
    }
}

/// What only the PostgreSQL backend does.
mod postgres_only {
    use super::*;

    /// A day in ms: the width of a partition.
    const DAY: Millis = 86_400_000;

    async fn open(name: &str) -> Fixture {
        Fixture::open(setup::postgres(name)).await
    }

    fn partitions(pg: &PostgresServer, table: &str) -> Vec<String> {
        let out = pg.sql(&format!(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = '{table}'::regclass ORDER BY 1"
        ));
        out.lines().map(str::to_owned).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_written_twice_records_each_attempt_once() {
        let mut fx = open("twice").await;
        cases::a_batch_written_twice_records_each_attempt_once(&mut fx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_drops_whole_days_and_uncounts_them() {
        let fx = open("drop_days").await;
        let h = fx.h();
        let pg = fx.postgres.as_ref().unwrap();
        let day0 = T0.div_euclid(DAY);
        let crm = SubscriptionName::parse("crm").unwrap();
        // Three days of deliveries, each delivered, and their events.
        let mut all = Vec::new();
        for d in 0..3 {
            let start = (day0 + d) * DAY + 1_000;
            let deliveries = many(&format!("evt_day{d}"), "crm", start, 4, fx.shards());
            let mut entries: Vec<Entry> = deliveries.iter().cloned().map(Entry::Created).collect();
            for s in &deliveries {
                entries.push(attempted(
                    attempt(s, 1, s.created_at + 1, 200, "ok"),
                    DeliveryState::Delivered,
                ));
                entries.push(Entry::Event(event_record(s.event_id.as_str(), s.created_at, b"{}")));
            }
            h.record(&entries).await.unwrap();
            all.push(deliveries);
        }
        for d in 0..3 {
            let name = format!("deliveries_d{}", day0 + d);
            assert!(
                partitions(pg, "deliveries").contains(&name),
                "{name} made as its day arrived"
            );
        }
        assert_eq!(h.stats(&crm).await.unwrap().delivered, 12);

        // Keep from the middle of day 2: days 0 and 1 go whole (their
        // partitions dropped, not their rows deleted), day 2 stays.
        let now = (day0 + 2) * DAY + 12 * 3_600_000;
        let removed = trim_all(&*h, now, Duration::from_secs(12 * 3600), 1_000_000).await;
        assert_eq!(removed, 16, "8 deliveries and 8 event records");
        for table in ["deliveries", "attempts", "events"] {
            let left = partitions(pg, table);
            for d in 0..2 {
                let name = format!("{table}_d{}", day0 + d);
                assert!(!left.contains(&name), "{name} still there: {left:?}");
            }
            let kept = format!("{table}_d{}", day0 + 2);
            assert!(left.contains(&kept), "{kept} dropped: {left:?}");
        }
        for s in all[0].iter().chain(&all[1]) {
            assert!(h.delivery(&s.id).await.unwrap().is_none());
            assert_eq!(h.event_record(None, &s.event_id).await.unwrap(), None);
        }
        for s in &all[2] {
            let (_, attempts) = h.delivery(&s.id).await.unwrap().expect("day 2 stays");
            assert_eq!(attempts.len(), 1);
        }
        assert_eq!(h.stats(&crm).await.unwrap().delivered, 4, "dropped days are uncounted");
        assert_eq!(pg.sql("SELECT n FROM event_count"), "4");

        // A late attempt of a dropped day's delivery makes its day again.
        let late = &all[0][0];
        h.record(&[attempted(attempt(late, 2, now, 500, "late"), DeliveryState::Retrying)])
            .await
            .unwrap();
        let (summary, _) = h.delivery(&late.id).await.unwrap().expect("recorded again");
        assert_eq!(summary.state, DeliveryState::Retrying);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn text_postgres_cannot_hold_is_stored_replaced_not_refused() {
        let fx = open("nul").await;
        let h = fx.h();
        let d = created("evt_nul", "crm", T0, fx.shards());
        let mut a = attempt(&d, 1, T0 + 1, 500, "bad\0body");
        a.response_headers.push(("x-odd".into(), "a\0b".into()));
        a.error = Some("status 500\0".into());
        h.record(&[Entry::Created(d.clone()), attempted(a, DeliveryState::Retrying)])
            .await
            .expect("a NUL in a response does not refuse the batch");
        let (summary, attempts) = h.delivery(&d.id).await.unwrap().unwrap();
        assert_eq!(attempts[0].response_body, "bad\u{fffd}body");
        assert!(attempts[0]
            .response_headers
            .contains(&("x-odd".into(), "a\u{fffd}b".into())));
        assert_eq!(summary.last_error.as_deref(), Some("status 500\u{fffd}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_schema_is_refused_at_start() {
        let mut fx = open("newer_schema").await;
        let known = PostgresHistory::schema_version();
        drop(fx.store.take());
        let pg = fx.postgres.as_ref().unwrap();
        let table = hookd::history::postgres::SCHEMA_TABLE;
        assert_eq!(pg.sql(&format!("SELECT max(version) FROM {table}")), known.to_string());
        pg.sql(&format!(
            "INSERT INTO {table} (version, name, applied_on, checksum) VALUES ({}, 'from_the_future', 'now', '0')",
            known + 1
        ));
        let err = PostgresHistory::connect(&fx.history).await.err().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, Error::Schema { .. }), "{text}");
        assert!(
            text.contains(&format!("schema version {}", known + 1)) && text.contains(&format!("({known})")),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_starting_together_migrate_once() {
        let pg = PostgresServer::start();
        let mut config = test_config().history;
        config.postgres_url = Some(Secret::new(pg.url()));
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move { PostgresHistory::connect(&config).await.map(|_| ()) })
            })
            .collect();
        for start in starts {
            start.await.unwrap().expect("every process starts");
        }
        let table = hookd::history::postgres::SCHEMA_TABLE;
        assert_eq!(
            pg.sql(&format!("SELECT count(*) FROM {table}")),
            PostgresHistory::schema_version().to_string()
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error_without_the_password() {
        let mut config = test_config().history;
        let port = support::free_port();
        config.postgres_url = Some(Secret::new(format!("postgres://hookd:hunter2@127.0.0.1:{port}/log")));
        let err = PostgresHistory::connect(&config)
            .await
            .err()
            .expect("nothing listens there");
        let text = err.to_string();
        assert!(text.starts_with("postgres:"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "names the server: {text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
