//! The catalogue as of one moment: what the config file and the store's
//! records make, immutable, swapped whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::keys::{self, KeyRecord, Principal};
use super::records::{EventType, Origin, Owner, StoredSubscription, Tenant};
use super::routes::Routes;
use super::store::{Kind, Record};
use crate::config::bounds::Bounds;
use crate::config::{Config, PlanConfig, SubscriptionConfig, DEFAULT_PLAN};
use crate::deliver::NetworkPolicy;
use crate::model::{now_ms, Millis, RateLimit, SubscriptionName, TenantId};

/// The catalogue as of one moment: immutable, swapped whole.
pub struct Snapshot {
    /// The store version its stored part was read at.
    pub version: u64,
    /// The config file in force, its `subscriptions` followed by every live
    /// stored subscription (named by id, with its owner): what fan-out,
    /// endpoints and health are built from.
    pub config: Arc<Config>,
    /// Event filters for fan-out, indexed by tenant.
    pub routes: Routes,
    /// Every tenant, the config's and the stored ones.
    pub tenants: BTreeMap<TenantId, (Tenant, Origin)>,
    /// Stored subscriptions by id, tombstones included.
    pub stored: HashMap<SubscriptionName, StoredSubscription>,
    /// Stored keys by id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Stored keys' ids by hash.
    by_hash: HashMap<String, String>,
    /// The event catalogue by name, the config's and the stored types.
    pub event_types: BTreeMap<String, (EventType, Origin)>,
    /// The compiled schema of every type that has one.
    schemas: HashMap<String, Arc<jsonschema::Validator>>,
    /// When the next rotated-out secret expires: the snapshot is built
    /// again then, so it stops signing.
    pub next_expiry: Option<Millis>,
    /// Stored records left out because they cannot be built (corrupt, or
    /// beyond the bounds: written before them, or by a bug), by
    /// `<kind>/<id>`, with why. Each is logged; everything else is served.
    pub rejected: Vec<(String, String)>,
}

impl Snapshot {
    /// Builds the snapshot of `file` and the stored `records`.
    pub(super) fn build(file: &Config, version: u64, records: &[Record]) -> Snapshot {
        let now = now_ms();
        let mut tenants: BTreeMap<TenantId, (Tenant, Origin)> = file
            .tenants
            .iter()
            .map(|t| {
                let tenant = Tenant {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    plan: t.plan.clone(),
                    metadata: t.metadata.clone(),
                    created_at: 0,
                    updated_at: 0,
                    generation: String::new(),
                };
                (t.id.clone(), (tenant, Origin::Config))
            })
            .collect();
        let mut stored = HashMap::new();
        let mut keys = BTreeMap::new();
        let mut rejected = Vec::new();
        let mut reject = |record: &Record, why: String| {
            tracing::error!(kind = %record.kind, id = %crate::telemetry::escape(&record.id), error = %why,
                "stored catalogue record cannot be built; left out (everything else is served)");
            rejected.push((format!("{}/{}", record.kind, record.id), why));
        };
        let mut event_types: BTreeMap<String, (EventType, Origin)> = file
            .event_types
            .iter()
            .map(|t| (t.name.clone(), (EventType::of_config(t), Origin::Config)))
            .collect();
        for record in records {
            let body = &record.body;
            match record.kind {
                Kind::Tenant => match serde_json::from_slice::<Tenant>(body) {
                    // The config file's tenant wins over a stored one of the same id.
                    Ok(t) => {
                        tenants.entry(t.id.clone()).or_insert((t, Origin::Api));
                    }
                    Err(e) => reject(record, format!("corrupt: {e}")),
                },
                Kind::Key => match serde_json::from_slice::<KeyRecord>(body) {
                    Ok(k) => {
                        keys.insert(k.id.clone(), k);
                    }
                    Err(e) => reject(record, format!("corrupt: {e}")),
                },
                Kind::Subscription => match serde_json::from_slice::<StoredSubscription>(body) {
                    Ok(s) => {
                        stored.insert(s.id.clone(), s);
                    }
                    Err(e) => reject(record, format!("corrupt: {e}")),
                },
                // Only writes read it, from the raw records (`Catalog::apply_cas`).
                Kind::Revision => {}
                Kind::EventType => match serde_json::from_slice::<EventType>(body) {
                    // The config file's type wins over a stored one of the same name.
                    Ok(t) => {
                        event_types.entry(t.name.clone()).or_insert((t, Origin::Api));
                    }
                    Err(e) => reject(record, format!("corrupt: {e}")),
                },
            }
        }
        let mut config = file.clone();
        // A tenant without a plan is on `plans.default`; any limit a plan
        // leaves out is the default plan's: none is unlimited by omission.
        let default_plan = file.plans.get(DEFAULT_PLAN).cloned().unwrap_or_default();
        for plan in config.plans.values_mut() {
            *plan = plan.or(&default_plan);
        }
        let mut live: Vec<&StoredSubscription> = stored
            .values()
            .filter(|s| s.deleted_at.is_none() && tenants.contains_key(&s.tenant))
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        // Every stored subscription is held to the process's bounds before
        // any stage builds on it: one written before them (or by a bug)
        // is left out alone, never stopping the others.
        // Where an endpoint may be is the plan's to say at each attempt
        // (a plan changed since is in force at once, its refusal named on
        // the attempt); the record is not left out for it.
        let bounds = Bounds {
            network: NetworkPolicy {
                allow_http: true,
                allow_private_networks: true,
                from: String::new(),
                reveal_addresses: false,
            },
            ..Bounds::of(&file.delivery)
        };
        let mut built = Vec::with_capacity(live.len());
        for s in &live {
            let mut sub = s.to_config(now, &file.plugins.registry);
            let plan = tenants
                .get(&s.tenant)
                .map(|(t, _)| t.plan.as_deref().unwrap_or(DEFAULT_PLAN))
                .and_then(|name| Some((name, config.plans.get(name)?)));
            sub.network = Some(match plan {
                Some((name, p)) => NetworkPolicy::of_plan(name, p),
                None => NetworkPolicy::of_plan(DEFAULT_PLAN, &PlanConfig::default()),
            });
            if sub.rate_limit.is_none() {
                sub.rate_limit = plan.and_then(|(_, p)| p.max_rate_limit).map(|per_second| RateLimit {
                    per_second,
                    burst: None,
                });
            }
            match sub.check_fields("", &bounds) {
                Ok(()) => built.push(sub),
                Err(e) => rejected.push((format!("{}/{}", Kind::Subscription, s.id), e.to_string())),
            }
        }
        for (id, why) in rejected.iter().filter(|(id, _)| id.starts_with("subscription/")) {
            tracing::error!(record = %id, error = %crate::telemetry::escape(why),
                "stored subscription is beyond hookd's bounds; left out (everything else is served)");
        }
        config.subscriptions.extend(built);
        let schemas = event_types
            .values()
            .filter_map(|(t, _)| {
                let validator = jsonschema::validator_for(t.schema.as_ref()?)
                    .map_err(|e| tracing::error!(event_type = %t.name, error = %e, "event type schema does not compile; not checked"))
                    .ok()?;
                Some((t.name.clone(), Arc::new(validator)))
            })
            .collect();
        let next_expiry = live
            .iter()
            .flat_map(|s| s.secrets.iter().filter_map(|secret| secret.expires_at))
            .filter(|&at| at > now)
            .min();
        let by_hash = keys
            .values()
            .filter(|k| k.tenant.as_ref().is_none_or(|t| tenants.contains_key(t)))
            .map(|k| (k.hash.clone(), k.id.clone()))
            .collect();
        Snapshot {
            version,
            routes: Routes::new(&config),
            config: Arc::new(config),
            tenants,
            stored,
            keys,
            by_hash,
            event_types,
            schemas,
            next_expiry,
            rejected,
        }
    }

    /// Checks `data` against the schema of `event_type`, if it has one:
    /// the first failure as (where, what).
    pub fn check_data(&self, event_type: &str, data: &serde_json::Value) -> Result<(), (String, String)> {
        let Some(validator) = self.schemas.get(event_type) else {
            return Ok(());
        };
        match validator.iter_errors(data).next() {
            None => Ok(()),
            Some(e) => {
                let at = e.instance_path().to_string();
                Err((if at.is_empty() { "/".into() } else { at }, e.to_string()))
            }
        }
    }

    /// Whether `event_type` has a schema to check.
    pub fn has_schema(&self, event_type: &str) -> bool {
        self.schemas.contains_key(event_type)
    }

    /// The principal a stored key stands for, with its record.
    pub fn principal_of_key(&self, key: &str) -> Option<Principal> {
        let id = self.by_hash.get(&keys::hash(key))?;
        Principal::of(self.keys.get(id)?)
    }

    /// A live subscription (TOML or stored) by id, and who owns it.
    pub fn subscription(&self, id: &str) -> Option<(&SubscriptionConfig, Owner)> {
        let sub = self.config.subscription(id)?;
        let owner = match &sub.owner {
            Some(t) => Owner::Tenant(t.clone()),
            None => Owner::Operator,
        };
        Some((sub, owner))
    }

    /// Whether the stored subscription `sub` belongs to the tenant `tenant`
    /// now in the catalogue: its tenant, in the generation it was made in.
    /// A tenant made again with the id of a deleted one owns none of the
    /// old one's subscriptions, live or tombstones, so none of their
    /// deliveries, events or stats.
    pub fn owns(&self, tenant: &TenantId, sub: &StoredSubscription) -> bool {
        &sub.tenant == tenant
            && self
                .tenants
                .get(tenant)
                .is_some_and(|(t, _)| t.generation == sub.tenant_generation)
    }

    /// The generation of `tenant` now in the catalogue (empty for none, a
    /// tenant of the config file, or one made before generations).
    pub fn generation_of(&self, tenant: Option<&TenantId>) -> &str {
        tenant
            .and_then(|t| self.tenants.get(t))
            .map_or("", |(t, _)| t.generation.as_str())
    }

    /// When the tenant `tenant` now in the catalogue was made: its views
    /// start then (0 for a tenant of the config file).
    pub fn tenant_since(&self, tenant: &TenantId) -> Option<Millis> {
        self.tenants.get(tenant).map(|(t, _)| t.created_at)
    }

    /// Whether `id` names a subscription deleted through the API.
    pub fn is_deleted(&self, id: &SubscriptionName) -> bool {
        match self.stored.get(id) {
            Some(s) => s.deleted_at.is_some() || !self.tenants.contains_key(&s.tenant),
            None => false,
        }
    }

    /// The plan of `tenant` (`plans.default` if it names none), its
    /// absent limits the default plan's.
    pub fn plan_of(&self, tenant: &TenantId) -> Option<(&str, &PlanConfig)> {
        let (t, _) = self.tenants.get(tenant)?;
        let name = t.plan.as_deref().unwrap_or(DEFAULT_PLAN);
        Some((name, self.config.plans.get(name)?))
    }

    /// The live subscriptions `tenant` owns.
    pub fn subscriptions_of<'a>(&'a self, tenant: &'a TenantId) -> impl Iterator<Item = &'a SubscriptionConfig> + 'a {
        self.config
            .subscriptions
            .iter()
            .filter(move |s| s.owner.as_ref() == Some(tenant))
    }
}
