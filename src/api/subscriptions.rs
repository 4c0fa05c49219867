//! Subscriptions in the API: the operator's (from the TOML file) and the
//! tenants' (made through the API), one set of routes for both. A TOML
//! subscription's id is its name; a stored one's is `sub_…`.
//!
//! - `POST /v1/subscriptions`: make one (a tenant key for its tenant, an
//!   admin key naming `"tenant"`) → 201 with its `id` and its `secret`.
//!   `"signature": "ed25519"` gives it a `whsk_` Ed25519 secret key (`v1a`
//!   signatures) instead of the default `"hmac"` `whsec_` secret (`v1`).
//! - `GET /v1/subscriptions`: the caller's (an admin's: all; `?tenant=`
//!   narrows), by id, cursor-paginated (`cursor`, `limit`).
//! - `GET|PATCH|DELETE /v1/subscriptions/{id}`: one of them; `PATCH` is a
//!   JSON merge patch of the fields given at creation, in force for every
//!   delivery not yet attempted; `DELETE` cancels its pending deliveries
//!   (each recorded as cancelled). A TOML subscription is read-only here
//!   (409): change the file.
//! - `GET /v1/subscriptions/{id}/secret`: its signing secrets, to its owner.
//! - `POST /v1/subscriptions/{id}/rotate-secret`: a new secret (`"kind":
//!   "hmac"` or `"ed25519"`; by default the kind of its newest), the old
//!   ones signing on for `"grace"` (24h by default).
//! - `POST /v1/subscriptions/{id}/disable`, `.../enable`: park its
//!   deliveries and send nothing, or resume them in order.
//!
//! Each answer shows `public_keys`, the `whpk_…` keys receivers verify
//! `v1a` signatures with (absent for HMAC-only subscriptions: those have
//! nothing public), status (active, or disabled and why, since when:
//! null if it never changed), health counters, and the delivered /
//! retrying / dead / filtered counts of the delivery log. A tenant key sees
//! only its tenant's subscriptions: any other id is a 404.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::admin::bad_param;
use super::{bad_body, forbidden, may_see, not_found, require_reader, ApiError, ApiState, WriteBody};
use crate::catalog::keys::Principal;
use crate::catalog::{Error as CatalogError, Owner, SubscriptionSpec};
use crate::config::{bounds, SubscriptionConfig, SubscriptionName};
use crate::history::{DeliveryState, ListFilter};
use crate::model::{RateLimit, TenantId};
use crate::notify::Notification;
use crate::queue::now_ms;
use crate::queue::Lease;
use crate::sign::{self, Scheme};
use serde::{Deserialize, Serialize};

/// The subscription routes, mounted under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/subscriptions", get(list).post(create))
        .route("/subscriptions/{name}", get(show).patch(update).delete(delete))
        .route("/subscriptions/{name}/secret", get(secret))
        .route("/subscriptions/{name}/rotate-secret", post(rotate_secret))
        .route("/subscriptions/{name}/test", post(send_test))
        .route("/subscriptions/{name}/enable", post(enable))
        .route("/subscriptions/{name}/disable", post(disable))
}

/// A time for an answer: `None` when absent (or the 0 of "never").
fn time(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    ms.filter(|&ms| ms > 0)
        .and_then(chrono::DateTime::from_timestamp_millis)
}

/// The delivery log's counts of a subscription's retained deliveries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Acknowledged with a 2xx.
    pub delivered: u64,
    /// Failed, waiting for a retry.
    pub retrying: u64,
    /// Failed for good.
    pub dead: u64,
    /// Dropped by a plugin.
    pub filtered: u64,
}

/// A subscription as the API shows it (`GET /v1/subscriptions/{id}`, an
/// item of the list, and the answer of a creation or change), for the
/// server and its clients alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionAnswer {
    /// `sub_…`, or a TOML subscription's name.
    pub id: SubscriptionName,
    /// Its display name (a TOML subscription's is its id).
    pub name: String,
    /// The tenant owning it; none for the operator's.
    pub tenant: Option<TenantId>,
    /// What it is for.
    pub description: Option<String>,
    /// Where it is sent, its userinfo and parameter values redacted
    /// ([`crate::model::redact_url`]; a PATCH handing it back unchanged
    /// leaves the URL as it is).
    pub url: String,
    /// Its event patterns.
    pub events: Vec<String>,
    /// Its custom headers' names (values may be credentials: never shown).
    pub headers: Vec<String>,
    /// Its request rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Its in-flight cap, if it sets one.
    pub max_in_flight: Option<usize>,
    /// Its retries, if it sets them.
    pub max_retries: Option<u32>,
    /// Its attempt timeout, if it sets one (`5s`).
    pub timeout: Option<String>,
    /// When it was made through the API.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it last changed through the API.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `active` or `disabled`.
    pub status: String,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// Since when it is enabled or disabled; null while that never changed.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed attempts in a row.
    pub consecutive_failures: u64,
    /// Failing since, if it is.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Its last success.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its last failure.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub last_failure_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The delivery log's counts.
    pub counts: Counts,
    /// A stored subscription's registered plugin (`{"name", "config_keys"}`:
    /// config values may be credentials), or a TOML one's file.
    pub plugin: Option<Value>,
    /// The `whpk_…` public keys of its Ed25519 secrets signing now, which
    /// receivers verify `v1a` signatures with; absent when it signs with
    /// HMAC only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// Its new signing secret: in the answer of a creation only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The `whpk_…` public keys of `sub`'s Ed25519 secrets, in order.
fn public_keys(sub: &SubscriptionConfig) -> Vec<String> {
    sub.secrets
        .iter()
        .filter_map(|s| sign::public_key_of(s.expose()))
        .collect()
}

/// `sub` as the API shows it: its state and health from the state store,
/// its counts from the delivery log, its owner and spec from the catalogue.
pub(super) async fn describe(state: &ApiState, sub: &SubscriptionConfig) -> Result<SubscriptionAnswer, ApiError> {
    let stats = state.history.stats(&sub.name).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("delivery log: {e}"),
        )
    })?;
    describe_with(state, sub, stats).await
}

/// [`describe`] with the delivery log's counts already known.
async fn describe_with(
    state: &ApiState,
    sub: &SubscriptionConfig,
    stats: crate::history::SubscriptionStats,
) -> Result<SubscriptionAnswer, ApiError> {
    let s = state.state.subscription_state(&sub.name).await?;
    let active = s.enabled && sub.enabled;
    let reason = if !sub.enabled {
        Some("enabled = false in the config".to_string())
    } else {
        s.reason.clone()
    };
    let snapshot = state.catalog.snapshot();
    let (owner, stored) = match snapshot.subscription(sub.name.as_str()) {
        Some((_, Owner::Tenant(t))) => (Some(t), snapshot.stored.get(&sub.name)),
        _ => (None, None),
    };
    let spec = stored.map(|s| &s.spec);
    Ok(SubscriptionAnswer {
        id: sub.name.clone(),
        name: spec.map_or(sub.name.as_str(), |s| s.name.as_str()).to_owned(),
        tenant: owner,
        description: spec.and_then(|s| s.description.clone()),
        url: crate::model::redact_url(&sub.url),
        events: sub.events.clone(),
        headers: sub.headers.keys().cloned().collect(),
        rate_limit: sub.rate_limit,
        max_in_flight: sub.max_in_flight,
        max_retries: sub.max_retries,
        timeout: sub.timeout.map(|t| humantime::format_duration(t).to_string()),
        created_at: time(stored.map(|s| s.created_at)),
        updated_at: time(stored.map(|s| s.updated_at)),
        status: if active { "active" } else { "disabled" }.into(),
        disabled_reason: if active { None } else { reason },
        since: time(Some(s.since)),
        consecutive_failures: s.consecutive_failures,
        failing_since: time(s.failing_since),
        last_success_at: time(s.last_success_at.or(stats.last_success_at)),
        last_failure_at: time(s.last_failure_at.or(stats.last_failure_at)),
        counts: Counts {
            delivered: stats.delivered,
            retrying: stats.retrying,
            dead: stats.dead,
            filtered: stats.filtered,
        },
        plugin: match spec {
            Some(spec) => spec
                .plugin
                .as_ref()
                .map(|p| json!({"name": p.name, "config_keys": p.config.keys().collect::<Vec<_>>()})),
            None => sub.plugin.as_ref().map(|p| json!(p.path.display().to_string())),
        },
        public_keys: public_keys(sub),
        secret: None,
    })
}

/// The subscription `id` as `principal` may see it, or a 404 naming it
/// (another tenant's is as unknown as one that never was).
pub(super) fn find(state: &ApiState, principal: &Principal, id: &str) -> Result<SubscriptionConfig, ApiError> {
    require_reader(principal)?;
    let snapshot = state.catalog.snapshot();
    match snapshot.subscription(id) {
        Some((sub, _)) if may_see(&snapshot, principal, &sub.name) => Ok(sub.clone()),
        _ => Err(not_found(format!("no subscription named `{id}`"))),
    }
}

/// Most subscriptions in one page of `GET /v1/subscriptions`.
pub const MAX_PAGE: usize = 1000;

async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let Query(pairs) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let (mut tenant, mut cursor, mut limit) = (None, None, 100usize);
    for (name, value) in pairs {
        match name.as_str() {
            "tenant" => tenant = Some(TenantId::parse(&value).map_err(|p| bad_param(&name, p))?),
            "cursor" => cursor = Some(value).filter(|c| !c.is_empty()),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| bad_param(&name, format!("`{value}` is not a number from 1 to {MAX_PAGE}")))?
            }
            _ => return Err(bad_param(&name, "unknown parameter; use tenant, cursor or limit")),
        }
    }
    if let Some(own) = principal.tenant() {
        if tenant.as_ref().is_some_and(|t| t != own) {
            return Err(not_found(format!(
                "no tenant `{}`",
                tenant.unwrap_or_else(|| own.clone())
            )));
        }
        tenant = Some(own.clone());
    }
    let snapshot = state.catalog.snapshot();
    let mut subs: Vec<&SubscriptionConfig> = snapshot
        .config
        .subscriptions
        .iter()
        .filter(|s| tenant.is_none() || s.owner == tenant)
        .filter(|s| cursor.as_deref().is_none_or(|c| s.name.as_str() > c))
        .collect();
    subs.sort_by(|a, b| a.name.cmp(&b.name));
    let more = subs.len() > limit;
    subs.truncate(limit);
    let mut items = Vec::with_capacity(subs.len());
    for sub in &subs {
        items.push(describe(&state, sub).await?);
    }
    let next_cursor = more.then(|| subs.last().map(|s| s.name.to_string())).flatten();
    Ok(Json(json!({ "subscriptions": items, "next_cursor": next_cursor })).into_response())
}

async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sub = find(&state, &principal, &id)?;
    Ok(Json(describe(&state, &sub).await?).into_response())
}

/// A catalogue refusal as an API error: 422 for a field at fault, 403
/// `plan_limit`, 404, 409 for a read-only or existing object.
impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        let message = e.to_string();
        match e {
            CatalogError::Invalid { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message),
            CatalogError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            CatalogError::Exists { .. } => ApiError::new(StatusCode::CONFLICT, "exists", message),
            CatalogError::ReadOnly { .. } => ApiError::new(StatusCode::CONFLICT, "read_only", message),
            CatalogError::PlanLimit { .. } => ApiError::new(StatusCode::FORBIDDEN, "plan_limit", message),
            CatalogError::Store(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        }
    }
}

/// Reads a JSON object body, or a 400 saying what to send.
pub(super) fn object_body(body: &[u8], what: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_body(format!("send a JSON object: {what}"))),
        Err(e) => Err(bad_body(format!("send a JSON object ({what}): {e}"))),
    }
}

/// The tenant a write is for: a tenant key's own (a `"tenant"` naming
/// another is a 404), or the one an admin names.
fn tenant_of_write(principal: &Principal, named: Option<Value>) -> Result<TenantId, ApiError> {
    let named = match named {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(TenantId::parse(&t).map_err(|p| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("tenant: {p}"),
            )
        })?),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "tenant: must be a tenant id",
            ))
        }
    };
    match (principal, named) {
        (Principal::Tenant { tenant, .. }, None) => Ok(tenant.clone()),
        (Principal::Tenant { tenant, .. }, Some(t)) if &t == tenant => Ok(t),
        (Principal::Tenant { .. }, Some(t)) => Err(not_found(format!("tenant `{t}` does not exist"))),
        (Principal::Admin { .. }, Some(t)) => Ok(t),
        (Principal::Admin { .. }, None) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "tenant: an admin key must name the tenant the subscription is for (\"tenant\": \"acme\"); \
             operator subscriptions are declared in the config file",
        )),
        (Principal::Producer { .. }, _) => Err(forbidden(principal, "producer keys may only send events")),
    }
}

async fn create(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    let mut fields = object_body(
        &body,
        "name, url, events and optional headers, description, rate_limit, max_in_flight, max_retries, timeout, signature",
    )?;
    let tenant = tenant_of_write(&principal, fields.remove("tenant"))?;
    let scheme = scheme_field("signature", fields.remove("signature"))?.unwrap_or_default();
    let spec: SubscriptionSpec = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.to_string()))?;
    let stored = state.catalog.create_subscription(&tenant, spec, scheme).await?;
    let sub = find(&state, &principal, stored.id.as_str())?;
    // Made just now, it has nothing in the delivery log: its answer (and
    // its secret, shown this once) does not wait for a log store that may
    // be down.
    let mut answer = describe_with(&state, &sub, Default::default()).await?;
    answer.secret = stored.secrets.last().map(|s| s.value.clone());
    tracing::info!(subscription = %stored.id, tenant = %tenant, ?scheme, "subscription made");
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A signature scheme named in a body (`"hmac"` or `"ed25519"`), or a 422
/// naming `field`; none when absent or null.
fn scheme_field(field: &str, value: Option<Value>) -> Result<Option<Scheme>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v).map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("{field}: must be \"hmac\" (whsec_ secret, v1 signatures) or \"ed25519\" (whsk_ secret key, v1a signatures)"),
            )
        }),
    }
}

async fn update(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let mut fields = object_body(&body, "the fields to change, null to clear one")?;
    if let Some(t) = fields.remove("tenant") {
        if t != Value::Null {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "tenant: a subscription cannot move to another tenant",
            ));
        }
    }
    let stored = state
        .catalog
        .update_subscription(&id, principal.tenant(), Value::Object(fields))
        .await?;
    let sub = find(&state, &principal, stored.id.as_str())?;
    tracing::info!(subscription = %stored.id, "subscription changed");
    Ok(Json(describe(&state, &sub).await?).into_response())
}

async fn delete(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let id = state.catalog.delete_subscription(&id, principal.tenant()).await?;
    let moved = cancel_pending(&state, &id).await?;
    tracing::info!(subscription = %id, moved, "subscription deleted");
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}

/// Hurries the pending deliveries of deleted subscription `id` to the
/// dispatcher, which cancels them (and records each as cancelled): its
/// parked ones are unparked, its retries waiting for their backoff pulled
/// forward. Returns how many moved; those due anyway are cancelled when
/// claimed.
pub(super) async fn cancel_pending(state: &ApiState, id: &SubscriptionName) -> Result<u64, ApiError> {
    let now = now_ms();
    let mut moved = state.queue.unpark(id, now).await?;
    let filter = ListFilter {
        subscription: Some(id.clone()),
        state: Some(DeliveryState::Retrying),
        ..ListFilter::default()
    };
    let mut cursor = None;
    loop {
        let page = state.history.list(&filter, cursor.as_deref(), 1000).await?;
        for summary in &page.items {
            if let Some(due) = summary.next_attempt_at.filter(|&due| due > now) {
                if state.queue.reschedule(&summary.id, Lease(due), now).await? {
                    moved += 1;
                }
            }
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    state.ingestor.wake();
    Ok(moved)
}

async fn secret(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sub = find(&state, &principal, &id)?;
    let secrets: Vec<&str> = sub.secrets.iter().map(|s| s.expose()).collect();
    tracing::info!(subscription = %sub.name, "subscription secret shown to its owner");
    let mut answer = json!({ "id": sub.name, "secret": secrets.last(), "secrets": secrets });
    let public = public_keys(&sub);
    if !public.is_empty() {
        answer["public_keys"] = json!(public);
    }
    Ok(Json(answer).into_response())
}

/// The body of `POST /v1/subscriptions/{id}/rotate-secret`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the secrets it had keep signing (`24h`).
    #[serde(default, with = "humantime_serde")]
    grace: Option<std::time::Duration>,
    /// The new secret's scheme; by default the newest secret's.
    #[serde(default)]
    kind: Option<Scheme>,
}

/// How long a rotated-out secret keeps signing unless the call says.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

async fn rotate_secret(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!(
                    "send {{\"grace\": \"24h\", \"kind\": \"hmac\" or \"ed25519\"}} (either optional) or nothing: {e}"
                ),
            )
        })?
    };
    let grace = body.grace.unwrap_or(DEFAULT_GRACE);
    let (sub, secret) = state
        .catalog
        .rotate_secret(&id, principal.tenant(), grace, body.kind)
        .await?;
    let until = chrono::Utc::now() + chrono::Duration::from_std(grace).unwrap_or_default();
    tracing::info!(subscription = %sub.id, grace = %humantime::format_duration(grace), "subscription secret rotated");
    let mut answer = json!({
        "id": sub.id,
        "secret": secret,
        "previous_expire_at": if grace.is_zero() { Value::Null } else { json!(crate::model::time::format(&until)) },
    });
    if let Some(public) = sign::public_key_of(&secret) {
        answer["public_key"] = json!(public);
    }
    Ok(Json(answer).into_response())
}

/// The body of `POST /v1/subscriptions/{id}/test`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    /// A type of the catalogue with an example.
    #[serde(rename = "type")]
    event_type: String,
}

async fn send_test(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    let sub = find(&state, &principal, &id)?;
    let body: TestBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("send {{\"type\": \"coupon.redeemed\"}}: {e}"),
        )
    })?;
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", m);
    let snapshot = state.catalog.snapshot();
    let Some((event_type, _)) = snapshot.event_types.get(&body.event_type) else {
        return Err(unprocessable(format!(
            "type: `{}` is not in the event catalogue (GET /v1/event-types)",
            body.event_type
        )));
    };
    let Some(example) = &event_type.example else {
        return Err(unprocessable(format!(
            "type: `{}` has no example to send; PUT one with /v1/event-types/{}",
            event_type.name, event_type.name
        )));
    };
    let wants = sub
        .events
        .iter()
        .filter_map(|p| crate::model::EventPattern::parse(p).ok())
        .any(|p| p.matches(&event_type.name));
    if !wants {
        return Err(unprocessable(format!(
            "type: subscription `{}` does not receive `{}` (its events: {})",
            sub.name,
            event_type.name,
            sub.events.join(", ")
        )));
    }
    let data = serde_json::value::to_raw_value(example).map_err(|e| unprocessable(format!("example: {e}")))?;
    let event = crate::model::Event {
        id: crate::model::EventId::generate(),
        event_type: event_type.name.clone(),
        occurred_at: chrono::Utc::now(),
        data,
        tenant: sub.owner.clone(),
    };
    // Through ingest's admission: the queue's depth, and its tenant's plan
    // rate, whoever asks (as for the tenant's events ingested).
    state.ingestor.admit(sub.owner.as_ref(), 1).await?;
    let (accepted, delivery) = state
        .ingestor
        .ingest_to(event, &sub.name, crate::ingest::Source::Http)
        .await?;
    tracing::info!(subscription = %sub.name, event_id = %accepted.id, "test event sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "event_id": accepted.id, "delivery_id": delivery })),
    )
        .into_response())
}

async fn enable(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sub = find(&state, &principal, &id)?;
    if sub.owner.is_some() {
        // What the platform's operator disabled, only an admin enables.
        let locked = state
            .catalog
            .snapshot()
            .stored
            .get(&sub.name)
            .is_some_and(|s| s.operator_disabled_at.is_some());
        match principal.tenant() {
            Some(_) if locked => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "operator_disabled",
                    format!(
                        "subscription {} was disabled by the platform's operator: only they can enable it",
                        sub.name
                    ),
                ))
            }
            None if locked => {
                state.catalog.set_operator_disabled(sub.name.as_str(), None).await?;
            }
            _ => {}
        }
    }
    let changed = state.state.set_enabled(&sub.name, true, None, now_ms()).await?;
    // Before unparking, so this process does not park them again.
    state.endpoints.load().set_disabled(&sub.name, false);
    if changed {
        state.alerts.raise(Notification::SubscriptionRecovered {
            subscription: sub.name.clone(),
            at: chrono::Utc::now(),
        });
    }
    let resumed = state.queue.unpark(&sub.name, now_ms()).await?;
    state.ingestor.wake();
    tracing::info!(subscription = %sub.name, resumed, "subscription enabled");
    Ok(
        Json(json!({ "id": sub.name, "name": sub.name, "enabled": true, "changed": changed, "resumed": resumed }))
            .into_response(),
    )
}

async fn disable(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    let sub: SubscriptionConfig = find(&state, &principal, &id)?;
    let reason = if body.is_empty() {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| bad_body(format!("send {{\"reason\": \"...\"}} or nothing: {e}")))?;
        v["reason"].as_str().map(str::to_owned)
    };
    if let Some(r) = &reason {
        if r.len() > bounds::MAX_REASON {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!(
                    "reason: is {} bytes long, above the bound of {}",
                    r.len(),
                    bounds::MAX_REASON
                ),
            ));
        }
    }
    let reason = reason.unwrap_or_else(|| match principal.tenant() {
        Some(_) => "disabled by its owner".into(),
        None => "disabled by an operator".into(),
    });
    let name: SubscriptionName = sub.name;
    if sub.owner.is_some() && principal.is_admin() {
        state
            .catalog
            .set_operator_disabled(name.as_str(), Some(now_ms()))
            .await?;
    }
    let changed =
        crate::dispatch::disable(state.state.as_ref(), &state.endpoints, &state.alerts, &name, reason).await?;
    Ok(Json(json!({ "id": name, "name": name, "enabled": false, "changed": changed })).into_response())
}
