//! PostgreSQL history: the delivery log on disk, shared by every hookd
//! process, for deployments whose queue is in Redis (`history.postgres_url`).
//!
//! ## Tables
//!
//! The schema is in `migrations/postgres/`, applied at start-up by
//! [refinery](https://docs.rs/refinery) under an advisory lock (so two
//! processes starting at once migrate once), versioned in
//! `hookd_schema_history`. A database whose schema is newer than this
//! binary knows is refused with [`Error::Schema`]: an older hookd must not
//! write to tables it does not understand.
//!
//! - `deliveries`, `attempts` and `events` are partitioned by day of the
//!   delivery's (or event's) creation: `deliveries_d<day>` and so on, where
//!   `<day>` counts days since the Unix epoch. Partitions are created as
//!   days arrive (today's and tomorrow's ahead of time), and
//!   [`History::trim`] drops a day's partitions whole once all of it is
//!   older than `history.max_age`, instead of deleting its rows. Rows of
//!   the day that straddles the cutoff, and the oldest beyond
//!   `history.max_count`, are deleted in batches of [`TRIM_BATCH`].
//!   Attempts live in their delivery's partition (`delivery_at`), so they
//!   go with it.
//! - Writing a batch again changes nothing: a batch the recorder retries
//!   after a commit whose answer was lost finds its summaries and events
//!   applied, and its attempts are skipped by the unique index
//!   `attempts_once` (delivery, number, start; V2), so only the attempts
//!   written now are counted in `activity`.
//! - Indices answer each read of the admin API with one index range: by
//!   time, by subscription, by state, by subscription and state, by owner
//!   (tenant) with or without state, and by event.
//! - `subscription_counts` (per subscription and state, every state),
//!   `subscription_last` and `event_count` are kept in the same
//!   transaction as the rows they count, so stats and the count bound never
//!   scan; `activity` holds the per-minute aggregates.
//!
//! ## Writing
//!
//! One [`History::record`] call is one transaction, whatever its size:
//! it takes an advisory lock per delivery and event it touches (in one
//! sorted order, so concurrent writers from several processes neither
//! deadlock nor interleave on one delivery), reads the summaries it
//! changes with one query, applies the entries in order in memory (the
//! same `apply` as the embedded store), and writes the outcome with one
//! multi-row statement per table (`INSERT … SELECT FROM unnest(…)`):
//! a batch of 512 entries is a handful of round trips.
//!
//! ## Connecting
//!
//! One pool (deadpool) of tokio-postgres connections, the migrations'
//! included, made with the TLS of `history.postgres_tls` (`tls`: rustls,
//! `disable`, `require` or `verify-full`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::activity::{self, MinuteRecord, LATENCY_BUCKETS};
use super::{
    apply, event_key, parse_cursor, position, Activity, AttemptRecord, DeliveryState, DeliverySummary, Entry, Error,
    ErrorKind, EventRecord, History, ListFilter, Page, SubscriptionStats, TRIM_BATCH,
};
use crate::config::{HistoryConfig, SubscriptionName};
use crate::ingest::EventId;
use crate::model::{Millis, TenantId};
use crate::queue::DeliveryId;

mod schema {
    refinery::embed_migrations!("migrations/postgres");
}

mod tls;

/// The table refinery keeps the applied schema versions in.
pub const SCHEMA_TABLE: &str = "hookd_schema_history";

/// One day in ms: the width of a partition.
const DAY_MS: i64 = 86_400_000;

/// The advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6400_0001;
/// The advisory lock held while creating or dropping partitions.
const PARTITION_LOCK: i64 = 0x686f_6f6b_6400_0002;

/// How long a connection may take to open, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// The partitioned tables, in the order trim locks them.
const PARTITIONED: [&str; 3] = ["deliveries", "attempts", "events"];

/// The columns a [`DeliverySummary`] is read from (`summary_of`).
const SUMMARY: &str = "id, at, created_at, updated_at, event_id, event_type, subscription, tenant, state, \
                       attempts, last_status, last_error, next_attempt_at, note";

/// The delivery log in PostgreSQL.
pub struct PostgresHistory {
    /// Connections to the database.
    pool: Pool,
    /// Bytes of each response body kept.
    body_limit: usize,
    /// Days whose partitions this process knows exist.
    days: Mutex<HashSet<i64>>,
}

/// A PostgreSQL failure, as an [`Error`] (tokio-postgres's messages name
/// the server's error and never the URL's password): [`Error::Refused`]
/// when the server refused the data itself (SQLSTATE classes 22, data
/// exception, and 23, integrity violation), so a retry cannot help.
/// Any other failure's causes follow its own message ("error performing
/// TLS handshake: invalid peer certificate: UnknownIssuer"), since
/// tokio-postgres's message alone does not say what went wrong.
fn pg(e: tokio_postgres::Error) -> Error {
    let refused = e
        .code()
        .is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23"));
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    };
    if refused {
        Error::Refused(text)
    } else {
        Error::Postgres(text)
    }
}

/// A failure to get a pooled connection, as an [`Error`].
fn pool(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        e => Error::Postgres(e.to_string()),
    }
}

/// `text` as PostgreSQL can store it: NUL, which no text or jsonb value
/// may hold, replaced by U+FFFD.
fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The day (partition) of a time.
fn day_of(at: Millis) -> i64 {
    at.max(0).div_euclid(DAY_MS)
}

/// A 64-bit advisory lock key for `kind` (`d` delivery, `e` event) and id.
fn lock_key(kind: &str, id: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(kind)
        .chain_update([0])
        .chain_update(id)
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Takes the advisory locks `keys` for the rest of `tx`, in sorted order.
async fn lock_all(tx: &Transaction<'_>, mut keys: Vec<i64>) -> Result<(), Error> {
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    tx.query_one(
        "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k",
        &[&keys],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// A text column that must parse as `T`.
fn parsed<T, E: std::fmt::Display>(
    id: &str,
    what: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, Error> {
    parse(text).map_err(|e| Error::Corrupt {
        key: id.to_owned(),
        reason: format!("{what} `{text}`: {e}"),
    })
}

/// A row of `SUMMARY` columns as a summary, and its `at`.
fn summary_of(row: &Row) -> Result<(DeliverySummary, i64), Error> {
    let id: &str = row.get("id");
    let tenant: Option<&str> = row.get("tenant");
    let summary = DeliverySummary {
        id: parsed(id, "id", id, DeliveryId::parse)?,
        event_id: parsed(id, "event id", row.get("event_id"), EventId::parse)?,
        event_type: row.get("event_type"),
        subscription: parsed(id, "subscription", row.get("subscription"), SubscriptionName::parse)?,
        state: parsed(id, "state", row.get("state"), str::parse::<DeliveryState>)?,
        attempts: u32::try_from(row.get::<_, i32>("attempts")).unwrap_or(0),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        last_status: row
            .get::<_, Option<i32>>("last_status")
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.get("last_error"),
        next_attempt_at: row.get("next_attempt_at"),
        note: row.get("note"),
        tenant: tenant.map(|t| parsed(id, "tenant", t, TenantId::parse)).transpose()?,
    };
    Ok((summary, row.get("at")))
}

/// An [`ErrorKind`]'s stored name.
fn kind_name(kind: ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Headers as stored (a JSON array of pairs) and back.
fn headers_json(headers: &[(String, String)]) -> String {
    let clean: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> =
        headers.iter().map(|(n, v)| (clean(n), clean(v))).collect();
    serde_json::to_string(&clean).unwrap_or_else(|_| "[]".to_owned())
}

/// A row of `attempts` as the attempt of `summary`.
fn attempt_of(summary: &DeliverySummary, row: &Row) -> Result<AttemptRecord, Error> {
    let id = summary.id.as_str();
    let headers = |column: &str| -> Result<Vec<(String, String)>, Error> {
        serde_json::from_str(row.get::<_, &str>(column)).map_err(|e| Error::Corrupt {
            key: id.to_owned(),
            reason: format!("attempt {column}: {e}"),
        })
    };
    let error_kind: Option<&str> = row.get("error_kind");
    Ok(AttemptRecord {
        delivery_id: summary.id.clone(),
        event_id: summary.event_id.clone(),
        event_type: summary.event_type.clone(),
        subscription: summary.subscription.clone(),
        attempt: u32::try_from(row.get::<_, i32>("attempt")).unwrap_or(0),
        started_at: row.get("started_at"),
        duration_ms: u64::try_from(row.get::<_, i64>("duration_ms")).unwrap_or(0),
        request_headers: headers("request_headers")?,
        status: row.get::<_, Option<i32>>("status").and_then(|s| u16::try_from(s).ok()),
        response_headers: headers("response_headers")?,
        response_body: row.get("response_body"),
        error_kind: error_kind
            .map(|k| {
                parsed(id, "error kind", k, |k| {
                    serde_json::from_value::<ErrorKind>(serde_json::Value::String(k.to_owned()))
                })
            })
            .transpose()?,
        error: row.get("error"),
        next_attempt_at: row.get("next_attempt_at"),
        tenant: summary.tenant.clone(),
    })
}

/// A delivery as the batch being recorded sees it.
struct Slot {
    /// Its summary now (after the entries applied so far).
    summary: Option<DeliverySummary>,
    /// Its row's `at`, if it has a row.
    stored_at: Option<i64>,
    /// Whether the entries changed it.
    dirty: bool,
}

/// What one batch writes, gathered while its entries are applied.
#[derive(Default)]
struct Writes {
    /// Event records to store, by key.
    events: Vec<(String, EventRecord)>,
    /// Keys of stored event records that `events` replaces.
    replaced_events: Vec<String>,
    /// Attempts to append: the delivery's `at`, the attempt.
    attempts: Vec<(i64, AttemptRecord)>,
    /// Count changes per subscription and state.
    counts: BTreeMap<(String, DeliveryState), i64>,
    /// Latest success and failure per subscription.
    last: BTreeMap<String, (Option<Millis>, Option<Millis>)>,
}

impl PostgresHistory {
    /// Connects to `config.postgres_url` with the TLS of
    /// `history.postgres_tls` (the `tls` module; the migrations run on a pooled
    /// connection, so they use it too), migrates its schema (refusing a
    /// newer one) and returns the history.
    pub async fn connect(config: &HistoryConfig) -> Result<PostgresHistory, Error> {
        let url = config
            .postgres_url
            .as_ref()
            .ok_or_else(|| Error::Postgres("history.postgres_url is not set".to_owned()))?;
        let mut pg_config: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| Error::Postgres(format!("history.postgres_url is not a PostgreSQL URL: {e}")))?;
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("hookd");
        }
        let mode = config
            .postgres_tls_in_force()
            .map_err(|e| Error::Postgres(e.to_string()))?
            .map_or(crate::config::PostgresTls::Disable, |(mode, _)| mode);
        let ca_file = config.postgres_ca_file.as_deref();
        let (connector, ssl_mode) = tls::connector(mode, ca_file)?;
        pg_config.ssl_mode(ssl_mode);
        let manager = Manager::from_config(
            pg_config,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.postgres_pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::Postgres(e.to_string()))?;
        let history = PostgresHistory {
            pool,
            body_limit: config.response_body_limit,
            days: Mutex::new(HashSet::new()),
        };
        let target = crate::model::redact_url(url.expose());
        let trusted = tls::trusted(mode, ca_file);
        history.migrate().await.map_err(|e| match e {
            Error::Postgres(e) => Error::Postgres(format!("{target} (history.postgres_url, {trusted}): {e}")),
            e => e,
        })?;
        Ok(history)
    }

    /// The schema version this binary migrates to.
    pub fn schema_version() -> i64 {
        schema::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max()
            .unwrap_or(0)
    }

    /// Applies the migrations this binary has and the database lacks,
    /// under [`MIGRATION_LOCK`]; refuses a newer schema.
    async fn migrate(&self) -> Result<(), Error> {
        let mut client = self.pool.get().await.map_err(pool)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let result = async {
            let known = Self::schema_version();
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&SCHEMA_TABLE])
                .await
                .map_err(pg)?
                .get(0);
            if exists {
                let found: Option<i64> = client
                    .query_one(&format!("SELECT max(version)::bigint FROM {SCHEMA_TABLE}"), &[])
                    .await
                    .map_err(pg)?
                    .get(0);
                if let Some(found) = found.filter(|&found| found > known) {
                    return Err(Error::Schema { found, known });
                }
            }
            schema::migrations::runner()
                .set_migration_table_name(SCHEMA_TABLE)
                .run_async(&mut **client)
                .await
                .map_err(|e| Error::Postgres(format!("cannot migrate the delivery log's schema: {e}")))?;
            Ok(())
        }
        .await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result?;
        unlocked.map_err(pg)?;
        Ok(())
    }

    /// Makes sure the partitions of `days` (and of today and tomorrow)
    /// exist.
    async fn ensure_days(&self, mut days: BTreeSet<i64>) -> Result<(), Error> {
        let today = day_of(crate::queue::now_ms());
        days.extend([today, today + 1]);
        let missing: Vec<i64> = {
            let known = self.days.lock().unwrap_or_else(|e| e.into_inner());
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(pool)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await
            .map_err(pg)?;
        for &day in &missing {
            let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
            for table in PARTITIONED {
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table}_d{day} PARTITION OF {table} FOR VALUES FROM ({from}) TO ({to})"
                ))
                .await
                .map_err(pg)?;
            }
        }
        tx.commit().await.map_err(pg)?;
        self.days.lock().unwrap_or_else(|e| e.into_inner()).extend(missing);
        Ok(())
    }

    /// Forgets which partitions exist (after a write found one missing:
    /// another process trimmed it).
    fn forget_days(&self) {
        self.days.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Applies `entries` in one transaction (see the module docs).
    async fn write(&self, entries: &[Entry]) -> Result<(), Error> {
        let mut client = self.pool.get().await.map_err(pool)?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut ids: Vec<&str> = entries
            .iter()
            .filter_map(|e| e.delivery_id().map(DeliveryId::as_str))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut keys: Vec<String> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Event(record) => Some(event_key(record.tenant.as_ref(), &record.id)),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let locks = ids
            .iter()
            .map(|id| lock_key("d", id))
            .chain(keys.iter().map(|k| lock_key("e", k)))
            .collect();
        lock_all(&tx, locks).await?;

        let mut slots: HashMap<String, Slot> = HashMap::with_capacity(ids.len());
        if !ids.is_empty() {
            let rows = tx
                .query(&format!("SELECT {SUMMARY} FROM deliveries WHERE id = ANY($1)"), &[&ids])
                .await
                .map_err(pg)?;
            for row in &rows {
                let (summary, at) = match summary_of(row) {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::error!(error = %e, "corrupt delivery log row; its entries are skipped");
                        continue;
                    }
                };
                slots.entry(summary.id.as_str().to_owned()).or_insert(Slot {
                    summary: Some(summary),
                    stored_at: Some(at),
                    dirty: false,
                });
            }
        }
        // Kept event records, by key, with when each was accepted.
        let mut known_events: HashMap<String, i64> = HashMap::new();
        if !keys.is_empty() {
            let rows = tx
                .query(
                    "SELECT event_key, max(created_at) FROM events WHERE event_key = ANY($1) GROUP BY event_key",
                    &[&keys],
                )
                .await
                .map_err(pg)?;
            known_events.extend(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))));
        }
        let mut stored_events: HashSet<String> = known_events.keys().cloned().collect();

        let mut writes = Writes::default();
        for entry in entries {
            if let Entry::Event(record) = entry {
                // A record kept already stays, unless this one was accepted
                // later (an id reused after the dedup window): the log keeps
                // the body last taken.
                let key = event_key(record.tenant.as_ref(), &record.id);
                match known_events.get(&key) {
                    Some(&kept) if kept >= record.created_at => {}
                    kept => {
                        if kept.is_some() {
                            // Stored before this batch: its row goes; taken
                            // earlier in this batch: that write goes.
                            if stored_events.remove(&key) {
                                writes.replaced_events.push(key.clone());
                            }
                            writes.events.retain(|(k, _)| k != &key);
                        }
                        known_events.insert(key.clone(), record.created_at);
                        writes.events.push((key, record.clone()));
                    }
                }
                continue;
            }
            let Some(id) = entry.delivery_id() else { continue };
            let slot = slots.entry(id.as_str().to_owned()).or_insert(Slot {
                summary: None,
                stored_at: None,
                dirty: false,
            });
            let Some(change) = apply(slot.summary.clone(), entry, self.body_limit) else {
                continue;
            };
            let after = change.after;
            let sub = after.subscription.as_str();
            if change.before != Some(after.state) {
                if let Some(before) = change.before {
                    *writes.counts.entry((sub.to_owned(), before)).or_default() -= 1;
                }
                *writes.counts.entry((sub.to_owned(), after.state)).or_default() += 1;
            }
            if let Some(attempt) = change.attempt {
                let last = writes.last.entry(sub.to_owned()).or_default();
                let at = Some(attempt.started_at);
                if change.success == Some(true) {
                    last.0 = last.0.max(at);
                } else {
                    last.1 = last.1.max(at);
                }
                let delivery_at = slot.stored_at.unwrap_or(after.created_at.max(0));
                writes.attempts.push((delivery_at, attempt));
            }
            slot.summary = Some(after);
            slot.dirty = true;
        }

        self.write_summaries(&tx, &slots).await?;
        // Only the attempts written now are counted: a batch written again
        // (a retry after a commit whose answer was lost) finds its
        // attempts there already.
        let written = write_attempts(&tx, &writes.attempts).await?;
        write_events(&tx, &writes.events, &writes.replaced_events).await?;
        write_counts(&tx, &writes).await?;
        let counted = entries.iter().filter(|e| match e {
            Entry::Attempted { attempt, .. } => written.contains(&(
                attempt.delivery_id.as_str().to_owned(),
                attempt.attempt,
                attempt.started_at,
            )),
            _ => false,
        });
        write_activity(&tx, counted).await?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    /// Inserts the new summaries and updates the changed ones.
    async fn write_summaries(&self, tx: &Transaction<'_>, slots: &HashMap<String, Slot>) -> Result<(), Error> {
        let mut fresh = Columns::default();
        let mut changed = Columns::default();
        let mut dirty: Vec<&Slot> = slots.values().filter(|s| s.dirty).collect();
        dirty.sort_by(|a, b| {
            let id = |s: &Slot| s.summary.as_ref().map(|s| s.id.as_str().to_owned());
            id(a).cmp(&id(b))
        });
        for slot in dirty {
            let Some(summary) = &slot.summary else { continue };
            match slot.stored_at {
                None => fresh.push(summary, summary.created_at.max(0)),
                Some(at) => changed.push(summary, at),
            }
        }
        if !fresh.id.is_empty() {
            tx.execute(
                "INSERT INTO deliveries (id, at, created_at, updated_at, event_id, event_key, event_type, subscription, \
                 tenant, owner, state, attempts, last_status, last_error, next_attempt_at, note) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[], $13::int[], $14::text[], \
                 $15::bigint[], $16::text[])",
                &fresh.params(),
            )
            .await
            .map_err(pg)?;
        }
        if !changed.id.is_empty() {
            tx.execute(
                "UPDATE deliveries d SET updated_at = u.updated_at, state = u.state, attempts = u.attempts, \
                 last_status = u.last_status, last_error = u.last_error, next_attempt_at = u.next_attempt_at, \
                 note = u.note \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[], $13::int[], $14::text[], \
                 $15::bigint[], $16::text[]) AS u(id, at, created_at, updated_at, event_id, event_key, event_type, \
                 subscription, tenant, owner, state, attempts, last_status, last_error, next_attempt_at, note) \
                 WHERE d.id = u.id AND d.at = u.at",
                &changed.params(),
            )
            .await
            .map_err(pg)?;
        }
        Ok(())
    }

    /// Drops every day's partitions that lie wholly before `cutoff`,
    /// uncounting what they held; returns how many deliveries and event
    /// records went.
    async fn drop_old_days(&self, cutoff: Millis) -> Result<u64, Error> {
        let mut client = self.pool.get().await.map_err(pool)?;
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'deliveries'::regclass",
                &[],
            )
            .await
            .map_err(pg)?;
        let mut old: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.get::<_, String>(0).strip_prefix("deliveries_d")?.parse().ok())
            .filter(|&day: &i64| (day + 1) * DAY_MS <= cutoff)
            .collect();
        old.sort_unstable();
        if old.is_empty() {
            return Ok(0);
        }
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute("LOCK TABLE deliveries, attempts, events IN ACCESS EXCLUSIVE MODE")
            .await
            .map_err(pg)?;
        let mut removed = 0u64;
        let mut uncount: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut events = 0i64;
        for day in &old {
            for row in tx
                .query(
                    &format!("SELECT subscription::text, state, count(*) FROM deliveries_d{day} GROUP BY 1, 2"),
                    &[],
                )
                .await
                .map_err(pg)?
            {
                let n: i64 = row.get(2);
                *uncount.entry((row.get(0), row.get(1))).or_default() += n;
                removed += n as u64;
            }
            let exists: bool = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("events_d{day}")])
                .await
                .map_err(pg)?
                .get(0);
            if exists {
                let n: i64 = tx
                    .query_one(&format!("SELECT count(*) FROM events_d{day}"), &[])
                    .await
                    .map_err(pg)?
                    .get(0);
                events += n;
            }
            tx.batch_execute(&format!(
                "DROP TABLE IF EXISTS deliveries_d{day}, attempts_d{day}, events_d{day}"
            ))
            .await
            .map_err(pg)?;
        }
        uncount_all(&tx, &uncount).await?;
        tx.execute("UPDATE event_count SET n = n - $1", &[&events])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        let mut days = self.days.lock().unwrap_or_else(|e| e.into_inner());
        for day in &old {
            days.remove(day);
        }
        Ok(removed + events as u64)
    }

    /// Deletes up to [`TRIM_BATCH`] deliveries created before `cutoff` or
    /// beyond `max_count`, oldest first, with their attempts.
    async fn trim_deliveries(&self, cutoff: Millis, max_count: usize) -> Result<u64, Error> {
        let mut client = self.pool.get().await.map_err(pool)?;
        let victims = oldest(
            &client,
            "SELECT coalesce(sum(n), 0)::bigint FROM subscription_counts",
            "SELECT id, at FROM deliveries",
            "id",
            cutoff,
            max_count,
        )
        .await?;
        if victims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = victims.iter().map(|r| r.get(0)).collect();
        let ats: Vec<i64> = victims.iter().map(|r| r.get(1)).collect();
        let tx = client.transaction().await.map_err(pg)?;
        lock_all(&tx, ids.iter().map(|id| lock_key("d", id)).collect()).await?;
        let gone = tx
            .query(
                "DELETE FROM deliveries d USING unnest($1::text[], $2::bigint[]) AS v(id, at) \
                 WHERE d.id = v.id AND d.at = v.at RETURNING d.subscription::text, d.state",
                &[&ids, &ats],
            )
            .await
            .map_err(pg)?;
        tx.execute(
            "DELETE FROM attempts a USING unnest($1::text[], $2::bigint[]) AS v(id, at) \
             WHERE a.delivery_id = v.id AND a.delivery_at = v.at",
            &[&ids, &ats],
        )
        .await
        .map_err(pg)?;
        let mut uncount: BTreeMap<(String, String), i64> = BTreeMap::new();
        for row in &gone {
            *uncount.entry((row.get(0), row.get(1))).or_default() += 1;
        }
        uncount_all(&tx, &uncount).await?;
        tx.commit().await.map_err(pg)?;
        Ok(gone.len() as u64)
    }

    /// Deletes up to [`TRIM_BATCH`] event records created before `cutoff`
    /// or beyond `max_count`, oldest first.
    async fn trim_events(&self, cutoff: Millis, max_count: usize) -> Result<u64, Error> {
        let mut client = self.pool.get().await.map_err(pool)?;
        let victims = oldest(
            &client,
            "SELECT n FROM event_count",
            "SELECT event_key, at FROM events",
            "event_key",
            cutoff,
            max_count,
        )
        .await?;
        if victims.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = victims.iter().map(|r| r.get(0)).collect();
        let ats: Vec<i64> = victims.iter().map(|r| r.get(1)).collect();
        let tx = client.transaction().await.map_err(pg)?;
        lock_all(&tx, keys.iter().map(|k| lock_key("e", k)).collect()).await?;
        let gone = tx
            .execute(
                "DELETE FROM events e USING unnest($1::text[], $2::bigint[]) AS v(k, at) \
                 WHERE e.event_key = v.k AND e.at = v.at",
                &[&keys, &ats],
            )
            .await
            .map_err(pg)?;
        tx.execute("UPDATE event_count SET n = n - $1", &[&(gone as i64)])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(gone)
    }
}

/// The oldest rows `select` (`… FROM <table>`) gives, ordered by `at`
/// and `key`: those created before `cutoff` and those beyond `max_count`
/// of the `total` query's count, up to [`TRIM_BATCH`].
async fn oldest(
    client: &deadpool_postgres::Object,
    total: &str,
    select: &str,
    key: &str,
    cutoff: Millis,
    max_count: usize,
) -> Result<Vec<Row>, Error> {
    let batch = TRIM_BATCH as i64;
    let from = select.split(" FROM ").nth(1).unwrap_or_default();
    let old: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM (SELECT 1 FROM {from} WHERE at < $1 LIMIT $2) AS o"),
            &[&cutoff.max(0), &batch],
        )
        .await
        .map_err(pg)?
        .get(0);
    let total: i64 = client.query_one(total, &[]).await.map_err(pg)?.get(0);
    let over = (total - old - max_count as i64).max(0);
    let take = old + over.min(batch - old);
    if take <= 0 {
        return Ok(Vec::new());
    }
    client
        .query(&format!("{select} ORDER BY at, {key} LIMIT $1"), &[&take])
        .await
        .map_err(pg)
}

/// Takes `uncount` (deliveries per subscription and state) off the counts.
async fn uncount_all(tx: &Transaction<'_>, uncount: &BTreeMap<(String, String), i64>) -> Result<(), Error> {
    for ((subscription, state), n) in uncount {
        tx.execute(
            "UPDATE subscription_counts SET n = n - $3 WHERE subscription = $1 AND state = $2",
            &[subscription, state, n],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

/// Summaries as parallel columns, for one `unnest` statement.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    at: Vec<i64>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    event_id: Vec<String>,
    event_key: Vec<String>,
    event_type: Vec<String>,
    subscription: Vec<String>,
    tenant: Vec<Option<String>>,
    owner: Vec<Option<String>>,
    state: Vec<&'static str>,
    attempts: Vec<i32>,
    last_status: Vec<Option<i32>>,
    last_error: Vec<Option<String>>,
    next_attempt_at: Vec<Option<i64>>,
    note: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, s: &DeliverySummary, at: i64) {
        self.id.push(s.id.as_str().to_owned());
        self.at.push(at);
        self.created_at.push(s.created_at);
        self.updated_at.push(s.updated_at);
        self.event_id.push(s.event_id.as_str().to_owned());
        self.event_key.push(event_key(s.tenant.as_ref(), &s.event_id));
        self.event_type.push(s.event_type.clone());
        self.subscription.push(s.subscription.as_str().to_owned());
        self.tenant.push(s.tenant.as_ref().map(|t| t.as_str().to_owned()));
        self.owner.push(s.owner().map(|t| t.as_str().to_owned()));
        self.state.push(s.state.as_str());
        self.attempts.push(i32::try_from(s.attempts).unwrap_or(i32::MAX));
        self.last_status.push(s.last_status.map(i32::from));
        self.last_error
            .push(s.last_error.as_deref().map(|e| clean(e).into_owned()));
        self.next_attempt_at.push(s.next_attempt_at);
        self.note.push(s.note.as_deref().map(|n| clean(n).into_owned()));
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.id,
            &self.at,
            &self.created_at,
            &self.updated_at,
            &self.event_id,
            &self.event_key,
            &self.event_type,
            &self.subscription,
            &self.tenant,
            &self.owner,
            &self.state,
            &self.attempts,
            &self.last_status,
            &self.last_error,
            &self.next_attempt_at,
            &self.note,
        ]
    }
}

/// An attempt as `attempts_once` knows it: delivery id, number, start.
type AttemptKey = (String, u32, i64);

/// Appends `attempts`, in order, skipping those recorded already (the
/// unique index `attempts_once`): the keys of those it wrote.
async fn write_attempts(tx: &Transaction<'_>, attempts: &[(i64, AttemptRecord)]) -> Result<HashSet<AttemptKey>, Error> {
    if attempts.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ids = Vec::with_capacity(attempts.len());
    let mut ats = Vec::with_capacity(attempts.len());
    let mut numbers = Vec::with_capacity(attempts.len());
    let mut started = Vec::with_capacity(attempts.len());
    let mut durations = Vec::with_capacity(attempts.len());
    let mut requests = Vec::with_capacity(attempts.len());
    let mut statuses = Vec::with_capacity(attempts.len());
    let mut responses = Vec::with_capacity(attempts.len());
    let mut bodies = Vec::with_capacity(attempts.len());
    let mut kinds = Vec::with_capacity(attempts.len());
    let mut errors = Vec::with_capacity(attempts.len());
    let mut nexts = Vec::with_capacity(attempts.len());
    for (at, a) in attempts {
        ids.push(a.delivery_id.as_str());
        ats.push(*at);
        numbers.push(i32::try_from(a.attempt).unwrap_or(i32::MAX));
        started.push(a.started_at);
        durations.push(i64::try_from(a.duration_ms).unwrap_or(i64::MAX));
        requests.push(headers_json(&a.request_headers));
        statuses.push(a.status.map(i32::from));
        responses.push(headers_json(&a.response_headers));
        bodies.push(clean(&a.response_body));
        kinds.push(a.error_kind.map(kind_name));
        errors.push(a.error.as_deref().map(clean));
        nexts.push(a.next_attempt_at);
    }
    let rows = tx.query(
        "INSERT INTO attempts (delivery_id, delivery_at, attempt, started_at, duration_ms, request_headers, status, \
         response_headers, response_body, error_kind, error, next_attempt_at) \
         SELECT id, at, n, s, d, rq::jsonb, st, rs::jsonb, b, k, e, nx FROM unnest($1::text[], $2::bigint[], \
         $3::int[], $4::bigint[], $5::bigint[], $6::text[], $7::int[], $8::text[], $9::text[], $10::text[], \
         $11::text[], $12::bigint[]) WITH ORDINALITY AS u(id, at, n, s, d, rq, st, rs, b, k, e, nx, i) ORDER BY i \
         ON CONFLICT (delivery_id, delivery_at, attempt, started_at) DO NOTHING \
         RETURNING delivery_id, attempt, started_at",
        &[
            &ids, &ats, &numbers, &started, &durations, &requests, &statuses, &responses, &bodies, &kinds, &errors,
            &nexts,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| {
            let number: i32 = r.get(1);
            (
                r.get::<_, String>(0),
                u32::try_from(number).unwrap_or(0),
                r.get::<_, i64>(2),
            )
        })
        .collect())
}

/// Stores event records, replacing the rows of `replaced` (kept keys
/// accepted again), and counts the new ones.
async fn write_events(
    tx: &Transaction<'_>,
    events: &[(String, EventRecord)],
    replaced: &[String],
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    if !replaced.is_empty() {
        tx.execute("DELETE FROM events WHERE event_key = ANY($1)", &[&replaced])
            .await
            .map_err(pg)?;
    }
    let keys: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let ids: Vec<&str> = events.iter().map(|(_, r)| r.id.as_str()).collect();
    let tenants: Vec<Option<&str>> = events
        .iter()
        .map(|(_, r)| r.tenant.as_ref().map(TenantId::as_str))
        .collect();
    let types: Vec<&str> = events.iter().map(|(_, r)| r.event_type.as_str()).collect();
    let created: Vec<i64> = events.iter().map(|(_, r)| r.created_at).collect();
    let ats: Vec<i64> = events.iter().map(|(_, r)| r.created_at.max(0)).collect();
    let bodies: Vec<&[u8]> = events.iter().map(|(_, r)| &r.body[..]).collect();
    tx.execute(
        "INSERT INTO events (event_key, id, tenant, event_type, created_at, at, body) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bytea[])",
        &[&keys, &ids, &tenants, &types, &created, &ats, &bodies],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "UPDATE event_count SET n = n + $1",
        &[&((events.len() - replaced.len()) as i64)],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Adds the batch's count changes and latest outcomes, in key order.
async fn write_counts(tx: &Transaction<'_>, writes: &Writes) -> Result<(), Error> {
    let counts: Vec<(&str, &str, i64)> = writes
        .counts
        .iter()
        .filter(|(_, &n)| n != 0)
        .map(|((sub, state), &n)| (sub.as_str(), state.as_str(), n))
        .collect();
    if !counts.is_empty() {
        let subs: Vec<&str> = counts.iter().map(|c| c.0).collect();
        let states: Vec<&str> = counts.iter().map(|c| c.1).collect();
        let ns: Vec<i64> = counts.iter().map(|c| c.2).collect();
        tx.execute(
            "INSERT INTO subscription_counts AS c (subscription, state, n) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) \
             ON CONFLICT (subscription, state) DO UPDATE SET n = c.n + excluded.n",
            &[&subs, &states, &ns],
        )
        .await
        .map_err(pg)?;
    }
    if !writes.last.is_empty() {
        let subs: Vec<&str> = writes.last.keys().map(String::as_str).collect();
        let success: Vec<Option<i64>> = writes.last.values().map(|l| l.0).collect();
        let failure: Vec<Option<i64>> = writes.last.values().map(|l| l.1).collect();
        tx.execute(
            "INSERT INTO subscription_last AS l (subscription, last_success_at, last_failure_at) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (subscription) DO UPDATE SET \
             last_success_at = GREATEST(l.last_success_at, excluded.last_success_at), \
             last_failure_at = GREATEST(l.last_failure_at, excluded.last_failure_at)",
            &[&subs, &success, &failure],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

/// The stored name of an activity view: `''` for every attempt.
fn view_name(view: Option<&TenantId>) -> &str {
    view.map_or("", TenantId::as_str)
}

/// Adds the batch's attempts to their minutes ([`activity::deltas`]), in
/// key order.
async fn write_activity<'a>(tx: &Transaction<'_>, entries: impl IntoIterator<Item = &'a Entry>) -> Result<(), Error> {
    let mut deltas: Vec<_> = activity::deltas(entries).into_iter().collect();
    if deltas.is_empty() {
        return Ok(());
    }
    deltas.sort_by(|a, b| a.0.cmp(&b.0));
    let minutes: Vec<i64> = deltas.iter().map(|(k, _)| k.minute).collect();
    let views: Vec<&str> = deltas.iter().map(|(k, _)| view_name(k.view.as_ref())).collect();
    let succeeded: Vec<i64> = deltas.iter().map(|(_, r)| r.counts.succeeded as i64).collect();
    let failed: Vec<i64> = deltas.iter().map(|(_, r)| r.counts.failed as i64).collect();
    let latency: Vec<String> = deltas
        .iter()
        .map(|(_, r)| {
            let cells: Vec<String> = r.counts.latency.iter().map(u64::to_string).collect();
            format!("{{{}}}", cells.join(","))
        })
        .collect();
    let tenants: Vec<String> = deltas
        .iter()
        .map(|(_, r)| serde_json::to_string(&r.tenants).unwrap_or_else(|_| "{}".to_owned()))
        .collect();
    tx.execute(
        "INSERT INTO activity AS a (minute, view, succeeded, failed, latency, tenants) \
         SELECT m, v, s, f, l::bigint[], t::jsonb FROM unnest($1::bigint[], $2::text[], $3::bigint[], \
         $4::bigint[], $5::text[], $6::text[]) AS u(m, v, s, f, l, t) \
         ON CONFLICT (minute, view) DO UPDATE SET \
         succeeded = a.succeeded + excluded.succeeded, failed = a.failed + excluded.failed, \
         latency = ARRAY(SELECT x + y FROM unnest(a.latency, excluded.latency) WITH ORDINALITY AS z(x, y, i) \
         ORDER BY i), \
         tenants = (SELECT coalesce(jsonb_object_agg(k, n), '{}'::jsonb) FROM (SELECT k, sum(v::bigint) AS n \
         FROM (SELECT key AS k, value AS v FROM jsonb_each_text(a.tenants) UNION ALL \
         SELECT key, value FROM jsonb_each_text(excluded.tenants)) AS both_ GROUP BY k) AS summed)",
        &[&minutes, &views, &succeeded, &failed, &latency, &tenants],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Whether `e` says a row had no partition to go to (another process
/// dropped a day this one thought existed).
fn no_partition(e: &Error) -> bool {
    matches!(e, Error::Postgres(text) if text.contains("no partition of relation"))
}

#[async_trait::async_trait]
impl History for PostgresHistory {
    async fn record(&self, entries: &[Entry]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let days = |entries: &[Entry]| -> BTreeSet<i64> {
            entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Created(s) => Some(day_of(s.created_at)),
                    Entry::Attempted { attempt, .. } => Some(day_of(attempt.started_at)),
                    Entry::Event(r) => Some(day_of(r.created_at)),
                    Entry::State { .. } => None,
                })
                .collect()
        };
        self.ensure_days(days(entries)).await?;
        match self.write(entries).await {
            Err(e) if no_partition(&e) => {
                self.forget_days();
                self.ensure_days(days(entries)).await?;
                self.write(entries).await
            }
            other => other,
        }
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<(DeliverySummary, Vec<AttemptRecord>)>, Error> {
        let client = self.pool.get().await.map_err(pool)?;
        let Some(row) = client
            .query_opt(
                &format!("SELECT {SUMMARY} FROM deliveries WHERE id = $1 LIMIT 1"),
                &[&id.as_str()],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let (summary, at) = summary_of(&row)?;
        let rows = client
            .query(
                "SELECT attempt, started_at, duration_ms, request_headers::text AS request_headers, status, \
                 response_headers::text AS response_headers, response_body, error_kind, error, next_attempt_at \
                 FROM attempts WHERE delivery_id = $1 AND delivery_at = $2 ORDER BY seq",
                &[&id.as_str(), &at],
            )
            .await
            .map_err(pg)?;
        let attempts = rows.iter().map(|r| attempt_of(&summary, r)).collect::<Result<_, _>>()?;
        Ok(Some((summary, attempts)))
    }

    async fn event(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Vec<DeliverySummary>, Error> {
        let client = self.pool.get().await.map_err(pool)?;
        let rows = client
            .query(
                &format!("SELECT {SUMMARY} FROM deliveries WHERE event_key = $1 ORDER BY id"),
                &[&event_key(tenant, event_id)],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(|r| summary_of(r).map(|(s, _)| s)).collect()
    }

    async fn event_record(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Option<EventRecord>, Error> {
        let client = self.pool.get().await.map_err(pool)?;
        let key = event_key(tenant, event_id);
        let Some(row) = client
            .query_opt(
                "SELECT id, tenant, event_type, created_at, body FROM events WHERE event_key = $1 LIMIT 1",
                &[&key],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let tenant: Option<&str> = row.get("tenant");
        Ok(Some(EventRecord {
            id: parsed(&key, "event id", row.get("id"), EventId::parse)?,
            event_type: row.get("event_type"),
            created_at: row.get("created_at"),
            body: Bytes::from(row.get::<_, Vec<u8>>("body")),
            tenant: tenant.map(|t| parsed(&key, "tenant", t, TenantId::parse)).transpose()?,
        }))
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
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        let bind = |params: &mut Vec<Box<dyn ToSql + Sync + Send>>, value: Box<dyn ToSql + Sync + Send>| {
            params.push(value);
            format!("${}", params.len())
        };
        if let Some(tenant) = &filter.tenant {
            let p = bind(&mut params, Box::new(tenant.as_str().to_owned()));
            conditions.push(format!("owner = {p}"));
        }
        if let Some(subscription) = &filter.subscription {
            let p = bind(&mut params, Box::new(subscription.as_str().to_owned()));
            conditions.push(format!("subscription = {p}"));
        }
        if let Some(state) = filter.state {
            let p = bind(&mut params, Box::new(state.as_str()));
            conditions.push(format!("state = {p}"));
        }
        if let Some(from) = filter.from {
            let p = bind(&mut params, Box::new(from.max(0)));
            conditions.push(format!("at >= {p}"));
        }
        if let Some(to) = filter.to {
            let p = bind(&mut params, Box::new(to.max(0)));
            conditions.push(format!("at < {p}"));
        }
        if let Some((at, id)) = &after {
            let a = bind(&mut params, Box::new(*at));
            let i = bind(&mut params, Box::new(id.as_str().to_owned()));
            conditions.push(format!("(at, id) < ({a}, {i})"));
        }
        let p = bind(
            &mut params,
            Box::new(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)),
        );
        let clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!("SELECT {SUMMARY} FROM deliveries {clause} ORDER BY at DESC, id DESC LIMIT {p}");
        let client = self.pool.get().await.map_err(pool)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&sql, &refs).await.map_err(pg)?;
        let mut items = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in rows.iter().take(limit) {
            let (summary, at) = summary_of(row)?;
            last = Some(position(at, summary.id.as_str()));
            items.push(summary);
        }
        let next_cursor = if rows.len() > limit { last } else { None };
        Ok(Page { items, next_cursor })
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats, Error> {
        let client = self.pool.get().await.map_err(pool)?;
        let mut stats = SubscriptionStats::default();
        for row in client
            .query(
                "SELECT state, n FROM subscription_counts WHERE subscription = $1",
                &[&subscription.as_str()],
            )
            .await
            .map_err(pg)?
        {
            let state: &str = row.get(0);
            if let Ok(state) = state.parse::<DeliveryState>() {
                stats.add(state, row.get(1));
            }
        }
        if let Some(row) = client
            .query_opt(
                "SELECT last_success_at, last_failure_at FROM subscription_last WHERE subscription = $1",
                &[&subscription.as_str()],
            )
            .await
            .map_err(pg)?
        {
            stats.last_success_at = row.get(0);
            stats.last_failure_at = row.get(1);
        }
        Ok(stats)
    }

    async fn activity(&self, tenant: Option<&TenantId>, from: Millis, to: Millis) -> Result<Activity, Error> {
        let minutes = activity::window_minutes(from, to);
        let view = view_name(tenant);
        let client = self.pool.get().await.map_err(pool)?;
        let rows = client
            .query(
                "SELECT minute, succeeded, failed, latency, tenants::text FROM activity \
                 WHERE view = $1 AND minute = ANY($2)",
                &[&view, &minutes],
            )
            .await
            .map_err(pg)?;
        let mut found: HashMap<i64, MinuteRecord> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let minute: i64 = row.get(0);
            let corrupt = |reason: String| Error::Corrupt {
                key: format!("activity of minute {minute}, view `{view}`"),
                reason,
            };
            let mut record = MinuteRecord::default();
            record.counts.succeeded = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
            record.counts.failed = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
            let latency: Vec<i64> = row.get(3);
            if latency.len() != LATENCY_BUCKETS {
                return Err(corrupt(format!("{} latency buckets", latency.len())));
            }
            for (cell, n) in record.counts.latency.iter_mut().zip(latency) {
                *cell = u64::try_from(n).unwrap_or(0);
            }
            record.tenants = serde_json::from_str(row.get::<_, &str>(4)).map_err(|e| corrupt(e.to_string()))?;
            found.insert(minute, record);
        }
        let records = minutes.iter().map(|m| found.remove(m)).collect();
        Ok(activity::assemble(&minutes, records))
    }

    async fn trim(&self, now: Millis, max_age: Duration, max_count: usize) -> Result<u64, Error> {
        let age = Millis::try_from(max_age.as_millis()).unwrap_or(Millis::MAX);
        let cutoff = now.saturating_sub(age);
        let retention = Millis::try_from(activity::RETENTION.as_millis()).unwrap_or(Millis::MAX);
        let mut removed = self.drop_old_days(cutoff).await?;
        removed += self.trim_deliveries(cutoff, max_count).await?;
        removed += self.trim_events(cutoff, max_count).await?;
        let client = self.pool.get().await.map_err(pool)?;
        client
            .execute(
                "DELETE FROM activity WHERE minute < $1",
                &[&now.saturating_sub(retention)],
            )
            .await
            .map_err(pg)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_lock_keys_are_stable() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(-5), 0, "times before the epoch go to day 0");
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
        assert_eq!(lock_key("d", "dlv_1"), lock_key("d", "dlv_1"));
        assert_ne!(
            lock_key("d", "x"),
            lock_key("e", "x"),
            "deliveries and events lock apart"
        );
    }

    #[test]
    fn the_schema_has_a_version() {
        assert!(PostgresHistory::schema_version() >= 1);
    }
}
