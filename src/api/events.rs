//! Replaying an event to its subscriptions, from the delivery log, mounted
//! under `/v1` behind the API keys:
//!
//! - `POST /v1/events/{id}/replay`, body optional:
//!   `{"subscriptions": ["name", ...], "key": "..."}`. Enqueues the event
//!   again, as ingested ([`crate::history::EventRecord`]), one new delivery
//!   per target subscription, each due now, unattempted, with the **same
//!   event id** (the `webhook-id` receivers dedup on) and the stored body,
//!   so the subscription's plugin runs on it again.
//!   - Targets: by default every subscription the log has a delivery of
//!     the event to that is still in the config; with `subscriptions`,
//!     exactly those, each of which must be in the config.
//!   - Idempotent per `key`: the queue dedups the replay on
//!     `{event_id}/replay/{key}` within `ingest.dedup_window`, apart from
//!     the event's own id. Without a `key` a fresh one is made, so every
//!     such call replays again.
//!   - Answers 202 `{"event_id", "duplicate": false, "deliveries": [{"id",
//!     "subscription"}]}`; the same key again answers 200 `{"event_id",
//!     "duplicate": true, "deliveries": []}` and enqueues nothing.
//!   - 404 `not_found` if the log has no record of the event (trimmed by
//!     history retention, or never recorded); 400 `invalid_body` naming a
//!     subscription not in the config or a bad field; 409 `no_targets` if
//!     no subscription is left to replay to.
//!
//! Each new delivery enters the log at once, pending, noted `replay of
//! event <id>`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::admin::TenantQuery;
use super::{bad_body, may_see, require_reader, ApiError, ApiState, WriteBody};
use crate::catalog::keys::Principal;
use crate::catalog::Snapshot;
use crate::config::{Config, SubscriptionName};
use crate::history::{DeliverySummary, Entry, EventRecord};
use crate::ingest::EventId;
use crate::model::TenantId;
use crate::queue::{now_ms, shard_of, Delivery, Enqueued, NewEvent};

/// Longest replay `key` accepted, in bytes.
pub const MAX_KEY: usize = 200;

/// The event routes that act, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new().route("/events/{id}/replay", post(replay))
}

/// The body of `POST /v1/events/{id}/replay`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// Replay to exactly these; absent: to those the event was delivered to.
    subscriptions: Option<Vec<String>>,
    /// Names this replay: the same key again is answered as a duplicate.
    key: Option<String>,
}

impl ReplayRequest {
    /// Reads the optional JSON body; empty means every default.
    fn parse(body: &[u8]) -> Result<ReplayRequest, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ReplayRequest::default());
        }
        let request: ReplayRequest = serde_json::from_slice(body).map_err(|e| {
            bad_body(format!(
                "send {{\"subscriptions\": [\"name\", ...], \"key\": \"...\"}} (both optional) or nothing: {e}"
            ))
        })?;
        if let Some(key) = &request.key {
            if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
                return Err(bad_body(format!(
                    "`key` must be 1 to {MAX_KEY} bytes without control characters, \
                     like a ticket number or `restore-2026-01-31`"
                )));
            }
        }
        Ok(request)
    }

    /// The subscriptions named, each checked against `config`, in order,
    /// without repeats.
    fn named(names: &[String], config: &Config) -> Result<Vec<SubscriptionName>, ApiError> {
        if names.is_empty() {
            return Err(bad_body(
                "`subscriptions` is empty: name at least one, or leave it out to replay to every \
                 subscription the event was delivered to",
            ));
        }
        let mut out: Vec<SubscriptionName> = Vec::with_capacity(names.len());
        for name in names {
            let Some(sub) = config.subscription(name) else {
                return Err(bad_body(format!(
                    "`subscriptions`: no subscription named `{name}` in the config"
                )));
            };
            if !out.contains(&sub.name) {
                out.push(sub.name.clone());
            }
        }
        Ok(out)
    }
}

/// Whether the event `record`, kept under `tenant`, is the record of the
/// tenant of that id now in the catalogue: accepted after it was made. A
/// record of a deleted tenant with the same id is not; the latest accepted
/// is kept ([`crate::history::Entry::Event`]), so an id the new tenant
/// reuses reads back as its own.
pub(super) fn of_this_tenant(snapshot: &Snapshot, tenant: &TenantId, record: &EventRecord) -> bool {
    snapshot
        .tenant_since(tenant)
        .is_some_and(|since| record.created_at >= since)
}

async fn replay(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let tenant = query.resolve(&principal)?;
    let event_id = EventId::parse(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", format!("`{id}`: {e}")))?;
    let request = ReplayRequest::parse(&body)?;
    let snapshot = state.catalog.snapshot();
    let config = snapshot.config.clone();
    // A tenant replays to its own subscriptions only; others' are as
    // unknown to it as subscriptions that do not exist.
    let visible = |name: &SubscriptionName| may_see(&snapshot, &principal, name);
    if let Some(hidden) = request
        .subscriptions
        .iter()
        .flatten()
        .find(|n| config.subscription(n).is_some_and(|s| !visible(&s.name)))
    {
        return Err(bad_body(format!(
            "`subscriptions`: no subscription named `{hidden}` in the config"
        )));
    }
    // Checked before anything is read, so a typo is named even for an
    // event the log no longer has.
    let named = request
        .subscriptions
        .as_deref()
        .map(|names| ReplayRequest::named(names, &config))
        .transpose()?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "the delivery log has no record of event {event_id} (trimmed by history retention, \
                 or never recorded): it cannot be replayed"
            ),
        )
    };
    let record = state
        .history
        .event_record(tenant.as_ref(), &event_id)
        .await?
        .ok_or_else(unknown)?;
    if principal
        .tenant()
        .is_some_and(|own| !of_this_tenant(&snapshot, own, &record))
    {
        return Err(unknown());
    }
    let targets = match named {
        Some(named) => named,
        None => {
            let mut targets: Vec<SubscriptionName> = Vec::new();
            for summary in state.history.event(tenant.as_ref(), &event_id).await? {
                if config.subscription(summary.subscription.as_str()).is_some()
                    && visible(&summary.subscription)
                    && !targets.contains(&summary.subscription)
                {
                    targets.push(summary.subscription);
                }
            }
            targets
        }
    };
    if targets.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_targets",
            format!(
                "the delivery log has no delivery of event {event_id} to a subscription still in the config: \
                 name the subscriptions to replay to in `subscriptions`"
            ),
        ));
    }
    // An event goes only to its own tenant's subscriptions and the
    // operator's, whoever asks: an admin naming another tenant's
    // subscription would hand it this tenant's data.
    if let Some(foreign) = targets.iter().find_map(|name| {
        let owner = config.subscription(name.as_str())?.owner.as_ref()?;
        (Some(owner) != tenant.as_ref()).then_some((name, owner))
    }) {
        let (name, owner) = foreign;
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "foreign_subscription",
            format!(
                "`subscriptions`: `{name}` belongs to tenant `{owner}`, and event {event_id} is {}: \
                 an event is replayed only to its own tenant's subscriptions and the operator's",
                match &tenant {
                    Some(t) => format!("tenant `{t}`'s"),
                    None => "of no tenant".to_owned(),
                }
            ),
        ));
    }
    // Through ingest's admission, as one event: the queue's depth, and its
    // tenant's plan rate, whoever asks (as for the event ingested).
    state.ingestor.admit(tenant.as_ref(), 1).await?;
    let key = request.key.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let shard = shard_of(&event_id, config.queue.shards);
    let now = now_ms();
    let deliveries: Vec<Delivery> = targets
        .iter()
        .map(|subscription| {
            Delivery::new(
                shard,
                event_id.clone(),
                record.event_type.clone(),
                tenant.clone(),
                subscription.clone(),
                record.body.clone(),
                now,
            )
        })
        .collect();
    let dedup_key = match &tenant {
        Some(t) => format!(
            "{}/replay/{key}",
            crate::ingest::tenant_dedup_key(t, snapshot.generation_of(Some(t)), &event_id)
        ),
        None => format!("{event_id}/replay/{key}"),
    };
    let event = NewEvent {
        event_id: event_id.clone(),
        dedup_key: Some(dedup_key),
        deliveries,
    };
    let enqueued = state
        .queue
        .enqueue(std::slice::from_ref(&event), config.ingest.dedup_window)
        .await?;
    if enqueued.first() != Some(&Enqueued::Accepted) {
        return Ok(Json(json!({ "event_id": event_id, "duplicate": true, "deliveries": [] })).into_response());
    }
    state.ingestor.wake();
    let note = format!("replay of event {event_id}");
    let entries: Vec<Entry> = event
        .deliveries
        .iter()
        .map(|d| {
            Entry::Created(DeliverySummary {
                note: Some(note.clone()),
                ..DeliverySummary::created(d)
            })
        })
        .collect();
    // The replay is queued whatever happens here: the log is best effort,
    // and the first attempt records the deliveries anyway.
    if let Err(e) = state.history.record(&entries).await {
        tracing::warn!(event_id = %event_id, error = %e, "cannot record the replayed deliveries in the log");
    }
    let listed: Vec<_> = event
        .deliveries
        .iter()
        .map(|d| json!({ "id": d.id, "subscription": d.subscription }))
        .collect();
    tracing::info!(event_id = %event_id, deliveries = listed.len(), "event replayed by an operator");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "event_id": event_id, "duplicate": false, "deliveries": listed })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_and_problems_name_the_field() {
        let empty = ReplayRequest::parse(b"").unwrap();
        assert!(empty.subscriptions.is_none() && empty.key.is_none());
        let full = ReplayRequest::parse(br#"{"subscriptions": ["crm"], "key": "restore-1"}"#).unwrap();
        assert_eq!(full.subscriptions, Some(vec!["crm".to_owned()]));
        assert_eq!(full.key.as_deref(), Some("restore-1"));
        let long = format!(r#"{{"key": "{}"}}"#, "k".repeat(MAX_KEY + 1));
        for (body, want) in [
            (r#"{"key": ""}"#, "`key`"),
            (r#"{"key": "a\nb"}"#, "`key`"),
            (long.as_str(), "`key`"),
            (r#"{"colour": 1}"#, "unknown field `colour`"),
            ("[1]", "send {"),
        ] {
            let err = ReplayRequest::parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(want), "{body}: {}", err.message);
        }
    }

    #[test]
    fn named_subscriptions_must_be_in_the_config() {
        let toml = "[[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/hooks\"\n\
                    events = [\"*\"]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n";
        let config = Config::from_toml(toml).unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = ReplayRequest::named(&names(&["crm", "crm"]), &config).unwrap();
        assert_eq!(got, vec![SubscriptionName::parse("crm").unwrap()]);
        let err = ReplayRequest::named(&names(&["crm", "billing"]), &config).unwrap_err();
        assert!(err.message.contains("`billing`"), "{}", err.message);
        let err = ReplayRequest::named(&[], &config).unwrap_err();
        assert!(err.message.contains("`subscriptions` is empty"), "{}", err.message);
    }
}
