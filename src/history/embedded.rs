//! Embedded history: a redb file of its own, for one process.
//!
//! The file is `history.redb` in `queue.data_dir`, beside the embedded
//! queue's (which that queue locks). Every change goes through one writer
//! thread that applies all pending [`History::record`] and
//! [`History::trim`] calls in one write transaction, commits once and then
//! answers each caller (group commit). Reads use their own read
//! transactions on the blocking pool.
//!
//! The per-minute activity ([`super::activity`]) is a table of its own:
//! (minute, view) → the minute's counts, added to in the transaction that
//! records the attempts; [`History::trim`] removes minutes older than
//! [`activity::RETENTION`] (up to [`TRIM_BATCH`] a call, not counted in
//! what it returns: those are deliveries and event records).
//!
//! Commits are not fsynced one by one: the writer forces a durable commit
//! at least every [`DURABLE_EVERY`] and on close, so a crash loses at most
//! that much of the log (a clean close loses nothing). The log is a record
//! for operators, not the queue's source of truth, so this trades a bounded
//! loss on a crash for keeping up with delivery.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::activity::{self, MinuteKey, MinuteRecord};
use super::{
    apply, event_key, index_for, indices, parse_cursor, Activity, AttemptRecord, Counters, DeliveryState,
    DeliverySummary, Entry, Error, EventRecord, History, ListFilter, Page, SubscriptionStats, TRIM_BATCH,
};
use crate::config::{HistoryConfig, QueueConfig, SubscriptionName};
use crate::ingest::EventId;
use crate::model::TenantId;
use crate::queue::embedded::{create_database, group_commit, Unopened, Writer};
use crate::queue::{DeliveryId, Millis};

/// The store's file inside `queue.data_dir`.
pub const FILE_NAME: &str = "history.redb";

/// Longest time between durable commits; bounds what a crash can lose.
pub const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// Delivery id → [`DeliverySummary`] JSON.
const SUMMARIES: TableDefinition<&str, &[u8]> = TableDefinition::new("summaries");
/// (delivery id, sequence from 0) → [`AttemptRecord`] JSON, in the order
/// recorded.
const ATTEMPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("attempts");
/// (index name, created at, delivery id): the listing indices, named as in
/// the Redis backend (`time`, `sub:<name>`, `state:<state>`,
/// `sub:<name>:state:<state>`, and for a delivery with an owner
/// ([`DeliverySummary::owner`]) the same four again prefixed by
/// `tenant:<owner>:`, the first as `tenant:<owner>`); creation times below
/// 0 are stored as 0.
const INDEX: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("index");
/// (event key, delivery id): an event's deliveries; the event key is the
/// event id for an event of no tenant, `<tenant>/<event id>` for a
/// tenant's ([`event_key`]).
const EVENTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("events");
/// Subscription name → its counters as JSON.
const STATS: TableDefinition<&str, &[u8]> = TableDefinition::new("stats");
/// Event key ([`event_key`]: the event id, or `<tenant>/<event id>`) → its
/// [`EventRecord`]: (type, created at, body as ingested). Written once per
/// event key by [`Entry::Event`]; removed by trim.
const EVENT_RECORDS: TableDefinition<&str, (&str, i64, &[u8])> = TableDefinition::new("event_records");
/// (created at, event key): [`EVENT_RECORDS`] oldest first, for trimming;
/// creation times below 0 are stored as 0.
const EVENT_TIMES: TableDefinition<(i64, &str), ()> = TableDefinition::new("event_times");
/// (minute start, view) → that minute's [`MinuteRecord`] JSON: the
/// attempts counted in it ([`super::activity`]). The view is
/// [`ALL_VIEW`] for every attempt (with each tenant's volume), a tenant id
/// for that tenant's own. Added to by every record of attempts; minutes
/// older than [`activity::RETENTION`] removed by trim.
const ACTIVITY: TableDefinition<(i64, &str), &[u8]> = TableDefinition::new("activity");

/// The view name of every attempt in [`ACTIVITY`]: empty, which no tenant
/// id is.
const ALL_VIEW: &str = "";

/// Most calls the writer applies in one transaction.
const MAX_GROUP: usize = 256;

/// The answer channel of one operation.
type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// An operation for the writer thread.
enum Op {
    /// [`History::record`].
    Record { entries: Vec<Entry>, reply: Reply<()> },
    /// [`History::trim`].
    Trim {
        /// Deliveries and event records created before this go.
        cutoff: Millis,
        /// Activity minutes that started before this go.
        activity_cutoff: Millis,
        /// Most deliveries kept, and most event records.
        max_count: usize,
        reply: Reply<u64>,
    },
}

/// The embedded history backend.
pub struct EmbeddedHistory {
    /// The open store; shared with the writer thread and read tasks.
    db: Arc<Database>,
    /// The writer thread; declared after `db`, so dropping the history
    /// joins it after letting go of the store.
    writer: Writer<Op>,
    /// The store's file, for messages.
    path: PathBuf,
}

/// A redb failure inside the writer, boxed (redb's error is large).
#[derive(Debug)]
struct StoreError(Box<redb::Error>);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! store_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError(Box::new(e.into()))
            }
        }
    )*};
}

store_error_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

fn store(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{what}: {e}"))
}

fn read_err(e: impl std::fmt::Display) -> Error {
    store("read", e)
}

impl EmbeddedHistory {
    /// Opens (creating if needed) `history.redb` in `queue.data_dir`. Fails
    /// with [`Error::InUse`] if another process has it open.
    pub fn open(queue: &QueueConfig, history: &HistoryConfig) -> Result<EmbeddedHistory, Error> {
        let (db, path) = create_database(
            &queue.data_dir,
            FILE_NAME,
            "move the file aside to start an empty history",
        )
        .map_err(|e| match e {
            Unopened::InUse => Error::InUse {
                path: queue.data_dir.join(FILE_NAME),
            },
            Unopened::Failed(message) => Error::Store(message),
        })?;
        create_tables(&db)?;
        let db = Arc::new(db);
        let writer_db = db.clone();
        let body_limit = history.response_body_limit;
        let writer = Writer::start("history", move |receiver| write_loop(&writer_db, receiver, body_limit))
            .map_err(|e| Error::Store(format!("cannot start the history writer thread: {e}")))?;
        Ok(EmbeddedHistory { db, writer, path })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, Error> {
        let stopped = || {
            Err(Error::Store(format!(
                "the writer of {} has stopped",
                self.path.display()
            )))
        };
        self.writer.submit(op).await.unwrap_or_else(stopped)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(|e| store("begin read", e))?;
            f(&txn)
        })
        .await
        .map_err(|e| Error::Store(format!("history read task failed: {e}")))?
    }
}

fn create_tables(db: &Database) -> Result<(), Error> {
    let txn = db.begin_write().map_err(|e| store("begin write", e))?;
    Tables::open(&txn).map_err(|e| store("create tables", e))?;
    txn.commit().map_err(|e| store("commit", e))
}

/// The history's writer thread; nothing needs a durable commit before its
/// answer.
fn write_loop(db: &Database, receiver: mpsc::UnboundedReceiver<Op>, body_limit: usize) {
    let apply = |group: &[Op], durable| apply_group(db, group, durable, body_limit);
    // A caller that gave up waiting is not an error.
    let answer = |op, removed: Result<u64, String>| {
        let removed = removed.map_err(Error::Store);
        match op {
            Op::Record { reply, .. } => drop(reply.send(removed.map(|_| ()))),
            Op::Trim { reply, .. } => drop(reply.send(removed)),
        }
    };
    group_commit("history", receiver, MAX_GROUP, DURABLE_EVERY, |_| false, apply, answer);
}

/// Applies `group` in one transaction; per operation, how many deliveries
/// and event records a trim removed (0 for records).
fn apply_group(db: &Database, group: &[Op], durable: bool, body_limit: usize) -> Result<Vec<u64>, StoreError> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(Durability::None);
    }
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut tables = Tables::open(&txn)?;
        for op in group {
            outcomes.push(match op {
                Op::Record { entries, .. } => {
                    tables.record_batch(entries, body_limit)?;
                    tables.count_activity(entries)?;
                    0
                }
                Op::Trim {
                    cutoff,
                    activity_cutoff,
                    max_count,
                    ..
                } => {
                    tables.trim_activity(*activity_cutoff)?;
                    tables.trim(*cutoff, *max_count)? + tables.trim_events(*cutoff, *max_count)?
                }
            });
        }
        tables.flush_counters()?;
    }
    txn.commit()?;
    Ok(outcomes)
}

/// Every table, open in one write transaction, and the counters the
/// transaction changed (written back by [`Tables::flush_counters`]).
struct Tables<'txn> {
    /// [`SUMMARIES`].
    summaries: Table<'txn, &'static str, &'static [u8]>,
    /// [`ATTEMPTS`].
    attempts: Table<'txn, (&'static str, u32), &'static [u8]>,
    /// [`INDEX`].
    index: Table<'txn, (&'static str, i64, &'static str), ()>,
    /// [`EVENTS`].
    events: Table<'txn, (&'static str, &'static str), ()>,
    /// [`STATS`].
    stats: Table<'txn, &'static str, &'static [u8]>,
    /// [`EVENT_RECORDS`].
    event_records: Table<'txn, &'static str, (&'static str, i64, &'static [u8])>,
    /// [`EVENT_TIMES`].
    event_times: Table<'txn, (i64, &'static str), ()>,
    /// [`ACTIVITY`].
    activity: Table<'txn, (i64, &'static str), &'static [u8]>,
    /// Counters read and changed in this transaction, by subscription.
    counters: HashMap<String, Counters>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            summaries: txn.open_table(SUMMARIES)?,
            attempts: txn.open_table(ATTEMPTS)?,
            index: txn.open_table(INDEX)?,
            events: txn.open_table(EVENTS)?,
            stats: txn.open_table(STATS)?,
            event_records: txn.open_table(EVENT_RECORDS)?,
            event_times: txn.open_table(EVENT_TIMES)?,
            activity: txn.open_table(ACTIVITY)?,
            counters: HashMap::new(),
        })
    }

    /// The counters of `subscription`, loaded once per transaction.
    fn counters(&mut self, subscription: &str) -> Result<&mut Counters, StoreError> {
        if !self.counters.contains_key(subscription) {
            let stored = match self.stats.get(subscription)? {
                Some(bytes) => serde_json::from_slice(bytes.value()).unwrap_or_else(|e| {
                    tracing::error!(subscription, error = %e, "corrupt history counters; starting them again");
                    Counters::default()
                }),
                None => Counters::default(),
            };
            self.counters.insert(subscription.to_owned(), stored);
        }
        Ok(self.counters.entry(subscription.to_owned()).or_default())
    }

    fn flush_counters(&mut self) -> Result<(), StoreError> {
        for (subscription, counters) in std::mem::take(&mut self.counters) {
            let json = serde_json::to_vec(&counters).unwrap_or_default();
            self.stats.insert(subscription.as_str(), json.as_slice())?;
        }
        Ok(())
    }

    /// Applies `entries` in order, as if one by one, but writes each
    /// delivery once: its entries are applied to its summary in memory
    /// (read once), then the summary, the indices of its state before and
    /// after the batch, its counts and its new attempts are written. A
    /// delivery created and delivered in the same batch is never indexed
    /// as pending.
    fn record_batch(&mut self, entries: &[Entry], body_limit: usize) -> Result<(), StoreError> {
        /// One delivery the batch touches.
        struct Slot {
            /// Its state as stored before the batch, if it was.
            before: Option<DeliveryState>,
            /// Its summary after the entries applied so far.
            summary: Option<DeliverySummary>,
            /// Attempts to append, in order.
            attempts: Vec<AttemptRecord>,
            /// A stored summary that does not decode: its entries are skipped.
            corrupt: bool,
            /// Whether an entry changed it.
            changed: bool,
        }
        let mut order: Vec<&str> = Vec::new();
        let mut slots: HashMap<&str, Slot> = HashMap::new();
        for entry in entries {
            let id = match entry {
                Entry::Event(record) => {
                    self.record_event(record)?;
                    continue;
                }
                _ => entry.delivery_id().map_or("", |id| id.as_str()),
            };
            if !slots.contains_key(id) {
                let (summary, corrupt) = match self.summaries.get(id)? {
                    Some(bytes) => match serde_json::from_slice::<DeliverySummary>(bytes.value()) {
                        Ok(summary) => (Some(summary), false),
                        Err(e) => {
                            tracing::error!(delivery = id, error = %e, "corrupt history summary; entry skipped");
                            (None, true)
                        }
                    },
                    None => (None, false),
                };
                order.push(id);
                slots.insert(
                    id,
                    Slot {
                        before: summary.as_ref().map(|s| s.state),
                        summary,
                        attempts: Vec::new(),
                        corrupt,
                        changed: false,
                    },
                );
            }
            let slot = slots.get_mut(id).expect("inserted above");
            if slot.corrupt {
                continue;
            }
            let Some(change) = apply(slot.summary.clone(), entry, body_limit) else {
                continue;
            };
            if let Some(attempt) = change.attempt {
                let started = attempt.started_at;
                let counters = self.counters(change.after.subscription.as_str())?;
                let last = if change.success == Some(true) {
                    &mut counters.last_success_at
                } else {
                    &mut counters.last_failure_at
                };
                *last = (*last).max(Some(started));
                slot.attempts.push(attempt);
            }
            slot.summary = Some(change.after);
            slot.changed = true;
        }
        for id in order {
            let slot = slots.remove(id).expect("every id has a slot");
            let Some(after) = slot.summary.as_ref().filter(|_| slot.changed) else {
                continue;
            };
            self.write_delivery(id, slot.before, after, &slot.attempts)?;
        }
        Ok(())
    }

    /// Writes one delivery as a batch left it: stored in state `before`
    /// (`None`: new), now `after`, with `attempts` to append.
    fn write_delivery(
        &mut self,
        id: &str,
        before: Option<DeliveryState>,
        after: &DeliverySummary,
        attempts: &[AttemptRecord],
    ) -> Result<(), StoreError> {
        let sub = after.subscription.as_str();
        let at = after.created_at.max(0);
        let now = indices(sub, after.owner(), after.state);
        if before.is_none() {
            for name in &now.fixed {
                self.index.insert((name.as_str(), at, id), ())?;
            }
            let event = event_key(after.tenant.as_ref(), &after.event_id);
            self.events.insert((event.as_str(), id), ())?;
        }
        if before != Some(after.state) {
            if let Some(before) = before {
                for name in &indices(sub, after.owner(), before).by_state {
                    self.index.remove((name.as_str(), at, id))?;
                }
                *self.counters(sub)?.counts.entry(before).or_default() -= 1;
            }
            for name in &now.by_state {
                self.index.insert((name.as_str(), at, id), ())?;
            }
            *self.counters(sub)?.counts.entry(after.state).or_default() += 1;
        }
        if !attempts.is_empty() {
            let mut next = self
                .attempts
                .range((id, 0)..=(id, u32::MAX))?
                .next_back()
                .transpose()?
                .map_or(0, |(key, _)| key.value().1.saturating_add(1));
            for attempt in attempts {
                let json = serde_json::to_vec(attempt).unwrap_or_default();
                self.attempts.insert((id, next), json.as_slice())?;
                next = next.saturating_add(1);
            }
        }
        let json = serde_json::to_vec(after).unwrap_or_default();
        self.summaries.insert(id, json.as_slice())?;
        Ok(())
    }

    /// Adds the attempts among `entries` to their minutes' activity
    /// ([`activity::deltas`]): one read and one write per minute and view.
    fn count_activity(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        for (MinuteKey { minute, view }, delta) in activity::deltas(entries) {
            let view = view.as_ref().map_or(ALL_VIEW, TenantId::as_str);
            let mut record = match self.activity.get((minute, view))? {
                Some(bytes) => serde_json::from_slice::<MinuteRecord>(bytes.value()).unwrap_or_else(|e| {
                    tracing::error!(minute, view, error = %e, "corrupt activity minute; counting it again from zero");
                    MinuteRecord::default()
                }),
                None => MinuteRecord::default(),
            };
            record.add(&delta);
            let json = serde_json::to_vec(&record).unwrap_or_default();
            self.activity.insert((minute, view), json.as_slice())?;
        }
        Ok(())
    }

    /// Removes up to [`TRIM_BATCH`] activity minutes that started before
    /// `cutoff`, oldest first.
    fn trim_activity(&mut self, cutoff: Millis) -> Result<(), StoreError> {
        let mut old: Vec<(i64, String)> = Vec::new();
        for entry in self.activity.range((i64::MIN, "")..(cutoff, ""))?.take(TRIM_BATCH) {
            let (key, _) = entry?;
            let (minute, view) = key.value();
            old.push((minute, view.to_owned()));
        }
        for (minute, view) in &old {
            self.activity.remove((*minute, view.as_str()))?;
        }
        Ok(())
    }

    /// Stores an event's record unless one is stored already for its
    /// tenant and id (the first write wins).
    fn record_event(&mut self, record: &EventRecord) -> Result<(), StoreError> {
        let key = event_key(record.tenant.as_ref(), &record.id);
        let id = key.as_str();
        // A record kept already stays, unless this one was accepted later
        // (an id reused after the dedup window): the log keeps the body
        // last taken.
        let kept = self.event_records.get(id)?.map(|r| r.value().1);
        if let Some(kept) = kept {
            if kept >= record.created_at {
                return Ok(());
            }
            self.event_times.remove((kept.max(0), id))?;
        }
        let at = record.created_at.max(0);
        self.event_records
            .insert(id, (record.event_type.as_str(), record.created_at, &record.body[..]))?;
        self.event_times.insert((at, id), ())?;
        Ok(())
    }

    /// Removes up to [`TRIM_BATCH`] event records created before `cutoff`
    /// or beyond `max_count`, oldest first.
    fn trim_events(&mut self, cutoff: Millis, max_count: usize) -> Result<u64, StoreError> {
        let mut victims: Vec<(i64, String)> = Vec::new();
        for entry in self.event_times.range((i64::MIN, "")..(cutoff.max(0), ""))? {
            if victims.len() >= TRIM_BATCH {
                break;
            }
            let (key, _) = entry?;
            let (at, id) = key.value();
            victims.push((at, id.to_owned()));
        }
        let total = usize::try_from(self.event_times.len()?).unwrap_or(usize::MAX);
        let over = total.saturating_sub(victims.len()).saturating_sub(max_count);
        let more = over.min(TRIM_BATCH - victims.len());
        if more > 0 {
            let skip = victims.len();
            let mut extra = Vec::with_capacity(more);
            for entry in self.event_times.iter()?.skip(skip).take(more) {
                let (key, _) = entry?;
                let (at, id) = key.value();
                extra.push((at, id.to_owned()));
            }
            victims.extend(extra);
        }
        for (at, id) in &victims {
            self.event_times.remove((*at, id.as_str()))?;
            self.event_records.remove(id.as_str())?;
        }
        Ok(victims.len() as u64)
    }

    /// Removes up to [`TRIM_BATCH`] deliveries created before `cutoff` or
    /// beyond `max_count`, oldest first.
    fn trim(&mut self, cutoff: Millis, max_count: usize) -> Result<u64, StoreError> {
        let mut victims: Vec<(i64, String)> = Vec::new();
        for entry in self.index.range(("time", i64::MIN, "")..("time", cutoff.max(0), ""))? {
            if victims.len() >= TRIM_BATCH {
                break;
            }
            let (key, _) = entry?;
            let (_, at, id) = key.value();
            victims.push((at, id.to_owned()));
        }
        let total = usize::try_from(self.summaries.len()?).unwrap_or(usize::MAX);
        let over = total.saturating_sub(victims.len()).saturating_sub(max_count);
        let more = over.min(TRIM_BATCH - victims.len());
        if more > 0 {
            let skip = victims.len();
            let oldest = self
                .index
                .range(("time", i64::MIN, "")..=("time", i64::MAX, "\u{10ffff}"))?
                .skip(skip)
                .take(more);
            let mut extra = Vec::with_capacity(more);
            for entry in oldest {
                let (key, _) = entry?;
                let (_, at, id) = key.value();
                extra.push((at, id.to_owned()));
            }
            victims.extend(extra);
        }
        for (at, id) in &victims {
            self.remove(*at, id)?;
        }
        Ok(victims.len() as u64)
    }

    /// Removes one delivery, its attempts, index entries and count.
    fn remove(&mut self, at: i64, id: &str) -> Result<(), StoreError> {
        self.index.remove(("time", at, id))?;
        let summary = self
            .summaries
            .remove(id)?
            .and_then(|bytes| serde_json::from_slice::<DeliverySummary>(bytes.value()).ok());
        if let Some(summary) = summary {
            let sub = summary.subscription.as_str();
            let all = indices(sub, summary.owner(), summary.state);
            for name in all.fixed.iter().chain(&all.by_state) {
                self.index.remove((name.as_str(), at, id))?;
            }
            let event = event_key(summary.tenant.as_ref(), &summary.event_id);
            self.events.remove((event.as_str(), id))?;
            *self.counters(sub)?.counts.entry(summary.state).or_default() -= 1;
        }
        let seqs: Vec<u32> = self
            .attempts
            .range((id, 0)..=(id, u32::MAX))?
            .map(|entry| entry.map(|(key, _)| key.value().1))
            .collect::<Result<_, _>>()?;
        for seq in seqs {
            self.attempts.remove((id, seq))?;
        }
        Ok(())
    }
}

fn decode_summary(id: &str, bytes: &[u8]) -> Result<DeliverySummary, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: id.to_owned(),
        reason: e.to_string(),
    })
}

#[async_trait::async_trait]
impl History for EmbeddedHistory {
    async fn record(&self, entries: &[Entry]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.submit(|reply| Op::Record { entries, reply }).await
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<(DeliverySummary, Vec<AttemptRecord>)>, Error> {
        let id = id.as_str().to_owned();
        self.read(move |txn| {
            let summaries = txn.open_table(SUMMARIES).map_err(read_err)?;
            let Some(bytes) = summaries.get(id.as_str()).map_err(read_err)? else {
                return Ok(None);
            };
            let summary = decode_summary(&id, bytes.value())?;
            let table = txn.open_table(ATTEMPTS).map_err(read_err)?;
            let mut attempts = Vec::new();
            for entry in table
                .range((id.as_str(), 0)..=(id.as_str(), u32::MAX))
                .map_err(read_err)?
            {
                let (_, bytes) = entry.map_err(read_err)?;
                attempts.push(serde_json::from_slice(bytes.value()).map_err(|e| Error::Corrupt {
                    key: id.clone(),
                    reason: format!("attempt: {e}"),
                })?);
            }
            Ok(Some((summary, attempts)))
        })
        .await
    }

    async fn event(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Vec<DeliverySummary>, Error> {
        let event = event_key(tenant, event_id);
        let tenant = tenant.cloned();
        self.read(move |txn| {
            let events = txn.open_table(EVENTS).map_err(read_err)?;
            let summaries = txn.open_table(SUMMARIES).map_err(read_err)?;
            let mut out = Vec::new();
            for entry in events
                .range((event.as_str(), "")..=(event.as_str(), "\u{10ffff}"))
                .map_err(read_err)?
            {
                let (key, _) = entry.map_err(read_err)?;
                let (_, id) = key.value();
                if let Some(bytes) = summaries.get(id).map_err(read_err)? {
                    let summary = decode_summary(id, bytes.value())?;
                    if summary.tenant == tenant {
                        out.push(summary);
                    }
                }
            }
            out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(out)
        })
        .await
    }

    async fn event_record(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Option<EventRecord>, Error> {
        let event = event_id.clone();
        let tenant = tenant.cloned();
        self.read(move |txn| {
            let records = txn.open_table(EVENT_RECORDS).map_err(read_err)?;
            let key = event_key(tenant.as_ref(), &event);
            let Some(stored) = records.get(key.as_str()).map_err(read_err)? else {
                return Ok(None);
            };
            let (event_type, created_at, body) = stored.value();
            Ok(Some(EventRecord {
                event_type: event_type.to_owned(),
                created_at,
                body: bytes::Bytes::copy_from_slice(body),
                id: event,
                tenant,
            }))
        })
        .await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliverySummary>, Error> {
        let after = cursor.map(parse_cursor).transpose()?;
        if limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        }
        let name = index_for(filter);
        let from = filter.from.map_or(i64::MIN, |f| f.max(0));
        let to = filter.to.map(|t| t.max(0));
        self.read(move |txn| {
            let index = txn.open_table(INDEX).map_err(read_err)?;
            let summaries = txn.open_table(SUMMARIES).map_err(read_err)?;
            let name = name.as_str();
            // Exclusive upper bound: the tighter of `to` and the cursor.
            let mut upper: (i64, &str) = (i64::MAX, "\u{10ffff}");
            if let Some(to) = to {
                upper = (to, "");
            }
            if let Some((at, id)) = &after {
                if (*at, id.as_str()) < upper {
                    upper = (*at, id.as_str());
                }
            }
            let range = index
                .range::<(&str, i64, &str)>((
                    Bound::Included((name, from, "")),
                    Bound::Excluded((name, upper.0, upper.1)),
                ))
                .map_err(read_err)?;
            let mut positions = Vec::new();
            for entry in range.rev().take(limit.saturating_add(1)) {
                let (key, _) = entry.map_err(read_err)?;
                let (_, at, id) = key.value();
                positions.push((at, id.to_owned()));
            }
            let more = positions.len() > limit;
            positions.truncate(limit);
            let next_cursor = if more {
                positions.last().map(|(at, id)| super::position(*at, id))
            } else {
                None
            };
            let mut items = Vec::with_capacity(positions.len());
            for (_, id) in &positions {
                if let Some(bytes) = summaries.get(id.as_str()).map_err(read_err)? {
                    items.push(decode_summary(id, bytes.value())?);
                }
            }
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats, Error> {
        let subscription = subscription.as_str().to_owned();
        self.read(move |txn| {
            let stats = txn.open_table(STATS).map_err(read_err)?;
            let Some(bytes) = stats.get(subscription.as_str()).map_err(read_err)? else {
                return Ok(SubscriptionStats::default());
            };
            let counters: Counters = serde_json::from_slice(bytes.value()).map_err(|e| Error::Corrupt {
                key: format!("stats of {subscription}"),
                reason: e.to_string(),
            })?;
            Ok(counters.stats())
        })
        .await
    }

    async fn activity(&self, tenant: Option<&TenantId>, from: Millis, to: Millis) -> Result<Activity, Error> {
        let view = tenant.map_or(ALL_VIEW, TenantId::as_str).to_owned();
        let minutes = activity::window_minutes(from, to);
        self.read(move |txn| {
            let table = txn.open_table(ACTIVITY).map_err(read_err)?;
            let mut records = Vec::with_capacity(minutes.len());
            for &minute in &minutes {
                let record = match table.get((minute, view.as_str())).map_err(read_err)? {
                    Some(bytes) => {
                        Some(
                            serde_json::from_slice::<MinuteRecord>(bytes.value()).map_err(|e| Error::Corrupt {
                                key: format!("activity of minute {minute}, view `{view}`"),
                                reason: e.to_string(),
                            })?,
                        )
                    }
                    None => None,
                };
                records.push(record);
            }
            Ok(activity::assemble(&minutes, records))
        })
        .await
    }

    async fn trim(&self, now: Millis, max_age: Duration, max_count: usize) -> Result<u64, Error> {
        let age = Millis::try_from(max_age.as_millis()).unwrap_or(Millis::MAX);
        let cutoff = now.saturating_sub(age);
        let retention = Millis::try_from(activity::RETENTION.as_millis()).unwrap_or(Millis::MAX);
        self.submit(|reply| Op::Trim {
            cutoff,
            activity_cutoff: now.saturating_sub(retention),
            max_count,
            reply,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::DeliveryState;

    #[test]
    fn states_index_under_their_wire_names() {
        let all = indices("crm", None, DeliveryState::Retrying);
        assert_eq!(all.fixed, ["time", "sub:crm"]);
        assert_eq!(all.by_state, ["state:retrying", "sub:crm:state:retrying"]);
    }
}
