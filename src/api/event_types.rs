//! The event catalogue: the types tenants may subscribe to.
//!
//! - `GET /v1/event-types` (any key): `{"event_types": [{"name",
//!   "description", "schema", "example", "deprecated", "source"}]}`, by
//!   name; `GET /v1/event-types/{name}`: one.
//! - `PUT /v1/event-types/{name}` (admin) `{"description", "schema",
//!   "example", "deprecated"}`: adds or replaces a type. The schema must
//!   compile (JSON Schema, no remote references) and the example match it;
//!   a problem is a 422 naming the field.
//! - `DELETE /v1/event-types/{name}` (admin). Types of the config file
//!   (`[[event_types]]`) are read-only here (409).
//!
//! Once the catalogue holds a type, a subscription made through the API
//! must want at least one catalogued type with each of its patterns, and
//! with `ingest.validate_schemas` events are checked against their type's
//! schema.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::subscriptions::object_body;
use super::{not_found, require_admin, ApiError, ApiState, WriteBody};
use crate::catalog::keys::Principal;
use crate::catalog::{EventType, Origin};

/// The routes, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/event-types", get(list))
        .route("/event-types/{name}", get(show).put(put).delete(remove))
}

/// One type of the catalogue as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventTypeAnswer {
    /// Its dotted name.
    pub name: String,
    /// What it means.
    pub description: String,
    /// The JSON Schema of its events' `data`, if it has one.
    pub schema: Option<Value>,
    /// An example `data`.
    pub example: Option<Value>,
    /// On its way out.
    pub deprecated: bool,
    /// `config` (read-only here) or `api`.
    pub source: String,
}

/// The body of `PUT /v1/event-types/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    example: Option<Value>,
    #[serde(default)]
    deprecated: bool,
}

fn answer(t: &EventType, origin: &Origin) -> EventTypeAnswer {
    EventTypeAnswer {
        name: t.name.clone(),
        description: t.description.clone(),
        schema: t.schema.clone(),
        example: t.example.clone(),
        deprecated: t.deprecated,
        source: match origin {
            Origin::Config => "config".into(),
            Origin::Api => "api".into(),
        },
    }
}

async fn list(State(state): State<Arc<ApiState>>) -> Response {
    let snapshot = state.catalog.snapshot();
    let items: Vec<EventTypeAnswer> = snapshot.event_types.values().map(|(t, o)| answer(t, o)).collect();
    Json(json!({ "event_types": items })).into_response()
}

async fn show(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let snapshot = state.catalog.snapshot();
    let (t, origin) = snapshot
        .event_types
        .get(&name)
        .ok_or_else(|| not_found(format!("no event type `{name}` in the catalogue")))?;
    Ok(Json(answer(t, origin)).into_response())
}

async fn put(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    let fields = object_body(&body, "description, schema, example, deprecated (all optional)")?;
    let body: PutBody = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.to_string()))?;
    let stored = state
        .catalog
        .put_event_type(EventType {
            name,
            description: body.description,
            schema: body.schema,
            example: body.example,
            deprecated: body.deprecated,
            updated_at: 0,
        })
        .await?;
    tracing::info!(event_type = %stored.name, "event type put in the catalogue");
    Ok(Json(answer(&stored, &Origin::Api)).into_response())
}

async fn remove(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&principal)?;
    state.catalog.delete_event_type(&name).await?;
    tracing::info!(event_type = %name, "event type deleted from the catalogue");
    Ok(Json(json!({ "name": name, "deleted": true })).into_response())
}
