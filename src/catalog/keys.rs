//! API keys and the principals they stand for.
//!
//! A key made through the API is `hk_` followed by 43 characters of
//! base64url (32 random bytes); it is shown once, when made, and stored only
//! as its SHA-256, so neither a store dump nor the API can give it back.
//! The operator's `server.api_keys` are admin keys compared in constant
//! time; a stored key is found by its hash.

use std::fmt;

use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::model::{Millis, TenantId};

/// The start of every key made through the API.
pub const KEY_PREFIX: &str = "hk_";

/// The start of every key id.
pub const KEY_ID_PREFIX: &str = "key_";

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Ingest events only (of its tenant, if it is bound to one).
    Producer,
    /// Manage its tenant's subscriptions; read and replay its tenant's
    /// deliveries and events.
    Tenant,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Producer => "producer",
            Role::Tenant => "tenant",
        }
    }
}

/// A key made through the API, as stored: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// `key_…`: how the key is listed and revoked.
    pub id: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// What it may do.
    pub role: Role,
    /// The tenant it acts for: always for [`Role::Tenant`], optionally for
    /// a producer, never for an admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// A label its owner gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When it was made.
    pub created_at: Millis,
}

/// Who is asking: what an API request's key stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An admin: one of `server.api_keys`, a stored admin key, or anyone
    /// when the API has no keys at all.
    Admin {
        /// The stored key's id; `None` for the config's keys and an open API.
        key: Option<String>,
    },
    /// A producer key, bound to a tenant or not.
    Producer {
        /// The key's id.
        key: String,
        /// The only tenant it may send events for, if bound.
        tenant: Option<TenantId>,
    },
    /// A tenant key.
    Tenant {
        /// The key's id.
        key: String,
        /// Its tenant.
        tenant: TenantId,
    },
}

impl Principal {
    /// A principal for a stored key.
    pub fn of(record: &KeyRecord) -> Option<Principal> {
        let key = record.id.clone();
        Some(match (record.role, &record.tenant) {
            (Role::Admin, _) => Principal::Admin { key: Some(key) },
            (Role::Producer, tenant) => Principal::Producer {
                key,
                tenant: tenant.clone(),
            },
            (Role::Tenant, Some(tenant)) => Principal::Tenant {
                key,
                tenant: tenant.clone(),
            },
            (Role::Tenant, None) => return None,
        })
    }

    /// Whether this is an admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }

    /// The tenant a tenant key acts for (`None` for admins and producers).
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Principal::Tenant { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// The stored key's id, if the principal came from one.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Principal::Admin { key } => key.as_deref(),
            Principal::Producer { key, .. } | Principal::Tenant { key, .. } => Some(key),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin { key: None } => f.write_str("admin"),
            Principal::Admin { key: Some(k) } => write!(f, "admin:{k}"),
            Principal::Producer { key, tenant: None } => write!(f, "producer:{key}"),
            Principal::Producer { key, tenant: Some(t) } => write!(f, "producer:{key}@{t}"),
            Principal::Tenant { key, tenant } => write!(f, "tenant:{key}@{tenant}"),
        }
    }
}

/// A new key and its id.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let id = format!("{KEY_ID_PREFIX}{}", uuid::Uuid::now_v7().simple());
    (key, id)
}

/// The hash a key is stored and found by: hex SHA-256.
pub fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_stored_only_as_hashes() {
        let (a, id_a) = generate();
        let (b, id_b) = generate();
        assert_ne!(a, b);
        assert_ne!(id_a, id_b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 3 + 43, "{a}");
        assert!(id_a.starts_with(KEY_ID_PREFIX));
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 64);
        assert!(!hash(&a).contains(&a[3..]), "the hash does not carry the key");
    }

    #[test]
    fn principals_follow_their_key_record() {
        let acme = TenantId::parse("acme").unwrap();
        let record = |role, tenant: Option<TenantId>| KeyRecord {
            id: "key_1".into(),
            hash: hash("k"),
            role,
            tenant,
            label: None,
            created_at: 0,
        };
        assert_eq!(
            Principal::of(&record(Role::Tenant, Some(acme.clone())))
                .unwrap()
                .tenant(),
            Some(&acme)
        );
        assert!(Principal::of(&record(Role::Tenant, None)).is_none());
        assert!(Principal::of(&record(Role::Admin, None)).unwrap().is_admin());
        let producer = Principal::of(&record(Role::Producer, Some(acme))).unwrap();
        assert!(!producer.is_admin() && producer.tenant().is_none());
        assert_eq!(producer.to_string(), "producer:key_1@acme");
    }
}
