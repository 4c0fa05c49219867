//! Admin read routes over the delivery log ([`crate::history`]), mounted
//! under `/v1` behind the API keys:
//!
//! - `GET /v1/deliveries?subscription=&state=&from=&to=&cursor=&limit=`:
//!   deliveries newest first (by creation), filtered by subscription,
//!   state and creation time range `[from, to)` (RFC 3339), paginated:
//!   `{"deliveries": [...], "next_cursor": "..."|null}`; pass `cursor` =
//!   `next_cursor` for the next page. `limit` is 1 to [`MAX_LIMIT`],
//!   [`DEFAULT_LIMIT`] by default.
//! - `GET /v1/deliveries/{id}/attempts`: `{"delivery": {...}, "attempts": [...]}`.
//! - `GET /v1/events/{id}`: `{"event_id", "event", "deliveries": [{...,
//!   "attempts": [...]}]}`, where `event` is the event as ingested, if the
//!   log still keeps it (null otherwise): `{"id", "type", "created_at",
//!   "data"}` with `data` the body as JSON (the Standard Webhooks envelope
//!   receivers get before any plugin), or `"body"` (lossy text) instead of
//!   `data` for a body that is not JSON. 404 only if the log has neither
//!   the event nor any of its deliveries.
//!
//! Times are RFC 3339 in UTC with milliseconds. A bad query value answers
//! 400 `invalid_query` naming the parameter; an unknown id answers 404.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use super::{fence_listing, in_tenant_log, may_see, not_found, require_reader};
use super::{ApiError, ApiState};
use crate::catalog::keys::Principal;
use crate::config::SubscriptionName;
use crate::history::{self, AttemptRecord, DeliveryState, DeliverySummary, EventRecord, ListFilter};
use crate::ingest::EventId;
use crate::model::TenantId;
use crate::queue::{DeliveryId, Millis};

/// Page size when the query gives none.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size accepted.
pub const MAX_LIMIT: usize = 1000;

/// The admin read routes, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/{id}/attempts", get(delivery_attempts))
        .route("/events/{id}", get(event_deliveries))
}

impl From<history::Error> for ApiError {
    fn from(e: history::Error) -> ApiError {
        match e {
            history::Error::Cursor { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("`cursor`: {e}"))
            }
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        }
    }
}

/// A 400 naming the query parameter at fault.
pub(super) fn bad_param(name: &str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("`{name}`: {problem}"))
}

/// An RFC 3339 time as [`Millis`].
pub(super) fn parse_time(name: &str, text: &str) -> Result<Millis, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            bad_param(
                name,
                format!("`{text}` is not an RFC 3339 time like 2026-01-31T12:00:00Z ({e})"),
            )
        })
}

/// A time for JSON: RFC 3339, UTC, milliseconds.
fn time(ms: Millis) -> Value {
    crate::model::time::format_ms(ms)
        .map(Value::String)
        .unwrap_or(Value::Null)
}

fn summary_json(s: &DeliverySummary) -> Value {
    json!({
        "id": s.id,
        "event_id": s.event_id,
        "event_type": s.event_type,
        "subscription": s.subscription,
        "state": s.state,
        "attempts": s.attempts,
        "created_at": time(s.created_at),
        "updated_at": time(s.updated_at),
        "last_status": s.last_status,
        "last_error": s.last_error,
        "next_attempt_at": s.next_attempt_at.map(time),
        "note": s.note,
    })
}

fn attempt_json(a: &AttemptRecord) -> Value {
    json!({
        "attempt": a.attempt,
        "started_at": time(a.started_at),
        "duration_ms": a.duration_ms,
        "request_headers": a.request_headers,
        "status": a.status,
        "response_headers": a.response_headers,
        "response_body": a.response_body,
        "error_kind": a.error_kind,
        "error": a.error,
        "next_attempt_at": a.next_attempt_at.map(time),
    })
}

/// An event record for JSON: its body as JSON in `data`, or as lossy text
/// in `body` if it is not JSON.
pub(super) fn event_json(record: &EventRecord) -> Value {
    let mut out = json!({
        "id": record.id,
        "type": record.event_type,
        "created_at": time(record.created_at),
    });
    match serde_json::from_slice::<Value>(&record.body) {
        Ok(data) => out["data"] = data,
        Err(_) => out["body"] = Value::String(String::from_utf8_lossy(&record.body).into_owned()),
    }
    out
}

/// The query of `GET /v1/deliveries`, checked.
struct ListQuery {
    /// What to list.
    filter: ListFilter,
    /// Where the previous page ended.
    cursor: Option<String>,
    /// Page size.
    limit: usize,
}

impl ListQuery {
    fn parse(pairs: Vec<(String, String)>) -> Result<ListQuery, ApiError> {
        let mut q = ListQuery {
            filter: ListFilter::default(),
            cursor: None,
            limit: DEFAULT_LIMIT,
        };
        for (name, value) in pairs {
            match name.as_str() {
                "subscription" => {
                    q.filter.subscription = Some(SubscriptionName::parse(&value).map_err(|p| bad_param(&name, p))?)
                }
                "state" => q.filter.state = Some(value.parse::<DeliveryState>().map_err(|p| bad_param(&name, p))?),
                "tenant" => q.filter.tenant = Some(TenantId::parse(&value).map_err(|p| bad_param(&name, p))?),
                "from" => q.filter.from = Some(parse_time(&name, &value)?),
                "to" => q.filter.to = Some(parse_time(&name, &value)?),
                "cursor" => q.cursor = Some(value).filter(|c| !c.is_empty()),
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| bad_param(&name, format!("`{value}` is not a number from 1 to {MAX_LIMIT}")))?
                }
                _ => {
                    return Err(bad_param(
                        &name,
                        "unknown parameter; use subscription, state, tenant, from, to, cursor or limit",
                    ))
                }
            }
        }
        if let (Some(from), Some(to)) = (q.filter.from, q.filter.to) {
            if to < from {
                return Err(bad_param("to", "is before `from`"));
            }
        }
        Ok(q)
    }
}

async fn list_deliveries(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let Query(pairs) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let q = ListQuery::parse(pairs)?;
    let mut q = q;
    if let Some(tenant) = principal.tenant() {
        // A tenant's own log: deliveries to the subscriptions it owns.
        let snapshot = state.catalog.snapshot();
        if let Some(other) = q.filter.tenant.as_ref().filter(|t| *t != tenant) {
            return Err(not_found(format!("tenant `{other}` does not exist")));
        }
        if let Some(sub) = &q.filter.subscription {
            if !may_see(&snapshot, &principal, sub) {
                return Err(not_found(format!("no subscription named `{sub}`")));
            }
        }
        q.filter.tenant = Some(tenant.clone());
    }
    // A tenant's log, read by the tenant or an admin, is the log of the
    // tenant now of that id, not of a deleted one that had it.
    let snapshot = state.catalog.snapshot();
    if let Some(tenant) = q.filter.tenant.clone() {
        fence_listing(&snapshot, &tenant, &mut q.filter);
    }
    let mut page = state.history.list(&q.filter, q.cursor.as_deref(), q.limit).await?;
    if let Some(tenant) = &q.filter.tenant {
        page.items.retain(|s| in_tenant_log(&snapshot, tenant, s));
    }
    let items: Vec<Value> = page.items.iter().map(summary_json).collect();
    Ok(Json(json!({ "deliveries": items, "next_cursor": page.next_cursor })).into_response())
}

async fn delivery_attempts(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let id = DeliveryId::parse(&id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e))?;
    let snapshot = state.catalog.snapshot();
    match state.history.delivery(&id).await? {
        Some((summary, attempts)) if may_see(&snapshot, &principal, &summary.subscription) => {
            let attempts: Vec<Value> = attempts.iter().map(attempt_json).collect();
            Ok(Json(json!({ "delivery": summary_json(&summary), "attempts": attempts })).into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no history of delivery {id}: unknown, or trimmed by history.max_age / history.max_count"),
        )),
    }
}

/// `?tenant=` of the event routes: whose event (an event id is unique per
/// tenant). A tenant key's own tenant; an admin names it, or means the
/// event of no tenant.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantQuery {
    /// The tenant whose event it is.
    pub tenant: Option<String>,
}

impl TenantQuery {
    /// The tenant `principal` asks about: 404 for a tenant key naming
    /// another tenant.
    pub(super) fn resolve(&self, principal: &Principal) -> Result<Option<TenantId>, ApiError> {
        let named = self
            .tenant
            .as_deref()
            .map(|t| TenantId::parse(t).map_err(|p| bad_param("tenant", p)))
            .transpose()?;
        match (principal.tenant(), named) {
            (Some(own), Some(t)) if &t != own => Err(not_found(format!("tenant `{t}` does not exist"))),
            (Some(own), _) => Ok(Some(own.clone())),
            (None, named) => Ok(named),
        }
    }
}

async fn event_deliveries(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let tenant = query.resolve(&principal)?;
    let event_id = EventId::parse(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", format!("`{id}`: {e}")))?;
    let (mut summaries, mut record) = futures_util::future::try_join(
        state.history.event(tenant.as_ref(), &event_id),
        state.history.event_record(tenant.as_ref(), &event_id),
    )
    .await?;
    if !principal.is_admin() {
        // A tenant sees its own deliveries of the event, and the event
        // only through them.
        let snapshot = state.catalog.snapshot();
        summaries.retain(|s| may_see(&snapshot, &principal, &s.subscription));
        let own = principal.tenant();
        if summaries.is_empty()
            || record
                .as_ref()
                .zip(own)
                .is_some_and(|(r, own)| !super::events::of_this_tenant(&snapshot, own, r))
        {
            record = None;
        }
    }
    if summaries.is_empty() && record.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no record of event {event_id}: unknown, matched no subscription, or trimmed"),
        ));
    }
    let details = futures_util::future::try_join_all(summaries.iter().map(|s| state.history.delivery(&s.id))).await?;
    let deliveries: Vec<Value> = summaries
        .iter()
        .zip(details)
        .map(|(summary, detail)| {
            let mut body = summary_json(summary);
            let attempts: Vec<Value> = detail
                .map(|(_, attempts)| attempts.iter().map(attempt_json).collect())
                .unwrap_or_default();
            body["attempts"] = Value::Array(attempts);
            body
        })
        .collect();
    let event = record.as_ref().map_or(Value::Null, event_json);
    Ok(Json(json!({ "event_id": event_id, "event": event, "deliveries": deliveries })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<ListQuery, String> {
        ListQuery::parse(query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).map_err(|e| e.message)
    }

    #[test]
    fn queries_parse_and_problems_name_the_parameter() {
        let q = parse(&[
            ("subscription", "crm"),
            ("state", "retrying"),
            ("from", "2026-01-01T00:00:00Z"),
            ("to", "2026-01-02T00:00:00+01:00"),
            ("limit", "5"),
        ])
        .unwrap();
        assert_eq!(q.filter.state, Some(DeliveryState::Retrying));
        assert_eq!(q.filter.from, Some(1_767_225_600_000));
        assert_eq!(q.filter.to, Some(1_767_225_600_000 + 23 * 3_600_000));
        assert_eq!(q.limit, 5);
        for (query, name) in [
            (&[("state", "done")][..], "`state`"),
            (&[("from", "yesterday")][..], "`from`"),
            (&[("limit", "0")][..], "`limit`"),
            (&[("limit", "x")][..], "`limit`"),
            (&[("subscription", "a b")][..], "`subscription`"),
            (&[("colour", "red")][..], "`colour`"),
            (
                &[("from", "2026-01-02T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")][..],
                "`to`",
            ),
        ] {
            let err = parse(query).err().expect("rejected");
            assert!(err.starts_with(name), "{query:?}: {err}");
        }
    }

    #[test]
    fn in_flight_is_refused_naming_the_states_recorded() {
        // No delivery is ever recorded in flight: the filter would always
        // answer nothing, so it is refused with the states that exist.
        let err = parse(&[("state", "in_flight")]).err().expect("rejected");
        assert!(
            err.contains("use one of pending, delivered, filtered, retrying, dead, parked, cancelled, expired"),
            "{err}"
        );
    }
}
