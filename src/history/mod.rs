//! History: the record of every delivery and every attempt, and of every
//! event's body, kept for a retention period, behind one trait.
//!
//! The queue forgets a delivery once it is acknowledged; the history keeps
//! what operators ask about afterwards: when each attempt started, how long
//! it took, the request headers sent (secrets redacted), the status, headers
//! and first bytes of the response, why it failed, and where the delivery
//! stands now. It also keeps each event as ingested ([`EventRecord`]: its
//! exact body, before any plugin ran), so an event can be shown and
//! replayed to its subscriptions after its deliveries are gone from the
//! queue. Three backends implement [`History`] with the same semantics,
//! checked by one conformance suite (`tests/history_conformance.rs`):
//!
//! - [`postgres::PostgresHistory`]: PostgreSQL (`history.postgres_url`),
//!   tables partitioned by day and dropped whole by retention, shared by
//!   every hookd process: the log of a Redis deployment, so Redis keeps
//!   only the hot queue;
//! - [`redis::RedisHistory`]: hashes, lists and lexicographic sorted-set
//!   indices under the queue's key prefix, one hash tag per shard, so it
//!   runs on one Redis or a Cluster and is shared by every hookd process;
//! - [`embedded::EmbeddedHistory`]: a redb file of its own
//!   (`history.redb` beside the embedded queue's file), written by one
//!   group-committing writer thread.
//!
//! ## How entries change a delivery
//!
//! Writers describe what happened as [`Entry`] values and hand them to a
//! [`Recorder`], which never waits: one background task writes them in
//! batches with [`History::record`], so recording is never on the ingest
//! or delivery hot path. What the store does not take (it fails, or does
//! not answer within [`spool::WRITE_TIMEOUT`]) waits in the [`spool`],
//! in memory and then on disk, and reaches the store in order once it
//! answers again; only what is beyond the spool's bounds is dropped,
//! logged and counted (`hookd_history_dropped_total`). Each entry is
//! applied on its own, in order, atomically with the indices and counters
//! it moves:
//!
//! - [`Entry::Created`] stores the summary of a new delivery; for a
//!   delivery already known it only gives it its note if it has none (its
//!   first attempt may be logged before it: a replay's `replay of event …`
//!   is kept all the same), and otherwise does nothing (fan-out may be
//!   retried).
//! - [`Entry::Attempted`] appends the attempt and sets the summary's state,
//!   attempt count (the highest attempt number seen), last status and
//!   error, next attempt time and `updated_at`. An attempt of a delivery
//!   never created (its `Created` entry was lost or trimmed) creates the
//!   summary from the attempt itself, so no attempt is dropped; an
//!   attempt carries its event's tenant, so that summary is filed under it.
//! - [`Entry::State`] sets the state (filtered, parked, replayed…) and the
//!   note of a known delivery; for an unknown one it does nothing.
//! - [`Entry::Event`] stores an event's record, one per (tenant, event
//!   id): repeats, and records accepted earlier than the one kept, do
//!   nothing; one accepted later (the id reused after the dedup window, by
//!   its producer or by a tenant made again with a deleted one's id)
//!   replaces it, so the log holds the body last taken. Ingest records
//!   each accepted event that has at least one delivery;
//!   [`History::event_record`] reads it back byte for byte.
//!
//! ## Tenants
//!
//! An event may belong to a tenant ([`DeliverySummary::tenant`],
//! [`EventRecord::tenant`]), and two tenants may use the same event id for
//! two different events. So event records and the event → deliveries index
//! are keyed by (tenant, event id) ([`event_key`]): the same id recorded
//! for tenants `a`, `b` and for none is three records, each with its own
//! deliveries. A delivery is in the delivery log of its *owner*
//! ([`DeliverySummary::owner`], [`crate::model::owner_of`]): the event's
//! tenant if the subscription was made through the API (`sub_…`), nobody
//! for the operator's subscriptions, whoever's events they receive.
//! [`ListFilter::tenant`] lists one owner's deliveries from an index of
//! their own, like the per-subscription ones.
//!
//! Before anything is stored, request and response headers named in
//! [`ALWAYS_REDACTED`] have their values replaced by [`REDACTED`] (callers
//! should already have done so with [`redact_headers`]; the store does it
//! again so a slip cannot leak a signature), response headers are cut to
//! [`MAX_RESPONSE_HEADERS`] and [`MAX_RESPONSE_HEADER_BYTES`] (marked by a
//! last [`TRUNCATED_HEADER`] entry, [`cap_headers`]), and response bodies
//! are cut to `history.response_body_limit` bytes.
//!
//! ## Listing and cursors
//!
//! [`History::list`] pages newest first by *creation* time (which never
//! changes, unlike `updated_at`), ties broken by delivery id. A cursor is
//! the position of the last item returned; the next page starts strictly
//! after it. Entries recorded between pages therefore never shift a page:
//! no item is returned twice, and none that existed when the first page was
//! read is skipped. Time ranges are `[from, to)` on creation time. Every
//! combination of the tenant, subscription and state filters has an index
//! of its own, so every listing is one range read per shard.
//!
//! ## Activity
//!
//! [`History::record`] also keeps, per minute, how many attempts succeeded
//! (2xx) and failed and a latency histogram, for every attempt and for each
//! tenant's own ([`activity`]): one function computes a batch's deltas per
//! minute and view, which each backend then adds once per key. Read with
//! [`History::activity`] for an overview of the last hour or day; kept for
//! [`activity::RETENTION`] (the Redis keys expire, the embedded store's
//! [`History::trim`] removes older minutes), whatever the log's retention.
//!
//! ## Retention
//!
//! [`History::trim`] removes deliveries (with their attempts, index entries
//! and counts) created before `now - max_age`, and the oldest beyond
//! `max_count` deliveries **overall** (not per subscription: the bound is
//! on storage, whatever the number of subscriptions or tenants). Event
//! records (of every tenant) go by the same rules, counted apart: those created before `now - max_age`,
//! and the oldest beyond `max_count` event records. Each call does a
//! bounded amount of work ([`TRIM_BATCH`] deliveries and as many event
//! records at most) and returns how many of both it removed; [`trim_loop`]
//! calls it periodically and catches up in bounded steps. The Redis backend
//! applies `max_count` per shard, as `ceil(max_count / shards)` each:
//! shards are filled evenly by the hash of event ids, so the total stays
//! close to `max_count`.

pub mod activity;
pub mod embedded;
pub mod postgres;
mod recorder;
pub mod redis;
pub mod spool;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{HistoryConfig, SubscriptionName};
use crate::ingest::EventId;
use crate::model::{owner_of, TenantId};
use crate::queue::{Delivery, DeliveryId, Millis};

pub use activity::{Activity, AttemptCounts, MinuteActivity, TenantVolume};
pub use recorder::Recorder;
pub use spool::{LogHealth, LogStatus, Spool};

/// The value stored in place of a secret header value.
pub use crate::model::REDACTED;

/// Headers whose values are never stored, whatever the caller passes.
pub use crate::model::headers::ALWAYS_REDACTED;

/// Most deliveries, and most event records, one [`History::trim`] call
/// removes, so a call never holds the store (or Redis) for long.
pub const TRIM_BATCH: usize = 1000;

/// Most entries waiting for the [`Recorder`]'s writer; beyond, entries are
/// dropped (with a warning) rather than slow ingest or deliveries down.
pub const RECORD_BACKLOG: usize = 100_000;

/// Most bytes of event bodies waiting for the [`Recorder`]'s writer;
/// beyond, [`Entry::Event`]s are dropped (with a warning), so a history
/// that falls behind cannot make the backlog hold gigabytes of bodies.
pub const RECORD_BACKLOG_BYTES: usize = 64 << 20;

/// Most entries the [`Recorder`]'s writer hands to one [`History::record`].
const RECORD_BATCH: usize = 512;

/// How long the [`Recorder`]'s writer waits for more entries before
/// writing a batch that is not full: the log is this much later, and a
/// delivery's first entries are written together.
const RECORD_LINGER: Duration = Duration::from_millis(20);

/// How often [`trim_loop`] trims when the last call found nothing to remove.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// How long [`trim_loop`] pauses between calls while they still remove
/// something: short enough to trim far faster than deliveries arrive
/// (each call removes up to [`TRIM_BATCH`]), long enough to leave the
/// store to the writers in between.
const TRIM_PAUSE: Duration = Duration::from_millis(10);

/// A history backend failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// The embedded store failed.
    #[error("history store: {0}")]
    Store(String),
    /// PostgreSQL refused or could not be reached.
    #[error("postgres: {0}")]
    Postgres(String),
    /// The store refused the entries for good (their data is not
    /// acceptable to it): writing them again would fail again.
    #[error("refused: {0}")]
    Refused(String),
    /// The database's schema is newer than this binary knows.
    #[error("the delivery log in PostgreSQL has schema version {found}, newer than this hookd knows ({known}): run the newer hookd, or point history.postgres_url at another database")]
    Schema {
        /// The newest version applied to the database.
        found: i64,
        /// The newest version this binary has.
        known: i64,
    },
    /// A stored record could not be decoded.
    #[error("history record {key} is corrupt: {reason}")]
    Corrupt {
        /// The delivery id or key of the record.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The embedded store's file is locked by another process.
    #[error("{} is in use by another hookd process: stop it, or point queue.data_dir elsewhere", path.display())]
    InUse {
        /// The locked file.
        path: PathBuf,
    },
    /// A cursor that no page of this store returned.
    #[error("`{cursor}` is not a cursor: pass back a next_cursor exactly as a previous page returned it")]
    Cursor {
        /// The cursor given.
        cursor: String,
    },
}

impl Error {
    /// Whether the store refused the data itself, so that a retry cannot
    /// succeed (as opposed to failing or being unreachable).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused(_))
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Queued, waiting for its first attempt (or replayed).
    Pending,
    /// Acknowledged by the endpoint with a 2xx.
    Delivered,
    /// Dropped on purpose before sending (a plugin's `drop`).
    Filtered,
    /// Failed, waiting for its next attempt.
    Retrying,
    /// Failed for good after its last retry; kept in the queue for replay.
    Dead,
    /// Held back because its subscription is disabled.
    Parked,
    /// Never to be sent: its subscription was deleted.
    Cancelled,
    /// Dead longer than `queue.dead_retention`: forgotten by the queue, no
    /// longer replayable.
    Expired,
}

impl DeliveryState {
    /// Every state, in declaration order.
    pub const ALL: [DeliveryState; 8] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Filtered,
        DeliveryState::Retrying,
        DeliveryState::Dead,
        DeliveryState::Parked,
        DeliveryState::Cancelled,
        DeliveryState::Expired,
    ];

    /// The state's wire name (`retrying`), as in JSON and storage keys.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Filtered => "filtered",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Dead => "dead",
            DeliveryState::Parked => "parked",
            DeliveryState::Cancelled => "cancelled",
            DeliveryState::Expired => "expired",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;

    fn from_str(text: &str) -> Result<DeliveryState, String> {
        DeliveryState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
                format!("`{text}` is not a delivery state; use one of {}", names.join(", "))
            })
    }
}

/// Why an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No response within the attempt's timeout.
    Timeout,
    /// The connection could not be made (DNS, refused, reset).
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The endpoint answered with a status that is not 2xx.
    Status,
    /// The endpoint's address is not allowed (SSRF guard).
    Blocked,
    /// The HTTP exchange itself failed.
    Protocol,
}

impl ErrorKind {
    /// The kind of a delivery failure, from [`crate::deliver::Failure::kind`].
    pub fn of(failure: &crate::deliver::Failure) -> ErrorKind {
        match failure.kind() {
            "timeout" => ErrorKind::Timeout,
            "connect" => ErrorKind::Connect,
            "tls" => ErrorKind::Tls,
            "blocked" => ErrorKind::Blocked,
            _ => ErrorKind::Protocol,
        }
    }
}

/// Most response headers kept per attempt ([`cap_headers`]).
pub const MAX_RESPONSE_HEADERS: usize = 64;
/// Most bytes of response header names and values kept per attempt.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 8 * 1024;
/// The name of the entry that ends response headers cut by
/// [`cap_headers`]; no real header has it (`[` is not allowed in a name).
pub const TRUNCATED_HEADER: &str = "[truncated]";

/// One attempt to deliver, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The delivery attempted.
    pub delivery_id: DeliveryId,
    /// Its event.
    pub event_id: EventId,
    /// The event's dotted type.
    pub event_type: String,
    /// Who it was sent to.
    pub subscription: SubscriptionName,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
    /// When the request started.
    pub started_at: Millis,
    /// How long until the response head, or the failure.
    pub duration_ms: u64,
    /// Request headers sent, secrets redacted ([`redact_headers`]).
    pub request_headers: Vec<(String, String)>,
    /// The response status, if a response came.
    pub status: Option<u16>,
    /// Response headers, if a response came: at most
    /// [`MAX_RESPONSE_HEADERS`] and [`MAX_RESPONSE_HEADER_BYTES`] of them,
    /// then a [`TRUNCATED_HEADER`] entry if any were cut ([`cap_headers`]).
    pub response_headers: Vec<(String, String)>,
    /// The first bytes of the response body, lossy UTF-8
    /// ([`body_text`]); cut to `history.response_body_limit` on store.
    pub response_body: String,
    /// Why it failed, if it did.
    pub error_kind: Option<ErrorKind>,
    /// The failure, in words.
    pub error: Option<String>,
    /// When the next attempt is due, if one is scheduled.
    pub next_attempt_at: Option<Millis>,
    /// The tenant of its event, so that an attempt that is the first word
    /// the log has of its delivery files it under its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

/// A delivery and where it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliverySummary {
    /// The delivery.
    pub id: DeliveryId,
    /// Its event.
    pub event_id: EventId,
    /// The event's dotted type.
    pub event_type: String,
    /// Who receives it.
    pub subscription: SubscriptionName,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made: the highest attempt number recorded.
    pub attempts: u32,
    /// When the delivery was created (fan-out): the listing order.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// The status of the last attempt, if it got a response.
    pub last_status: Option<u16>,
    /// The failure of the last attempt, if it failed.
    pub last_error: Option<String>,
    /// When the next attempt is due, if one is scheduled.
    pub next_attempt_at: Option<Millis>,
    /// Why it was last moved to its state by an [`Entry::State`]
    /// (`dropped by plugin: …`, `replayed by operator`).
    #[serde(default)]
    pub note: Option<String>,
    /// The tenant of the event, if it has one ([`Delivery::tenant`]).
    /// Absent in records written before tenants: read as none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

impl DeliverySummary {
    /// The summary of a delivery just fanned out: pending, unattempted.
    pub fn created(delivery: &Delivery) -> DeliverySummary {
        DeliverySummary {
            id: delivery.id.clone(),
            event_id: delivery.event_id.clone(),
            event_type: delivery.event_type.clone(),
            subscription: delivery.subscription.clone(),
            state: DeliveryState::Pending,
            attempts: delivery.attempts,
            created_at: delivery.created_at,
            updated_at: delivery.created_at,
            last_status: None,
            last_error: None,
            next_attempt_at: None,
            note: None,
            tenant: delivery.tenant.clone(),
        }
    }

    /// The tenant whose delivery log holds this delivery: the owner of its
    /// subscription, which is the event's tenant for a subscription made
    /// through the API (`sub_…`), none for the operator's
    /// ([`crate::model::owner_of`], as [`Delivery::owner`]).
    pub fn owner(&self) -> Option<&TenantId> {
        owner_of(&self.subscription, self.tenant.as_ref())
    }
}

/// An event as ingested: what every delivery of it started from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The event; the `webhook-id` its deliveries carry.
    pub id: EventId,
    /// Its dotted type.
    pub event_type: String,
    /// When hookd accepted it (its deliveries' `created_at`); trimming
    /// goes by it.
    pub created_at: Millis,
    /// The exact body as ingested, before any plugin ran: what a replay
    /// delivers again.
    #[serde(with = "crate::model::body_b64")]
    pub body: Bytes,
    /// The tenant the event belongs to, if any: with `id`, what the record
    /// is kept under ([`event_key`]).
    pub tenant: Option<TenantId>,
}

/// One thing that happened to a delivery, or an event to keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// The delivery was made, at fan-out.
    Created(DeliverySummary),
    /// An attempt finished, leaving the delivery in `state`.
    Attempted {
        /// The attempt.
        attempt: AttemptRecord,
        /// Where the delivery stands after it.
        state: DeliveryState,
    },
    /// The delivery moved without an attempt: filtered, parked, replayed…
    State {
        /// The delivery.
        id: DeliveryId,
        /// Its new state.
        state: DeliveryState,
        /// When.
        at: Millis,
        /// Why, in words.
        note: Option<String>,
    },
    /// An event was accepted: keep its record (one per tenant and event
    /// id, the latest accepted).
    Event(EventRecord),
}

impl Entry {
    /// The delivery this entry is about; `None` for an event record.
    pub fn delivery_id(&self) -> Option<&DeliveryId> {
        match self {
            Entry::Created(summary) => Some(&summary.id),
            Entry::Attempted { attempt, .. } => Some(&attempt.delivery_id),
            Entry::State { id, .. } => Some(id),
            Entry::Event(_) => None,
        }
    }

    /// The id of what this entry is about (a delivery, or an event), for
    /// messages.
    pub fn subject(&self) -> &str {
        match self {
            Entry::Event(record) => record.id.as_str(),
            _ => self.delivery_id().map_or("", DeliveryId::as_str),
        }
    }

    /// Bytes of event body the entry holds (0 but for [`Entry::Event`]).
    fn body_len(&self) -> usize {
        match self {
            Entry::Event(record) => record.body.len(),
            _ => 0,
        }
    }
}

/// Which deliveries [`History::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only the deliveries in this tenant's log: those whose
    /// [`DeliverySummary::owner`] is this tenant.
    pub tenant: Option<TenantId>,
    /// Only this subscription's.
    pub subscription: Option<SubscriptionName>,
    /// Only those in this state now.
    pub state: Option<DeliveryState>,
    /// Only those created at or after this time.
    pub from: Option<Millis>,
    /// Only those created before this time.
    pub to: Option<Millis>,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Page<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Pass it back for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Counts of a subscription's retained deliveries by state, and when it
/// last succeeded and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    /// Deliveries delivered.
    pub delivered: u64,
    /// Deliveries waiting for a retry.
    pub retrying: u64,
    /// Deliveries dead.
    pub dead: u64,
    /// Deliveries filtered out by a plugin.
    pub filtered: u64,
    /// Start of the last successful attempt. Not lowered by trimming.
    pub last_success_at: Option<Millis>,
    /// Start of the last failed attempt. Not lowered by trimming.
    pub last_failure_at: Option<Millis>,
}

impl SubscriptionStats {
    /// Adds a count of `n` deliveries in `state` (states the stats do not
    /// show are ignored).
    fn add(&mut self, state: DeliveryState, n: i64) {
        let n = n.max(0) as u64;
        match state {
            DeliveryState::Delivered => self.delivered += n,
            DeliveryState::Retrying => self.retrying += n,
            DeliveryState::Dead => self.dead += n,
            DeliveryState::Filtered => self.filtered += n,
            _ => {}
        }
    }
}

/// The record of deliveries, attempts and events. Every method is safe to
/// call from many tasks and, for shared backends, many processes.
#[async_trait::async_trait]
pub trait History: Send + Sync + 'static {
    /// Applies `entries` in order (see the module docs). Meant for the
    /// [`Recorder`]'s writer, batching what ingest and the dispatcher report.
    async fn record(&self, entries: &[Entry]) -> Result<(), Error>;

    /// A delivery's summary and its attempts, oldest first.
    async fn delivery(&self, id: &DeliveryId) -> Result<Option<(DeliverySummary, Vec<AttemptRecord>)>, Error>;

    /// The deliveries of an event of `tenant` (`None`: of no tenant), over
    /// all its subscriptions (whoever owns them), oldest first: those
    /// whose [`DeliverySummary::tenant`] is `tenant`.
    async fn event(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Vec<DeliverySummary>, Error>;

    /// The record of an event of `tenant` (`None`: of no tenant)
    /// ([`Entry::Event`]), body byte for byte; `None` if it was never
    /// recorded or has been trimmed.
    async fn event_record(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Option<EventRecord>, Error>;

    /// Deliveries matching `filter`, newest first, at most `limit`, after
    /// `cursor` (a `next_cursor` of an earlier page of the same filter).
    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliverySummary>, Error>;

    /// Counts of a subscription's retained deliveries. Cheap: kept as
    /// counters, never a scan.
    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats, Error>;

    /// The attempts per minute of `tenant`'s view (the attempts to the
    /// subscriptions it owns), or with `None` of every attempt along with
    /// each tenant's volume, over the whole minutes of `[from, to)` (from
    /// the minute `from` falls in; at most [`activity::MAX_MINUTES`], the
    /// latest), quiet minutes included. Cheap: kept as per-minute
    /// aggregates while attempts are recorded (see [`activity`]), read with
    /// one bounded request, never a scan of the log.
    async fn activity(&self, tenant: Option<&TenantId>, from: Millis, to: Millis) -> Result<Activity, Error>;

    /// Removes up to [`TRIM_BATCH`] deliveries created before
    /// `now - max_age` or beyond `max_count` (oldest first), with their
    /// attempts, and up to [`TRIM_BATCH`] event records by the same rules
    /// (counted apart from deliveries); returns how many of both it removed.
    async fn trim(&self, now: Millis, max_age: Duration, max_count: usize) -> Result<u64, Error>;
}

/// Trims `history` by `config`'s retention every [`TRIM_EVERY`], and
/// every `TRIM_PAUSE` while calls still remove something, until
/// `shutdown`.
pub async fn trim_loop(history: Arc<dyn History>, config: HistoryConfig, shutdown: CancellationToken) {
    loop {
        let pause = match history
            .trim(crate::queue::now_ms(), config.max_age, config.max_count)
            .await
        {
            Ok(0) => TRIM_EVERY,
            Ok(n) => {
                tracing::debug!(removed = n, "trimmed delivery history");
                TRIM_PAUSE
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot trim the delivery history; will try again");
                TRIM_EVERY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// `headers` as (name, value) pairs to record, with the values of
/// [`ALWAYS_REDACTED`] headers and of `secret_header_names` (any case)
/// replaced by [`REDACTED`]. Names are lowercase; values that are not
/// UTF-8 are shown lossily.
pub fn redact_headers(headers: &http::HeaderMap, secret_header_names: &[&str]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            let secret =
                ALWAYS_REDACTED.contains(&name) || secret_header_names.iter().any(|s| s.eq_ignore_ascii_case(name));
            let value = if secret {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.to_owned(), value)
        })
        .collect()
}

/// Cuts response headers to the first [`MAX_RESPONSE_HEADERS`] that fit
/// in [`MAX_RESPONSE_HEADER_BYTES`] (names and values), in their order,
/// then appends a [`TRUNCATED_HEADER`] entry saying how many headers and
/// bytes were not kept. Headers already cut are left as they are.
pub fn cap_headers(headers: &mut Vec<(String, String)>) {
    if headers.last().is_some_and(|(name, _)| name == TRUNCATED_HEADER) {
        return;
    }
    let mut bytes = 0;
    let kept = headers
        .iter()
        .take(MAX_RESPONSE_HEADERS)
        .take_while(|(name, value)| {
            bytes += name.len() + value.len();
            bytes <= MAX_RESPONSE_HEADER_BYTES
        })
        .count();
    if kept == headers.len() {
        return;
    }
    let cut: usize = headers[kept..].iter().map(|(n, v)| n.len() + v.len()).sum();
    let count = headers.len() - kept;
    headers.truncate(kept);
    headers.push((
        TRUNCATED_HEADER.to_owned(),
        format!(
            "{count} more headers ({cut} bytes) not kept: hookd keeps {MAX_RESPONSE_HEADERS} headers and {MAX_RESPONSE_HEADER_BYTES} bytes of them"
        ),
    ));
}

/// A response body as text (lossy UTF-8), for an [`AttemptRecord`]. It is
/// not cut here: the client read at most `delivery.response_body_limit`
/// bytes of it, and the store cuts the text to `history.response_body_limit`
/// (`scrub`), the one cut of what the log keeps.
pub fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Cuts `text` to at most `limit` bytes, at a character boundary.
fn truncate_at_char(text: &mut String, limit: usize) {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Makes an attempt safe and small enough to store: secret header values
/// replaced, response headers capped ([`cap_headers`]), the body cut to
/// `body_limit` bytes.
fn scrub(attempt: &AttemptRecord, body_limit: usize) -> AttemptRecord {
    let mut attempt = attempt.clone();
    for (name, value) in attempt
        .request_headers
        .iter_mut()
        .chain(attempt.response_headers.iter_mut())
    {
        if ALWAYS_REDACTED.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            *value = REDACTED.to_owned();
        }
    }
    cap_headers(&mut attempt.response_headers);
    truncate_at_char(&mut attempt.response_body, body_limit);
    attempt
}

/// The sort key of a delivery in every listing: its creation time as 16
/// hex digits (negative times count as 0), then its id. Ordered as text
/// and as the tuple; also the cursor pointing at it.
fn position(created_at: Millis, id: &str) -> String {
    format!("{:016x}{id}", created_at.max(0))
}

/// The creation time part of a [`position`], for range bounds.
fn time_prefix(at: Millis) -> String {
    format!("{:016x}", at.max(0))
}

/// Reads a cursor back into (creation time, delivery id).
fn parse_cursor(cursor: &str) -> Result<(Millis, DeliveryId), Error> {
    let bad = || Error::Cursor {
        cursor: cursor.to_owned(),
    };
    let (time, id) = (cursor.get(..16).ok_or_else(bad)?, cursor.get(16..).ok_or_else(bad)?);
    let time = u64::from_str_radix(time, 16).map_err(|_| bad())?;
    let time = Millis::try_from(time).map_err(|_| bad())?;
    let id = DeliveryId::parse(id).map_err(|_| bad())?;
    Ok((time, id))
}

/// Counts by state and last success and failure of one subscription, as
/// the backends keep them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    /// Retained deliveries per state.
    counts: std::collections::BTreeMap<DeliveryState, i64>,
    /// Start of the last successful attempt.
    last_success_at: Option<Millis>,
    /// Start of the last failed attempt.
    last_failure_at: Option<Millis>,
}

impl Counters {
    fn stats(&self) -> SubscriptionStats {
        let mut stats = SubscriptionStats {
            last_success_at: self.last_success_at,
            last_failure_at: self.last_failure_at,
            ..SubscriptionStats::default()
        };
        for (&state, &n) in &self.counts {
            stats.add(state, n);
        }
        stats
    }
}

/// When an attempt ended: its start plus its duration.
fn ended_at(attempt: &AttemptRecord) -> Millis {
    attempt
        .started_at
        .saturating_add(Millis::try_from(attempt.duration_ms).unwrap_or(Millis::MAX))
}

/// What applying one entry did, for the indices and counters.
struct Change {
    /// The state before, `None` if the delivery was new.
    before: Option<DeliveryState>,
    /// The summary after.
    after: DeliverySummary,
    /// The attempt to append, scrubbed.
    attempt: Option<AttemptRecord>,
    /// Whether the attempt succeeded (`Some(true)`), failed, or there was none.
    success: Option<bool>,
}

/// Applies `entry` to the stored summary `current` (see the module docs);
/// `None` if it changes nothing (an [`Entry::Event`] changes no delivery).
/// The embedded backend uses this directly; the Redis backend's script
/// does the same.
fn apply(current: Option<DeliverySummary>, entry: &Entry, body_limit: usize) -> Option<Change> {
    match entry {
        Entry::Created(summary) => match current {
            Some(mut known) if known.note.is_none() && summary.note.is_some() => {
                let before = Some(known.state);
                known.note = summary.note.clone();
                Some(Change {
                    before,
                    after: known,
                    attempt: None,
                    success: None,
                })
            }
            Some(_) => None,
            None => Some(Change {
                before: None,
                after: summary.clone(),
                attempt: None,
                success: None,
            }),
        },
        Entry::Attempted { attempt, state } => {
            let ended = ended_at(attempt);
            let before = current.as_ref().map(|s| s.state);
            let mut after = current.unwrap_or_else(|| DeliverySummary {
                id: attempt.delivery_id.clone(),
                event_id: attempt.event_id.clone(),
                event_type: attempt.event_type.clone(),
                subscription: attempt.subscription.clone(),
                state: *state,
                attempts: 0,
                created_at: attempt.started_at,
                updated_at: ended,
                last_status: None,
                last_error: None,
                next_attempt_at: None,
                note: None,
                tenant: attempt.tenant.clone(),
            });
            after.state = *state;
            after.attempts = after.attempts.max(attempt.attempt);
            after.updated_at = after.updated_at.max(ended);
            after.last_status = attempt.status;
            after.last_error = attempt.error.clone();
            after.next_attempt_at = attempt.next_attempt_at;
            Some(Change {
                before,
                after,
                attempt: Some(scrub(attempt, body_limit)),
                success: Some(*state == DeliveryState::Delivered),
            })
        }
        Entry::Event(_) => None,
        Entry::State { state, at, note, .. } => {
            let mut after = current?;
            let before = Some(after.state);
            after.state = *state;
            after.updated_at = after.updated_at.max(*at);
            after.note = note.clone();
            Some(Change {
                before,
                after,
                attempt: None,
                success: None,
            })
        }
    }
}

/// What an event's record and its deliveries are kept under: the event id
/// for an event of no tenant (as before tenants, so older data reads),
/// `<tenant>/<event id>` for a tenant's. Tenant ids and event ids cannot
/// hold `/`, so the two never collide.
pub fn event_key(tenant: Option<&TenantId>, event_id: &EventId) -> String {
    match tenant {
        None => event_id.as_str().to_owned(),
        Some(tenant) => format!("{tenant}/{}", event_id.as_str()),
    }
}

/// The name of the listing index of the deliveries owned by `tenant`, to
/// `subscription`, in `state` (each `None`: any): `time` when all are
/// `None`, else `tenant:<id>`, `sub:<name>` and `state:<state>`, those
/// given, in that order, joined by `:` (`sub:crm:state:dead`,
/// `tenant:acme:sub:sub_1`). Tenant ids and subscription names cannot hold
/// `:`, so names never collide. The Redis scripts build the same names.
fn index_name(tenant: Option<&str>, subscription: Option<&str>, state: Option<DeliveryState>) -> String {
    let mut parts = Vec::with_capacity(3);
    if let Some(tenant) = tenant {
        parts.push(format!("tenant:{tenant}"));
    }
    if let Some(subscription) = subscription {
        parts.push(format!("sub:{subscription}"));
    }
    if let Some(state) = state {
        parts.push(format!("state:{state}"));
    }
    if parts.is_empty() {
        "time".to_owned()
    } else {
        parts.join(":")
    }
}

/// The listing indices of one delivery ([`indices`]).
struct Indices {
    /// Indices whose name has no state: written at creation.
    fixed: Vec<String>,
    /// Indices named after the state: moved when the state changes.
    by_state: Vec<String>,
}

/// The listing indices a delivery belongs to, given its subscription, its
/// owner ([`DeliverySummary::owner`]) and its state: every combination of
/// the three filters that matches it. Without an owner, the four of
/// before tenants (all, by subscription, by state, by both); with one,
/// the same four again prefixed by `tenant:<owner>:`. The filter picks one
/// ([`index_for`]).
fn indices(subscription: &str, owner: Option<&TenantId>, state: DeliveryState) -> Indices {
    let owners = [None, owner.map(TenantId::as_str)];
    let owners = if owner.is_some() { &owners[..] } else { &owners[..1] };
    let mut out = Indices {
        fixed: Vec::new(),
        by_state: Vec::new(),
    };
    for &tenant in owners {
        for sub in [None, Some(subscription)] {
            out.fixed.push(index_name(tenant, sub, None));
            out.by_state.push(index_name(tenant, sub, Some(state)));
        }
    }
    out
}

/// The listing index that answers `filter`.
fn index_for(filter: &ListFilter) -> String {
    index_name(
        filter.tenant.as_ref().map(TenantId::as_str),
        filter.subscription.as_ref().map(SubscriptionName::as_str),
        filter.state,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> AttemptRecord {
        AttemptRecord {
            delivery_id: DeliveryId::new(1),
            event_id: EventId::parse("evt_1").unwrap(),
            event_type: "coupon.redeemed".into(),
            subscription: SubscriptionName::parse("crm").unwrap(),
            attempt: n,
            started_at: 1_000,
            duration_ms: 20,
            request_headers: vec![("Authorization".into(), "Bearer s3cret".into())],
            status: Some(500),
            response_headers: vec![("set-cookie".into(), "sid=1".into())],
            response_body: "héllo".into(),
            error_kind: Some(ErrorKind::Status),
            error: Some("status 500".into()),
            next_attempt_at: Some(6_000),
            tenant: None,
        }
    }

    #[test]
    fn states_round_trip_their_names() {
        for state in DeliveryState::ALL {
            assert_eq!(state.as_str().parse::<DeliveryState>().unwrap(), state);
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        let err = "done".parse::<DeliveryState>().unwrap_err();
        assert!(
            err.contains("pending, delivered, filtered, retrying, dead, parked, cancelled, expired"),
            "{err}"
        );
    }

    #[test]
    fn response_headers_are_capped_and_the_cut_marked() {
        let header = |n: usize, len: usize| (format!("x-{n:03}"), "v".repeat(len));
        let cases = [
            // (headers, size of each value, kept)
            (10, 10, 10),
            (MAX_RESPONSE_HEADERS, 10, MAX_RESPONSE_HEADERS),
            (MAX_RESPONSE_HEADERS + 1, 10, MAX_RESPONSE_HEADERS),
            (90, 300, MAX_RESPONSE_HEADER_BYTES / 305),
            (1, MAX_RESPONSE_HEADER_BYTES, 0),
        ];
        for (count, len, kept) in cases {
            let mut headers: Vec<_> = (0..count).map(|n| header(n, len)).collect();
            cap_headers(&mut headers);
            let bytes: usize = headers[..kept].iter().map(|(n, v)| n.len() + v.len()).sum();
            assert!(bytes <= MAX_RESPONSE_HEADER_BYTES, "{count} x {len}");
            assert_eq!(
                headers[..kept],
                (0..kept).map(|n| header(n, len)).collect::<Vec<_>>()[..]
            );
            if kept == count {
                assert_eq!(headers.len(), count);
            } else {
                assert_eq!(headers.len(), kept + 1, "{count} x {len}");
                let (name, value) = &headers[kept];
                assert_eq!(name, TRUNCATED_HEADER);
                assert!(value.starts_with(&format!("{} more headers", count - kept)), "{value}");
                let again = headers.clone();
                cap_headers(&mut headers);
                assert_eq!(headers, again, "capping twice changes nothing");
            }
        }
    }

    #[test]
    fn headers_are_redacted_by_name_in_any_case() {
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-signature", "v1,abc".parse().unwrap());
        headers.insert("authorization", "Bearer x".parse().unwrap());
        headers.insert("x-api-key", "k-1".parse().unwrap());
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        let out = redact_headers(&headers, &["X-Api-Key"]);
        let get = |n: &str| out.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("webhook-signature"), Some(REDACTED));
        assert_eq!(get("authorization"), Some(REDACTED));
        assert_eq!(get("x-api-key"), Some(REDACTED));
        assert_eq!(get("webhook-id"), Some("evt_1"));
    }

    #[test]
    fn bodies_are_cut_at_char_boundaries() {
        let cut = |body: &[u8], limit| {
            let mut text = body_text(body);
            truncate_at_char(&mut text, limit);
            text
        };
        assert_eq!(cut("héllo".as_bytes(), 2), "h");
        assert_eq!(cut("héllo".as_bytes(), 3), "hé");
        assert_eq!(cut(b"\xff\xfeabc", 4), "\u{fffd}");
        assert!(cut(&[0xff; 10], 5).len() <= 5);
    }

    #[test]
    fn cursors_round_trip_and_order_like_their_positions() {
        let id = DeliveryId::new(3);
        let p = position(1_700_000_000_000, id.as_str());
        assert_eq!(parse_cursor(&p).unwrap(), (1_700_000_000_000, id.clone()));
        assert!(position(999, id.as_str()) < position(1_000, id.as_str()));
        for bad in ["", "zz", "0000000000000001dlv_1", "ffffffffffffffffdlv_00"] {
            assert!(matches!(parse_cursor(bad), Err(Error::Cursor { .. })), "{bad}");
        }
    }

    #[test]
    fn attempts_create_unknown_deliveries_and_are_scrubbed() {
        let change = apply(
            None,
            &Entry::Attempted {
                attempt: attempt(2),
                state: DeliveryState::Retrying,
            },
            2,
        )
        .unwrap();
        assert_eq!(change.before, None);
        assert_eq!(change.after.attempts, 2);
        assert_eq!(change.after.updated_at, 1_020);
        assert_eq!(change.success, Some(false));
        let stored = change.attempt.unwrap();
        assert_eq!(stored.request_headers[0].1, REDACTED);
        assert_eq!(stored.response_headers[0].1, REDACTED);
        assert_eq!(stored.response_body, "h");
    }

    #[tokio::test]
    async fn recorders_never_wait_and_the_writer_drains_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = crate::config::Config::from_toml("").unwrap().queue;
        queue.data_dir = dir.path().to_owned();
        let mut config = crate::config::Config::from_toml("").unwrap().history;
        config.max_age = Duration::from_secs(3600);
        config.max_count = 1000;
        config.response_body_limit = 64;
        let history: Arc<dyn History> = Arc::new(embedded::EmbeddedHistory::open(&queue, &config).unwrap());
        let stop = CancellationToken::new();
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20);
        let (recorder, writer) = Recorder::start(
            history.clone(),
            spool,
            Arc::new(crate::telemetry::Metrics::new()),
            stop.clone(),
        );
        let event = EventRecord {
            id: EventId::parse("evt_1").unwrap(),
            event_type: "coupon.redeemed".into(),
            created_at: 1_000,
            body: Bytes::from_static(b"{}"),
            tenant: None,
        };
        assert!(recorder.record(Entry::Event(event.clone())));
        let mut huge = event.clone();
        huge.id = EventId::parse("evt_huge").unwrap();
        huge.body = Bytes::from(vec![b'x'; RECORD_BACKLOG_BYTES + 1]);
        assert!(
            !recorder.record(Entry::Event(huge.clone())),
            "over the bytes bound: dropped"
        );
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(history.event_record(None, &event.id).await.unwrap(), Some(event));
        assert_eq!(history.event_record(None, &huge.id).await.unwrap(), None);
        assert!(!recorder.record(Entry::State {
            id: DeliveryId::new(0),
            state: DeliveryState::Parked,
            at: 5,
            note: None,
        }));
    }

    #[test]
    fn every_filter_has_the_index_a_delivery_is_written_to() {
        let acme = TenantId::parse("acme").unwrap();
        let operators = indices("crm", None, DeliveryState::Dead);
        assert_eq!(operators.fixed, ["time", "sub:crm"], "the names of before tenants");
        assert_eq!(operators.by_state, ["state:dead", "sub:crm:state:dead"]);
        let owned = indices("sub_1", Some(&acme), DeliveryState::Dead);
        assert_eq!(
            owned.fixed,
            ["time", "sub:sub_1", "tenant:acme", "tenant:acme:sub:sub_1"]
        );
        assert_eq!(
            owned.by_state,
            [
                "state:dead",
                "sub:sub_1:state:dead",
                "tenant:acme:state:dead",
                "tenant:acme:sub:sub_1:state:dead"
            ]
        );
        // Whatever the filter, its index is one the delivery is in.
        for tenant in [None, Some(acme.clone())] {
            for subscription in [None, Some(SubscriptionName::parse("sub_1").unwrap())] {
                for state in [None, Some(DeliveryState::Dead)] {
                    let filter = ListFilter {
                        tenant: tenant.clone(),
                        subscription: subscription.clone(),
                        state,
                        ..ListFilter::default()
                    };
                    let name = index_for(&filter);
                    assert!(owned.fixed.contains(&name) || owned.by_state.contains(&name), "{name}");
                }
            }
        }
    }

    #[test]
    fn tenant_events_are_kept_apart_from_plain_ones() {
        let id = EventId::parse("evt_1").unwrap();
        let acme = TenantId::parse("acme").unwrap();
        assert_eq!(event_key(None, &id), "evt_1", "as before tenants");
        assert_eq!(event_key(Some(&acme), &id), "acme/evt_1");
    }

    #[test]
    fn summaries_carry_the_tenant_and_older_ones_read_as_none() {
        let acme = TenantId::parse("acme").unwrap();
        let delivery = Delivery {
            id: DeliveryId::new(1),
            event_id: EventId::parse("evt_1").unwrap(),
            event_type: "coupon.redeemed".into(),
            subscription: SubscriptionName::parse("sub_1").unwrap(),
            created_at: 5,
            attempts: 0,
            body: Bytes::new(),
            last_error: None,
            headers: None,
            tenant: Some(acme.clone()),
        };
        let summary = DeliverySummary::created(&delivery);
        assert_eq!((summary.tenant.as_ref(), summary.owner()), (Some(&acme), Some(&acme)));
        let operators = DeliverySummary {
            subscription: SubscriptionName::parse("crm").unwrap(),
            ..summary.clone()
        };
        assert_eq!(operators.owner(), None);
        let mut json = serde_json::to_value(&summary).unwrap();
        json.as_object_mut().unwrap().remove("tenant");
        let old: DeliverySummary = serde_json::from_value(json).unwrap();
        assert_eq!(old.tenant, None);
    }

    #[test]
    fn state_entries_of_unknown_deliveries_change_nothing() {
        let entry = Entry::State {
            id: DeliveryId::new(1),
            state: DeliveryState::Parked,
            at: 5,
            note: None,
        };
        assert!(apply(None, &entry, 10).is_none());
    }
}
