//! The catalogue in a redb file (see the parent module).
//!
//! The file is `catalog.redb` in `queue.data_dir`, beside the embedded
//! queue's. Writes are rare (an API call each), so every call runs its own
//! transaction on the blocking pool; redb lets one write transaction run at
//! a time, which makes [`CatalogStore::apply`] atomic and serial. Every
//! write commits durably (fsync) before it answers: a change the API
//! confirmed survives a crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::queue::embedded::{create_database, Unopened};
use redb::{Database, ReadableTable, TableDefinition};

use super::{CatalogStore, Contents, Error, Kind, Record, Write};
use crate::config::QueueConfig;
use crate::model::Millis;

/// The store's file inside `queue.data_dir`.
pub const FILE_NAME: &str = "catalog.redb";

/// (kind name as [`Kind::as_str`] writes it, id) → the record's body.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
/// [`VERSION`] → the catalogue's version; absent until the first write.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key id → when the key was last used (ms).
const USES: TableDefinition<&str, i64> = TableDefinition::new("uses");

/// Session id → its expiry and body ([`super::encode_session`]).
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// Most expired sessions one [`CatalogStore::put_session`] sweeps away, so
/// the table stays bounded without a sweep of its own.
const SWEEP: usize = 64;

/// The key of the version in [`META`].
const VERSION: &str = "version";

/// The catalogue in `catalog.redb`.
pub struct EmbeddedCatalog {
    /// The open store, shared with the blocking tasks.
    db: Arc<Database>,
    /// The store's file, for messages.
    path: Arc<PathBuf>,
}

/// A redb failure, as an [`Error::Store`] naming the file and the step.
fn failed(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{}: {what}: {e}", path.display()))
}

impl EmbeddedCatalog {
    /// Opens (creating it and `queue.data_dir` if needed) `catalog.redb`
    /// in `queue.data_dir`. Fails with [`Error::InUse`] if it is already
    /// open, in this process or another.
    pub fn open(config: &QueueConfig) -> Result<EmbeddedCatalog, Error> {
        let (db, path) = create_database(
            &config.data_dir,
            FILE_NAME,
            "restore it from a backup, or move it aside to start an empty catalogue",
        )
        .map_err(|e| match e {
            Unopened::InUse => Error::InUse {
                path: config.data_dir.join(FILE_NAME),
            },
            Unopened::Failed(message) => Error::Store(message),
        })?;
        let txn = db.begin_write().map_err(|e| failed(&path, "begin write", e))?;
        {
            txn.open_table(RECORDS).map_err(|e| failed(&path, "create tables", e))?;
            txn.open_table(META).map_err(|e| failed(&path, "create tables", e))?;
            txn.open_table(USES).map_err(|e| failed(&path, "create tables", e))?;
        }
        txn.commit().map_err(|e| failed(&path, "commit", e))?;
        Ok(EmbeddedCatalog {
            db: Arc::new(db),
            path: Arc::new(path),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking pool with the store and its path.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &Path) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&db, &path))
            .await
            .map_err(|e| failed(&self.path, "catalogue task failed", e))?
    }
}

/// The version as `meta` holds it: absent is 0.
fn version_in(table: &impl ReadableTable<&'static str, u64>, path: &Path) -> Result<u64, Error> {
    Ok(table
        .get(VERSION)
        .map_err(|e| failed(path, "read the version", e))?
        .map_or(0, |v| v.value()))
}

#[async_trait::async_trait]
impl CatalogStore for EmbeddedCatalog {
    async fn version(&self) -> Result<u64, Error> {
        self.blocking(|db, path| {
            let txn = db.begin_read().map_err(|e| failed(path, "begin read", e))?;
            let meta = txn.open_table(META).map_err(|e| failed(path, "open meta", e))?;
            version_in(&meta, path)
        })
        .await
    }

    async fn load(&self) -> Result<Contents, Error> {
        self.blocking(|db, path| {
            let txn = db.begin_read().map_err(|e| failed(path, "begin read", e))?;
            let meta = txn.open_table(META).map_err(|e| failed(path, "open meta", e))?;
            let version = version_in(&meta, path)?;
            let table = txn.open_table(RECORDS).map_err(|e| failed(path, "open records", e))?;
            let mut records = Vec::new();
            for entry in table.iter().map_err(|e| failed(path, "read records", e))? {
                let (key, body) = entry.map_err(|e| failed(path, "read records", e))?;
                let (kind, id) = key.value();
                let kind = Kind::parse(kind).ok_or_else(|| {
                    Error::Store(format!(
                        "{}: corrupt catalogue: record `{kind}/{id}` has an unknown kind `{kind}`",
                        path.display()
                    ))
                })?;
                records.push(Record {
                    kind,
                    id: id.to_owned(),
                    body: body.value().to_vec(),
                });
            }
            records.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
            Ok(Contents { version, records })
        })
        .await
    }

    async fn apply(&self, writes: &[Write]) -> Result<u64, Error> {
        for write in writes {
            write.check()?;
        }
        if writes.is_empty() {
            return self.version().await;
        }
        let writes = writes.to_vec();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "begin write", e))?;
            let version = {
                let mut records = txn.open_table(RECORDS).map_err(|e| failed(path, "open records", e))?;
                // Creates are checked in order, against the store and the
                // writes before them, before anything is written.
                let mut touched: HashMap<(Kind, &str), bool> = HashMap::new();
                for write in &writes {
                    let (kind, id) = write.target();
                    if let Write::Expect { body, .. } = write {
                        let there = records
                            .get((kind.as_str(), id))
                            .map_err(|e| failed(path, "read records", e))?;
                        if there.as_ref().map(|v| v.value()) != body.as_deref() {
                            return Err(Error::Changed {
                                kind,
                                id: id.to_owned(),
                            });
                        }
                        continue;
                    }
                    if let Write::Create(_) = write {
                        let there = match touched.get(&(kind, id)) {
                            Some(&there) => there,
                            None => records
                                .get((kind.as_str(), id))
                                .map_err(|e| failed(path, "read records", e))?
                                .is_some(),
                        };
                        if there {
                            // Dropping the transaction aborts it.
                            return Err(Error::Exists {
                                kind,
                                id: id.to_owned(),
                            });
                        }
                    }
                    touched.insert((kind, id), !matches!(write, Write::Delete { .. }));
                }
                for write in &writes {
                    let (kind, id) = write.target();
                    match write {
                        Write::Create(r) | Write::Put(r) => {
                            records
                                .insert((kind.as_str(), id), r.body.as_slice())
                                .map_err(|e| failed(path, "write a record", e))?;
                        }
                        Write::Delete { .. } => {
                            records
                                .remove((kind.as_str(), id))
                                .map_err(|e| failed(path, "delete a record", e))?;
                        }
                        Write::Expect { .. } => {}
                    }
                }
                let mut meta = txn.open_table(META).map_err(|e| failed(path, "open meta", e))?;
                let version = version_in(&meta, path)?
                    .checked_add(1)
                    .ok_or_else(|| Error::Store(format!("{}: the catalogue version overflowed", path.display())))?;
                meta.insert(VERSION, version)
                    .map_err(|e| failed(path, "write the version", e))?;
                version
            };
            txn.commit().map_err(|e| failed(path, "commit", e))?;
            Ok(version)
        })
        .await
    }

    async fn record_uses(&self, uses: &[(String, Millis)]) -> Result<(), Error> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "begin write", e))?;
            {
                let mut table = txn.open_table(USES).map_err(|e| failed(path, "open uses", e))?;
                for (key, at) in &uses {
                    let stored = table
                        .get(key.as_str())
                        .map_err(|e| failed(path, "read key uses", e))?
                        .map(|v| v.value());
                    if stored.is_none_or(|stored| *at > stored) {
                        table
                            .insert(key.as_str(), *at)
                            .map_err(|e| failed(path, "write key uses", e))?;
                    }
                }
            }
            txn.commit().map_err(|e| failed(path, "commit", e))
        })
        .await
    }

    async fn uses(&self) -> Result<Vec<(String, Millis)>, Error> {
        self.blocking(|db, path| {
            let txn = db.begin_read().map_err(|e| failed(path, "begin read", e))?;
            let table = txn.open_table(USES).map_err(|e| failed(path, "open uses", e))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| failed(path, "read key uses", e))? {
                let (key, at) = entry.map_err(|e| failed(path, "read key uses", e))?;
                out.push((key.value().to_owned(), at.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn put_session(&self, id: &str, body: &[u8], expires_at: Millis) -> Result<(), Error> {
        let (id, stored) = (id.to_owned(), super::encode_session(body, expires_at));
        let now = crate::model::now_ms();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "begin write", e))?;
            {
                let mut table = txn.open_table(SESSIONS).map_err(|e| failed(path, "open sessions", e))?;
                // Sweeps a few expired ones on the way: each put pays for
                // the sessions that ended before it.
                let mut expired = Vec::new();
                for entry in table.iter().map_err(|e| failed(path, "read sessions", e))? {
                    let (key, value) = entry.map_err(|e| failed(path, "read sessions", e))?;
                    if super::live_session(value.value(), now).is_none() {
                        expired.push(key.value().to_owned());
                        if expired.len() == SWEEP {
                            break;
                        }
                    }
                }
                for key in &expired {
                    table
                        .remove(key.as_str())
                        .map_err(|e| failed(path, "sweep sessions", e))?;
                }
                table
                    .insert(id.as_str(), stored.as_slice())
                    .map_err(|e| failed(path, "write a session", e))?;
            }
            txn.commit().map_err(|e| failed(path, "commit", e))
        })
        .await
    }

    async fn session(&self, id: &str, now: Millis) -> Result<Option<Vec<u8>>, Error> {
        let id = id.to_owned();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| failed(path, "begin read", e))?;
            let table = match txn.open_table(SESSIONS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(failed(path, "open sessions", e)),
            };
            let stored = table.get(id.as_str()).map_err(|e| failed(path, "read a session", e))?;
            Ok(stored.and_then(|v| super::live_session(v.value(), now)))
        })
        .await
    }

    async fn take_session(&self, id: &str, now: Millis) -> Result<Option<Vec<u8>>, Error> {
        let id = id.to_owned();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "begin write", e))?;
            let taken = {
                let mut table = txn.open_table(SESSIONS).map_err(|e| failed(path, "open sessions", e))?;
                let removed = table
                    .remove(id.as_str())
                    .map_err(|e| failed(path, "take a session", e))?;
                removed.and_then(|v| super::live_session(v.value(), now))
            };
            txn.commit().map_err(|e| failed(path, "commit", e))?;
            Ok(taken)
        })
        .await
    }

    async fn live_sessions(&self, prefix: &str, now: Millis, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let prefix = prefix.to_owned();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| failed(path, "begin read", e))?;
            let table = match txn.open_table(SESSIONS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(failed(path, "open sessions", e)),
            };
            let mut live: Vec<(Millis, String, Vec<u8>)> = Vec::new();
            for entry in table
                .range(prefix.as_str()..)
                .map_err(|e| failed(path, "read sessions", e))?
            {
                let (key, value) = entry.map_err(|e| failed(path, "read sessions", e))?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                let stored = value.value();
                if let Some(body) = super::live_session(stored, now) {
                    let expires_at = Millis::from_be_bytes(stored[..8].try_into().unwrap_or_default());
                    live.push((expires_at, key.value().to_owned(), body));
                }
            }
            live.sort();
            Ok(live.into_iter().take(limit).map(|(_, id, body)| (id, body)).collect())
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> Result<(), Error> {
        let id = id.to_owned();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "begin write", e))?;
            {
                let mut table = txn.open_table(SESSIONS).map_err(|e| failed(path, "open sessions", e))?;
                table
                    .remove(id.as_str())
                    .map_err(|e| failed(path, "end a session", e))?;
            }
            txn.commit().map_err(|e| failed(path, "commit", e))
        })
        .await
    }
}
