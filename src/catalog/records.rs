//! The catalogue's records: tenants, event types and stored
//! subscriptions as the API takes them and the store keeps them (JSON).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{EventTypeConfig, RegisteredPlugin, SubscriptionConfig};
use crate::model::{Millis, RateLimit, Secret, SubscriptionName, TenantId};

/// A tenant: a customer of the platform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Its id (`acme`).
    pub id: TenantId,
    /// Its display name.
    pub name: String,
    /// Its plan, a key of `[plans]`.
    #[serde(default)]
    pub plan: Option<String>,
    /// Free-form data the platform keeps with it.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// When it was made (0 for a tenant of the config file).
    #[serde(default)]
    pub created_at: Millis,
    /// When it last changed.
    #[serde(default)]
    pub updated_at: Millis,
    /// A random id drawn when it was made (empty for a tenant of the config
    /// file, or one made before generations): a tenant made again with the
    /// id of a deleted one has another, and its views fence off what the
    /// deleted one left ([`Snapshot::owns`](super::snapshot::Snapshot::owns)).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generation: String,
}

/// One type of the event catalogue: what tenants may subscribe to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventType {
    /// Its dotted name.
    pub name: String,
    /// What it means.
    #[serde(default)]
    pub description: String,
    /// A JSON Schema its events' `data` follows.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// An example `data`, sent by a subscription's test.
    #[serde(default)]
    pub example: Option<serde_json::Value>,
    /// Still sent, but on its way out.
    #[serde(default)]
    pub deprecated: bool,
    /// When it last changed (0 for a type of the config file).
    #[serde(default)]
    pub updated_at: Millis,
}

impl EventType {
    pub(super) fn of_config(t: &EventTypeConfig) -> EventType {
        EventType {
            name: t.name.clone(),
            description: t.description.clone(),
            schema: t.schema.clone(),
            example: t.example.clone(),
            deprecated: t.deprecated,
            updated_at: 0,
        }
    }

    pub(super) fn as_config(&self) -> EventTypeConfig {
        EventTypeConfig {
            name: self.name.clone(),
            description: self.description.clone(),
            schema: self.schema.clone(),
            example: self.example.clone(),
            deprecated: self.deprecated,
        }
    }
}

/// One signing secret of a stored subscription.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSecret {
    /// `whsec_…` (HMAC) or `whsk_…` (Ed25519), kept in the store as is (the
    /// store is as trusted as the queue, which holds the payloads).
    pub value: String,
    /// When it stops signing (a rotated-out secret in its grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
}

/// What a tenant (or an admin for it) sets on a subscription: the body of
/// `POST /v1/subscriptions`, and what `PATCH` merges into. Its `Debug`
/// hides what may hold a credential: header and plugin setting values,
/// and the URL's userinfo, parameters and tokens.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Its display name, unique within its tenant.
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// The event types it wants: exact, `prefix.*` or `*`.
    pub events: Vec<String>,
    /// Custom headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Most requests per second, with a burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Most deliveries in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Timeout of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// A plugin of the operator's registry, and its config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginRef>,
}

impl std::fmt::Debug for SubscriptionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionSpec")
            .field("name", &self.name)
            .field("url", &crate::model::RedactedUrl(&self.url))
            .field("events", &self.events)
            .field("headers", &crate::model::RedactedValues(&self.headers))
            .field("description", &self.description)
            .field("rate_limit", &self.rate_limit)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_retries", &self.max_retries)
            .field("timeout", &self.timeout)
            .field("plugin", &self.plugin)
            .finish()
    }
}

/// A subscription's use of a registered plugin (`[plugins.registry.NAME]`);
/// its `Debug` hides the settings' values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// The registered plugin's name.
    pub name: String,
    /// Settings handed to the plugin on every call.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl std::fmt::Debug for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRef")
            .field("name", &self.name)
            .field("config", &crate::model::RedactedValues(&self.config))
            .finish()
    }
}

/// A subscription made through the API, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSubscription {
    /// `sub_…`.
    pub id: SubscriptionName,
    /// The tenant owning it.
    pub tenant: TenantId,
    /// What its owner set.
    pub spec: SubscriptionSpec,
    /// Its signing secrets, newest last.
    pub secrets: Vec<StoredSecret>,
    /// When it was made.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// When it was deleted: a tombstone, kept so every process cancels its
    /// deliveries instead of waiting to learn of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Millis>,
    /// Its tenant's [`Tenant::generation`] when it was made: the
    /// subscription (and its log) belongs to that tenant only, not to a
    /// later one with the same id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant_generation: String,
    /// When the platform's operator disabled it (an admin's
    /// `POST …/disable`): until an admin enables it again, its tenant
    /// cannot. A disable by its owner or by failing health sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_disabled_at: Option<Millis>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("value", &crate::model::REDACTED)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl StoredSubscription {
    /// The tombstone of this subscription, deleted at `now`: what may hold
    /// a credential (its secrets, custom headers, plugin settings and the
    /// URL's userinfo, parameters and tokens) is erased at once, and what
    /// is left only tells every process to cancel its deliveries.
    pub fn tombstone(&self, now: Millis) -> StoredSubscription {
        let mut tomb = self.clone();
        tomb.deleted_at = Some(now);
        tomb.secrets.clear();
        tomb.spec.headers.clear();
        tomb.spec.plugin = None;
        tomb.spec.url = crate::model::redact_url(&tomb.spec.url);
        tomb.updated_at = now;
        tomb
    }

    /// The secrets signing at `now`.
    pub fn active_secrets(&self, now: Millis) -> impl Iterator<Item = &StoredSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|at| at > now))
    }

    /// The subscription as every stage downstream sees it: named by its
    /// id, owned by its tenant, its plugin resolved in `registry`. A plugin
    /// no longer registered leaves it disabled (its deliveries parked, never
    /// sent without the plugin meant to filter them) until it is again.
    pub(super) fn to_config(&self, now: Millis, registry: &BTreeMap<String, RegisteredPlugin>) -> SubscriptionConfig {
        let s = &self.spec;
        let plugin = s
            .plugin
            .as_ref()
            .map(|p| registry.get(&p.name).map(|r| r.with_config(p.config.clone())));
        if let Some(None) = &plugin {
            tracing::error!(subscription = %self.id, "its plugin is no longer in plugins.registry: the subscription is disabled until it is");
        }
        SubscriptionConfig {
            name: self.id.clone(),
            url: s.url.clone(),
            events: s.events.clone(),
            secrets: self.active_secrets(now).map(|s| Secret::new(s.value.clone())).collect(),
            headers: s.headers.clone(),
            enabled: !matches!(plugin, Some(None)),
            timeout: s.timeout,
            max_retries: s.max_retries,
            max_in_flight: s.max_in_flight,
            rate_limit: s.rate_limit,
            plugin: plugin.flatten(),
            notify_to: None,
            tenants: None,
            owner: Some(self.tenant.clone()),
            network: None,
        }
    }
}

/// Who owns a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The operator: declared in the config file.
    Operator,
    /// A tenant: made through the API.
    Tenant(TenantId),
}

/// Where a tenant came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file: read-only through the API.
    Config,
    /// The API.
    Api,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type holding a tenant's credentials prints none of them.
    #[test]
    fn debug_shows_no_credential() {
        let spec: SubscriptionSpec = serde_json::from_value(serde_json::json!({
            "name": "s",
            "url": "https://user:pass-word@hooks.example.com/services/T0ken0fTheEndpointT0ken?sig=query-secret",
            "events": ["*"],
            "headers": {"x-api-key": "header-credential"},
            "plugin": {"name": "jq", "config": {"token": "plugin-credential"}},
        }))
        .unwrap();
        let sub = StoredSubscription {
            id: SubscriptionName::parse("sub_1").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            spec: spec.clone(),
            secrets: vec![StoredSecret {
                value: "whsec_c2VjcmV0LXZhbHVl".into(),
                expires_at: None,
            }],
            created_at: 1,
            updated_at: 1,
            deleted_at: None,
            tenant_generation: String::new(),
            operator_disabled_at: None,
        };
        let registry = BTreeMap::from([(
            "jq".to_owned(),
            serde_json::from_value::<RegisteredPlugin>(serde_json::json!({"path": "/p/jq.wasm"})).unwrap(),
        )]);
        let config = sub.to_config(2, &registry);
        for text in [format!("{spec:?}"), format!("{sub:?}"), format!("{config:?}")] {
            for secret in [
                "pass-word",
                "T0ken0fTheEndpointT0ken",
                "query-secret",
                "header-credential",
                "plugin-credential",
                "c2VjcmV0LXZhbHVl",
            ] {
                assert!(!text.contains(secret), "`{secret}` in {text}");
            }
            assert!(
                text.contains("x-api-key") || text.contains("StoredSubscription"),
                "{text}"
            );
        }
    }
}
