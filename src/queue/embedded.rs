//! Embedded backend: a durable store on local disk (redb), for one process.
//!
//! Same semantics as the Redis backend, without shards (one process owns the
//! whole store). Every change goes through one writer thread that applies
//! all pending operations in one write transaction, commits once and then
//! answers each caller (group commit): many small enqueues and settlements
//! share one fsync. Reads use their own read transactions.
//!
//! Enqueues and replays commit durably (fsync) before they are answered: an
//! accepted event survives a crash. Claims and settlements alone commit
//! without fsync, and are made durable by the next durable commit, forced
//! at least every [`DURABLE_EVERY`] and on close. A crash can so undo up to
//! that much of them, which only makes deliveries due again: the worst case
//! is a repeated attempt, which at-least-once delivery allows (receivers
//! dedup on `webhook-id`), and the same bound Redis gives with its default
//! `appendfsync everysec`.
//!
//! Unparking and enabling or disabling a subscription commit durably too.
//! Parking is a settlement and health updates come once per settle batch,
//! so both ride with the settlements: a crash can undo a park (the delivery
//! falls due again and is parked again) or the last second of health.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Claim, Claimed, DeadScope, Delivery, DeliveryId, Depth, Enqueued, Error, Expired, HealthUpdate, Lease, Millis,
    NewEvent, Queue, Settlement, Standing, StateStore, SubscriptionState,
};
use crate::config::{QueueConfig, SubscriptionName};
use crate::model::TenantId;

mod lanes;

use lanes::{LaneChange, LANE_DUE, LANE_HEAD, LANE_HEADS, LANE_SERVED};

/// The store's file inside `queue.data_dir`.
pub const FILE_NAME: &str = "queue.redb";

/// Delivery id → [`Delivery::encode`] JSON, for every delivery queued or dead.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// (due ms, delivery id): queued deliveries in due order; a claimed one is
/// due at its lease's end.
const DUE: TableDefinition<(i64, &str), ()> = TableDefinition::new("due");
/// Delivery id → its key in [`DUE`]: the current due time, i.e. the lease token.
const DUE_AT: TableDefinition<&str, i64> = TableDefinition::new("due_at");
/// (dead-at ms, delivery id): dead deliveries in order of death.
const DEAD: TableDefinition<(i64, &str), ()> = TableDefinition::new("dead");
/// Delivery id → its key in [`DEAD`].
const DEAD_AT: TableDefinition<&str, i64> = TableDefinition::new("dead_at");
/// Dedup key ([`NewEvent::dedup_key`]: the event id, or a replay's key) →
/// end of its dedup window (ms).
const SEEN: TableDefinition<&str, i64> = TableDefinition::new("seen");
/// (window end ms, dedup key): [`SEEN`] in expiry order, so the writer can
/// purge expired entries cheaply.
const SEEN_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("seen_expiry");
/// (subscription, created_at ms, delivery id): parked deliveries, per
/// subscription in the order they are unparked. Written by settle (park)
/// and unpark (removes).
const PARKED: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("parked");
/// Delivery id → when it was parked (ms), for every delivery in [`PARKED`].
const PARKED_AT: TableDefinition<&str, i64> = TableDefinition::new("parked_at");
/// (scope, dead-at ms, delivery id): every dead delivery under each of its
/// [`DeadScope`]s (its subscription, its owner), in order of death.
/// Written by settle (dead), replay and expire dead (remove).
const DEAD_BY: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("dead_by");
/// Delivery id → the tenant owning its subscription ([`Delivery::owner`]),
/// for every such delivery in [`RECORDS`]. Written by enqueue, settle (ack
/// removes) and expire dead (removes).
const OWNER: TableDefinition<&str, &str> = TableDefinition::new("owner");
/// Tenant → how many of its deliveries are due, scheduled or parked (not
/// dead): [`Queue::pending_of`]. Written with the move it counts: enqueue
/// (+), settle (ack and dead −) and replay (+); a count of zero is removed.
const PENDING: TableDefinition<&str, u64> = TableDefinition::new("pending");
/// Subscription name → its [`SubscriptionState`] as JSON. Written by
/// set_enabled and record_health.
const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");

/// Longest time between durable commits while only claims and settlements
/// arrive; bounds what a crash can undo of them.
pub const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// Most operations the writer applies in one transaction.
const MAX_GROUP: usize = 1024;
/// Most expired dedup entries purged per transaction, so a purge never
/// delays a commit much.
const PURGE_PER_COMMIT: usize = 512;
/// Most parked deliveries one unpark operation moves, so claims and
/// settlements queued behind it wait little.
const UNPARK_BATCH: usize = 1000;

/// The answer channel of one operation.
type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// One event to enqueue, with its records already encoded.
struct Incoming {
    /// The dedup key ([`NewEvent::dedup_key`]).
    dedup_key: String,
    /// (delivery id, encoded record, owning tenant) triples.
    deliveries: Vec<(String, Vec<u8>, Option<String>)>,
}

/// What a settlement does once its lease matches.
enum Action {
    /// Remove the delivery.
    Ack,
    /// Store the record and re-score to `due`.
    Retry { due: Millis, record: Vec<u8> },
    /// Re-score to `due`.
    Defer { due: Millis },
    /// Store the record and move it to the dead.
    Dead { record: Vec<u8> },
    /// Move it to its subscription's parked set.
    Park,
}

/// One settlement, encoded for the writer.
struct Settle {
    /// The delivery settled.
    id: String,
    /// The lease token it must still carry.
    lease: Millis,
    /// What to do.
    action: Action,
}

/// A claimed delivery as the writer returns it, decoded by the caller.
type RawClaim = (String, Vec<u8>);

/// An operation for the writer thread.
enum Op {
    /// [`Queue::enqueue`].
    Enqueue {
        events: Vec<Incoming>,
        window: Millis,
        reply: Reply<Vec<Enqueued>>,
    },
    /// [`Queue::claim`].
    Claim {
        now: Millis,
        lease_end: Millis,
        max: usize,
        reply: Reply<(Vec<RawClaim>, Option<Millis>)>,
    },
    /// [`Queue::settle`].
    Settle { settlements: Vec<Settle>, reply: Reply<()> },
    /// [`Queue::reschedule`].
    Reschedule {
        id: String,
        expected: Millis,
        due: Millis,
        reply: Reply<bool>,
    },
    /// [`Queue::replay`].
    Replay {
        id: String,
        now: Millis,
        reply: Reply<bool>,
    },
    /// [`Queue::expire_dead`].
    ExpireDead {
        before: Millis,
        limit: usize,
        reply: Reply<(Vec<RawClaim>, u64)>,
    },
    /// One batch of [`Queue::unpark`]: moves at most [`UNPARK_BATCH`].
    Unpark {
        subscription: String,
        now: Millis,
        reply: Reply<u64>,
    },
    /// [`StateStore::set_enabled`].
    SetEnabled {
        subscription: SubscriptionName,
        enabled: bool,
        reason: Option<String>,
        now: Millis,
        reply: Reply<bool>,
    },
    /// [`StateStore::record_health`].
    RecordHealth {
        updates: Vec<HealthUpdate>,
        reply: Reply<Vec<(SubscriptionName, SubscriptionState)>>,
    },
}

/// What the writer computed for one operation, sent once the commit is done.
enum Outcome {
    Enqueued(Vec<Enqueued>),
    Claimed(Vec<RawClaim>, Option<Millis>),
    Settled,
    Replayed(Result<bool, Error>),
    Rescheduled(bool),
    Unparked(u64),
    Expired(Vec<RawClaim>, u64),
    Enabled(Result<bool, Error>),
    Recorded(Result<Vec<(SubscriptionName, SubscriptionState)>, Error>),
}

/// The embedded queue backend.
pub struct EmbeddedQueue {
    /// The open store; shared with the writer thread and read tasks.
    db: Arc<Database>,
    /// The writer thread; declared after `db`, so dropping the queue joins
    /// it after letting go of the store.
    writer: Writer<Op>,
    /// The store's directory, for messages.
    dir: PathBuf,
    /// `queue.shards`, to check that delivery ids name their event's shard.
    shards: u16,
    /// Rate-limit buckets: each subscription's theoretical arrival time
    /// ([`super::rate`]). In memory: one process owns this store, and after
    /// a restart the buckets start full.
    buckets: std::sync::Mutex<std::collections::HashMap<SubscriptionName, f64>>,
}

/// A redb failure inside the writer, boxed (redb's error is large).
#[derive(Debug)]
struct StoreError(Box<StoreError>);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> StoreError {
        StoreError(Box::new(e.into()))
    }
}

impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> StoreError {
        StoreError(Box::new(e.into()))
    }
}

impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> StoreError {
        StoreError(Box::new(e.into()))
    }
}

impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> StoreError {
        StoreError(Box::new(e.into()))
    }
}

fn store(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{what}: {e}"))
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the store in `config.data_dir`. Fails with
    /// [`Error::InUse`] if another process has it open.
    pub fn open(config: &QueueConfig) -> Result<EmbeddedQueue, Error> {
        let dir = config.data_dir.clone();
        let (db, _) = create_database(&dir, FILE_NAME, "move the file aside to start empty").map_err(|e| match e {
            Unopened::InUse => Error::InUse { dir: dir.clone() },
            Unopened::Failed(message) => Error::Store(message),
        })?;
        create_tables(&db)?;
        let db = Arc::new(db);
        let writer_db = db.clone();
        let writer = Writer::start("queue", move |receiver| write_loop(&writer_db, receiver))
            .map_err(|e| Error::Store(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedQueue {
            db,
            writer,
            dir,
            shards: config.shards.max(1),
            buckets: Default::default(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn submit<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, Error> {
        let stopped = || {
            Err(Error::Store(format!(
                "the writer of {} has stopped",
                self.dir.display()
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
        .map_err(|e| Error::Store(format!("read task failed: {e}")))?
    }
}

fn create_tables(db: &Database) -> Result<(), Error> {
    let txn = db.begin_write().map_err(|e| store("begin write", e))?;
    {
        let mut tables = Tables::open(&txn).map_err(|e| store("create tables", e))?;
        tables.purge_seen(super::now_ms()).map_err(|e| store("purge", e))?;
        tables
            .index_unindexed_dead()
            .map_err(|e| store("index dead deliveries", e))?;
        tables
            .file_unlaned_due()
            .map_err(|e| store("file due deliveries by owner", e))?;
    }
    txn.commit().map_err(|e| store("commit", e))
}

/// The loop of a store's writer thread, the queue's and the history's:
/// takes whatever operations are pending (at most `max_group`), applies
/// them in one transaction with `apply(group, durable)`, and answers each
/// with `answer`: its outcome, or the failed transaction's message. A
/// commit is durable at least every `durable_every`, whenever `sync` wants
/// it for an operation of the group, and once more when the channel closes.
pub(crate) fn group_commit<Op, Out, E: std::fmt::Display>(
    store: &str,
    mut receiver: mpsc::UnboundedReceiver<Op>,
    max_group: usize,
    durable_every: Duration,
    sync: impl Fn(&Op) -> bool,
    apply: impl Fn(&[Op], bool) -> Result<Vec<Out>, E>,
    answer: impl Fn(Op, Result<Out, String>),
) {
    let mut last_durable = Instant::now();
    while let Some(first) = receiver.blocking_recv() {
        let mut group = vec![first];
        while group.len() < max_group {
            match receiver.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let durable = last_durable.elapsed() >= durable_every || group.iter().any(&sync);
        match apply(&group, durable) {
            Ok(outcomes) => {
                if durable {
                    last_durable = Instant::now();
                }
                for (op, outcome) in group.into_iter().zip(outcomes) {
                    answer(op, Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "{store} write transaction failed");
                for op in group {
                    answer(op, Err(e.to_string()));
                }
            }
        }
    }
    // Closing: make whatever committed without fsync durable.
    if let Err(e) = apply(&[], true) {
        tracing::error!(error = %e, "final durable commit of the {store} failed");
    }
}

/// The writer thread of an embedded store and the channel to it: started
/// with the store, and on drop told to stop (its channel closes) and
/// joined, so the store's file is unlocked once the store is dropped.
/// Why a redb file of the embedded store could not be opened.
pub(crate) enum Unopened {
    /// Another hookd (or this one) has it open.
    InUse,
    /// The directory or the file could not be made or read: what happened
    /// and what to do.
    Failed(String),
}

/// Opens (creating it, and `dir`, if needed) the redb file `name` in
/// `dir`, the one way every embedded store (queue, history, catalogue)
/// opens its file. `start_empty` ends the message of an unreadable file
/// (`move it aside to start an empty history`).
///
/// The stores hold event bodies and subscription secrets: a directory it
/// creates is private to hookd's user (mode 0700, missing parents too),
/// and so is each file (0600; an existing file open to others is narrowed
/// to it). An existing directory open to others is kept as it is, with a
/// warning.
pub(crate) fn create_database(dir: &Path, name: &str, start_empty: &str) -> Result<(Database, PathBuf), Unopened> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let cannot_create = |e: std::io::Error| {
        Unopened::Failed(format!(
            "cannot create {}: {e}; check its permissions or set queue.data_dir",
            dir.display()
        ))
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(cannot_create)?;
    } else if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{mode:03o}"),
                "the data directory is open to group or others: `chmod 700` it");
        }
    }
    let path = dir.join(name);
    // Made private before redb writes anything into it.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(cannot_create(e)),
    }
    match Database::create(&path) {
        Ok(db) => {
            let narrowed = std::fs::metadata(&path).and_then(|meta| {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
                Ok(())
            });
            if let Err(e) = narrowed {
                tracing::warn!(file = %path.display(), error = %e, "cannot make the store private (mode 0600)");
            }
            Ok((db, path))
        }
        Err(DatabaseError::DatabaseAlreadyOpen) => Err(Unopened::InUse),
        Err(e) => Err(Unopened::Failed(format!(
            "cannot open {}: {e}; {start_empty}",
            path.display()
        ))),
    }
}

pub(crate) struct Writer<Op> {
    /// Sends operations to the thread; dropped first so it exits.
    ops: Option<mpsc::UnboundedSender<Op>>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
    /// What it writes, for messages: `queue`, `history`.
    what: &'static str,
}

impl<Op: Send + 'static> Writer<Op> {
    /// Starts the thread `hookd-<what>-writer`, running `run` over the
    /// operations sent to it until the channel closes.
    pub(crate) fn start(
        what: &'static str,
        run: impl FnOnce(mpsc::UnboundedReceiver<Op>) + Send + 'static,
    ) -> std::io::Result<Writer<Op>> {
        let (ops, receiver) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name(format!("hookd-{what}-writer"))
            .spawn(move || run(receiver))?;
        Ok(Writer {
            ops: Some(ops),
            thread: Some(thread),
            what,
        })
    }

    /// Sends the operation `op` makes around a reply channel and waits for
    /// the reply; `None` if the thread has stopped.
    pub(crate) async fn submit<R>(&self, op: impl FnOnce(oneshot::Sender<R>) -> Op) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        self.ops.as_ref()?.send(op(reply)).ok()?;
        answer.await.ok()
    }
}

impl<Op> Drop for Writer<Op> {
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(store = self.what, "the {} writer thread panicked", self.what);
            }
        }
    }
}

/// The queue's writer thread: enqueues, replays, unparks and switches are
/// durable before they are answered.
fn write_loop(db: &Database, receiver: mpsc::UnboundedReceiver<Op>) {
    let sync = |op: &Op| {
        matches!(
            op,
            Op::Enqueue { .. } | Op::Replay { .. } | Op::Unpark { .. } | Op::SetEnabled { .. }
        )
    };
    let apply = |group: &[Op], durable| apply_group(db, group, durable);
    let answer = |op, outcome: Result<Outcome, String>| match outcome {
        Ok(outcome) => answer(op, outcome),
        Err(e) => fail(op, Error::Store(e)),
    };
    group_commit("queue", receiver, MAX_GROUP, DURABLE_EVERY, sync, apply, answer);
}

fn apply_group(db: &Database, group: &[Op], durable: bool) -> Result<Vec<Outcome>, StoreError> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(Durability::None);
    }
    let now = super::now_ms();
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut tables = Tables::open(&txn)?;
        for op in group {
            outcomes.push(tables.apply(op, now)?);
        }
        tables.purge_seen(now)?;
    }
    txn.commit()?;
    Ok(outcomes)
}

fn answer(op: Op, outcome: Outcome) {
    // A caller that gave up waiting is not an error.
    match (op, outcome) {
        (Op::Enqueue { reply, .. }, Outcome::Enqueued(r)) => drop(reply.send(Ok(r))),
        (Op::Claim { reply, .. }, Outcome::Claimed(c, n)) => drop(reply.send(Ok((c, n)))),
        (Op::Settle { reply, .. }, Outcome::Settled) => drop(reply.send(Ok(()))),
        (Op::Replay { reply, .. }, Outcome::Replayed(r)) => drop(reply.send(r)),
        (Op::Reschedule { reply, .. }, Outcome::Rescheduled(r)) => drop(reply.send(Ok(r))),
        (Op::Unpark { reply, .. }, Outcome::Unparked(n)) => drop(reply.send(Ok(n))),
        (Op::ExpireDead { reply, .. }, Outcome::Expired(raw, n)) => drop(reply.send(Ok((raw, n)))),
        (Op::SetEnabled { reply, .. }, Outcome::Enabled(r)) => drop(reply.send(r)),
        (Op::RecordHealth { reply, .. }, Outcome::Recorded(r)) => drop(reply.send(r)),
        (op, _) => fail(op, Error::Store("internal error: mismatched writer outcome".into())),
    }
}

fn fail(op: Op, e: Error) {
    match op {
        Op::Enqueue { reply, .. } => drop(reply.send(Err(e))),
        Op::Claim { reply, .. } => drop(reply.send(Err(e))),
        Op::Settle { reply, .. } => drop(reply.send(Err(e))),
        Op::Replay { reply, .. } => drop(reply.send(Err(e))),
        Op::Reschedule { reply, .. } => drop(reply.send(Err(e))),
        Op::Unpark { reply, .. } => drop(reply.send(Err(e))),
        Op::ExpireDead { reply, .. } => drop(reply.send(Err(e))),
        Op::SetEnabled { reply, .. } => drop(reply.send(Err(e))),
        Op::RecordHealth { reply, .. } => drop(reply.send(Err(e))),
    }
}

/// Every (time, id) key of `table` ([`DUE`] or [`DEAD`]), in order.
fn all_of(table: &Table<'_, (i64, &'static str), ()>) -> Result<Vec<(i64, String)>, StoreError> {
    table
        .iter()?
        .map(|entry| {
            entry.map(|(key, _)| {
                let (at, id) = key.value();
                (at, id.to_owned())
            })
        })
        .collect::<Result<_, _>>()
        .map_err(StoreError::from)
}

/// Every table, open in one write transaction.
struct Tables<'txn> {
    /// [`RECORDS`].
    records: Table<'txn, &'static str, &'static [u8]>,
    /// [`DUE`].
    due: Table<'txn, (i64, &'static str), ()>,
    /// [`DUE_AT`].
    due_at: Table<'txn, &'static str, i64>,
    /// [`DEAD`].
    dead: Table<'txn, (i64, &'static str), ()>,
    /// [`DEAD_AT`].
    dead_at: Table<'txn, &'static str, i64>,
    /// [`SEEN`].
    seen: Table<'txn, &'static str, i64>,
    /// [`SEEN_EXPIRY`].
    seen_expiry: Table<'txn, (i64, &'static str), ()>,
    /// [`PARKED`].
    parked: Table<'txn, (&'static str, i64, &'static str), ()>,
    /// [`PARKED_AT`].
    parked_at: Table<'txn, &'static str, i64>,
    /// [`SUBSCRIPTIONS`].
    subscriptions: Table<'txn, &'static str, &'static [u8]>,
    /// [`OWNER`].
    owner: Table<'txn, &'static str, &'static str>,
    /// [`PENDING`].
    pending: Table<'txn, &'static str, u64>,
    /// [`DEAD_BY`].
    dead_by: Table<'txn, (&'static str, i64, &'static str), ()>,
    /// [`LANE_DUE`].
    lane_due: Table<'txn, (&'static str, i64, &'static str), ()>,
    /// [`LANE_HEADS`].
    lane_heads: Table<'txn, (i64, &'static str), ()>,
    /// [`LANE_HEAD`].
    lane_head: Table<'txn, &'static str, (i64, i64)>,
    /// [`LANE_SERVED`].
    lane_served: Table<'txn, &'static str, i64>,
    /// Lanes changed since their turns were last made true: one
    /// [`Tables::rehead`] each at the end of an operation, however many
    /// of their deliveries it moved.
    dirty: BTreeMap<String, LaneChange>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            records: txn.open_table(RECORDS)?,
            due: txn.open_table(DUE)?,
            due_at: txn.open_table(DUE_AT)?,
            dead: txn.open_table(DEAD)?,
            dead_at: txn.open_table(DEAD_AT)?,
            seen: txn.open_table(SEEN)?,
            seen_expiry: txn.open_table(SEEN_EXPIRY)?,
            parked: txn.open_table(PARKED)?,
            parked_at: txn.open_table(PARKED_AT)?,
            subscriptions: txn.open_table(SUBSCRIPTIONS)?,
            owner: txn.open_table(OWNER)?,
            pending: txn.open_table(PENDING)?,
            dead_by: txn.open_table(DEAD_BY)?,
            lane_due: txn.open_table(LANE_DUE)?,
            lane_heads: txn.open_table(LANE_HEADS)?,
            lane_head: txn.open_table(LANE_HEAD)?,
            lane_served: txn.open_table(LANE_SERVED)?,
            dirty: BTreeMap::new(),
        })
    }

    /// Files every dead delivery under its scopes if none is: a store
    /// written before [`DEAD_BY`] existed. Filing is idempotent, and every
    /// delivery that dies afterwards is filed as it dies.
    fn index_unindexed_dead(&mut self) -> Result<(), StoreError> {
        if !self.dead_by.is_empty()? || self.dead.is_empty()? {
            return Ok(());
        }
        let dead = all_of(&self.dead)?;
        for (at, id) in &dead {
            let record = self.records.get(id.as_str())?.map(|g| g.value().to_vec());
            if let Some(record) = record {
                self.index_dead(id, &record, *at, true)?;
            }
        }
        tracing::info!(
            dead = dead.len(),
            "filed the dead deliveries of an older store by subscription and owner"
        );
        Ok(())
    }

    /// Files or unfiles dead delivery `id` (its record `record`) at `at`
    /// under each of its scopes. A record that cannot be decoded is in no
    /// scope: listed to the operator only.
    fn index_dead(&mut self, id: &str, record: &[u8], at: Millis, file: bool) -> Result<(), StoreError> {
        let Ok(delivery) = Delivery::decode(id, record) else {
            return Ok(());
        };
        for scope in super::DeadScope::of(&delivery) {
            let scope = scope.key();
            if file {
                self.dead_by.insert((scope.as_str(), at, id), ())?;
            } else {
                self.dead_by.remove((scope.as_str(), at, id))?;
            }
        }
        Ok(())
    }

    /// Adds `n` (which may be negative) to `tenant`'s pending count,
    /// removing it at zero.
    fn count_pending(&mut self, tenant: &str, n: i64) -> Result<(), StoreError> {
        let had = self.pending.get(tenant)?.map(|g| g.value()).unwrap_or(0);
        let now = had.saturating_add_signed(n);
        if now == 0 {
            self.pending.remove(tenant)?;
        } else {
            self.pending.insert(tenant, now)?;
        }
        Ok(())
    }

    /// The owner of delivery `id`, if a tenant owns it.
    fn owner_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.owner.get(id)?.map(|g| g.value().to_owned()))
    }

    fn apply(&mut self, op: &Op, now: Millis) -> Result<Outcome, StoreError> {
        let outcome = match op {
            Op::Enqueue { events, window, .. } => Outcome::Enqueued(
                events
                    .iter()
                    .map(|e| self.enqueue(e, now, now.saturating_add(*window)))
                    .collect::<Result<_, _>>()?,
            ),
            Op::Claim {
                now, lease_end, max, ..
            } => {
                let (claims, next_due) = self.claim(*now, *lease_end, *max)?;
                Outcome::Claimed(claims, next_due)
            }
            Op::Settle { settlements, .. } => {
                for s in settlements {
                    self.settle(s, now)?;
                }
                Outcome::Settled
            }
            Op::Replay { id, now, .. } => Outcome::Replayed(self.replay(id, *now)?),
            Op::Reschedule { id, expected, due, .. } => {
                let moved = self.due_at.get(id.as_str())?.map(|g| g.value()) == Some(*expected);
                if moved {
                    self.set_due(id, *due)?;
                }
                Outcome::Rescheduled(moved)
            }
            Op::Unpark { subscription, now, .. } => Outcome::Unparked(self.unpark(subscription, *now)?),
            Op::ExpireDead { before, limit, .. } => {
                let (raw, removed) = self.expire_dead(*before, *limit)?;
                Outcome::Expired(raw, removed)
            }
            Op::SetEnabled {
                subscription,
                enabled,
                reason,
                now,
                ..
            } => Outcome::Enabled(self.set_enabled(subscription, *enabled, reason, *now)?),
            Op::RecordHealth { updates, .. } => Outcome::Recorded(self.record_health(updates)?),
        };
        self.rehead_dirty()?;
        Ok(outcome)
    }

    fn enqueue(&mut self, event: &Incoming, now: Millis, until: Millis) -> Result<Enqueued, StoreError> {
        let id = event.dedup_key.as_str();
        let previous = self.seen.get(id)?.map(|g| g.value());
        if previous.is_some_and(|end| end > now) {
            return Ok(Enqueued::Duplicate);
        }
        if let Some(end) = previous {
            self.seen_expiry.remove((end, id))?;
        }
        self.seen.insert(id, until)?;
        self.seen_expiry.insert((until, id), ())?;
        for (delivery, record, owner) in &event.deliveries {
            self.records.insert(delivery.as_str(), record.as_slice())?;
            if let Some(owner) = owner {
                self.owner.insert(delivery.as_str(), owner.as_str())?;
                self.count_pending(owner, 1)?;
            }
            self.set_due_in(delivery, now, owner.as_deref().unwrap_or_default())?;
        }
        Ok(Enqueued::Accepted)
    }

    fn claim(
        &mut self,
        now: Millis,
        lease_end: Millis,
        max: usize,
    ) -> Result<(Vec<RawClaim>, Option<Millis>), StoreError> {
        let (mut picked, served) = self.pick(now, max)?;
        // Handed out oldest first, whatever turn took them.
        picked.sort_unstable();
        for lane in &served {
            self.lane_served(lane, now)?;
        }
        let mut claims = Vec::with_capacity(picked.len());
        for (_, id, lane) in picked {
            let lane = match lane {
                Some(lane) => lane,
                None => self.owner_of(&id)?.unwrap_or_default(),
            };
            let record = self.records.get(id.as_str())?.map(|g| g.value().to_vec());
            match record {
                Some(record) => {
                    self.set_due_in(&id, lease_end, &lane)?;
                    claims.push((id, record));
                }
                None => self.unset_due_in(&id, &lane)?,
            }
        }
        let next_due = if claims.is_empty() {
            self.due.first()?.map(|(key, _)| key.value().0)
        } else {
            None
        };
        Ok((claims, next_due))
    }

    fn settle(&mut self, s: &Settle, now: Millis) -> Result<(), StoreError> {
        let id = s.id.as_str();
        if self.due_at.get(id)?.map(|g| g.value()) != Some(s.lease) {
            return Ok(());
        }
        match &s.action {
            Action::Ack => {
                self.records.remove(id)?;
                let owner = self.owner.remove(id)?.map(|g| g.value().to_owned());
                self.unset_due_in(id, owner.as_deref().unwrap_or_default())?;
                if let Some(owner) = owner {
                    self.count_pending(&owner, -1)?;
                }
            }
            Action::Retry { due, record } => {
                self.records.insert(id, record.as_slice())?;
                self.set_due(id, *due)?;
            }
            Action::Defer { due } => self.set_due(id, *due)?,
            Action::Dead { record } => {
                self.unset_due(id)?;
                self.records.insert(id, record.as_slice())?;
                let old = self.dead_at.insert(id, now)?.map(|g| g.value());
                if let Some(old) = old {
                    self.dead.remove((old, id))?;
                    self.index_dead(id, record, old, false)?;
                }
                self.dead.insert((now, id), ())?;
                self.index_dead(id, record, now, true)?;
                if let Some(owner) = self.owner_of(id)? {
                    self.count_pending(&owner, -1)?;
                }
            }
            Action::Park => {
                let Some(record) = self.records.get(id)?.map(|g| g.value().to_vec()) else {
                    return Ok(());
                };
                let delivery = match Delivery::decode(id, &record) {
                    Ok(d) => d,
                    Err(e) => {
                        // Left leased: it falls due again and is reported
                        // (and skipped) by the claim that finds it.
                        tracing::error!(delivery = %id, error = %e, "cannot park a corrupt delivery record");
                        return Ok(());
                    }
                };
                self.unset_due(id)?;
                self.parked
                    .insert((delivery.subscription.as_str(), delivery.created_at, id), ())?;
                self.parked_at.insert(id, now)?;
            }
        }
        Ok(())
    }

    /// Removes up to `limit` dead deliveries that died at or before
    /// `before`, oldest first: their (id, record) pairs, and how many.
    fn expire_dead(&mut self, before: Millis, limit: usize) -> Result<(Vec<RawClaim>, u64), StoreError> {
        let batch: Vec<(i64, String)> = self
            .dead
            .range(..(before.saturating_add(1), ""))?
            .take(limit)
            .map(|entry| {
                entry.map(|(key, _)| {
                    let (at, id) = key.value();
                    (at, id.to_owned())
                })
            })
            .collect::<Result<_, _>>()?;
        let mut raw = Vec::with_capacity(batch.len());
        for (at, id) in &batch {
            self.dead.remove((*at, id.as_str()))?;
            self.dead_at.remove(id.as_str())?;
            let record = self.records.remove(id.as_str())?.map(|g| g.value().to_vec());
            if let Some(record) = record {
                self.index_dead(id, &record, *at, false)?;
                raw.push((id.clone(), record));
            }
            self.owner.remove(id.as_str())?;
        }
        Ok((raw, batch.len() as u64))
    }

    /// Moves up to [`UNPARK_BATCH`] of `subscription`'s parked deliveries,
    /// oldest first, back to due at their `created_at` (at most `now`).
    fn unpark(&mut self, subscription: &str, now: Millis) -> Result<u64, StoreError> {
        let batch: Vec<(i64, String)> = self
            .parked
            .range((subscription, i64::MIN, "")..)?
            .take(UNPARK_BATCH)
            .map(|entry| {
                entry.map(|(key, _)| {
                    let (sub, created, id) = key.value();
                    (sub == subscription).then(|| (created, id.to_owned()))
                })
            })
            .map_while(|entry| entry.transpose())
            .collect::<Result<_, _>>()?;
        for (created, id) in &batch {
            self.parked.remove((subscription, *created, id.as_str()))?;
            self.parked_at.remove(id.as_str())?;
            self.set_due(id, (*created).min(now))?;
        }
        Ok(batch.len() as u64)
    }

    /// The stored state of `name`, or the default; `Err` inside if corrupt.
    fn state(&self, name: &str) -> Result<Result<SubscriptionState, Error>, StoreError> {
        Ok(match self.subscriptions.get(name)? {
            None => Ok(SubscriptionState::default()),
            Some(bytes) => decode_state(name, bytes.value()),
        })
    }

    fn put_state(&mut self, name: &str, state: &SubscriptionState) -> Result<(), StoreError> {
        self.subscriptions.insert(name, encode_state(state).as_slice())?;
        Ok(())
    }

    fn set_enabled(
        &mut self,
        name: &SubscriptionName,
        enabled: bool,
        reason: &Option<String>,
        now: Millis,
    ) -> Result<Result<bool, Error>, StoreError> {
        let mut state = match self.state(name.as_str())? {
            Ok(state) => state,
            Err(e) => return Ok(Err(e)),
        };
        let changed = state.set_enabled(enabled, reason.clone(), now);
        if changed {
            self.put_state(name.as_str(), &state)?;
        }
        Ok(Ok(changed))
    }

    /// Applies every update, or none if a stored state is corrupt.
    #[allow(clippy::type_complexity)]
    fn record_health(
        &mut self,
        updates: &[HealthUpdate],
    ) -> Result<Result<Vec<(SubscriptionName, SubscriptionState)>, Error>, StoreError> {
        let mut states: Vec<(SubscriptionName, SubscriptionState)> = Vec::new();
        for u in updates {
            if states.iter().any(|(name, _)| *name == u.subscription) {
                continue;
            }
            match self.state(u.subscription.as_str())? {
                Ok(state) => states.push((u.subscription.clone(), state)),
                Err(e) => return Ok(Err(e)),
            }
        }
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            if let Some((_, state)) = states.iter_mut().find(|(name, _)| *name == u.subscription) {
                state.apply(u);
                out.push((u.subscription.clone(), state.clone()));
            }
        }
        for (name, state) in &states {
            self.put_state(name.as_str(), state)?;
        }
        Ok(Ok(out))
    }

    fn replay(&mut self, id: &str, now: Millis) -> Result<Result<bool, Error>, StoreError> {
        let Some(dead_at) = self.dead_at.get(id)?.map(|g| g.value()) else {
            return Ok(Ok(false));
        };
        let Some(record) = self.records.get(id)?.map(|g| g.value().to_vec()) else {
            return Ok(Ok(false));
        };
        let mut delivery = match Delivery::decode(id, &record) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.into())),
        };
        delivery.attempts = 0;
        delivery.last_error = None;
        self.dead_at.remove(id)?;
        self.dead.remove((dead_at, id))?;
        self.index_dead(id, &record, dead_at, false)?;
        self.records.insert(id, delivery.encode().as_slice())?;
        self.set_due(id, now)?;
        if let Some(owner) = self.owner_of(id)? {
            self.count_pending(&owner, 1)?;
        }
        Ok(Ok(true))
    }

    /// Forgets dedup entries whose window has ended, a bounded number at a time.
    fn purge_seen(&mut self, now: Millis) -> Result<(), StoreError> {
        let expired: Vec<(i64, String)> = self
            .seen_expiry
            .range(..(now.saturating_add(1), ""))?
            .take(PURGE_PER_COMMIT)
            .map(|entry| {
                entry.map(|(key, _)| {
                    let (end, id) = key.value();
                    (end, id.to_owned())
                })
            })
            .collect::<Result<_, _>>()?;
        for (end, id) in expired {
            self.seen_expiry.remove((end, id.as_str()))?;
            if self.seen.get(id.as_str())?.map(|g| g.value()) == Some(end) {
                self.seen.remove(id.as_str())?;
            }
        }
        Ok(())
    }
}

/// A (death time, delivery id) position of a dead delivery, read from
/// [`DEAD`] or [`DEAD_BY`].
type DeadEntry = Result<(Millis, String), Error>;

/// An entry of [`DEAD_BY`] as redb reads it.
type ScopedEntry<'a> = Result<
    (
        redb::AccessGuard<'a, (&'static str, i64, &'static str)>,
        redb::AccessGuard<'a, ()>,
    ),
    redb::StorageError,
>;

/// An entry of [`DEAD_BY`] as its position.
fn scoped_entry(entry: ScopedEntry<'_>) -> DeadEntry {
    let (key, _) = entry.map_err(read_err)?;
    let (_, at, id) = key.value();
    Ok((at, id.to_owned()))
}

/// The records of the first `limit` dead deliveries of `entries` (most
/// recent first, as given); ids without a record are left out.
fn newest_dead(
    txn: &ReadTransaction,
    entries: impl Iterator<Item = DeadEntry>,
    limit: usize,
) -> Result<Vec<Delivery>, Error> {
    let records = txn.open_table(RECORDS).map_err(read_err)?;
    let mut out = Vec::new();
    for entry in entries.take(limit) {
        let (_, id) = entry?;
        if let Some(record) = records.get(id.as_str()).map_err(read_err)? {
            out.push(Delivery::decode(&id, record.value())?);
        }
    }
    Ok(out)
}

/// Up to `limit` dead deliveries of `entries` (in death order, from
/// `after` on), with their death times: `after` itself and ids without a
/// record are left out.
fn walk_dead(
    txn: &ReadTransaction,
    entries: impl Iterator<Item = DeadEntry>,
    after: Option<&(Millis, String)>,
    limit: usize,
) -> Result<Vec<(Millis, Delivery)>, Error> {
    let records = txn.open_table(RECORDS).map_err(read_err)?;
    let mut out = Vec::new();
    for entry in entries {
        if out.len() >= limit {
            break;
        }
        let (at, id) = entry?;
        if after.is_some_and(|(a, i)| (*a, i.as_str()) == (at, id.as_str())) {
            continue;
        }
        if let Some(record) = records.get(id.as_str()).map_err(read_err)? {
            out.push((at, Delivery::decode(&id, record.value())?));
        }
    }
    Ok(out)
}

fn read_err(e: impl std::fmt::Display) -> Error {
    store("read", e)
}

fn encode_state(state: &SubscriptionState) -> Vec<u8> {
    serde_json::to_vec(state).expect("a subscription state always serializes")
}

fn decode_state(name: &str, bytes: &[u8]) -> Result<SubscriptionState, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::CorruptState {
        subscription: name.to_owned(),
        reason: e.to_string(),
    })
}

#[async_trait::async_trait]
impl Queue for EmbeddedQueue {
    async fn enqueue(&self, events: &[NewEvent], window: Duration) -> Result<Vec<Enqueued>, Error> {
        let mut incoming = Vec::with_capacity(events.len());
        for e in events {
            // Unsharded here, but ids must still name the right shard so a
            // store's contents mean the same to both backends.
            e.shard(self.shards)?;
            incoming.push(Incoming {
                dedup_key: e.dedup_key().to_owned(),
                deliveries: e
                    .deliveries
                    .iter()
                    .map(|d| {
                        (
                            d.id.as_str().to_owned(),
                            d.encode(),
                            d.owner().map(|t| t.as_str().to_owned()),
                        )
                    })
                    .collect(),
            });
        }
        let window = millis(window).max(1);
        self.submit(|reply| Op::Enqueue {
            events: incoming,
            window,
            reply,
        })
        .await
    }

    async fn claim(&self, now: Millis, lease: Duration, max: usize) -> Result<Claimed, Error> {
        if max == 0 {
            return Ok(Claimed::default());
        }
        let lease_end = now.saturating_add(millis(lease));
        let (raw, next_due) = self
            .submit(|reply| Op::Claim {
                now,
                lease_end,
                max,
                reply,
            })
            .await?;
        let claims = raw
            .into_iter()
            .filter_map(|(id, record)| match Delivery::decode(&id, &record) {
                Ok(delivery) => Some(Claim {
                    delivery,
                    lease: Lease(lease_end),
                }),
                Err(e) => {
                    tracing::error!(delivery = %id, error = %e, "skipping a corrupt delivery record");
                    None
                }
            })
            .collect();
        Ok(Claimed { claims, next_due })
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<(), Error> {
        if settlements.is_empty() {
            return Ok(());
        }
        let settlements = settlements
            .iter()
            .map(|s| {
                let (lease, action) = match s {
                    Settlement::Ack { lease, .. } => (lease, Action::Ack),
                    Settlement::Retry { delivery, lease, due } => (
                        lease,
                        Action::Retry {
                            due: *due,
                            record: delivery.encode(),
                        },
                    ),
                    Settlement::Defer { lease, due, .. } => (lease, Action::Defer { due: *due }),
                    Settlement::Dead { delivery, lease } => (
                        lease,
                        Action::Dead {
                            record: delivery.encode(),
                        },
                    ),
                    Settlement::Park { lease, .. } => (lease, Action::Park),
                };
                Settle {
                    id: s.id().as_str().to_owned(),
                    lease: lease.0,
                    action,
                }
            })
            .collect();
        self.submit(|reply| Op::Settle { settlements, reply }).await
    }

    async fn get(&self, id: &DeliveryId) -> Result<Option<(Delivery, Standing)>, Error> {
        let id = id.as_str().to_owned();
        self.read(move |txn| {
            let records = txn.open_table(RECORDS).map_err(read_err)?;
            let Some(record) = records.get(id.as_str()).map_err(read_err)? else {
                return Ok(None);
            };
            let delivery = Delivery::decode(&id, record.value())?;
            let due = txn.open_table(DUE_AT).map_err(read_err)?;
            if let Some(due) = due.get(id.as_str()).map_err(read_err)? {
                return Ok(Some((delivery, Standing::Pending { due: due.value() })));
            }
            let parked = txn.open_table(PARKED_AT).map_err(read_err)?;
            if let Some(since) = parked.get(id.as_str()).map_err(read_err)? {
                return Ok(Some((delivery, Standing::Parked { since: since.value() })));
            }
            let dead = txn.open_table(DEAD_AT).map_err(read_err)?;
            if let Some(since) = dead.get(id.as_str()).map_err(read_err)? {
                return Ok(Some((delivery, Standing::Dead { since: since.value() })));
            }
            Ok(None)
        })
        .await
    }

    async fn dead(&self, limit: usize) -> Result<Vec<Delivery>, Error> {
        self.read(move |txn| {
            let dead = txn.open_table(DEAD).map_err(read_err)?;
            let newest = dead.iter().map_err(read_err)?.rev().map(|entry| {
                let (key, _) = entry.map_err(read_err)?;
                let (at, id) = key.value();
                Ok((at, id.to_owned()))
            });
            newest_dead(txn, newest, limit)
        })
        .await
    }

    async fn dead_after(
        &self,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, Delivery)>, Error> {
        let after = after.map(|(at, id)| (at, id.as_str().to_owned()));
        self.read(move |txn| {
            let dead = txn.open_table(DEAD).map_err(read_err)?;
            let entries = match &after {
                Some((at, id)) => dead.range((*at, id.as_str())..),
                None => dead.range::<(i64, &str)>(..),
            }
            .map_err(read_err)?
            .map(|entry| {
                let (key, _) = entry.map_err(read_err)?;
                let (at, id) = key.value();
                Ok((at, id.to_owned()))
            });
            walk_dead(txn, entries, after.as_ref(), limit)
        })
        .await
    }

    async fn dead_in(&self, scope: &DeadScope, limit: usize) -> Result<Vec<Delivery>, Error> {
        let scope = scope.key();
        self.read(move |txn| {
            let index = txn.open_table(DEAD_BY).map_err(read_err)?;
            let range = index
                .range((scope.as_str(), i64::MIN, "")..(scope.as_str(), i64::MAX, "\u{10ffff}"))
                .map_err(read_err)?;
            newest_dead(txn, range.rev().map(scoped_entry), limit)
        })
        .await
    }

    async fn dead_in_after(
        &self,
        scope: &DeadScope,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, Delivery)>, Error> {
        let scope = scope.key();
        let after = after.map(|(at, id)| (at, id.as_str().to_owned()));
        self.read(move |txn| {
            let index = txn.open_table(DEAD_BY).map_err(read_err)?;
            let start = match &after {
                Some((at, id)) => (scope.as_str(), *at, id.as_str()),
                None => (scope.as_str(), i64::MIN, ""),
            };
            let range = index
                .range(start..(scope.as_str(), i64::MAX, "\u{10ffff}"))
                .map_err(read_err)?;
            walk_dead(txn, range.map(scoped_entry), after.as_ref(), limit)
        })
        .await
    }

    async fn replay(&self, id: &DeliveryId, now: Millis) -> Result<bool, Error> {
        let id = id.as_str().to_owned();
        self.submit(|reply| Op::Replay { id, now, reply }).await
    }

    async fn reschedule(&self, id: &DeliveryId, expected: Lease, due: Millis) -> Result<bool, Error> {
        let id = id.as_str().to_owned();
        self.submit(|reply| Op::Reschedule {
            id,
            expected: expected.0,
            due,
            reply,
        })
        .await
    }

    async fn expire_dead(&self, before: Millis, limit: usize) -> Result<Expired, Error> {
        if limit == 0 {
            return Ok(Expired::default());
        }
        let (raw, removed) = self.submit(|reply| Op::ExpireDead { before, limit, reply }).await?;
        Ok(Expired::decode(raw, removed))
    }

    async fn depth(&self, now: Millis) -> Result<Depth, Error> {
        self.read(move |txn| {
            let due = txn.open_table(DUE).map_err(read_err)?;
            let total = due.len().map_err(read_err)?;
            let mut ready = 0u64;
            for entry in due.range(..(now.saturating_add(1), "")).map_err(read_err)? {
                entry.map_err(read_err)?;
                ready += 1;
            }
            let dead = txn.open_table(DEAD).map_err(read_err)?.len().map_err(read_err)?;
            let parked = txn.open_table(PARKED_AT).map_err(read_err)?.len().map_err(read_err)?;
            Ok(Depth {
                due: ready,
                scheduled: total.saturating_sub(ready),
                dead,
                parked,
            })
        })
        .await
    }

    async fn pending_of(&self, tenant: &TenantId) -> Result<u64, Error> {
        let tenant = tenant.as_str().to_owned();
        self.read(move |txn| {
            let pending = txn.open_table(PENDING).map_err(read_err)?;
            Ok(pending
                .get(tenant.as_str())
                .map_err(read_err)?
                .map(|g| g.value())
                .unwrap_or(0))
        })
        .await
    }

    async fn unpark(&self, subscription: &SubscriptionName, now: Millis) -> Result<u64, Error> {
        // Most calls find nothing parked (the dispatcher sweeps every
        // enabled subscription now and then): a read answers those without
        // a durable write through the writer thread.
        let name = subscription.as_str().to_owned();
        let any = self
            .read(move |txn| {
                let parked = txn.open_table(PARKED).map_err(read_err)?;
                let first = parked
                    .range((name.as_str(), i64::MIN, "")..)
                    .map_err(read_err)?
                    .next()
                    .transpose()
                    .map_err(read_err)?;
                Ok(first.is_some_and(|(key, _)| key.value().0 == name))
            })
            .await?;
        if !any {
            return Ok(0);
        }
        let mut moved = 0;
        loop {
            let n = self
                .submit(|reply| Op::Unpark {
                    subscription: subscription.as_str().to_owned(),
                    now,
                    reply,
                })
                .await?;
            moved += n;
            if n < UNPARK_BATCH as u64 {
                return Ok(moved);
            }
        }
    }

    async fn ping(&self) -> Result<(), Error> {
        self.read(|_| Ok(())).await
    }
}

#[async_trait::async_trait]
impl StateStore for EmbeddedQueue {
    async fn subscription_state(&self, subscription: &SubscriptionName) -> Result<SubscriptionState, Error> {
        let name = subscription.as_str().to_owned();
        self.read(move |txn| {
            let table = txn.open_table(SUBSCRIPTIONS).map_err(read_err)?;
            match table.get(name.as_str()).map_err(read_err)? {
                None => Ok(SubscriptionState::default()),
                Some(bytes) => decode_state(&name, bytes.value()),
            }
        })
        .await
    }

    async fn subscription_states(&self) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error> {
        self.read(|txn| {
            let table = txn.open_table(SUBSCRIPTIONS).map_err(read_err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(read_err)? {
                let (name, bytes) = entry.map_err(read_err)?;
                let name = name.value();
                let parsed = SubscriptionName::parse(name).map_err(|reason| Error::CorruptState {
                    subscription: name.to_owned(),
                    reason: format!("bad name: {reason}"),
                })?;
                out.push((parsed, decode_state(name, bytes.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn set_enabled(
        &self,
        subscription: &SubscriptionName,
        enabled: bool,
        reason: Option<String>,
        now: Millis,
    ) -> Result<bool, Error> {
        self.submit(|reply| Op::SetEnabled {
            subscription: subscription.clone(),
            enabled,
            reason,
            now,
            reply,
        })
        .await
    }

    async fn record_health(
        &self,
        updates: &[HealthUpdate],
    ) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        for u in updates {
            u.check()?;
        }
        let updates = updates.to_vec();
        self.submit(|reply| Op::RecordHealth { updates, reply }).await
    }

    async fn take_tokens(
        &self,
        subscription: &SubscriptionName,
        limit: &crate::config::RateLimit,
        want: u32,
        now: Millis,
    ) -> Result<super::rate::Tokens, Error> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tat, tokens) = super::rate::take(buckets.get(subscription).copied(), limit, want, now);
        buckets.insert(subscription.clone(), tat);
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_data_dir_and_its_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("hookd-data");
        let config = QueueConfig {
            data_dir: dir.clone(),
            ..crate::config::Config::from_toml("").unwrap().queue
        };
        let queue = EmbeddedQueue::open(&config).unwrap();
        assert_eq!(mode(&dir), 0o700, "the data directory");
        assert_eq!(mode(&tmp.path().join("nested")), 0o700, "a parent it created");
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600, "the store's file");
        drop(queue);
        // A file left open to others by an older hookd is narrowed.
        std::fs::set_permissions(dir.join(FILE_NAME), std::fs::Permissions::from_mode(0o644)).unwrap();
        let _queue = EmbeddedQueue::open(&config).unwrap();
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600, "an existing file");
    }
}
