//! The types every stage shares: events and their ids, subscription
//! names, deliveries, tenants, secrets, and the clock's unit.
//!
//! A leaf: it imports nothing else of hookd, so every module may use it
//! and the module graph has no cycle. Each checked newtype is built only
//! through its check (`parse`, and serde through the same check), so a
//! value decoded from TOML, JSON or a store is as valid as one made here.

mod delivery;
mod event;
mod secret;
mod subscription;
mod tenant;

pub use delivery::{CorruptRecord, Delivery, DeliveryId};
pub use event::{check_event_type, is_internal, Event, EventId, EventPattern, INTERNAL_PREFIX};
pub use secret::Secret;
pub use subscription::{RateLimit, SubscriptionName};
pub use tenant::TenantId;

/// Milliseconds since the Unix epoch: the unit of every due time.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
