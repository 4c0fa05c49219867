//! The types every stage shares: events and their ids, subscription
//! names, deliveries, tenants, secrets, hosts as requests name them, and
//! the clock's unit.
//!
//! A leaf: it imports nothing else of hookd, so every module may use it
//! and the module graph has no cycle. Each checked newtype is built only
//! through its check (`parse`, and serde through the same check), so a
//! value decoded from TOML, JSON or a store is as valid as one made here.

mod delivery;
mod event;
pub mod headers;
mod host;
mod secret;
mod subscription;
mod tenant;
pub mod time;

pub(crate) use delivery::body_b64;
pub use delivery::{CorruptRecord, Delivery, DeliveryId, PluginHeaders};
pub use event::{check_event_type, is_internal, Event, EventId, EventPattern, INTERNAL_PREFIX};
pub use headers::REDACTED;
pub use host::{is_local_host, Host};
pub use secret::{redact_url, serialize_redacted_values, RedactedUrl, RedactedValues, Secret};
pub use subscription::{RateLimit, SubscriptionName};
pub use tenant::TenantId;

/// The start of the id of every subscription made through the API
/// (`sub_…`).
pub const STORED_ID_PREFIX: &str = "sub_";

/// The tenant whose delivery log holds a delivery to `subscription` of an
/// event of `tenant`: the owner of the subscription, which is the event's
/// tenant for a subscription made through the API ([`STORED_ID_PREFIX`]),
/// none for the operator's (named in the TOML file), whoever's events it
/// receives. The one place this rule lives.
pub fn owner_of<'a>(subscription: &SubscriptionName, tenant: Option<&'a TenantId>) -> Option<&'a TenantId> {
    if subscription.as_str().starts_with(STORED_ID_PREFIX) {
        tenant
    } else {
        None
    }
}

/// Milliseconds since the Unix epoch: the unit of every due time.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscriptions_made_through_the_api_belong_to_the_events_tenant() {
        let acme = TenantId::parse("acme").unwrap();
        let name = |n: &str| SubscriptionName::parse(n).unwrap();
        assert_eq!(owner_of(&name("sub_01"), Some(&acme)), Some(&acme));
        assert_eq!(owner_of(&name("sub_01"), None), None);
        assert_eq!(owner_of(&name("crm"), Some(&acme)), None, "the operator's");
        assert_eq!(owner_of(&name("sub"), Some(&acme)), None);
        let delivery = Delivery {
            id: DeliveryId::new(0),
            event_id: EventId::parse("evt_1").unwrap(),
            event_type: "coupon.redeemed".into(),
            subscription: name("sub_01"),
            created_at: 1,
            attempts: 0,
            body: bytes::Bytes::new(),
            last_error: None,
            headers: None,
            tenant: Some(acme.clone()),
        };
        assert_eq!(delivery.owner(), Some(&acme));
        let decoded = Delivery::decode("d", &delivery.encode()).unwrap();
        assert_eq!(decoded.tenant, Some(acme));
        let untenanted = Delivery {
            tenant: None,
            ..delivery
        };
        let json = String::from_utf8(untenanted.encode()).unwrap();
        assert!(
            !json.contains("tenant"),
            "absent, as records written before tenants: {json}"
        );
    }
}
