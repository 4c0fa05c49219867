//! Model-based test of the queue: random sequences of enqueue, claim,
//! settle, replay, reschedule, unpark, expire and crash (close and open
//! again) run against a backend and against [`Model`], a plain in-memory
//! rendering of the semantics `src/queue/mod.rs` documents, and their
//! answers are compared after every step. Deliveries belong to three
//! owners (the operator's `crm`, acme's and zeta's subscriptions), so a
//! claim is checked, not predicted: as many as are due up to its max,
//! oldest first, and of each owner its oldest due (per shard on a
//! cluster); which owners' turn it was is the backend's to decide.
//!
//! Runs against the embedded store (a temp dir per case), Redis and a
//! one-node Redis Cluster (one redis-server for all the cases of a test,
//! a key prefix per case). Each backend has a fixed-seed run, the same
//! cases every time, and a run of random cases; `PROPTEST_CASES` changes
//! how many cases each run has, `PROPTEST_RNG_SEED` replays a seed, and a
//! failure's seed is kept in `tests/queue_model.proptest-regressions` and
//! tried first from then on.
//!
//! ## Whose clock
//!
//! The queue takes `now` from the caller everywhere except in `enqueue`,
//! which stamps deliveries due at the real clock (Redis's, on Redis). The
//! test clock starts [`AHEAD`] past the real clock at the case's start and
//! only moves forward, and every time the test passes (a claim's `now`, a
//! retry's due time, a `created_at`) is at or after that start: so every
//! delivery due at its enqueue time falls due before any due time the test
//! chose, whatever the exact stamp. Those stamps, which the caller cannot
//! know (on a cluster each shard's script stamps its own), are read back
//! once with `get` and used only to order enqueued deliveries among
//! themselves; every other time in the model is the test's own. Leases are
//! opaque tokens: a settlement presents the token a claim returned.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hookd::config::{QueueConfig, SubscriptionName};
use hookd::ingest::EventId;
use hookd::model::TenantId;
use hookd::queue::embedded::EmbeddedQueue;
use hookd::queue::redis::RedisQueue;
use hookd::queue::{
    now_ms, shard_of, Delivery, DeliveryId, Depth, Enqueued, Lease, Millis, NewEvent, Queue, Settlement, Standing,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestRunner};
use support::{queue_config, unique_prefix, RedisServer};

/// The dedup window: longer than any case.
const WINDOW: Duration = Duration::from_secs(3600);
/// How far past the real clock the test clock starts: longer than any case
/// runs, so deliveries stamped by the real clock at enqueue are due before
/// any time the test passes.
const AHEAD: Millis = 600_000;
/// How far a due time read back with `get` may be from the model's, since
/// the backend stamps enqueues and may translate times into its own clock.
const TOLERANCE: Millis = 1_000;
/// The subscriptions deliveries go to.
const SUBSCRIPTIONS: [&str; 3] = ["crm", "sub_acme1", "sub_zeta1"];
/// The tenant owning each of [`SUBSCRIPTIONS`] (the operator's: none), so
/// that claims let three owners take turns.
const OWNERS: [Option<&str>; 3] = [None, Some("acme"), Some("zeta")];
/// How many distinct event ids a case draws from, so that some repeat.
const EVENT_IDS: u8 = 8;
/// How long one backend call may take before the case fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The seed of the fixed-seed runs.
const SEED: u64 = 0x686f_6f6b_645f_6d64;

/// One event of an [`Op::Enqueue`] batch.
#[derive(Clone, Debug)]
struct EventSpec {
    /// `evt_<n>`: drawn from [`EVENT_IDS`] ids, so some are repeats.
    event: u8,
    /// A dedup key of its own, `evt_<n>/replay/<k>`, if set.
    replay_key: Option<u8>,
    /// Indices into [`SUBSCRIPTIONS`], distinct: one delivery each.
    subscriptions: Vec<usize>,
    /// Each delivery's `created_at`, relative to the test clock.
    created: Vec<Millis>,
    /// The body of every delivery of the event.
    body: Vec<u8>,
}

/// What a settlement does.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Ack,
    /// Due again `delta` ms from now, its record updated.
    Retry(Millis),
    /// Due again `delta` ms from now, record unchanged.
    Defer(Millis),
    Dead,
    Park,
}

/// One settlement of an [`Op::Settle`] batch.
#[derive(Clone, Debug)]
struct SettleSpec {
    /// Which claim: among those whose lease is still the delivery's due
    /// time, or, if `stale`, among every claim made so far.
    pick: Index,
    /// Pick from every claim, stale leases included.
    stale: bool,
    kind: Kind,
}

/// One step of a case.
#[derive(Clone, Debug)]
enum Op {
    /// Moves the test clock forward by this many ms.
    Advance(Millis),
    /// Enqueues these events in one call.
    Enqueue(Vec<EventSpec>),
    /// Claims up to `max` at the test clock, leasing for `lease` ms.
    Claim { max: usize, lease: Millis },
    /// Settles in one call.
    Settle(Vec<SettleSpec>),
    /// Replays a dead delivery (`any`: any delivery ever made, so that
    /// some replays answer false).
    Replay { pick: Index, any: bool },
    /// Reschedules a delivery to `delta` ms from now, expecting the token
    /// of a claim (`from_get` false) or the due time `get` reports.
    Reschedule { pick: Index, from_get: bool, delta: Millis },
    /// Unparks one subscription's deliveries.
    Unpark { subscription: usize },
    /// Expires dead deliveries, at most `limit`: every dead one is old
    /// enough if `all`, none otherwise.
    ExpireDead { all: bool, limit: usize },
    /// Closes the backend and opens it again on the same data; with
    /// `restart`, Redis is restarted from its append-only file meanwhile.
    Crash { restart: bool },
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    (
        0..EVENT_IDS,
        prop::option::weighted(0.2, 0u8..3),
        prop::sample::subsequence((0..SUBSCRIPTIONS.len()).collect::<Vec<_>>(), 1..=3).prop_shuffle(),
        prop::collection::vec(-20_000i64..=20_000, 3),
        prop::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(event, replay_key, subscriptions, created, body)| EventSpec {
            event,
            replay_key,
            subscriptions,
            created,
            body,
        })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Ack),
        2 => (-3_000i64..=60_000).prop_map(Kind::Retry),
        2 => (-3_000i64..=60_000).prop_map(Kind::Defer),
        2 => Just(Kind::Dead),
        2 => Just(Kind::Park),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![0i64..=5, 100i64..=3_000, 4_000i64..=70_000].prop_map(Op::Advance),
        4 => prop::collection::vec(event_spec(), 1..=3).prop_map(Op::Enqueue),
        4 => (1usize..=6, prop::sample::select(vec![1_000i64, 5_000, 30_000]))
            .prop_map(|(max, lease)| Op::Claim { max, lease }),
        4 => prop::collection::vec(
            (any::<Index>(), prop::bool::weighted(0.25), kind())
                .prop_map(|(pick, stale, kind)| SettleSpec { pick, stale, kind }),
            1..=3
        )
        .prop_map(Op::Settle),
        2 => (any::<Index>(), prop::bool::weighted(0.3)).prop_map(|(pick, any)| Op::Replay { pick, any }),
        1 => (any::<Index>(), any::<bool>(), -3_000i64..=60_000)
            .prop_map(|(pick, from_get, delta)| Op::Reschedule { pick, from_get, delta }),
        2 => (0..SUBSCRIPTIONS.len()).prop_map(|subscription| Op::Unpark { subscription }),
        1 => (prop::bool::weighted(0.7), 1usize..=4).prop_map(|(all, limit)| Op::ExpireDead { all, limit }),
        1 => prop::bool::weighted(0.3).prop_map(|restart| Op::Crash { restart }),
    ]
}

/// A case: a sequence of steps.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=48)
}

/// Where a delivery stands in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Queued, due (or leased until) `due`.
    Pending {
        due: Millis,
    },
    Dead,
    Parked,
}

/// The queue's documented semantics, in memory.
#[derive(Debug, Default)]
struct Model {
    /// Every stored delivery (pending, dead or parked), as stored.
    records: BTreeMap<DeliveryId, Delivery>,
    /// Where each stored delivery stands.
    places: BTreeMap<DeliveryId, Place>,
    /// Dedup keys seen (the window outlasts the case).
    seen: HashSet<String>,
    /// Deliveries acked or expired: gone for good.
    gone: BTreeSet<DeliveryId>,
    /// Deliveries of duplicate events: never stored.
    refused: BTreeSet<DeliveryId>,
}

/// What one model settlement presents.
struct ModelSettle {
    id: DeliveryId,
    /// The due time the claim set: the lease token, in the model's clock.
    lease: Millis,
    kind: ModelAction,
}

enum ModelAction {
    Ack,
    Retry { record: Delivery, due: Millis },
    Defer { due: Millis },
    Dead { record: Delivery },
    Park,
}

impl Model {
    /// Enqueues one event: its deliveries due at `due` if its dedup key is new.
    fn enqueue(&mut self, event: &NewEvent) -> Enqueued {
        if !self.seen.insert(event.dedup_key().to_owned()) {
            self.refused.extend(event.deliveries.iter().map(|d| d.id.clone()));
            return Enqueued::Duplicate;
        }
        for d in &event.deliveries {
            self.records.insert(d.id.clone(), d.clone());
            // Due "now", in the backend's clock: set from `get` by the caller.
            self.places.insert(d.id.clone(), Place::Pending { due: Millis::MIN });
        }
        Enqueued::Accepted
    }

    /// Pending deliveries in due order: (due, id).
    fn due_order(&self) -> Vec<(Millis, DeliveryId)> {
        let mut out: Vec<(Millis, DeliveryId)> = self
            .places
            .iter()
            .filter_map(|(id, place)| match place {
                Place::Pending { due } => Some((*due, id.clone())),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Checks that `got` is a claim of up to `max` due at `now` the queue
    /// may make: as many as are due up to `max`, oldest first, and of each
    /// owner its oldest due (which owners, the turns decide; on a cluster,
    /// `per_shard`, its oldest in each shard, since each shard takes its
    /// turns); then leases them until `now + lease`. Returns the next due
    /// time if none was due.
    fn claim(
        &mut self,
        now: Millis,
        lease: Millis,
        max: usize,
        got: &[DeliveryId],
        per_shard: bool,
    ) -> Result<Option<Millis>, String> {
        let order = self.due_order();
        let due: Vec<&(Millis, DeliveryId)> = order.iter().take_while(|(at, _)| *at <= now).collect();
        if got.len() != due.len().min(max) {
            return Err(format!("{} claimed, {} due and max {max}", got.len(), due.len()));
        }
        let rank: HashMap<&DeliveryId, usize> = due.iter().enumerate().map(|(i, (_, id))| (id, i)).collect();
        let mut ranks = Vec::with_capacity(got.len());
        for id in got {
            ranks.push(*rank.get(id).ok_or_else(|| format!("{id} was not due"))?);
        }
        if ranks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("not oldest first: ranks {ranks:?}"));
        }
        let owner = |id: &DeliveryId| {
            let tenant = self.records.get(id).and_then(|d| d.owner().cloned());
            (tenant, per_shard.then(|| id.shard()))
        };
        let mut taken: HashMap<(Option<TenantId>, Option<u16>), usize> = HashMap::new();
        for id in got {
            *taken.entry(owner(id)).or_default() += 1;
        }
        for (who, n) in &taken {
            let oldest: Vec<&DeliveryId> = due
                .iter()
                .map(|(_, id)| id)
                .filter(|id| owner(id) == *who)
                .take(*n)
                .collect();
            if oldest.iter().any(|id| !got.contains(id)) {
                return Err(format!("not {who:?}'s {n} oldest due"));
            }
        }
        for id in got {
            self.places.insert(id.clone(), Place::Pending { due: now + lease });
        }
        Ok(if got.is_empty() {
            order.first().map(|(due, _)| *due)
        } else {
            None
        })
    }

    /// Applies one settlement if the delivery is pending with that lease;
    /// returns whether it applied.
    fn settle(&mut self, s: ModelSettle) -> bool {
        if self.places.get(&s.id) != Some(&Place::Pending { due: s.lease }) {
            return false;
        }
        match s.kind {
            ModelAction::Ack => {
                self.places.remove(&s.id);
                self.records.remove(&s.id);
                self.gone.insert(s.id);
            }
            ModelAction::Retry { record, due } => {
                self.records.insert(s.id.clone(), record);
                self.places.insert(s.id, Place::Pending { due });
            }
            ModelAction::Defer { due } => {
                self.places.insert(s.id, Place::Pending { due });
            }
            ModelAction::Dead { record } => {
                self.records.insert(s.id.clone(), record);
                self.places.insert(s.id, Place::Dead);
            }
            ModelAction::Park => {
                self.places.insert(s.id, Place::Parked);
            }
        }
        true
    }

    fn replay(&mut self, id: &DeliveryId, now: Millis) -> bool {
        if self.places.get(id) != Some(&Place::Dead) {
            return false;
        }
        let record = self.records.get_mut(id).expect("a dead delivery has its record");
        record.attempts = 0;
        record.last_error = None;
        self.places.insert(id.clone(), Place::Pending { due: now });
        true
    }

    fn reschedule(&mut self, id: &DeliveryId, expected: Millis, due: Millis) -> bool {
        if self.places.get(id) != Some(&Place::Pending { due: expected }) {
            return false;
        }
        self.places.insert(id.clone(), Place::Pending { due });
        true
    }

    /// Unparks a subscription: each due at `min(created_at, now)`. Returns
    /// the ids moved, in (created_at, id) order.
    fn unpark(&mut self, subscription: &SubscriptionName, now: Millis) -> Vec<DeliveryId> {
        let mut moved: Vec<(Millis, DeliveryId)> = self
            .places
            .iter()
            .filter(|(id, place)| **place == Place::Parked && self.records[*id].subscription == *subscription)
            .map(|(id, _)| (self.records[id].created_at, id.clone()))
            .collect();
        moved.sort();
        for (created, id) in &moved {
            self.places.insert(
                id.clone(),
                Place::Pending {
                    due: (*created).min(now),
                },
            );
        }
        moved.into_iter().map(|(_, id)| id).collect()
    }

    fn dead(&self) -> BTreeSet<DeliveryId> {
        self.places
            .iter()
            .filter(|(_, p)| **p == Place::Dead)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn expire(&mut self, id: &DeliveryId) {
        self.places.remove(id);
        self.records.remove(id);
        self.gone.insert(id.clone());
    }

    fn depth(&self, now: Millis) -> Depth {
        let mut depth = Depth::default();
        for place in self.places.values() {
            match place {
                Place::Pending { due } if *due <= now => depth.due += 1,
                Place::Pending { .. } => depth.scheduled += 1,
                Place::Dead => depth.dead += 1,
                Place::Parked => depth.parked += 1,
            }
        }
        depth
    }
}

/// Which backend a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Embedded,
    Redis,
    Cluster,
}

/// The backend of one case: how to open it again, and it open.
struct Store<'s> {
    backend: Backend,
    /// The redis-server every case of a run shares.
    server: Option<&'s Mutex<RedisServer>>,
    config: QueueConfig,
    queue: Option<Arc<dyn Queue>>,
    /// The embedded store's directory, removed when the case ends.
    _dir: tempfile::TempDir,
}

impl<'s> Store<'s> {
    /// A fresh, empty store: a new temp dir, or a new key prefix on `server`.
    async fn open(backend: Backend, server: Option<&'s Mutex<RedisServer>>) -> Store<'s> {
        // In memory where there is a tmpfs: the cases close the store
        // cleanly, so they need its logic, not the disk's fsyncs.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let url = server.map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).url());
        let mut config = queue_config(&unique_prefix("model"), url.as_deref(), &dir.path().join("store"));
        config.cluster = backend == Backend::Cluster;
        let mut store = Store {
            backend,
            server,
            config,
            queue: None,
            _dir: dir,
        };
        store.queue = Some(store.connect().await);
        store
    }

    async fn connect(&self) -> Arc<dyn Queue> {
        match self.backend {
            Backend::Embedded => Arc::new(EmbeddedQueue::open(&self.config).expect("open the embedded store")),
            Backend::Redis | Backend::Cluster => Arc::new(
                RedisQueue::connect(&self.config)
                    .await
                    .expect("connect to the test redis"),
            ),
        }
    }

    fn q(&self) -> &dyn Queue {
        self.queue.as_deref().expect("the queue is open")
    }

    /// Closes the backend (the embedded store's file is unlocked once its
    /// writer stops) and opens it again on the same data; with `restart`,
    /// restarts Redis (from its append-only file) while it is closed.
    async fn crash(&mut self, restart: bool) {
        let queue = self.queue.take().expect("the queue is open");
        assert_eq!(Arc::strong_count(&queue), 1, "the test still holds the queue");
        drop(queue);
        // A one-node cluster takes a second to form again after a restart,
        // too long to do in a case: it is only reconnected to.
        if let (true, Backend::Redis, Some(server)) = (restart, self.backend, self.server) {
            server.lock().unwrap_or_else(|e| e.into_inner()).restart();
        }
        self.queue = Some(self.connect().await);
    }
}

/// Awaits one backend call, failing the case if it errs or hangs.
async fn call<T, E: std::fmt::Display>(what: &str, f: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what} failed: {e}"),
        Err(_) => panic!("{what} did not answer within {CALL_TIMEOUT:?}"),
    }
}

/// What the cases exercised, summed over a run: shows the random
/// sequences reach the interesting paths (expired leases, stale
/// settlements, unparks that move something, replays that apply).
#[derive(Clone, Debug, Default)]
struct Stats {
    steps: u64,
    accepted: u64,
    duplicates: u64,
    claimed: u64,
    /// Claimed again after a lease ran out.
    reclaimed: u64,
    settled: u64,
    /// Settlements skipped: their lease no longer held.
    skipped: u64,
    parked: u64,
    unparked: u64,
    replayed: u64,
    rescheduled: u64,
    expired: u64,
    crashes: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.steps += other.steps;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.claimed += other.claimed;
        self.reclaimed += other.reclaimed;
        self.settled += other.settled;
        self.skipped += other.skipped;
        self.parked += other.parked;
        self.unparked += other.unparked;
        self.replayed += other.replayed;
        self.rescheduled += other.rescheduled;
        self.expired += other.expired;
        self.crashes += other.crashes;
    }
}

/// A claim the test made: what it got, and the token in both clocks.
#[derive(Clone, Debug)]
struct ClaimMade {
    /// The delivery as the claim returned it.
    delivery: Delivery,
    /// The backend's token.
    lease: Lease,
    /// The due time the claim set, in the model's clock.
    model_lease: Millis,
}

/// One case run against one backend and the model.
struct Case<'s> {
    store: Store<'s>,
    model: Model,
    /// The test clock.
    now: Millis,
    /// Where the test clock started: no time the test passes is earlier.
    start: Millis,
    /// The real clock at the case's start.
    base: Millis,
    /// Every claim made, oldest first.
    claims: Vec<ClaimMade>,
    /// Every delivery made, accepted or not, in creation order.
    made: Vec<DeliveryId>,
    /// The latest enqueue stamp read back, to check stamps never go back.
    last_stamp: Millis,
    /// What ran so far, for messages.
    step: usize,
    /// What the case exercised.
    stats: Stats,
}

impl<'s> Case<'s> {
    async fn new(backend: Backend, server: Option<&'s Mutex<RedisServer>>) -> Case<'s> {
        let base = now_ms();
        Case {
            store: Store::open(backend, server).await,
            model: Model::default(),
            now: base + AHEAD,
            start: base + AHEAD,
            base,
            claims: Vec::new(),
            made: Vec::new(),
            last_stamp: Millis::MIN,
            step: 0,
            stats: Stats::default(),
        }
    }

    /// A time the test passes: `delta` from now, never before the start.
    fn at(&self, delta: Millis) -> Millis {
        (self.now + delta).max(self.start)
    }

    async fn run(&mut self, ops: &[Op]) {
        for (step, op) in ops.iter().enumerate() {
            self.step = step;
            self.stats.steps += 1;
            self.apply(op).await;
            self.check_depth().await;
        }
        self.check_everything().await;
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Advance(ms) => self.now += ms,
            Op::Enqueue(specs) => self.enqueue(specs).await,
            Op::Claim { max, lease } => self.claim(*max, *lease).await,
            Op::Settle(specs) => self.settle(specs).await,
            Op::Replay { pick, any } => self.replay(pick, *any).await,
            Op::Reschedule { pick, from_get, delta } => self.reschedule(pick, *from_get, *delta).await,
            Op::Unpark { subscription } => self.unpark(*subscription).await,
            Op::ExpireDead { all, limit } => self.expire(*all, *limit).await,
            Op::Crash { restart } => {
                self.stats.crashes += 1;
                self.store.crash(*restart).await;
                self.check_everything().await;
            }
        }
    }

    fn shards(&self) -> u16 {
        self.store.config.shards
    }

    async fn enqueue(&mut self, specs: &[EventSpec]) {
        let events: Vec<NewEvent> = specs
            .iter()
            .map(|spec| {
                let event_id = EventId::parse(&format!("evt_{}", spec.event)).expect("valid event id");
                let deliveries = spec
                    .subscriptions
                    .iter()
                    .zip(&spec.created)
                    .map(|(&s, &created)| Delivery {
                        id: DeliveryId::new(shard_of(&event_id, self.shards())),
                        event_id: event_id.clone(),
                        event_type: "coupon.redeemed".into(),
                        subscription: SubscriptionName::parse(SUBSCRIPTIONS[s]).expect("valid name"),
                        created_at: self.at(created),
                        attempts: 0,
                        body: Bytes::copy_from_slice(&spec.body),
                        last_error: None,
                        headers: None,
                        tenant: OWNERS[s].map(|t| TenantId::parse(t).expect("valid tenant")),
                    })
                    .collect();
                NewEvent {
                    dedup_key: spec.replay_key.map(|k| format!("{event_id}/replay/{k}")),
                    event_id,
                    deliveries,
                }
            })
            .collect();
        self.made
            .extend(events.iter().flat_map(|e| e.deliveries.iter().map(|d| d.id.clone())));
        let got = call("enqueue", self.store.q().enqueue(&events, WINDOW)).await;
        let want: Vec<Enqueued> = events.iter().map(|e| self.model.enqueue(e)).collect();
        assert_eq!(got, want, "step {}: enqueue results of {events:#?}", self.step);
        for r in &want {
            match r {
                Enqueued::Accepted => self.stats.accepted += 1,
                Enqueued::Duplicate => self.stats.duplicates += 1,
            }
        }
        // Read back when each accepted delivery fell due.
        let mut stamps = Vec::new();
        for e in events.iter().zip(&want).filter(|(_, r)| **r == Enqueued::Accepted) {
            for d in &e.0.deliveries {
                let stamp = match call("get", self.store.q().get(&d.id)).await {
                    Some((stored, Standing::Pending { due })) => {
                        assert_eq!(&stored, d, "step {}: the stored record is what was enqueued", self.step);
                        due
                    }
                    other => panic!("step {}: {} was just accepted, but get says {other:?}", self.step, d.id),
                };
                let real = now_ms();
                assert!(
                    (self.base - TOLERANCE..=real + TOLERANCE).contains(&stamp),
                    "step {}: {} is due at {stamp}, not near the real clock ({} .. {real})",
                    self.step,
                    d.id,
                    self.base
                );
                self.model.places.insert(d.id.clone(), Place::Pending { due: stamp });
                stamps.push(stamp);
            }
        }
        if let Some(&min) = stamps.iter().min() {
            assert!(
                min >= self.last_stamp,
                "step {}: an enqueue stamped {min}, before the previous enqueue's {}",
                self.step,
                self.last_stamp
            );
            self.last_stamp = *stamps.iter().max().unwrap_or(&min);
        }
    }

    async fn claim(&mut self, max: usize, lease: Millis) {
        let now = self.now;
        let duration = Duration::from_millis(lease as u64);
        let claimed = call("claim", self.store.q().claim(now, duration, max)).await;
        let got: Vec<DeliveryId> = claimed.claims.iter().map(|c| c.delivery.id.clone()).collect();
        // No delivery handed out while a live lease holds it.
        for id in &got {
            if let Some(Place::Pending { due }) = self.model.places.get(id) {
                assert!(
                    *due <= now,
                    "step {}: claim at {now} handed out {id}, which is leased or scheduled until {due}",
                    self.step
                );
            }
        }
        let before = self.model.due_order();
        let per_shard = self.store.backend == Backend::Cluster;
        let next_due = self.model.claim(now, lease, max, &got, per_shard).unwrap_or_else(|e| {
            panic!(
                "step {}: claim of {max} at {now} took {got:?}: {e} (due order: {before:?})",
                self.step
            )
        });
        match (claimed.next_due, next_due) {
            (None, None) => {}
            (Some(got), Some(want)) => assert!(
                (got - want).abs() <= TOLERANCE,
                "step {}: next_due {got}, the model says {want}",
                self.step
            ),
            (got, want) => panic!("step {}: next_due {got:?}, the model says {want:?}", self.step),
        }
        self.stats.claimed += got.len() as u64;
        self.stats.reclaimed += got
            .iter()
            .filter(|id| self.claims.iter().any(|c| c.delivery.id == **id))
            .count() as u64;
        for c in claimed.claims {
            assert_eq!(
                Some(&c.delivery),
                self.model.records.get(&c.delivery.id),
                "step {}: a claim returns the stored record",
                self.step
            );
            self.claims.push(ClaimMade {
                delivery: c.delivery,
                lease: c.lease,
                model_lease: now + lease,
            });
        }
    }

    async fn settle(&mut self, specs: &[SettleSpec]) {
        let mut settlements = Vec::new();
        let mut model = Vec::new();
        for spec in specs {
            let live: Vec<&ClaimMade> = self
                .claims
                .iter()
                .filter(|c| self.model.places.get(&c.delivery.id) == Some(&Place::Pending { due: c.model_lease }))
                .collect();
            let claim = if spec.stale || live.is_empty() {
                if self.claims.is_empty() {
                    continue;
                }
                &self.claims[spec.pick.index(self.claims.len())]
            } else {
                live[spec.pick.index(live.len())]
            };
            let id = claim.delivery.id.clone();
            let lease = claim.lease;
            let mut attempted = claim.delivery.clone();
            attempted.attempts += 1;
            let (settlement, action) = match spec.kind {
                Kind::Ack => (Settlement::Ack { id: id.clone(), lease }, ModelAction::Ack),
                Kind::Retry(delta) => {
                    attempted.last_error = Some(format!("status 5{:02}", attempted.attempts % 100));
                    let due = self.at(delta);
                    (
                        Settlement::Retry {
                            delivery: attempted.clone(),
                            lease,
                            due,
                        },
                        ModelAction::Retry { record: attempted, due },
                    )
                }
                Kind::Defer(delta) => {
                    let due = self.at(delta);
                    (
                        Settlement::Defer {
                            id: id.clone(),
                            lease,
                            due,
                        },
                        ModelAction::Defer { due },
                    )
                }
                Kind::Dead => {
                    attempted.last_error = Some("gave up".into());
                    (
                        Settlement::Dead {
                            delivery: attempted.clone(),
                            lease,
                        },
                        ModelAction::Dead { record: attempted },
                    )
                }
                Kind::Park => (Settlement::Park { id: id.clone(), lease }, ModelAction::Park),
            };
            settlements.push(settlement);
            model.push(ModelSettle {
                id,
                lease: claim.model_lease,
                kind: action,
            });
        }
        if settlements.is_empty() {
            return;
        }
        call("settle", self.store.q().settle(&settlements)).await;
        let touched: Vec<DeliveryId> = model.iter().map(|s| s.id.clone()).collect();
        for s in model {
            let park = matches!(s.kind, ModelAction::Park);
            if self.model.settle(s) {
                self.stats.settled += 1;
                self.stats.parked += u64::from(park);
            } else {
                self.stats.skipped += 1;
            }
        }
        for id in touched {
            self.check_get(&id).await;
        }
    }

    async fn replay(&mut self, pick: &Index, any: bool) {
        let dead: Vec<DeliveryId> = self.model.dead().into_iter().collect();
        let pool = if any || dead.is_empty() { &self.made } else { &dead };
        if pool.is_empty() {
            return;
        }
        let id = pool[pick.index(pool.len())].clone();
        let got = call("replay", self.store.q().replay(&id, self.now)).await;
        let want = self.model.replay(&id, self.now);
        assert_eq!(
            got,
            want,
            "step {}: replay of {id} ({:?})",
            self.step,
            self.model.places.get(&id)
        );
        self.stats.replayed += u64::from(got);
        self.check_get(&id).await;
    }

    async fn reschedule(&mut self, pick: &Index, from_get: bool, delta: Millis) {
        let due = self.at(delta);
        let (id, token, expected) = if from_get {
            if self.made.is_empty() {
                return;
            }
            let id = self.made[pick.index(self.made.len())].clone();
            match call("get", self.store.q().get(&id)).await {
                Some((_, Standing::Pending { due: token })) => match self.model.places.get(&id) {
                    Some(Place::Pending { due: expected }) => (id, Lease(token), *expected),
                    other => panic!("step {}: get says {id} is pending, the model says {other:?}", self.step),
                },
                _ => return self.check_get(&id).await,
            }
        } else {
            if self.claims.is_empty() {
                return;
            }
            let claim = &self.claims[pick.index(self.claims.len())];
            (claim.delivery.id.clone(), claim.lease, claim.model_lease)
        };
        let got = call("reschedule", self.store.q().reschedule(&id, token, due)).await;
        let want = self.model.reschedule(&id, expected, due);
        assert_eq!(got, want, "step {}: reschedule of {id} to {due}", self.step);
        self.stats.rescheduled += u64::from(got);
        self.check_get(&id).await;
    }

    async fn unpark(&mut self, subscription: usize) {
        let name = SubscriptionName::parse(SUBSCRIPTIONS[subscription]).expect("valid name");
        let got = call("unpark", self.store.q().unpark(&name, self.now)).await;
        let moved = self.model.unpark(&name, self.now);
        assert_eq!(
            got,
            moved.len() as u64,
            "step {}: unpark of {name} ({moved:?})",
            self.step
        );
        self.stats.unparked += got;
        for id in moved {
            self.check_get(&id).await;
        }
    }

    async fn expire(&mut self, all: bool, limit: usize) {
        // Deaths are stamped by the backend's clock, after the case began
        // and long before the test clock's start.
        let before = if all { self.now } else { self.base - 60_000 };
        let expired = call("expire_dead", self.store.q().expire_dead(before, limit)).await;
        let dead = self.model.dead();
        let want = if all { dead.len().min(limit) } else { 0 };
        assert_eq!(
            expired.removed,
            want as u64,
            "step {}: expire_dead({limit}) with {} dead",
            self.step,
            dead.len()
        );
        assert_eq!(expired.deliveries.len(), want, "step {}: expired records", self.step);
        self.stats.expired += expired.removed;
        for d in &expired.deliveries {
            assert!(
                dead.contains(&d.id),
                "step {}: expired {} which is not dead",
                self.step,
                d.id
            );
            assert_eq!(
                Some(d),
                self.model.records.get(&d.id),
                "step {}: expired record",
                self.step
            );
            self.model.expire(&d.id);
        }
    }

    /// Compares `get` of one delivery with the model.
    async fn check_get(&self, id: &DeliveryId) {
        let got = call("get", self.store.q().get(id)).await;
        let step = self.step;
        match (got, self.model.places.get(id)) {
            (None, None) => assert!(
                self.model.gone.contains(id) || self.model.refused.contains(id),
                "step {step}: {id} is unknown to the model"
            ),
            (Some((_, standing)), None) => panic!(
                "step {step}: {id} is {standing:?}, but the model has it {}",
                if self.model.gone.contains(id) {
                    "acked or expired"
                } else {
                    "never stored (a duplicate's)"
                }
            ),
            (None, Some(place)) => panic!("step {step}: {id} is lost: the model has it {place:?}"),
            (Some((stored, standing)), Some(place)) => {
                assert_eq!(Some(&stored), self.model.records.get(id), "step {step}: record of {id}");
                match (standing, place) {
                    (Standing::Pending { due }, Place::Pending { due: want }) => assert!(
                        (due - want).abs() <= TOLERANCE,
                        "step {step}: {id} is due at {due}, the model says {want}"
                    ),
                    (Standing::Dead { .. }, Place::Dead) | (Standing::Parked { .. }, Place::Parked) => {}
                    (standing, place) => panic!("step {step}: {id} is {standing:?}, the model has it {place:?}"),
                }
            }
        }
    }

    async fn check_depth(&self) {
        let got = call("depth", self.store.q().depth(self.now)).await;
        assert_eq!(
            got,
            self.model.depth(self.now),
            "step {}: depth at {} (the model: {:?})",
            self.step,
            self.now,
            self.model.places
        );
    }

    /// Every delivery ever made where the model says, and the dead listed
    /// and walked as the model has them: none lost, none extra.
    async fn check_everything(&self) {
        for id in &self.made {
            self.check_get(id).await;
        }
        let dead = self.model.dead();
        let listed: BTreeSet<DeliveryId> = call("dead", self.store.q().dead(1000))
            .await
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(listed, dead, "step {}: dead() lists the dead", self.step);
        let listed_order: Vec<DeliveryId> = call("dead", self.store.q().dead(1000))
            .await
            .into_iter()
            .map(|d| d.id)
            .collect();
        let mut walked = BTreeSet::new();
        let mut walk_order = Vec::new();
        let mut after: Option<(Millis, DeliveryId)> = None;
        loop {
            let page = call(
                "dead_after",
                self.store.q().dead_after(after.as_ref().map(|(at, id)| (*at, id)), 2),
            )
            .await;
            for (at, d) in &page {
                if let Some((last_at, last_id)) = &after {
                    assert!(
                        (*at, &d.id) > (*last_at, last_id),
                        "step {}: dead_after went back to ({at}, {}) after ({last_at}, {last_id})",
                        self.step,
                        d.id
                    );
                }
                assert!(walked.insert(d.id.clone()), "step {}: walked {} twice", self.step, d.id);
                walk_order.push(d.id.clone());
                after = Some((*at, d.id.clone()));
            }
            if page.len() < 2 {
                break;
            }
        }
        assert_eq!(walked, dead, "step {}: dead_after walks the dead", self.step);
        walk_order.reverse();
        assert_eq!(
            listed_order, walk_order,
            "step {}: dead() lists most recent first, the reverse of the dead_after walk",
            self.step
        );
    }
}

/// The cases' configuration: `cases` unless `PROPTEST_CASES` says, the
/// seed fixed if given (unless `PROPTEST_RNG_SEED` says), failures kept
/// beside this file and replayed first.
fn config(cases: u32, seed: Option<u64>) -> Config {
    let defaults = Config::default();
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Config {
        cases: from_env("PROPTEST_CASES").map_or(cases, |_| defaults.cases),
        rng_seed: match (from_env("PROPTEST_RNG_SEED"), seed) {
            (None, Some(seed)) => RngSeed::Fixed(seed),
            _ => defaults.rng_seed,
        },
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        max_shrink_iters: 2_000,
        ..defaults
    }
}

/// Runs `cases` random cases (seeded with `seed` if given) against
/// `backend`, one redis-server for all of them.
fn run(backend: Backend, cases: u32, seed: Option<u64>) {
    let server = match backend {
        Backend::Embedded => None,
        Backend::Redis => Some(Mutex::new(RedisServer::start())),
        Backend::Cluster => Some(Mutex::new(RedisServer::start_cluster())),
    };
    let mut runner = TestRunner::new(config(cases, seed));
    let started = std::time::Instant::now();
    let stats = Mutex::new(Stats::default());
    let result = runner.run(&ops(), |ops| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let mut case = Case::new(backend, server.as_ref()).await;
            case.run(&ops).await;
            stats.lock().unwrap_or_else(|e| e.into_inner()).add(&case.stats);
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{backend:?} disagrees with the model: {e}");
    }
    eprintln!(
        "{backend:?}: {} cases agree with the model in {:?}; they exercised {:?}",
        runner.config().cases,
        started.elapsed(),
        stats.into_inner().unwrap_or_else(|e| e.into_inner())
    );
}

#[test]
fn embedded_agrees_with_the_model_fixed_seed() {
    run(Backend::Embedded, 32, Some(SEED));
}

#[test]
fn embedded_agrees_with_the_model() {
    run(Backend::Embedded, 64, None);
}

#[test]
fn redis_agrees_with_the_model_fixed_seed() {
    run(Backend::Redis, 64, Some(SEED));
}

#[test]
fn redis_agrees_with_the_model() {
    run(Backend::Redis, 256, None);
}

#[test]
fn cluster_agrees_with_the_model_fixed_seed() {
    run(Backend::Cluster, 32, Some(SEED));
}

#[test]
fn cluster_agrees_with_the_model() {
    run(Backend::Cluster, 96, None);
}
