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

/// A plugin's changes to a delivery's custom headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PluginHeaders {
    /// Headers it set (replacing same-named ones) and removed, applied to
    /// the subscription's headers at each attempt: removals first.
    Patch {
        /// Set, lowercase names.
        set: Vec<(String, String)>,
        /// Removed, lowercase names.
        remove: Vec<String>,
    },
    /// The whole list, as deliveries queued by earlier versions stored
    /// it: sent as it is.
    Fixed(Vec<(String, String)>),
}

impl PluginHeaders {
    /// The custom headers of one attempt: `configured` (the subscription's
    /// in force now) with these changes.
    pub fn apply(&self, configured: &[(String, String)]) -> Vec<(String, String)> {
        match self {
            PluginHeaders::Fixed(all) => all.clone(),
            PluginHeaders::Patch { set, remove } => {
                let touched = |name: &str| {
                    remove.iter().any(|r| r.eq_ignore_ascii_case(name))
                        || set.iter().any(|(s, _)| s.eq_ignore_ascii_case(name))
                };
                let mut out: Vec<(String, String)> = configured.iter().filter(|(n, _)| !touched(n)).cloned().collect();
                out.extend(set.iter().cloned());
                out
            }
        }
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
    /// What the subscription's plugin did to the headers, kept when it
    /// ran (on the first attempt, with `body`) so retries send the same
    /// changes. `None`: no plugin has run. Either way every attempt starts
    /// from the subscription's custom headers in force then, so a rotated
    /// credential header is used by retries and never stored here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<PluginHeaders>,
    /// The tenant of the event, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

impl Delivery {
    /// A new delivery of an event to `subscription`, before any attempt:
    /// what ingest fans out and an event replay sends again, built in one
    /// place so both queue the same record. Its id is new, in `shard` (the
    /// event's, [`crate::queue::shard_of`]).
    pub fn new(
        shard: u16,
        event_id: EventId,
        event_type: String,
        tenant: Option<TenantId>,
        subscription: SubscriptionName,
        body: Bytes,
        created_at: Millis,
    ) -> Delivery {
        Delivery {
            id: DeliveryId::new(shard),
            event_id,
            event_type,
            subscription,
            created_at,
            attempts: 0,
            body,
            last_error: None,
            headers: None,
            tenant,
        }
    }

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

pub(crate) mod body_b64 {
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

#[cfg(test)]
mod plugin_headers_tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_patch_applies_to_the_headers_in_force_and_old_lists_still_read() {
        let patch = PluginHeaders::Patch {
            set: pairs(&[("x-shape", "slack")]),
            remove: vec!["x-team".into()],
        };
        let now = pairs(&[("x-api-key", "rotated"), ("x-team", "a")]);
        assert_eq!(
            patch.apply(&now),
            pairs(&[("x-api-key", "rotated"), ("x-shape", "slack")])
        );
        let text = serde_json::to_string(&patch).unwrap();
        assert!(!text.contains("rotated"), "configured values are not stored: {text}");
        assert_eq!(serde_json::from_str::<PluginHeaders>(&text).unwrap(), patch);
        // A delivery queued by an earlier version kept the whole list.
        let old: PluginHeaders = serde_json::from_str(r#"[["x-api-key","old"]]"#).unwrap();
        assert_eq!(old.apply(&now), pairs(&[("x-api-key", "old")]));
    }
}
