//! Events as hookd accepts them: ids, dotted types, patterns.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::TenantId;

/// An event id: given by the producer or generated (`evt_` + UUIDv7).
/// 1 to 128 of `A-Z a-z 0-9 - _ . : ~`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// A fresh, unique, time-ordered id.
    pub fn generate() -> EventId {
        EventId(format!("evt_{}", uuid::Uuid::now_v7().simple()))
    }

    /// Checks an id that came from outside.
    pub fn parse(text: &str) -> Result<EventId, String> {
        if text.is_empty() || text.len() > 128 {
            return Err("must be 1 to 128 characters".into());
        }
        if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b)) {
            return Err("may only contain letters, digits and - _ . : ~".into());
        }
        Ok(EventId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a dotted event type: segments of `A-Z a-z 0-9 - _` joined by
/// dots, 1 to 128 characters (`coupon.redeemed`, `message.created`).
pub fn check_event_type(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    for segment in text.split('.') {
        if segment.is_empty() {
            return Err(format!(
                "`{text}` has an empty segment; use dotted names like `coupon.redeemed`"
            ));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("`{text}` may only contain letters, digits, `-`, `_` and dots"));
        }
    }
    Ok(())
}

/// Prefix of the event types hookd raises itself (`hookd.delivery.dead`…).
pub const INTERNAL_PREFIX: &str = "hookd.";

/// Whether `event_type` is one of hookd's own notification events.
pub fn is_internal(event_type: &str) -> bool {
    event_type.starts_with(INTERNAL_PREFIX)
}

/// A subscription's event filter: exact, `prefix.*`, or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventPattern {
    /// Every event but hookd's own notifications (`hookd.*`), which a
    /// subscription receives only by naming them (`hookd.*`,
    /// `hookd.delivery.dead`): a catch-all endpoint is not sent hookd's
    /// alerts about itself unasked.
    All,
    /// Types under a prefix: `coupon.*` matches `coupon.redeemed` and
    /// `coupon.code.expired`, not `coupon`.
    Prefix(String),
    /// One type.
    Exact(String),
}

impl EventPattern {
    /// Parses a pattern from configuration.
    pub fn parse(text: &str) -> Result<EventPattern, String> {
        if text == "*" {
            return Ok(EventPattern::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            check_event_type(prefix).map_err(|p| format!("pattern `{text}`: {p}"))?;
            return Ok(EventPattern::Prefix(format!("{prefix}.")));
        }
        check_event_type(text).map_err(|p| format!("pattern `{text}`: {p}"))?;
        Ok(EventPattern::Exact(text.to_owned()))
    }

    /// Whether an event of type `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::All => !is_internal(event_type),
            EventPattern::Prefix(prefix) => event_type.starts_with(prefix.as_str()),
            EventPattern::Exact(exact) => exact == event_type,
        }
    }
}

/// A validated event.
#[derive(Clone, Debug)]
pub struct Event {
    /// Unique id; the dedup key and the `webhook-id` endpoints receive.
    pub id: EventId,
    /// Dotted type, `coupon.redeemed`.
    pub event_type: String,
    /// When it happened, as the producer said, or when hookd accepted it.
    pub occurred_at: DateTime<Utc>,
    /// The JSON object payload, verbatim.
    pub data: Box<RawValue>,
    /// The tenant it belongs to: it reaches that tenant's subscriptions and
    /// the operator's; none: the operator's only.
    pub tenant: Option<TenantId>,
}

impl Event {
    /// The Standard Webhooks body: `{"type", "timestamp", "data"}`.
    pub fn body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            event_type: &'a str,
            timestamp: String,
            data: &'a RawValue,
        }
        let body = Body {
            event_type: &self.event_type,
            timestamp: self.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            data: &self.data,
        };
        Bytes::from(serde_json::to_vec(&body).expect("an event body always serializes"))
    }
}
