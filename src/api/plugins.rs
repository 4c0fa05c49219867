//! The operator's plugin registry (`[plugins.registry.NAME]`), for admin
//! keys only:
//!
//! - `GET /v1/plugins`: `{"plugins": [{"name", "description"}]}`, never a
//!   path;
//! - `POST /v1/plugins/{name}/run` `{"event": {…}, "config": {"k": "v"}}`:
//!   runs the plugin once on the event (as producers send it to `POST
//!   /v1/events`), as `hookd plugin run` does, and answers its verdict and
//!   the request before and after: `{"verdict": "deliver"|"drop",
//!   "reason", "body_before", "body_after", "headers_after",
//!   "elapsed_ms"}`. A plugin that fails (traps, runs out of time or
//!   memory, answers garbage) is a 422 saying how; nothing is delivered.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{not_found, require_admin, ApiError, ApiState, WriteBody};
use crate::catalog::keys::Principal;
use crate::plugin::Verdict;

/// The routes, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/plugins", get(list))
        .route("/plugins/{name}/run", post(run))
}

/// One registered plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginAnswer {
    /// Its name in the registry.
    pub name: String,
    /// What it does, in the operator's words.
    pub description: String,
}

/// What one run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunAnswer {
    /// `deliver` or `drop`.
    pub verdict: String,
    /// Why it dropped the event, if it did.
    pub reason: Option<String>,
    /// The body hookd would send without the plugin.
    pub body_before: String,
    /// The body it would send with it; none if dropped.
    pub body_after: Option<String>,
    /// The headers it would send with it (before signing); none if dropped.
    pub headers_after: Option<Vec<(String, String)>>,
    /// How long the call took, loading included.
    pub elapsed_ms: u64,
}

async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let snapshot = state.catalog.snapshot();
    let plugins: Vec<PluginAnswer> = snapshot
        .config
        .plugins
        .registry
        .iter()
        .map(|(name, p)| PluginAnswer {
            name: name.clone(),
            description: p.description.clone(),
        })
        .collect();
    Ok(Json(json!({ "plugins": plugins })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    /// The event, as producers send it.
    event: Value,
    /// The plugin's settings for this run.
    #[serde(default)]
    config: std::collections::BTreeMap<String, String>,
}

async fn run(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", m);
    let body: RunBody = serde_json::from_slice(&body).map_err(|e| {
        unprocessable(format!(
            "send {{\"event\": {{\"type\", \"data\"}}, \"config\": {{…}}}}: {e}"
        ))
    })?;
    let snapshot = state.catalog.snapshot();
    let settings = snapshot.config.plugins.clone();
    let Some(registered) = settings.registry.get(&name) else {
        return Err(not_found(format!("no registered plugin `{name}`")));
    };
    let path = registered.path.clone();
    let event = body.event.to_string();
    let config = body.config.into_iter().collect();
    let report = crate::plugin::run_once(&settings, &path, event.as_bytes(), config)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "plugin_failed",
                format!("{name}: {e}"),
            )
        })?;
    let (verdict, reason) = match &report.verdict {
        Verdict::Drop { reason } => ("drop", Some(reason.clone())),
        Verdict::Deliver { .. } => ("deliver", None),
    };
    tracing::info!(plugin = %name, verdict, "plugin run by an operator");
    let answer = RunAnswer {
        verdict: verdict.into(),
        reason,
        body_before: String::from_utf8_lossy(&report.original_body).into_owned(),
        body_after: report
            .request
            .as_ref()
            .map(|(b, _)| String::from_utf8_lossy(b).into_owned()),
        headers_after: report.request.map(|(_, h)| h),
        elapsed_ms: report.elapsed.as_millis() as u64,
    };
    Ok(Json(answer).into_response())
}
