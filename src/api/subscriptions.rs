//! Subscriptions in the admin API: their status, and enabling or disabling
//! them.
//!
//! - `GET /v1/subscriptions`: every configured subscription with its status
//!   (active, or disabled and why, since when: null if it never changed),
//!   health counters, and the delivered / retrying / dead / filtered counts
//!   of the delivery log.
//! - `GET /v1/subscriptions/{name}`: one of them.
//! - `POST /v1/subscriptions/{name}/disable`: disable it: its deliveries are
//!   parked, nothing is sent (`{"reason": "..."}` optional).
//! - `POST /v1/subscriptions/{name}/enable`: enable it again and resume its
//!   parked deliveries, in order.
//!
//! The state lives in the queue backend: every hookd process sees it, and
//! it survives restarts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{bad_body, ApiError, ApiState};
use crate::config::{SubscriptionConfig, SubscriptionName};
use crate::notify::Notification;
use crate::queue::now_ms;

/// The subscription routes, mounted under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/subscriptions", get(list))
        .route("/subscriptions/{name}", get(show))
        .route("/subscriptions/{name}/enable", post(enable))
        .route("/subscriptions/{name}/disable", post(disable))
}

fn when(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| json!(t))
        .unwrap_or(Value::Null)
}

async fn describe(state: &ApiState, sub: &SubscriptionConfig) -> Result<Value, ApiError> {
    let s = state.queue.subscription_state(&sub.name).await?;
    let stats = state.history.stats(&sub.name).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("delivery log: {e}"),
        )
    })?;
    let active = s.enabled && sub.enabled;
    let reason = if !sub.enabled {
        Some("enabled = false in the config".to_string())
    } else {
        s.reason.clone()
    };
    Ok(json!({
        "name": sub.name,
        "url": sub.url,
        "events": sub.events,
        "status": if active { "active" } else { "disabled" },
        "disabled_reason": if active { None } else { reason },
        // null while `enabled` never changed.
        "since": when(Some(s.since).filter(|&ms| ms > 0)),
        "consecutive_failures": s.consecutive_failures,
        "failing_since": when(s.failing_since),
        "last_success_at": when(s.last_success_at.or(stats.last_success_at)),
        "last_failure_at": when(s.last_failure_at.or(stats.last_failure_at)),
        "counts": {
            "delivered": stats.delivered,
            "retrying": stats.retrying,
            "dead": stats.dead,
            "filtered": stats.filtered,
        },
        "plugin": sub.plugin.as_ref().map(|p| p.path.display().to_string()),
    }))
}

/// The configured subscription `name`, or a 404 naming it.
pub(super) fn find(state: &ApiState, name: &str) -> Result<SubscriptionConfig, ApiError> {
    let config = state.config.load();
    config.subscription(name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no subscription named `{name}` in the config"),
        )
    })
}

async fn list(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let config = state.config.load_full();
    let mut items = Vec::with_capacity(config.subscriptions.len());
    for sub in &config.subscriptions {
        items.push(describe(&state, sub).await?);
    }
    Ok(Json(json!({ "subscriptions": items })).into_response())
}

async fn show(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let sub = find(&state, &name)?;
    Ok(Json(describe(&state, &sub).await?).into_response())
}

async fn enable(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let sub = find(&state, &name)?;
    let changed = state.queue.set_enabled(&sub.name, true, None, now_ms()).await?;
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
    tracing::info!(subscription = %sub.name, resumed, "subscription enabled by an operator");
    Ok(Json(json!({ "name": sub.name, "enabled": true, "changed": changed, "resumed": resumed })).into_response())
}

async fn disable(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sub: SubscriptionConfig = find(&state, &name)?;
    let reason = if body.is_empty() {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| bad_body(format!("send {{\"reason\": \"...\"}} or nothing: {e}")))?;
        v["reason"].as_str().map(str::to_owned)
    };
    let reason = reason.unwrap_or_else(|| "disabled by an operator".into());
    let name: SubscriptionName = sub.name;
    let changed = state
        .queue
        .set_enabled(&name, false, Some(reason.clone()), now_ms())
        .await?;
    state.endpoints.load().set_disabled(&name, true);
    if changed {
        state.alerts.raise(Notification::SubscriptionDisabled {
            subscription: name.clone(),
            reason,
            at: chrono::Utc::now(),
        });
    }
    Ok(Json(json!({ "name": name, "enabled": false, "changed": changed })).into_response())
}
