//! One-time links into the console (admin keys only):
//!
//! - `POST /v1/tenants/{id}/portal`: into the tenant's portal, so that a
//!   platform sends its customers from its own dashboard straight to
//!   their webhooks;
//! - `POST /v1/console/link`: into the operator's console (how `hookd
//!   demo` opens it with nothing to type).
//!
//! Both answer `201 {"url", "expires_at"}`. The link opens once, within
//! `console.link_ttl` (10 minutes by default), and starts a session scoped
//! to the tenant: it sees and acts on that tenant's objects only, through
//! the same authorization as a tenant key. The URL is built on
//! `console.public_url`, or else on the request's `Host` (or HTTP/2's
//! `:authority`) and `X-Forwarded-Proto`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::{not_found, require_admin, ApiError, ApiState};
use crate::catalog::keys::Principal;
use crate::console::session::{Role, Sessions, SignedInVia, Via};
use crate::model::TenantId;

/// The route, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/tenants/{id}/portal", post(portal_link))
        .route("/console/link", post(operator_link))
        .route("/console/sessions", axum::routing::get(list_sessions))
        .route("/console/sessions/{id}", axum::routing::delete(end_session))
}

/// Most sessions one listing shows.
const MAX_SESSIONS_LISTED: usize = 1000;

/// One console session as an operator sees it: never its token or CSRF.
pub fn session_json(id: &str, session: &crate::console::session::Session) -> serde_json::Value {
    let via = match &session.via {
        None => serde_json::json!({"kind": "open_api"}),
        Some(via) => via_json(via),
    };
    serde_json::json!({
        "id": id,
        "role": match session.role { Role::Operator => "operator", Role::Tenant { .. } => "tenant" },
        "tenant": session.role.tenant(),
        "via": via,
        "expires_at": crate::model::time::format_ms(session.expires_at),
    })
}

fn via_json(via: &Via) -> serde_json::Value {
    match via {
        Via::Key { id } => serde_json::json!({"kind": "key", "key_id": id}),
        // The hash of a config key is not shown: it is one of few.
        Via::ConfigKey { .. } => serde_json::json!({"kind": "config_key"}),
        Via::Link { by } => serde_json::json!({"kind": "link", "made_by": by.as_deref().map(via_json)}),
    }
}

/// `GET /v1/console/sessions` (admin): the live console sessions,
/// soonest to end first; `?tenant=` keeps one tenant's portal sessions.
async fn list_sessions(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let sessions = Sessions::new(state.catalog.store(), &state.console);
    let listed = sessions
        .list(MAX_SESSIONS_LISTED)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()))?;
    let tenant = query.get("tenant");
    let items: Vec<serde_json::Value> = listed
        .iter()
        .filter(|(_, s)| tenant.is_none_or(|t| s.role.tenant().is_some_and(|own| own.as_str() == t)))
        .map(|(id, s)| session_json(id, s))
        .collect();
    Ok(Json(serde_json::json!({ "sessions": items })).into_response())
}

/// `DELETE /v1/console/sessions/{id}` (admin): ends a session at once;
/// 404 if there is no live session of that id.
async fn end_session(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let sessions = Sessions::new(state.catalog.store(), &state.console);
    let unavailable =
        |e: crate::catalog::store::Error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string());
    if sessions.by_id(&id).await.map_err(unavailable)?.is_none() {
        return Err(not_found(format!("no live console session `{id}`")));
    }
    sessions.end_id(&id).await.map_err(unavailable)?;
    tracing::info!(session = %id, "console session ended by an operator");
    Ok(Json(serde_json::json!({ "id": id, "ended": true })).into_response())
}

/// The answer: where to send the browser, and until when the link opens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalLink {
    /// The link: `…/console/link/<token>`.
    pub url: String,
    /// When it stops opening.
    #[serde(with = "crate::model::time::rfc3339")]
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Where browsers reach this hookd: `console.public_url`, or the
/// request's scheme and host.
fn base_url(state: &ApiState, headers: &HeaderMap, uri: &Uri) -> Result<String, ApiError> {
    if let Some(url) = &state.console.public_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = super::hosts::request_host(headers, uri)
        .filter(|h| !h.contains(['/', ' ', '@']))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_host",
                "the request has no Host to build the link on: set console.public_url",
            )
        })?;
    let https = state.catalog.snapshot().config.server.tls_cert.is_some()
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    Ok(format!("{}://{host}", if https { "https" } else { "http" }))
}

async fn portal_link(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    signed_in: Option<Extension<SignedInVia>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let tenant = TenantId::parse(&id).map_err(|p| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", p))?;
    let Some(generation) = state
        .catalog
        .snapshot()
        .tenants
        .get(&tenant)
        .map(|(t, _)| t.generation.clone())
    else {
        return Err(not_found(format!("tenant `{tenant}` does not exist")));
    };
    tracing::info!(tenant = %tenant, "portal link made");
    let by = maker(&state, &principal, &headers, signed_in.as_ref());
    issue(&state, &headers, &uri, Role::Tenant { tenant, generation }, by).await
}

async fn operator_link(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    signed_in: Option<Extension<SignedInVia>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    tracing::info!("operator console link made");
    let by = maker(&state, &principal, &headers, signed_in.as_ref());
    issue(&state, &headers, &uri, Role::Operator, by).await
}

/// How the admin making a link is signed in, so that the sessions it
/// opens end with that key: the console session's own way in when the
/// console asks (`signed_in`), else the request's key — a stored admin
/// key by id, one of `server.api_keys` by hash — and none on an open API.
fn maker(
    state: &ApiState,
    principal: &Principal,
    headers: &HeaderMap,
    signed_in: Option<&Extension<SignedInVia>>,
) -> Option<Via> {
    if let Some(Extension(SignedInVia(via))) = signed_in {
        return via.clone();
    }
    match principal {
        Principal::Admin { key: Some(id) } => Some(Via::Key { id: id.clone() }),
        _ if state.open() => None,
        _ => super::bearer(headers).ok().flatten().map(|key| Via::ConfigKey {
            hash: crate::catalog::keys::hash(key),
        }),
    }
}

/// A link for `role`, made by an admin signed in `by`, as the 201 answer.
async fn issue(
    state: &ApiState,
    headers: &HeaderMap,
    uri: &Uri,
    role: Role,
    by: Option<Via>,
) -> Result<Response, ApiError> {
    if !state.console.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "console_disabled",
            "the console is off (console.enabled = false): there is nothing to link to",
        ));
    }
    let base = base_url(state, headers, uri)?;
    let sessions = Sessions::new(state.catalog.store(), &state.console);
    let (token, expires_at) = sessions
        .issue_link(role, by)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()))?;
    let answer = PortalLink {
        url: format!("{base}/console/link/{token}"),
        expires_at: chrono::DateTime::from_timestamp_millis(expires_at).unwrap_or_default(),
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
