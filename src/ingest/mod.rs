//! Ingest: events in, deliveries out.
//!
//! Every source (HTTP, the Redis stream, `hookd send` through HTTP) goes
//! through one path: [`parse_event`] validates, [`Ingestor::ingest`] fans
//! the event out to the matching subscriptions and hands the event id and
//! its deliveries to [`Queue::enqueue`], which dedups and queues them in one
//! atomic step. An event is acknowledged to its producer only after that.
//! Each accepted event with at least one delivery is then handed, once, to
//! the delivery log ([`crate::history::Recorder`], never waited for), which
//! keeps its body for the admin API and for replays.

pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::history::{Entry, EventRecord, Recorder};
pub use crate::model::{check_event_type, is_internal, Event, EventId, EventPattern, INTERNAL_PREFIX};
use crate::model::{SubscriptionName, TenantId};
use crate::queue::{self, now_ms, Backend, Delivery, DeliveryId, Enqueued, NewEvent, Queue, StateStore};
pub use crate::telemetry::metrics::Source;
use crate::telemetry::Metrics;

/// Why an event was refused or could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event is malformed; `field` names the part at fault.
    #[error("invalid event: `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
    /// The body is larger than `ingest.max_body_bytes`.
    #[error("event body is {size} bytes, over the limit of {limit} bytes (ingest.max_body_bytes)")]
    TooLarge { size: usize, limit: usize },
    /// A batch holds more events than `ingest.max_batch`.
    #[error("batch holds {count} events, over the limit of {limit} (ingest.max_batch)")]
    BatchTooLarge { count: usize, limit: usize },
    /// The queue could not store the event; the producer should retry.
    #[error("event not accepted, retry later: {0}")]
    Queue(#[from] queue::Error),
    /// The queue failed or answered late while storing these events, so
    /// they may or may not be queued: resending them with the same ids is
    /// safe (a repeat within the dedup window is a duplicate), resending
    /// without is not.
    #[error(
        "the queue did not confirm event {}: it may or may not be queued. Retry with the same `id` \
         (a repeat within ingest.dedup_window is answered as a duplicate, never delivered twice): {error}",
        ids.join(", ")
    )]
    Unconfirmed {
        /// The events' ids, as given or generated.
        ids: Vec<String>,
        /// What the queue said.
        error: queue::Error,
    },
    /// The queue holds more deliveries due or scheduled than
    /// `ingest.max_queue_depth`: the producer should retry later.
    #[error(
        "the queue holds {depth} deliveries due or scheduled, over ingest.max_queue_depth ({limit}); \
         retry after {} s", retry_after.as_secs()
    )]
    Overloaded {
        /// Deliveries due or scheduled, as last sampled.
        depth: u64,
        /// `ingest.max_queue_depth`.
        limit: u64,
        /// When the depth is sampled again.
        retry_after: Duration,
    },
    /// The tenant's subscriptions already have as many deliveries waiting,
    /// retrying or parked as its plan allows (`max_pending`); the others'
    /// ingest goes on.
    #[error(
        "tenant `{tenant}` has {pending} deliveries waiting, retrying or parked; with {adding} more it would \
         exceed the {limit} its plan `{plan}` allows (max_pending). Retry after {} s, once its endpoints \
         have caught up", retry_after.as_secs()
    )]
    TenantQueueFull {
        /// The tenant.
        tenant: TenantId,
        /// Its plan.
        plan: String,
        /// Its deliveries not yet finished.
        pending: u64,
        /// The deliveries the refused call would have added.
        adding: u64,
        /// The plan's `max_pending`.
        limit: u64,
        /// When to try again.
        retry_after: Duration,
    },
    /// The tenant sends faster than its plan allows.
    #[error("tenant `{tenant}` sends more events per second than plan `{plan}` allows (events_per_second); retry after {} ms", retry_after.as_millis())]
    RateLimited {
        /// The tenant.
        tenant: TenantId,
        /// Its plan.
        plan: String,
        /// When a token will be free.
        retry_after: Duration,
    },
}

/// The `Retry-After` of a 429 `tenant_queue_full`: how soon to ask again
/// is a guess (it depends on the tenant's endpoints), so a pause long
/// enough not to spin.
pub const TENANT_QUEUE_RETRY: Duration = Duration::from_secs(5);

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        problem: problem.into(),
    }
}

/// The JSON shape producers send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    timestamp: Option<DateTime<Utc>>,
    #[serde(borrow)]
    tenant: Option<std::borrow::Cow<'a, str>>,
}

/// The nesting depth `data` may have when no config says otherwise
/// (`ingest.max_depth`'s default; `hookd plugin run` uses it).
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Parses and validates one event from its JSON text:
/// `{"type": "coupon.redeemed", "id": "optional", "data": {...}, "timestamp": "optional RFC 3339"}`,
/// whose `data` nests at most `max_depth` objects and arrays deep
/// (`ingest.max_depth`).
pub fn parse_event(json: &[u8], max_depth: usize) -> Result<Event, Error> {
    let input: EventInput<'_> =
        serde_json::from_slice(json).map_err(|e| invalid("body", format!("is not a valid event object: {e}")))?;
    from_parts(
        input.event_type.as_deref(),
        input.id.as_deref(),
        input.data.map(RawValue::get),
        input.timestamp,
        input.tenant.as_deref(),
        max_depth,
    )
}

/// Validates an event given as separate parts (as a Redis stream entry is);
/// `data` may nest at most `max_depth` deep.
pub fn from_parts(
    event_type: Option<&str>,
    id: Option<&str>,
    data: Option<&str>,
    timestamp: Option<DateTime<Utc>>,
    tenant: Option<&str>,
    max_depth: usize,
) -> Result<Event, Error> {
    let event_type = event_type.ok_or_else(|| invalid("type", "is missing"))?;
    check_event_type(event_type).map_err(|p| invalid("type", p))?;
    if is_internal(event_type) {
        return Err(invalid(
            "type",
            format!("`{event_type}`: types under `hookd.` are reserved for hookd's own notifications"),
        ));
    }
    let id = match id {
        Some(id) => EventId::parse(id).map_err(|p| invalid("id", p))?,
        None => EventId::generate(),
    };
    let data = data.ok_or_else(|| invalid("data", "is missing; send a JSON object"))?;
    let data: Box<RawValue> =
        serde_json::from_str(data).map_err(|e| invalid("data", format!("is not valid JSON: {e}")))?;
    if !data.get().trim_start().starts_with('{') {
        return Err(invalid("data", "must be a JSON object"));
    }
    let depth = json_depth(data.get());
    if depth > max_depth {
        return Err(invalid(
            "data",
            format!("nests {depth} levels deep, over the limit of {max_depth} (ingest.max_depth)"),
        ));
    }
    let tenant = tenant
        .map(|t| TenantId::parse(t).map_err(|p| invalid("tenant", p)))
        .transpose()?;
    Ok(Event {
        id,
        event_type: event_type.to_owned(),
        occurred_at: timestamp.unwrap_or_else(Utc::now),
        data,
        tenant,
    })
}

/// How deep the objects and arrays of the valid JSON `text` nest: `{}` is
/// 1, `{"a":[{}]}` is 3. A byte scan with no recursion, so any depth is
/// measured safely (serde_json's `RawValue` checks syntax without a depth
/// limit).
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What happened to an ingested event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// The event's id (generated if the producer gave none).
    pub id: EventId,
    /// True if the id was seen within the dedup window: nothing new queued.
    pub duplicate: bool,
    /// Deliveries queued for it.
    pub deliveries: usize,
}

/// Backpressure at ingest: the queue's depth (due and scheduled
/// deliveries) as last sampled, against `ingest.max_queue_depth`. Sampled
/// in the background (with the depth gauges), never per event.
#[derive(Debug)]
pub struct Backpressure {
    /// `ingest.max_queue_depth`; 0: unbounded.
    limit: u64,
    /// Due plus scheduled deliveries, as last sampled.
    depth: std::sync::atomic::AtomicU64,
    /// How long until the next sample: what a refusal's `Retry-After` says.
    resample: Duration,
}

impl Backpressure {
    /// Refuses beyond `limit` (0: never), the depth resampled every `resample`.
    pub fn new(limit: u64, resample: Duration) -> Backpressure {
        Backpressure {
            limit,
            depth: std::sync::atomic::AtomicU64::new(0),
            resample,
        }
    }

    /// Takes a new sample of the queue's depth.
    pub fn observe(&self, depth: &queue::Depth) {
        self.depth.store(
            depth.due.saturating_add(depth.scheduled),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The refusal to answer while the last sample is beyond the limit.
    pub fn check(&self) -> Result<(), Error> {
        let depth = self.depth.load(std::sync::atomic::Ordering::Relaxed);
        if self.limit > 0 && depth > self.limit {
            return Err(Error::Overloaded {
                depth,
                limit: self.limit,
                retry_after: self.resample,
            });
        }
        Ok(())
    }

    /// Whether the last sample is beyond the limit.
    pub fn is_over(&self) -> bool {
        self.check().is_err()
    }
}

/// Fans events out to subscriptions and queues them.
pub struct Ingestor {
    /// Refuses producers' events while the queue is too deep.
    backpressure: Arc<Backpressure>,
    /// Hands batches to the enqueue task, which writes them to the queue.
    enqueue_tx: mpsc::Sender<PendingEnqueue>,
    /// The enqueue task: it holds the queue until the last ingestor is
    /// gone ([`Ingestor::enqueue_task`]).
    enqueue_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Subscriptions and tenants: fan-out reads the snapshot in force.
    catalog: Arc<Catalog>,
    /// Queue shard count, to place each event's deliveries.
    shards: u16,
    /// Woken after each enqueue so the local dispatcher claims at once.
    queued: Arc<Notify>,
    /// Counts events ingested (by source and type) and dedup hits.
    metrics: Arc<Metrics>,
    /// Where the tenants' ingest rate buckets live.
    state: Arc<dyn StateStore>,
    /// The queue, for its tenants' pending counts.
    queue: Arc<dyn Queue>,
    /// Refuse events whose data fails their type's schema.
    validate_schemas: bool,
    /// How the delivery log's writing stands (its recorder's).
    log: Arc<crate::history::LogStatus>,
}

impl Ingestor {
    /// An ingestor for `config`'s subscriptions, waking `queued` on enqueue,
    /// recording accepted events with `recorder` and counting into `metrics`.
    /// Must be called within a tokio runtime: it starts the enqueue task.
    pub fn new(
        config: &Config,
        catalog: Arc<Catalog>,
        backend: Backend,
        queued: Arc<Notify>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Ingestor {
        let (enqueue_tx, enqueue_rx) = mpsc::channel(ENQUEUE_BACKLOG);
        let log = recorder.status().clone();
        let enqueue_task = tokio::spawn(enqueue_loop(
            backend.queue.clone(),
            config.ingest.dedup_window,
            enqueue_rx,
            recorder,
        ));
        Ingestor {
            log,
            enqueue_task: std::sync::Mutex::new(Some(enqueue_task)),
            backpressure: Arc::new(Backpressure::new(config.ingest.max_queue_depth, crate::DEPTH_SAMPLE)),
            enqueue_tx,
            catalog,
            state: backend.state,
            queue: backend.queue,
            validate_schemas: config.ingest.validate_schemas,
            shards: config.queue.shards,
            queued,
            metrics,
        }
    }

    /// The enqueue task, once: it ends when every clone of this ingestor
    /// is dropped, releasing the queue, so the caller that stops hookd
    /// awaits it before saying it stopped.
    pub fn enqueue_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.enqueue_task.lock().ok()?.take()
    }

    /// How the delivery log's writing stands.
    pub fn log_status(&self) -> &Arc<crate::history::LogStatus> {
        &self.log
    }

    /// The backpressure gauge: fed by the depth sampler, read by ingest
    /// and the stream consumer.
    pub fn backpressure(&self) -> &Arc<Backpressure> {
        &self.backpressure
    }

    /// Wakes the local dispatcher (after a replay, say).
    pub fn wake(&self) {
        self.queued.notify_one();
    }

    /// Fans out, dedups and queues one event that came from `source`.
    pub async fn ingest(&self, event: Event, source: Source) -> Result<Accepted, Error> {
        let mut accepted = self.ingest_batch(vec![event], source).await?;
        Ok(accepted.remove(0))
    }

    /// Fans out, dedups and queues several events from `source`; one result
    /// each, in order.
    pub async fn ingest_batch(&self, events: Vec<Event>, source: Source) -> Result<Vec<Accepted>, Error> {
        let now = now_ms();
        // Producers' events wait while the queue is too deep; the stream
        // consumer stops reading instead (what it read is queued), and
        // hookd's own notifications are few.
        if !matches!(source, Source::Stream | Source::Internal) {
            if let Err(e) = self.backpressure.check() {
                self.metrics.ingest_refused(events.len() as u64);
                return Err(e);
            }
        }
        let many = events.len() > 1;
        for (n, event) in events.iter().enumerate() {
            self.check(event).await.map_err(|e| match e {
                Error::Invalid { field, problem } if many => Error::Invalid {
                    field,
                    problem: format!("{problem} (event {n})"),
                },
                e => e,
            })?;
        }
        let snapshot = self.catalog.snapshot();
        let batch: Vec<NewEvent> = events
            .iter()
            .map(|e| {
                to_subscriptions(
                    e,
                    snapshot.generation_of(e.tenant.as_ref()),
                    snapshot.routes.matching(&e.event_type, e.tenant.as_ref()),
                    self.shards,
                    now,
                )
            })
            .collect();
        // The platform's own stream is not held to its tenants' plans.
        if source != Source::Stream {
            let mut owners: Vec<(&TenantId, u64)> = Vec::new();
            for tenant in batch.iter().flat_map(|e| &e.deliveries).filter_map(Delivery::owner) {
                match owners.iter_mut().find(|(t, _)| *t == tenant) {
                    Some((_, n)) => *n += 1,
                    None => owners.push((tenant, 1)),
                }
            }
            for (tenant, adding) in owners {
                self.check_pending(tenant, adding).await?;
            }
            self.take_plan_tokens(&events, now).await?;
        }
        self.submit(batch, &events, source).await
    }

    /// Queues `event` for `subscription` alone, whatever the others want
    /// (a subscription's test event): one delivery, through the same
    /// checks, dedup and log as any event. Returns its delivery's id.
    pub async fn ingest_to(
        &self,
        event: Event,
        subscription: &SubscriptionName,
        source: Source,
    ) -> Result<(Accepted, DeliveryId), Error> {
        self.check(&event).await?;
        let snapshot = self.catalog.snapshot();
        let generation = snapshot.generation_of(event.tenant.as_ref());
        let new = to_subscriptions(&event, generation, std::iter::once(subscription), self.shards, now_ms());
        let id = new.deliveries[0].id.clone();
        let mut accepted = self.submit(vec![new], std::slice::from_ref(&event), source).await?;
        Ok((accepted.remove(0), id))
    }

    /// Checks what the catalogue knows of `event`: its tenant exists, and
    /// (with `ingest.validate_schemas`) its `data` matches its type's
    /// JSON Schema, the failing path named.
    pub async fn check(&self, event: &Event) -> Result<(), Error> {
        let mut snapshot = self.catalog.snapshot();
        if let Some(tenant) = &event.tenant {
            if !snapshot.tenants.contains_key(tenant) {
                // Made on another process a moment ago, perhaps: look again once.
                let _ = self.catalog.refresh().await;
                snapshot = self.catalog.snapshot();
                if !snapshot.tenants.contains_key(tenant) {
                    return Err(invalid("tenant", format!("`{tenant}` does not exist")));
                }
            }
        }
        if self.validate_schemas && snapshot.has_schema(&event.event_type) {
            let data: serde_json::Value = serde_json::from_str(event.data.get())
                .map_err(|e| invalid("data", format!("is not valid JSON: {e}")))?;
            snapshot.check_data(&event.event_type, &data).map_err(|(at, what)| {
                invalid(
                    "data",
                    format!("does not match the schema of `{}` at `{at}`: {what}", event.event_type),
                )
            })?;
        }
        Ok(())
    }

    /// Takes one token per event from each tenant's plan bucket (in the
    /// queue backend, shared by every process); refuses the call if a
    /// tenant has not enough.
    /// Admits up to `want` events' worth of work made outside ingest — a
    /// subscription's test event, an event replayed, a dead delivery sent
    /// again — through ingest's own admission: refused while the queue is
    /// too deep (503), and, for work a tenant asks for (`tenant`), taken
    /// from its plan's ingest rate. Returns how many may go (at least 1;
    /// fewer than `want` when the plan's bucket holds fewer tokens), or
    /// the 429 when it holds none.
    pub async fn admit_up_to(&self, tenant: Option<&TenantId>, want: u32) -> Result<u32, Error> {
        if let Err(e) = self.backpressure.check() {
            self.metrics.ingest_refused(u64::from(want));
            return Err(e);
        }
        let Some(tenant) = tenant else {
            return Ok(want);
        };
        self.check_pending(tenant, 1).await?;
        let now = now_ms();
        match self.take_tenant_tokens(tenant, want, now).await? {
            Ok(()) => Ok(want),
            Err((granted, _)) if granted > 0 => Ok(granted),
            Err((_, refused)) => Err(refused),
        }
    }

    /// [`Self::admit_up_to`] for all of `want` or nothing.
    pub async fn admit(&self, tenant: Option<&TenantId>, want: u32) -> Result<(), Error> {
        if let Err(e) = self.backpressure.check() {
            self.metrics.ingest_refused(u64::from(want));
            return Err(e);
        }
        match tenant {
            Some(tenant) => {
                self.check_pending(tenant, u64::from(want)).await?;
                self.take_tenant_tokens(tenant, want, now_ms())
                    .await?
                    .map_err(|(_, e)| e)
            }
            None => Ok(()),
        }
    }

    /// Refuses `adding` more deliveries of `tenant`'s if its plan's
    /// `max_pending` would be exceeded. Read from the queue backend each
    /// time (one lookup per shard), so every process holds the tenant to
    /// one count; calls racing one another can each pass, so the count may
    /// exceed the limit by what is admitted at once. A tenant with nothing
    /// pending is always admitted, so one call larger than the limit is
    /// not refused forever.
    async fn check_pending(&self, tenant: &TenantId, adding: u64) -> Result<(), Error> {
        let snapshot = self.catalog.snapshot();
        let Some((plan, limits)) = snapshot.plan_of(tenant) else {
            return Ok(());
        };
        let Some(limit) = limits.max_pending else {
            return Ok(());
        };
        let pending = self.queue.pending_of(tenant).await?;
        if pending > 0 && pending.saturating_add(adding) > limit {
            self.metrics.ingest_refused(adding);
            return Err(Error::TenantQueueFull {
                tenant: tenant.clone(),
                plan: plan.to_owned(),
                pending,
                adding,
                limit,
                retry_after: TENANT_QUEUE_RETRY,
            });
        }
        Ok(())
    }

    /// Takes `want` tokens from `tenant`'s plan's ingest bucket: `Ok` if
    /// all were granted (or the plan has no rate), else how many were and
    /// the 429 for the rest.
    async fn take_tenant_tokens(
        &self,
        tenant: &TenantId,
        want: u32,
        now: queue::Millis,
    ) -> Result<Result<(), (u32, Error)>, Error> {
        let snapshot = self.catalog.snapshot();
        let Some((plan, limits)) = snapshot.plan_of(tenant) else {
            return Ok(Ok(()));
        };
        let Some(limit) = limits.ingest_limit() else {
            return Ok(Ok(()));
        };
        let bucket = SubscriptionName::tenant_bucket(tenant);
        let tokens = self.state.take_tokens(&bucket, &limit, want, now).await?;
        if tokens.granted < want {
            let next = tokens.next_at.unwrap_or(now + 1000);
            return Ok(Err((
                tokens.granted,
                Error::RateLimited {
                    tenant: tenant.clone(),
                    plan: plan.to_owned(),
                    retry_after: Duration::from_millis((next - now).max(1) as u64),
                },
            )));
        }
        Ok(Ok(()))
    }

    async fn take_plan_tokens(&self, events: &[Event], now: queue::Millis) -> Result<(), Error> {
        let mut wanted: Vec<(&TenantId, u32)> = Vec::new();
        for tenant in events.iter().filter_map(|e| e.tenant.as_ref()) {
            match wanted.iter_mut().find(|(t, _)| *t == tenant) {
                Some((_, n)) => *n += 1,
                None => wanted.push((tenant, 1)),
            }
        }
        for (tenant, want) in wanted {
            self.take_tenant_tokens(tenant, want, now).await?.map_err(|(_, e)| e)?;
        }
        Ok(())
    }

    /// Hands fanned-out events to the enqueue task and answers for each.
    async fn submit(&self, batch: Vec<NewEvent>, events: &[Event], source: Source) -> Result<Vec<Accepted>, Error> {
        let counts: Vec<(EventId, usize)> = batch.iter().map(|e| (e.event_id.clone(), e.deliveries.len())).collect();
        let (tx, rx) = oneshot::channel();
        let gone = || queue::Error::Invalid("the enqueue task has stopped".into());
        self.enqueue_tx.send((batch, tx)).await.map_err(|_| gone())?;
        let results = rx.await.map_err(|_| gone())?.map_err(|error| Error::Unconfirmed {
            ids: counts.iter().map(|(id, _)| id.as_str().to_owned()).collect(),
            error,
        })?;
        let mut any = false;
        let accepted = counts
            .into_iter()
            .zip(results)
            .zip(events)
            .map(|(((id, count), r), event)| {
                let duplicate = r == Enqueued::Duplicate;
                if duplicate {
                    self.metrics.dedup_hit();
                } else {
                    self.metrics.event_ingested(source, &event.event_type);
                }
                let deliveries = if duplicate { 0 } else { count };
                any |= deliveries > 0;
                Accepted {
                    id,
                    duplicate,
                    deliveries,
                }
            })
            .collect();
        if any {
            self.queued.notify_one();
        }
        Ok(accepted)
    }
}

/// The deliveries of `event` to the subscriptions `names` (those of the
/// catalogue that want it, or one for a test). An event of a tenant is
/// deduplicated per tenant: its dedup key is `{tenant}/{id}`, so two
/// tenants may use the same event id.
///
/// Public for `benches/catalog.rs` only.
#[doc(hidden)]
pub fn to_subscriptions<'a>(
    event: &Event,
    generation: &str,
    names: impl Iterator<Item = &'a SubscriptionName>,
    shards: u16,
    now: queue::Millis,
) -> NewEvent {
    let shard = queue::shard_of(&event.id, shards);
    let mut body = None;
    let deliveries = names
        .map(|name| {
            Delivery::new(
                shard,
                event.id.clone(),
                event.event_type.clone(),
                event.tenant.clone(),
                name.clone(),
                body.get_or_insert_with(|| event.body()).clone(),
                now,
            )
        })
        .collect();
    NewEvent {
        event_id: event.id.clone(),
        dedup_key: event
            .tenant
            .as_ref()
            .map(|t| tenant_dedup_key(t, generation, &event.id)),
        deliveries,
    }
}

/// The dedup key of an event of `tenant` in its `generation`
/// ([`crate::catalog::Tenant::generation`]): `{tenant}/{id}`, or
/// `{tenant}/{generation}/{id}` for a tenant with one, so that a tenant
/// made again with the id of a deleted one has its events taken, not
/// answered as the deleted one's duplicates. None of the three holds a
/// `/`, so a key never equals an event id of no tenant, nor another
/// tenant's or generation's key.
pub fn tenant_dedup_key(tenant: &TenantId, generation: &str, id: &EventId) -> String {
    if generation.is_empty() {
        format!("{tenant}/{id}")
    } else {
        format!("{tenant}/{generation}/{id}")
    }
}

/// Batches waiting to be enqueued, at most: producers wait beyond it.
const ENQUEUE_BACKLOG: usize = 1024;
/// Most waiting batches combined into one queue call.
const ENQUEUE_COMBINE: usize = 256;

/// A batch of fanned-out events and where its results go.
type PendingEnqueue = (Vec<NewEvent>, oneshot::Sender<Result<Vec<Enqueued>, queue::Error>>);

/// Group commit: whatever batches arrived while the previous queue call
/// was in flight go to the queue together in one call (one Redis round
/// trip, one embedded transaction), so many producers posting one event per
/// request cost a fraction of the round trips. Each accepted event with a
/// delivery is handed to `recorder` (without waiting) before its producer
/// is answered. Ends when the ingestor is dropped.
async fn enqueue_loop(
    queue: Arc<dyn Queue>,
    window: Duration,
    mut rx: mpsc::Receiver<PendingEnqueue>,
    recorder: Recorder,
) {
    let mut pending = Vec::with_capacity(ENQUEUE_COMBINE);
    while rx.recv_many(&mut pending, ENQUEUE_COMBINE).await > 0 {
        let mut all = Vec::new();
        let mut replies = Vec::with_capacity(pending.len());
        for (batch, reply) in pending.drain(..) {
            replies.push((batch.len(), reply));
            all.extend(batch);
        }
        match queue.enqueue(&all, window).await {
            Ok(results) => {
                for (event, result) in all.iter().zip(&results) {
                    if *result == Enqueued::Accepted {
                        if let Some(record) = event_record(event) {
                            recorder.record(Entry::Event(record));
                        }
                    }
                }
                let mut results = results.into_iter();
                for (len, reply) in replies {
                    let _ = reply.send(Ok(results.by_ref().take(len).collect()));
                }
            }
            Err(e) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The record of an event for the delivery log, from its first delivery
/// (every delivery of a fanned-out event shares its id, type, creation
/// time and body); `None` if it has no delivery.
fn event_record(event: &NewEvent) -> Option<EventRecord> {
    let first = event.deliveries.first()?;
    Some(EventRecord {
        id: event.event_id.clone(),
        event_type: first.event_type.clone(),
        created_at: first.created_at,
        body: first.body.clone(),
        tenant: first.tenant.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        let cases = [
            ("*", "link.clicked", true),
            ("*", "hookd.delivery.dead", false),
            ("hookd.*", "hookd.delivery.dead", true),
            ("coupon.*", "coupon.redeemed", true),
            ("coupon.*", "coupon.code.expired", true),
            ("coupon.*", "coupon", false),
            ("coupon.*", "coupons.redeemed", false),
            ("stamp.rewarded", "stamp.rewarded", true),
            ("stamp.rewarded", "stamp.rewarded.x", false),
        ];
        for (pattern, event_type, want) in cases {
            assert_eq!(
                EventPattern::parse(pattern).unwrap().matches(event_type),
                want,
                "{pattern} ~ {event_type}"
            );
        }
        for bad in ["", "coupon.", ".x", "a b", "coupon.**", "*.redeemed"] {
            assert!(EventPattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn events_parse_and_name_what_is_wrong() {
        let e = parse_event(
            br#"{"type":"coupon.redeemed","id":"evt_1","data":{"amount":12}}"#,
            DEFAULT_MAX_DEPTH,
        )
        .unwrap();
        assert_eq!(e.id.as_str(), "evt_1");
        assert_eq!(e.data.get(), r#"{"amount":12}"#);
        let generated = parse_event(br#"{"type":"link.clicked","data":{}}"#, DEFAULT_MAX_DEPTH).unwrap();
        assert!(generated.id.as_str().starts_with("evt_"));

        let cases: &[(&[u8], &str)] = &[
            (b"not json", "`body`"),
            (br#"{"data":{}}"#, "`type` is missing"),
            (br#"{"type":"a..b","data":{}}"#, "`type`"),
            (br#"{"type":"a.b"}"#, "`data` is missing"),
            (br#"{"type":"a.b","data":[1]}"#, "`data` must be a JSON object"),
            (br#"{"type":"a.b","data":{},"id":"has space"}"#, "`id`"),
            (br#"{"type":"a.b","data":{},"colour":1}"#, "unknown field `colour`"),
            (br#"{"type":"hookd.delivery.dead","data":{}}"#, "reserved"),
        ];
        for (json, want) in cases {
            let err = parse_event(json, DEFAULT_MAX_DEPTH).unwrap_err().to_string();
            assert!(err.contains(want), "{}: {err}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn body_is_the_standard_webhooks_envelope() {
        let e = parse_event(
            br#"{"type":"stamp.rewarded","data":{"stamps":10},"timestamp":"2026-11-23T10:00:00Z"}"#,
            DEFAULT_MAX_DEPTH,
        )
        .unwrap();
        assert_eq!(
            &e.body()[..],
            br#"{"type":"stamp.rewarded","timestamp":"2026-11-23T10:00:00.000Z","data":{"stamps":10}}"#
        );
    }

    #[test]
    fn depth_counts_objects_and_arrays_not_strings() {
        let cases = [
            ("{}", 1),
            (r#"{"a":1}"#, 1),
            (r#"{"a":[{}]}"#, 3),
            (r#"{"a":"{[{[","b":{}}"#, 2),
            (r#"{"a":"\"{","b":"\\","c":{}}"#, 2),
            (r#"{"a":{},"b":{},"c":[]}"#, 2),
        ];
        for (text, want) in cases {
            assert_eq!(json_depth(text), want, "{text}");
        }
    }

    /// `data` nested beyond the limit is refused, naming the limit and its
    /// key, however deep it goes (100,000 levels does not overflow a stack).
    #[test]
    fn deep_data_is_refused_naming_the_limit() {
        let nested = |depth: usize| {
            let data = format!("{}{}", r#"{"a":"#.repeat(depth - 1) + "{}", "}".repeat(depth - 1));
            format!(r#"{{"type":"a.b","data":{data}}}"#)
        };
        assert!(parse_event(nested(64).as_bytes(), 64).is_ok());
        for depth in [65, 100_000] {
            let err = parse_event(nested(depth).as_bytes(), 64).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`data` nests {depth} levels deep"))
                    && err.contains("limit of 64 (ingest.max_depth)"),
                "{err}"
            );
        }
        let err = from_parts(Some("a.b"), None, Some(r#"{"a":[[1]]}"#), None, None, 2).unwrap_err();
        assert!(
            err.to_string()
                .contains("nests 3 levels deep, over the limit of 2 (ingest.max_depth)"),
            "{err}"
        );
    }
}
