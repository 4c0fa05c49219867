//! Deliveries: what is sent to one subscription for one event.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{EventId, Millis, SubscriptionName, TenantId};

/// A stored delivery record that could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[error("delivery record {id} is corrupt: {reason}")]
pub struct CorruptRecord {
    /// The id it was stored under.
    pub id: String,
    /// What was wrong with it.
    pub reason: String,
}

/// A delivery's id: `dlv_`, a UUIDv7, then two hex digits naming its shard.
/// UUIDv7s are time-ordered (and monotonic within a process), so ids sort in
/// creation order: the tie-break that keeps equal due times in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(String);

impl DeliveryId {
    /// A new, unique id in `shard`.
    pub fn new(shard: u16) -> DeliveryId {
        DeliveryId(format!("dlv_{}{:02x}", uuid::Uuid::now_v7().simple(), shard))
    }

    /// Checks the shape of an id that came from outside.
    pub fn parse(text: &str) -> Result<DeliveryId, String> {
        let ok =
            text.len() == 4 + 2 + 32 && text.starts_with("dlv_") && text[4..].bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(DeliveryId(text.to_owned()))
        } else {
            Err(format!("`{text}` is not a delivery id (dlv_ and 34 hex digits)"))
        }
    }

    /// The shard the delivery lives in.
    pub fn shard(&self) -> u16 {
        u16::from_str_radix(self.0.get(36..38).unwrap_or("0"), 16).unwrap_or(0)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One delivery: what is sent to one subscription for one event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Unique id of this delivery.
    pub id: DeliveryId,
    /// The event delivered; sent as `webhook-id`, stable across retries.
    pub event_id: EventId,
    /// The event's dotted type.
    pub event_type: String,
    /// Who receives it.
    pub subscription: SubscriptionName,
    /// When the event was accepted.
    pub created_at: Millis,
    /// Attempts made so far (0 before the first).
    pub attempts: u32,
    /// The exact body sent; signed as is.
    #[serde(with = "body_b64")]
    pub body: Bytes,
    /// Why the last attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The custom headers to send, fixed when the subscription's plugin ran
    /// (on the first attempt, with `body`), so retries resend exactly what
    /// the plugin produced. `None`: no plugin has run; send the
    /// subscription's configured headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<(String, String)>>,
    /// The tenant of the event, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

impl Delivery {
    /// The tenant whose delivery log holds this delivery: the owner of its
    /// subscription, which is the event's tenant for a subscription made
    /// through the API (`sub_…`), none for the operator's.
    pub fn owner(&self) -> Option<&TenantId> {
        super::owner_of(&self.subscription, self.tenant.as_ref())
    }

    /// Serializes the record for storage.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a delivery always serializes")
    }

    /// Decodes a stored record (stored under `id`).
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Delivery, CorruptRecord> {
        serde_json::from_slice(bytes).map_err(|e| CorruptRecord {
            id: id.to_owned(),
            reason: e.to_string(),
        })
    }
}

mod body_b64 {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(body))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}
