//! Tenants and API keys, for admin keys only:
//!
//! - `POST /v1/tenants` `{"id", "name", "plan", "metadata"}` → 201;
//!   `GET /v1/tenants`; `GET|PATCH|DELETE /v1/tenants/{id}`. `PATCH` is a
//!   JSON merge patch of `name`, `plan` and `metadata` (a new plan applies
//!   at once). `DELETE` deletes the tenant's subscriptions (cancelling
//!   their pending deliveries, each recorded as cancelled) and revokes its
//!   keys. Tenants of the config file are read-only here (409).
//! - `POST /v1/tenants/{id}/keys` `{"role": "tenant" | "producer",
//!   "label"}` → 201 `{"id": "key_…", "key": "hk_…"}`: the key is shown this
//!   once and stored only as a hash. `GET /v1/tenants/{id}/keys` lists ids,
//!   roles, creation and last use; `DELETE /v1/tenants/{id}/keys/{key_id}`
//!   revokes one, on every process within a second.
//! - `POST /v1/keys` `{"role": "admin" | "producer", "label"}`,
//!   `GET /v1/keys`, `DELETE /v1/keys/{key_id}`: keys of no tenant.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::subscriptions::{cancel_pending, object_body};
use super::{not_found, require_admin, ApiError, ApiState, WriteBody};
use crate::catalog::keys::{KeyRecord, Principal, Role};
use crate::catalog::{Origin, Tenant};
use crate::model::{Millis, TenantId};

/// The routes, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/tenants/{id}",
            get(show_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route("/tenants/{id}/keys", get(list_tenant_keys).post(create_tenant_key))
        .route("/tenants/{id}/keys/{key_id}", delete(revoke_tenant_key))
        .route("/keys", get(list_keys).post(create_key))
        .route("/keys/{key_id}", delete(revoke_key))
}

/// A tenant as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantAnswer {
    /// Its id.
    pub id: TenantId,
    /// Its display name.
    pub name: String,
    /// Its plan.
    pub plan: Option<String>,
    /// Free-form data.
    pub metadata: serde_json::Map<String, Value>,
    /// `config` (read-only here) or `api`.
    pub source: String,
    /// How many subscriptions it has.
    pub subscriptions: usize,
    /// When it was made (null for a tenant of the config file).
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it last changed.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A key as listed: never the key itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyAnswer {
    /// `key_…`.
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// Its tenant, if it has one.
    pub tenant: Option<TenantId>,
    /// Its owner's label.
    pub label: Option<String>,
    /// When it was made.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it was last used (written every few seconds).
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The answer of a key creation: the only time the key is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyCreated {
    /// `key_…`: how it is listed and revoked.
    pub id: String,
    /// The key: keep it now, it is stored only as a hash.
    pub key: String,
    /// What it may do.
    pub role: Role,
    /// Its tenant, if it has one.
    pub tenant: Option<TenantId>,
}

/// The body of a key creation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    /// What it may do.
    role: Option<Role>,
    /// A label for its owner.
    label: Option<String>,
}

fn time(ms: Millis) -> Option<chrono::DateTime<chrono::Utc>> {
    (ms > 0).then(|| chrono::DateTime::from_timestamp_millis(ms)).flatten()
}

fn parse_tenant(id: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(id).map_err(|_| not_found(format!("tenant `{id}` does not exist")))
}

fn tenant_answer(state: &ApiState, tenant: &Tenant, origin: &Origin) -> TenantAnswer {
    let snapshot = state.catalog.snapshot();
    TenantAnswer {
        id: tenant.id.clone(),
        name: tenant.name.clone(),
        plan: tenant.plan.clone(),
        metadata: tenant.metadata.clone(),
        source: match origin {
            Origin::Config => "config".into(),
            Origin::Api => "api".into(),
        },
        subscriptions: snapshot.subscriptions_of(&tenant.id).count(),
        created_at: time(tenant.created_at),
        updated_at: time(tenant.updated_at),
    }
}

async fn list_tenants(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let snapshot = state.catalog.snapshot();
    let items: Vec<TenantAnswer> = snapshot
        .tenants
        .values()
        .map(|(t, origin)| tenant_answer(&state, t, origin))
        .collect();
    Ok(Json(json!({ "tenants": items })).into_response())
}

async fn show_tenant(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let id = parse_tenant(&id)?;
    let snapshot = state.catalog.snapshot();
    let (tenant, origin) = snapshot
        .tenants
        .get(&id)
        .ok_or_else(|| not_found(format!("tenant `{id}` does not exist")))?;
    Ok(Json(tenant_answer(&state, tenant, origin)).into_response())
}

async fn create_tenant(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let fields = object_body(&body, "id, name and optional plan, metadata")?;
    // Name the field at fault: serde's message would not.
    if let Some(Value::String(id)) = fields.get("id") {
        TenantId::parse(id)
            .map_err(|p| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", format!("id: {p}")))?;
    }
    let tenant: Tenant = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.to_string()))?;
    let tenant = state.catalog.create_tenant(tenant).await?;
    tracing::info!(tenant = %tenant.id, "tenant made");
    Ok((StatusCode::CREATED, Json(tenant_answer(&state, &tenant, &Origin::Api))).into_response())
}

async fn update_tenant(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let id = parse_tenant(&id)?;
    let fields = object_body(&body, "the fields to change: name, plan, metadata")?;
    let tenant = state.catalog.update_tenant(&id, Value::Object(fields)).await?;
    tracing::info!(tenant = %tenant.id, "tenant changed");
    Ok(Json(tenant_answer(&state, &tenant, &Origin::Api)).into_response())
}

async fn delete_tenant(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let id = parse_tenant(&id)?;
    let deleted = state.catalog.delete_tenant(&id).await?;
    for sub in &deleted {
        cancel_pending(&state, sub).await?;
    }
    tracing::info!(tenant = %id, subscriptions = deleted.len(), "tenant deleted");
    Ok(Json(json!({ "id": id, "deleted": true, "subscriptions_deleted": deleted })).into_response())
}

fn parse_key_request(body: &[u8]) -> Result<KeyRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(KeyRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("send {{\"role\", \"label\"}} (both optional): {e}"),
        )
    })
}

async fn key_answers(state: &ApiState, tenant: Option<&TenantId>) -> Result<Vec<KeyAnswer>, ApiError> {
    let uses = state.catalog.key_uses().await?;
    let snapshot = state.catalog.snapshot();
    Ok(snapshot
        .keys
        .values()
        .filter(|k| k.tenant.as_ref() == tenant)
        .map(|k: &KeyRecord| KeyAnswer {
            id: k.id.clone(),
            role: k.role,
            tenant: k.tenant.clone(),
            label: k.label.clone(),
            created_at: time(k.created_at),
            last_used_at: uses.get(&k.id).copied().and_then(time),
        })
        .collect())
}

async fn created(
    state: &ApiState,
    role: Role,
    tenant: Option<TenantId>,
    label: Option<String>,
) -> Result<Response, ApiError> {
    let (record, key) = state.catalog.create_key(role, tenant, label).await?;
    tracing::info!(key_id = %record.id, role = record.role.as_str(), tenant = ?record.tenant, "API key made");
    let answer = KeyCreated {
        id: record.id,
        key,
        role: record.role,
        tenant: record.tenant,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn create_tenant_key(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let id = parse_tenant(&id)?;
    let request = parse_key_request(&body)?;
    let role = request.role.unwrap_or(Role::Tenant);
    if role == Role::Admin {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "role: a tenant's key is `tenant` or `producer`; make admin keys with POST /v1/keys",
        ));
    }
    created(&state, role, Some(id), request.label).await
}

async fn list_tenant_keys(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let id = parse_tenant(&id)?;
    if !state.catalog.snapshot().tenants.contains_key(&id) {
        return Err(not_found(format!("tenant `{id}` does not exist")));
    }
    Ok(Json(json!({ "keys": key_answers(&state, Some(&id)).await? })).into_response())
}

async fn revoke_tenant_key(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let id = parse_tenant(&id)?;
    state.catalog.revoke_key(&key_id, Some(&id)).await?;
    tracing::info!(key_id = %key_id, tenant = %id, "API key revoked");
    Ok(Json(json!({ "id": key_id, "revoked": true })).into_response())
}

async fn create_key(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let request = parse_key_request(&body)?;
    let role = request.role.unwrap_or(Role::Admin);
    if role == Role::Tenant {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "role: a tenant key belongs to a tenant; make it with POST /v1/tenants/{id}/keys",
        ));
    }
    created(&state, role, None, request.label).await
}

async fn list_keys(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    Ok(Json(json!({ "keys": key_answers(&state, None).await? })).into_response())
}

async fn revoke_key(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let snapshot = state.catalog.snapshot();
    if snapshot.keys.get(&key_id).is_some_and(|k| k.tenant.is_some()) {
        return Err(not_found(format!(
            "no key `{key_id}` of no tenant; revoke a tenant's key under /v1/tenants/{{id}}/keys"
        )));
    }
    state.catalog.revoke_key(&key_id, None).await?;
    tracing::info!(key_id = %key_id, "API key revoked");
    Ok(Json(json!({ "id": key_id, "revoked": true })).into_response())
}
