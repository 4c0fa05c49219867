//! The catalogue: tenants, API keys, plans and every subscription (the
//! operator's TOML ones and those made through the API), in one versioned
//! snapshot that ingest, dispatch, notify and the API read.
//!
//! Two sources make a [`Snapshot`]: the config file in force (its
//! `[[subscriptions]]`, `[[tenants]]` and `[plans]`, swapped by the
//! reloader) and the records of the [`CatalogStore`] (tenants, keys and
//! subscriptions made through the API), shared by every process using the
//! same backend. [`Catalog::run`] polls the store's version every
//! [`POLL`] and republishes when it moved, so a change made through any
//! process is in force on every process within a second; a change made
//! through this process is published before its API call answers.
//!
//! A stored subscription becomes a [`crate::config::SubscriptionConfig`] whose name is its
//! id (`sub_…`) and whose `owner` is its tenant: every stage downstream
//! (fan-out, endpoints, health, the delivery log) treats both kinds alike.
//! Deleting one leaves a tombstone, so a process meeting a delivery for it
//! knows to cancel it rather than wait for a subscription it has not seen.

pub mod keys;
mod records;
pub mod routes;
mod snapshot;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::bounds::{self, Bounds};
use crate::config::Config;
use crate::model::{now_ms, Millis, SubscriptionName, TenantId};
use crate::sign::Scheme;
use keys::{KeyRecord, Role};
pub use records::{EventType, Origin, Owner, PluginRef, StoredSecret, StoredSubscription, SubscriptionSpec, Tenant};
pub use routes::Routes;
pub use snapshot::Snapshot;
use store::{CatalogStore, Kind, Record, Write};

/// How often every process checks the store for changes.
pub const POLL: Duration = Duration::from_millis(250);

/// How often key use times are written to the store.
const USE_FLUSH: Duration = Duration::from_secs(5);

/// Why a catalogue change was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The change is malformed; `field` names the part at fault.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// The object does not exist (or is not the caller's).
    #[error("{kind} `{id}` does not exist")]
    NotFound { kind: &'static str, id: String },
    /// The object exists already.
    #[error("{kind} `{id}` already exists")]
    Exists { kind: &'static str, id: String },
    /// The object is the operator's, from the config file: read-only here.
    #[error("{kind} `{id}` is declared in the config file; change it there")]
    ReadOnly { kind: &'static str, id: String },
    /// The tenant's plan does not allow it.
    #[error("plan `{plan}` allows {limit}")]
    PlanLimit { plan: String, limit: String },
    /// The store could not be read or written; try again.
    #[error(transparent)]
    Store(#[from] store::Error),
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The catalogue of one process: the snapshot in force, how to change it,
/// and the loop that follows changes made by other processes.
pub struct Catalog {
    /// Tenants, keys and stored subscriptions, shared with other processes.
    store: Arc<dyn CatalogStore>,
    /// The config file in force (the reloader swaps it).
    file: ArcSwap<Config>,
    /// The snapshot in force.
    snapshot: ArcSwap<Snapshot>,
    /// The stored records of the snapshot, to republish on a file change
    /// without reading the store.
    records: Mutex<(u64, Vec<Record>)>,
    /// Counts publications, so followers rebuild what they derive.
    published: watch::Sender<u64>,
    /// Key uses not yet written to the store.
    uses: std::sync::Mutex<HashMap<String, Millis>>,
    /// When the store was last read, its version at least
    /// ([`Catalog::staleness`]).
    read_at: std::sync::atomic::AtomicI64,
}

impl Catalog {
    /// Loads the store and publishes the first snapshot of `file` and it.
    pub async fn open(file: Config, store: Arc<dyn CatalogStore>) -> Result<Arc<Catalog>, Error> {
        let contents = store.load().await?;
        let snapshot = Snapshot::build(&file, contents.version, &contents.records);
        let (published, _) = watch::channel(0);
        Ok(Arc::new(Catalog {
            store,
            file: ArcSwap::from_pointee(file),
            snapshot: ArcSwap::from_pointee(snapshot),
            records: Mutex::new((contents.version, contents.records)),
            published,
            uses: std::sync::Mutex::new(HashMap::new()),
            read_at: now_ms().into(),
        }))
    }

    /// How long since this process last read the store (its version at
    /// least): what its snapshot may have missed, such as a revoked key.
    pub fn staleness(&self) -> std::time::Duration {
        let at = self.read_at.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_millis(u64::try_from(now_ms().saturating_sub(at)).unwrap_or(0))
    }

    /// The store the catalogue lives in, shared with the console's
    /// sessions.
    pub fn store(&self) -> Arc<dyn CatalogStore> {
        self.store.clone()
    }

    /// The config file in force (its last reload).
    pub fn file(&self) -> Arc<Config> {
        self.file.load_full()
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Tells of every publication from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The snapshot that `file` would make with the stored records in force
    /// (for a reload to check before it commits to it).
    pub async fn preview(&self, file: &Config) -> Snapshot {
        let records = self.records.lock().await;
        Snapshot::build(file, records.0, &records.1)
    }

    /// Swaps in a new config file (a reload) and publishes.
    pub async fn set_file(&self, file: Config) {
        self.republish(Some(file)).await;
    }

    /// Builds the snapshot again from the stored records in force (and
    /// `file`, if given, as the new config file) and publishes it.
    async fn republish(&self, file: Option<Config>) {
        let records = self.records.lock().await;
        if let Some(file) = file {
            self.file.store(Arc::new(file));
        }
        let snapshot = Snapshot::build(&self.file.load(), records.0, &records.1);
        self.publish(snapshot);
    }

    fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.published.send_modify(|n| *n += 1);
    }

    /// Reads the store again if its version moved, and publishes. Returns
    /// whether it did.
    pub async fn refresh(&self) -> Result<bool, Error> {
        let mut records = self.records.lock().await;
        let asked = now_ms();
        let version = self.store.version().await?;
        if version == records.0 {
            self.read_at.fetch_max(asked, std::sync::atomic::Ordering::Relaxed);
            return Ok(false);
        }
        let contents = self.store.load().await?;
        self.read_at.fetch_max(asked, std::sync::atomic::Ordering::Relaxed);
        if contents.version < records.0 {
            // Versions only grow: the store lost what it held (a Redis
            // restarted without persistence). The records kept here are
            // not written back: one process's copy could bring back a key
            // revoked or a subscription deleted since, and every process
            // would race to; the store stays the one truth.
            tracing::error!(
                before = records.0,
                now = contents.version,
                records = contents.records.len(),
                "the catalogue store went back from version {} to {}: it lost its data (Redis restarted without \
                 persistence, or was flushed). Tenants, API keys, plans and subscriptions made through the API \
                 are gone from it and no longer in force (the config file's remain); make them again",
                records.0,
                contents.version
            );
        }
        let snapshot = Snapshot::build(&self.file.load(), contents.version, &contents.records);
        *records = (contents.version, contents.records);
        self.publish(snapshot);
        Ok(true)
    }

    /// Follows changes made by other processes, and writes key use times,
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_flush = tokio::time::Instant::now();
        // The first purge runs a poll after the start.
        let mut last_purge = tokio::time::Instant::now() - PURGE_EVERY;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
            if self.snapshot().next_expiry.is_some_and(|at| at <= now_ms()) {
                // A rotated-out secret's grace is over: stop signing with it.
                self.republish(None).await;
            }
            match self.refresh().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("catalogue store answers again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the catalogue store; the last snapshot stays in force");
                }
                Err(_) => {}
            }
            if last_flush.elapsed() >= USE_FLUSH {
                last_flush = tokio::time::Instant::now();
                self.flush_uses().await;
            }
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = tokio::time::Instant::now();
                match self.purge_tombstones().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "tombstones of deleted subscriptions purged"),
                    Err(e) => tracing::warn!(error = %e, "cannot purge tombstones; trying again later"),
                }
            }
        }
        self.flush_uses().await;
    }

    /// Notes that the stored key `id` was used now (written within
    /// a few seconds).
    pub fn key_used(&self, id: &str) {
        if let Ok(mut uses) = self.uses.lock() {
            uses.insert(id.to_owned(), now_ms());
        }
    }

    async fn flush_uses(&self) {
        let uses: Vec<(String, Millis)> = match self.uses.lock() {
            Ok(mut uses) => uses.drain().collect(),
            Err(_) => return,
        };
        if uses.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_uses(&uses).await {
            tracing::warn!(error = %e, "cannot record when keys were last used");
        }
    }

    /// When each key was last used, by key id (this process's recent uses
    /// included).
    pub async fn key_uses(&self) -> Result<HashMap<String, Millis>, Error> {
        let mut all: HashMap<String, Millis> = self.store.uses().await?.into_iter().collect();
        if let Ok(local) = self.uses.lock() {
            for (id, at) in local.iter() {
                let e = all.entry(id.clone()).or_insert(*at);
                *e = (*e).max(*at);
            }
        }
        Ok(all)
    }

    /// Builds writes from the snapshot in force and the raw records it was
    /// built from, and applies them: `build` guards them with
    /// [`Write::Expect`]s of what it read ([`expect`]), so a change made
    /// meanwhile, by any process, is never overwritten; on one, the
    /// store is read again and `build` runs on what it holds now.
    async fn apply_cas<T>(
        &self,
        mut build: impl FnMut(&Snapshot, &[Record]) -> Result<(Vec<Write>, T), Error>,
    ) -> Result<T, Error> {
        let mut last = None;
        for _ in 0..CAS_TRIES {
            let (writes, out) = {
                // Under the lock the snapshot is the one built from these
                // records (a refresh replaces both before letting go).
                let records = self.records.lock().await;
                build(&self.snapshot(), &records.1)?
            };
            match self.apply(writes).await {
                Err(Error::Store(e @ store::Error::Changed { .. })) => {
                    last = Some(e);
                    self.refresh().await?;
                }
                other => return other.map(|()| out),
            }
        }
        Err(Error::Store(last.unwrap_or_else(|| {
            store::Error::Invalid("no compare-and-set write was tried".into())
        })))
    }

    /// Applies `writes` to the store and publishes the result at once.
    async fn apply(&self, writes: Vec<Write>) -> Result<(), Error> {
        self.store.apply(&writes).await.map_err(|e| match e {
            store::Error::Exists { kind, id } => Error::Exists {
                kind: kind.as_str(),
                id,
            },
            e => Error::Store(e),
        })?;
        self.refresh().await?;
        Ok(())
    }

    // --- tenants -------------------------------------------------------

    /// Makes a tenant.
    pub async fn create_tenant(&self, mut tenant: Tenant) -> Result<Tenant, Error> {
        let snapshot = self.snapshot();
        self.check_tenant(&snapshot, &tenant)?;
        if snapshot.tenants.contains_key(&tenant.id) {
            return Err(Error::Exists {
                kind: "tenant",
                id: tenant.id.to_string(),
            });
        }
        let now = now_ms();
        tenant.created_at = now;
        tenant.updated_at = now;
        tenant.generation = uuid::Uuid::now_v7().simple().to_string();
        self.apply(vec![Write::Create(record(Kind::Tenant, tenant.id.as_str(), &tenant))])
            .await?;
        Ok(tenant)
    }

    fn check_tenant(&self, snapshot: &Snapshot, tenant: &Tenant) -> Result<(), Error> {
        if tenant.name.trim().is_empty() || tenant.name.len() > 200 {
            return Err(invalid("name", "must be 1 to 200 characters"));
        }
        if let Some(plan) = &tenant.plan {
            snapshot
                .config
                .plan("plan", plan)
                .map_err(|e| invalid("plan", e.to_string()))?;
        }
        Ok(())
    }

    /// A stored tenant for a change, or why it cannot be changed.
    fn stored_tenant(&self, snapshot: &Snapshot, id: &TenantId) -> Result<Tenant, Error> {
        match snapshot.tenants.get(id) {
            None => Err(Error::NotFound {
                kind: "tenant",
                id: id.to_string(),
            }),
            Some((_, Origin::Config)) => Err(Error::ReadOnly {
                kind: "tenant",
                id: id.to_string(),
            }),
            Some((t, Origin::Api)) => Ok(t.clone()),
        }
    }

    /// Changes a stored tenant's name, plan or metadata: `patch` is a JSON
    /// merge patch (RFC 7396) of its fields.
    pub async fn update_tenant(&self, id: &TenantId, patch: serde_json::Value) -> Result<Tenant, Error> {
        let snapshot = self.snapshot();
        let current = self.stored_tenant(&snapshot, id)?;
        let mut value = serde_json::to_value(&current).map_err(|e| invalid("body", e.to_string()))?;
        for fixed in ["id", "created_at", "updated_at"] {
            if patch.get(fixed).is_some_and(|v| Some(v) != value.get(fixed)) {
                return Err(invalid(fixed, "cannot be changed"));
            }
        }
        merge(&mut value, patch);
        let mut tenant: Tenant = serde_json::from_value(value).map_err(|e| invalid("body", e.to_string()))?;
        self.check_tenant(&snapshot, &tenant)?;
        tenant.updated_at = now_ms();
        self.apply(vec![Write::Put(record(Kind::Tenant, id.as_str(), &tenant))])
            .await?;
        Ok(tenant)
    }

    /// Deletes a stored tenant with its subscriptions (tombstoned, so their
    /// pending deliveries are cancelled) and keys, in one atomic write.
    /// Returns the subscriptions deleted.
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<Vec<SubscriptionName>, Error> {
        // Guarded on the tenant record as read, as creations of its
        // subscriptions and keys are: one made meanwhile on another process
        // makes this read again, so none is left behind for a later tenant
        // with the same id.
        self.apply_cas(|snapshot, records| {
            self.stored_tenant(snapshot, id)?;
            let now = now_ms();
            let mut writes = vec![
                expect(records, Kind::Tenant, id.as_str()),
                Write::Delete {
                    kind: Kind::Tenant,
                    id: id.to_string(),
                },
            ];
            let mut deleted = Vec::new();
            for sub in snapshot
                .stored
                .values()
                .filter(|s| &s.tenant == id && s.deleted_at.is_none())
            {
                let tomb = sub.tombstone(now);
                writes.push(Write::Put(record(Kind::Subscription, sub.id.as_str(), &tomb)));
                deleted.push(sub.id.clone());
            }
            for key in snapshot.keys.values().filter(|k| k.tenant.as_ref() == Some(id)) {
                writes.push(Write::Delete {
                    kind: Kind::Key,
                    id: key.id.clone(),
                });
            }
            Ok((writes, deleted))
        })
        .await
    }

    // --- keys ----------------------------------------------------------

    /// Makes a key; returns its record and the key itself (the only time
    /// it is ever shown).
    pub async fn create_key(
        &self,
        role: Role,
        tenant: Option<TenantId>,
        label: Option<String>,
    ) -> Result<(KeyRecord, String), Error> {
        match (role, &tenant) {
            (Role::Tenant, None) => return Err(invalid("tenant", "a tenant key needs its tenant")),
            (Role::Admin, Some(_)) => return Err(invalid("role", "an admin key cannot belong to a tenant")),
            _ => {}
        }
        if label.as_ref().is_some_and(|l| l.len() > 200) {
            return Err(invalid("label", "must be at most 200 characters"));
        }
        let (key, id) = keys::generate();
        let record_ = KeyRecord {
            id: id.clone(),
            hash: keys::hash(&key),
            role,
            tenant,
            label,
            created_at: now_ms(),
        };
        // A tenant's key is guarded on the tenant record: a tenant deleted
        // meanwhile on another process is read again, never left a key
        // that would let a later tenant of the same id in.
        self.apply_cas(|snapshot, records| {
            let mut writes = Vec::new();
            if let Some(t) = &record_.tenant {
                if !snapshot.tenants.contains_key(t) {
                    return Err(Error::NotFound {
                        kind: "tenant",
                        id: t.to_string(),
                    });
                }
                writes.push(expect(records, Kind::Tenant, t.as_str()));
            }
            writes.push(Write::Create(record(Kind::Key, &id, &record_)));
            Ok((writes, ()))
        })
        .await?;
        Ok((record_, key))
    }

    /// Revokes the key `id`; with `tenant`, only one of that tenant's.
    pub async fn revoke_key(&self, id: &str, tenant: Option<&TenantId>) -> Result<(), Error> {
        let snapshot = self.snapshot();
        let found = snapshot
            .keys
            .get(id)
            .filter(|k| tenant.is_none_or(|t| k.tenant.as_ref() == Some(t)));
        if found.is_none() {
            return Err(Error::NotFound {
                kind: "key",
                id: id.to_owned(),
            });
        }
        self.apply(vec![Write::Delete {
            kind: Kind::Key,
            id: id.to_owned(),
        }])
        .await
    }

    // --- subscriptions -------------------------------------------------

    /// Checks `spec` for `tenant` as the config file's subscriptions are
    /// checked, and against the tenant's plan (`replacing`: the id of the
    /// subscription it replaces, which does not count toward the limit).
    fn check_spec(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantId,
        spec: &SubscriptionSpec,
        replacing: Option<&SubscriptionName>,
    ) -> Result<(), Error> {
        let name = spec.name.trim();
        if name.is_empty() || name.len() > bounds::MAX_NAME || name != spec.name {
            return Err(invalid(
                "name",
                format!(
                    "must be 1 to {} bytes without leading or trailing spaces",
                    bounds::MAX_NAME
                ),
            ));
        }
        if spec
            .description
            .as_ref()
            .is_some_and(|d| d.len() > bounds::MAX_DESCRIPTION)
        {
            return Err(invalid(
                "description",
                format!("must be at most {} bytes", bounds::MAX_DESCRIPTION),
            ));
        }
        let plan = snapshot.plan_of(tenant);
        let bounds = Bounds::for_plan(&snapshot.config.delivery, plan);
        let clash = snapshot
            .subscriptions_of(tenant)
            .filter(|s| Some(&s.name) != replacing)
            .any(|s| snapshot.stored.get(&s.name).is_some_and(|st| st.spec.name == spec.name));
        if clash {
            return Err(invalid(
                "name",
                format!("tenant `{tenant}` already has a subscription named `{}`", spec.name),
            ));
        }
        if !snapshot.event_types.is_empty() {
            for pattern in &spec.events {
                let parsed = crate::model::EventPattern::parse(pattern).map_err(|p| invalid("events", p))?;
                if !snapshot.event_types.keys().any(|t| parsed.matches(t)) {
                    return Err(invalid(
                        "events",
                        format!("`{pattern}` matches no type of the event catalogue (GET /v1/event-types)"),
                    ));
                }
            }
        }
        let probe = StoredSubscription {
            id: SubscriptionName::parse("sub_probe").map_err(|p| invalid("id", p))?,
            tenant: tenant.clone(),
            spec: spec.clone(),
            secrets: vec![StoredSecret {
                value: new_secret(),
                expires_at: None,
            }],
            created_at: 0,
            updated_at: 0,
            deleted_at: None,
            tenant_generation: String::new(),
            operator_disabled_at: None,
        };
        if let Some(plugin) = &spec.plugin {
            let registry = &snapshot.config.plugins.registry;
            if !registry.contains_key(&plugin.name) {
                let names: Vec<&str> = registry.keys().map(String::as_str).collect();
                return Err(invalid(
                    "plugin.name",
                    if names.is_empty() {
                        format!("`{}` is not a registered plugin: this hookd offers none", plugin.name)
                    } else {
                        format!(
                            "`{}` is not a registered plugin; use one of: {}",
                            plugin.name,
                            names.join(", ")
                        )
                    },
                ));
            }
        }
        probe
            .to_config(0, &snapshot.config.plugins.registry)
            .check_fields("", &bounds)
            .map_err(|e| match e {
                crate::config::Error::Invalid { key, problem } => Error::Invalid { field: key, problem },
                e => invalid("body", e.to_string()),
            })?;
        let timeout = spec.timeout.unwrap_or(snapshot.config.delivery.timeout);
        if snapshot.config.queue.lease <= timeout * 2 {
            return Err(invalid(
                "timeout",
                format!(
                    "{timeout:?} is too long: attempts must take less than half of queue.lease ({:?})",
                    snapshot.config.queue.lease
                ),
            ));
        }
        if let Some((plan, limits)) = plan {
            if let Some(max) = limits.max_subscriptions {
                let have = snapshot
                    .subscriptions_of(tenant)
                    .filter(|s| Some(&s.name) != replacing)
                    .count();
                if replacing.is_none() && have >= max as usize {
                    return Err(Error::PlanLimit {
                        plan: plan.to_owned(),
                        limit: format!("{max} subscriptions (max_subscriptions); tenant `{tenant}` has {have}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Makes a subscription for `tenant` with a new secret of `scheme`.
    pub async fn create_subscription(
        &self,
        tenant: &TenantId,
        spec: SubscriptionSpec,
        scheme: Scheme,
    ) -> Result<StoredSubscription, Error> {
        let id = format!("{}{}", crate::config::STORED_ID_PREFIX, uuid::Uuid::now_v7().simple());
        let now = now_ms();
        let sub = StoredSubscription {
            id: SubscriptionName::parse(&id).map_err(|p| invalid("id", p))?,
            tenant: tenant.clone(),
            spec,
            secrets: vec![StoredSecret {
                value: scheme.new_secret(),
                expires_at: None,
            }],
            created_at: now,
            updated_at: now,
            deleted_at: None,
            tenant_generation: String::new(),
            operator_disabled_at: None,
        };
        // The plan's count is checked against the snapshot the write is
        // guarded on: N creations at once, on any processes, never make
        // more than the plan allows.
        let sub = self
            .apply_cas(|snapshot, records| {
                let Some((owner, _)) = snapshot.tenants.get(tenant) else {
                    return Err(Error::NotFound {
                        kind: "tenant",
                        id: tenant.to_string(),
                    });
                };
                let sub = StoredSubscription {
                    tenant_generation: owner.generation.clone(),
                    ..sub.clone()
                };
                self.check_spec(snapshot, tenant, &sub.spec, None)?;
                let [guard, bump] = bump_revision(records, tenant);
                // Guarded on the tenant record too: a tenant deleted (or moved
                // to another plan) meanwhile on another process is read again,
                // never given a subscription it would leave behind.
                let tenant_as_read = expect(records, Kind::Tenant, tenant.as_str());
                Ok((
                    vec![
                        tenant_as_read,
                        guard,
                        bump,
                        Write::Create(record(Kind::Subscription, &id, &sub)),
                    ],
                    sub,
                ))
            })
            .await?;
        Ok(sub)
    }

    /// A live stored subscription for a change, or why it cannot be
    /// changed: 404 for another tenant's (`tenant`: the caller's, if a
    /// tenant), 409 for a TOML one.
    pub fn stored_subscription(&self, id: &str, tenant: Option<&TenantId>) -> Result<StoredSubscription, Error> {
        stored_subscription(&self.snapshot(), id, tenant)
    }

    /// Merges `patch` (a JSON merge patch of [`SubscriptionSpec`]'s fields)
    /// into the stored subscription `id` and checks the result.
    pub async fn update_subscription(
        &self,
        id: &str,
        tenant: Option<&TenantId>,
        patch: serde_json::Value,
    ) -> Result<StoredSubscription, Error> {
        self.apply_cas(|snapshot, records| {
            let mut sub = stored_subscription(snapshot, id, tenant)?;
            let mut patch = patch.clone();
            // Answers show the URL redacted (`model::redact_url`); handed
            // back as shown (the console's edit form does), it changes nothing.
            if let Some(fields) = patch.as_object_mut() {
                if fields.get("url").and_then(|u| u.as_str()) == Some(&crate::model::redact_url(&sub.spec.url)) {
                    fields.remove("url");
                }
            }
            let mut value = serde_json::to_value(&sub.spec).map_err(|e| invalid("body", e.to_string()))?;
            merge(&mut value, patch);
            let spec: SubscriptionSpec = serde_json::from_value(value).map_err(|e| invalid("body", e.to_string()))?;
            self.check_spec(snapshot, &sub.tenant, &spec, Some(&sub.id))?;
            sub.spec = spec;
            sub.updated_at = now_ms();
            let writes = vec![
                expect(records, Kind::Subscription, sub.id.as_str()),
                Write::Put(record(Kind::Subscription, sub.id.as_str(), &sub)),
            ];
            Ok((writes, sub))
        })
        .await
    }

    /// Deletes the stored subscription `id`, leaving a tombstone.
    pub async fn delete_subscription(&self, id: &str, tenant: Option<&TenantId>) -> Result<SubscriptionName, Error> {
        let tomb = self.stored_subscription(id, tenant)?.tombstone(now_ms());
        self.apply(vec![Write::Put(record(Kind::Subscription, tomb.id.as_str(), &tomb))])
            .await?;
        Ok(tomb.id)
    }

    /// Removes the tombstones of subscriptions deleted longer than
    /// `catalog.tombstone_retention` ago, a bounded batch at a time, each
    /// guarded on being the tombstone read. Returns how many went.
    pub async fn purge_tombstones(&self) -> Result<usize, Error> {
        let retention = self.file.load().catalog.tombstone_retention;
        let cutoff = now_ms().saturating_sub(Millis::try_from(retention.as_millis()).unwrap_or(Millis::MAX));
        self.apply_cas(|snapshot, records| {
            let mut writes = Vec::new();
            let old = snapshot
                .stored
                .values()
                .filter(|s| s.deleted_at.is_some_and(|at| at < cutoff))
                .take(PURGE_BATCH);
            for tomb in old {
                writes.push(expect(records, Kind::Subscription, tomb.id.as_str()));
                writes.push(Write::Delete {
                    kind: Kind::Subscription,
                    id: tomb.id.to_string(),
                });
            }
            let n = writes.len() / 2;
            Ok((writes, n))
        })
        .await
    }
}

impl Catalog {
    /// Adds or replaces the stored event type `name` (checked as the
    /// config file's are). A type of the config file is read-only.
    pub async fn put_event_type(&self, mut event_type: EventType) -> Result<EventType, Error> {
        let snapshot = self.snapshot();
        if let Some((_, Origin::Config)) = snapshot.event_types.get(&event_type.name) {
            return Err(Error::ReadOnly {
                kind: "event type",
                id: event_type.name,
            });
        }
        event_type
            .as_config()
            .check()
            .map_err(|(field, problem)| invalid(field, problem))?;
        event_type.updated_at = now_ms();
        self.apply(vec![Write::Put(record(Kind::EventType, &event_type.name, &event_type))])
            .await?;
        Ok(event_type)
    }

    /// Deletes the stored event type `name`.
    pub async fn delete_event_type(&self, name: &str) -> Result<(), Error> {
        match self.snapshot().event_types.get(name) {
            None => Err(Error::NotFound {
                kind: "event type",
                id: name.to_owned(),
            }),
            Some((_, Origin::Config)) => Err(Error::ReadOnly {
                kind: "event type",
                id: name.to_owned(),
            }),
            Some((_, Origin::Api)) => {
                self.apply(vec![Write::Delete {
                    kind: Kind::EventType,
                    id: name.to_owned(),
                }])
                .await
            }
        }
    }

    /// Gives the stored subscription `id` a new secret of `scheme` (none:
    /// the scheme of its newest secret, so an HMAC subscription stays
    /// HMAC); the ones it had keep signing for `grace` (every delivery
    /// meanwhile carries both signatures, of either scheme), then stop.
    /// Returns the subscription and its new secret.
    /// Marks the stored subscription `id` disabled by the operator (`at`),
    /// or clears the mark (`None`), guarded on its record. Returns whether
    /// it changed.
    pub async fn set_operator_disabled(&self, id: &str, at: Option<Millis>) -> Result<bool, Error> {
        if self.stored_subscription(id, None)?.operator_disabled_at.is_some() == at.is_some() {
            return Ok(false);
        }
        self.apply_cas(|snapshot, records| {
            let mut sub = stored_subscription(snapshot, id, None)?;
            sub.operator_disabled_at = at;
            sub.updated_at = now_ms();
            let writes = vec![
                expect(records, Kind::Subscription, sub.id.as_str()),
                Write::Put(record(Kind::Subscription, sub.id.as_str(), &sub)),
            ];
            Ok((writes, true))
        })
        .await
    }

    pub async fn rotate_secret(
        &self,
        id: &str,
        tenant: Option<&TenantId>,
        grace: Duration,
        scheme: Option<Scheme>,
    ) -> Result<(StoredSubscription, String), Error> {
        if grace > MAX_GRACE {
            return Err(invalid(
                "grace",
                format!("must be at most {}", humantime::format_duration(MAX_GRACE)),
            ));
        }
        self.apply_cas(|snapshot, records| {
            let mut sub = stored_subscription(snapshot, id, tenant)?;
            let now = now_ms();
            let until = now.saturating_add(Millis::try_from(grace.as_millis()).unwrap_or(Millis::MAX));
            sub.secrets.retain(|s| s.expires_at.is_none_or(|at| at > now));
            for old in &mut sub.secrets {
                old.expires_at = Some(old.expires_at.map_or(until, |at| at.min(until)));
            }
            let scheme = scheme.unwrap_or_else(|| {
                sub.secrets
                    .last()
                    .and_then(|s| crate::sign::SigningKey::parse(&s.value).ok())
                    .map_or(Scheme::Hmac, |k| k.scheme())
            });
            let secret = scheme.new_secret();
            sub.secrets.push(StoredSecret {
                value: secret.clone(),
                expires_at: None,
            });
            sub.updated_at = now;
            let writes = vec![
                expect(records, Kind::Subscription, sub.id.as_str()),
                Write::Put(record(Kind::Subscription, sub.id.as_str(), &sub)),
            ];
            Ok((writes, (sub, secret)))
        })
        .await
    }
}

/// A live stored subscription of `snapshot` for a change, or why it
/// cannot be changed: 404 for another tenant's (`tenant`: the caller's,
/// if a tenant), 409 for a TOML one.
fn stored_subscription(snapshot: &Snapshot, id: &str, tenant: Option<&TenantId>) -> Result<StoredSubscription, Error> {
    let not_found = || Error::NotFound {
        kind: "subscription",
        id: id.to_owned(),
    };
    match snapshot.subscription(id) {
        None => Err(not_found()),
        Some((_, Owner::Operator)) if tenant.is_some() => Err(not_found()),
        Some((_, Owner::Operator)) => Err(Error::ReadOnly {
            kind: "subscription",
            id: id.to_owned(),
        }),
        Some((_, Owner::Tenant(owner))) if tenant.is_some_and(|t| t != &owner) => Err(not_found()),
        Some((sub, Owner::Tenant(_))) => snapshot.stored.get(&sub.name).cloned().ok_or_else(not_found),
    }
}

/// Most tombstones one purge removes.
const PURGE_BATCH: usize = 500;

/// How often each process looks for tombstones to purge.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// How many times a compare-and-set write is tried against changes made
/// meanwhile before the caller is told to try again.
const CAS_TRIES: usize = 8;

/// The body of the record `kind`/`id` among `records`, if there is one.
fn raw<'a>(records: &'a [Record], kind: Kind, id: &str) -> Option<&'a [u8]> {
    records
        .iter()
        .find(|r| r.kind == kind && r.id == id)
        .map(|r| r.body.as_slice())
}

/// A guard that `kind`/`id` is still as `records` hold it.
fn expect(records: &[Record], kind: Kind, id: &str) -> Write {
    Write::Expect {
        kind,
        id: id.to_owned(),
        body: raw(records, kind, id).map(<[u8]>::to_vec),
    }
}

/// The guard and the bump of `tenant`'s revision of its subscriptions
/// ([`Kind::Revision`]), for a write that creates one of them.
fn bump_revision(records: &[Record], tenant: &TenantId) -> [Write; 2] {
    let now: u64 = raw(records, Kind::Revision, tenant.as_str())
        .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
        .unwrap_or(0);
    [
        expect(records, Kind::Revision, tenant.as_str()),
        Write::Put(Record {
            kind: Kind::Revision,
            id: tenant.to_string(),
            body: (now + 1).to_string().into_bytes(),
        }),
    ]
}

/// Longest grace a rotated-out secret may keep signing.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A new HMAC signing secret: `whsec_` and 32 random bytes in base64
/// ([`Scheme::new_secret`] makes either kind).
pub fn new_secret() -> String {
    Scheme::Hmac.new_secret()
}

/// The store record of `value`.
fn record<T: Serialize>(kind: Kind, id: &str, value: &T) -> Record {
    Record {
        kind,
        id: id.to_owned(),
        body: serde_json::to_vec(value).expect("catalogue records always serialize"),
    }
}

/// Applies a JSON merge patch (RFC 7396): objects merge key by key, `null`
/// removes, anything else replaces.
pub fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match patch {
        serde_json::Value::Object(fields) => {
            if !target.is_object() {
                *target = serde_json::Value::Object(Default::default());
            }
            if let serde_json::Value::Object(map) = target {
                for (k, v) in fields {
                    if v.is_null() {
                        map.remove(&k);
                    } else {
                        merge(map.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut v = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut v, serde_json::json!({"a": "z", "c": {"f": null}}));
        assert_eq!(v, serde_json::json!({"a": "z", "c": {"d": "e"}}));
        merge(&mut v, serde_json::json!({"c": [1]}));
        assert_eq!(v, serde_json::json!({"a": "z", "c": [1]}));
    }

    #[test]
    fn new_secrets_are_valid_signing_secrets() {
        let secret = new_secret();
        let key = crate::sign::SigningKey::parse(&secret).unwrap();
        assert_eq!(key.scheme(), Scheme::Hmac, "{secret}");
        assert_eq!(key.public_key(), None);
        assert_ne!(secret, new_secret());
        let secret = Scheme::Ed25519.new_secret();
        let key = crate::sign::SigningKey::parse(&secret).unwrap();
        assert_eq!(key.scheme(), Scheme::Ed25519, "{secret}");
        assert!(key.public_key().unwrap().starts_with("whpk_"));
        assert_ne!(secret, Scheme::Ed25519.new_secret());
    }
}
