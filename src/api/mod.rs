//! The HTTP API: ingest, admin, health.
//!
//! - `POST /v1/events`: one event → `202 {"id", "duplicate", "deliveries"}`.
//! - `POST /v1/events/batch`: a JSON array of events, accepted all or none.
//! - `GET /v1/deliveries/dead`, `GET /v1/deliveries/{id}`,
//!   `POST /v1/deliveries/{id}/replay`: dead deliveries, kept and replayable.
//!   The dead listing (`?limit=`, 100 by default, at most 1000) answers
//!   without bodies, giving each one's size in `body_bytes`, so a page
//!   stays small whatever the bodies weigh; `GET /v1/deliveries/{id}` has
//!   the full `body`.
//! - [`admin`]: the delivery log (deliveries, attempts, events);
//!   [`events`]: an event replayed to its subscriptions from the log;
//!   [`recover`]: retry one delivery now, replay a subscription's failed
//!   deliveries in bulk; [`subscriptions`]: status, enable, disable.
//! - [`stats`]: `GET /v1/stats?window=hour|day`, attempts per minute by
//!   outcome and latency, failing subscriptions, queue depth and volume per
//!   tenant: the console's overview.
//! - [`plugins`]: the operator's plugin registry, and one run of a plugin
//!   on an event, as `hookd plugin run` does.
//! - [`portal`]: one-time links into the console (a tenant's portal, the
//!   operator's console).
//! - `GET /healthz` (the process is up), `GET /readyz` (the queue answers;
//!   `"status": "degraded"` while the delivery log's store fails, or while
//!   a supervised task waits to start again after a panic: `tasks_down`). While
//!   `server.api_keys` is set, `/readyz` shows the stores' error texts
//!   (which may name hosts and addresses) only to an admin key; without
//!   one it gives the states and counts alone.
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text). While
//!   `server.api_keys` is set it needs an admin key (401 without a key,
//!   403 for a tenant's or producer's), unless `server.metrics_public`.
//!
//! Everything under `/v1` needs `Authorization: Bearer <key>` when
//! `server.api_keys` is set. Without keys, every route but `/healthz`
//! answers only requests for a loopback host or one of
//! `server.allowed_hosts` ([`hosts`]: no DNS rebinding). Errors are JSON:
//! `{"error": {"code", "message"}}`.

pub mod admin;
pub mod client;
pub mod event_types;
pub mod events;
pub mod hosts;
pub mod plugins;
pub mod portal;
pub mod recover;
pub mod serve;
pub mod stats;
pub mod subscriptions;
pub mod tenants;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, value::RawValue};
use subtle::ConstantTimeEq;

use crate::catalog::keys::Principal;
use crate::catalog::{Catalog, Owner, Snapshot};
use crate::config::Config;
use crate::history::{DeliverySummary, History, ListFilter};
use crate::ingest::{self, Ingestor, Source};
use crate::model::{Millis, SubscriptionName, TenantId};
use crate::notify::Alerts;
use crate::queue::{now_ms, Backend, DeliveryId, Queue, StateStore};
use crate::telemetry::{metrics, Metrics};
use arc_swap::ArcSwap;

/// The `user-agent` prefix by which `hookd send` is told apart from other
/// producers in `hookd_events_ingested_total{source="cli"}`.
pub const CLI_USER_AGENT_PREFIX: &str = "hookd-cli/";

/// What the handlers share.
pub struct ApiState {
    /// Validates, fans out and queues events.
    pub ingestor: Arc<Ingestor>,
    /// Read and act on queued and dead deliveries.
    pub queue: Arc<dyn Queue>,
    /// Subscription state: enable, disable, health.
    pub state: Arc<dyn StateStore>,
    /// The delivery log the admin routes read.
    pub history: Arc<dyn History>,
    /// Largest event body.
    pub max_body_bytes: usize,
    /// Largest batch, in events.
    pub max_batch: usize,
    /// Deepest nesting of an event's `data` (`ingest.max_depth`).
    pub max_depth: usize,
    /// The process's metrics, rendered at `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Notifications raised by operator actions (disable, enable).
    pub alerts: Alerts,
    /// Tenants, keys and every subscription: the snapshot in force, and
    /// how to change it.
    pub catalog: Arc<Catalog>,
    /// This process's subscriptions, told at once about enable and disable.
    pub endpoints: Arc<ArcSwap<crate::dispatch::Endpoints>>,
    /// The console's settings (`[console]`).
    pub console: crate::config::ConsoleConfig,
    /// How the delivery log's writing stands, for `/readyz`.
    pub log: Arc<crate::history::LogStatus>,
    /// Which supervised tasks are down, for `/readyz`.
    pub tasks: Arc<crate::supervise::TaskHealth>,
}

impl ApiState {
    /// The API's state for `config`.
    pub fn new(
        config: &Config,
        catalog: Arc<Catalog>,
        ingestor: Arc<Ingestor>,
        backend: Backend,
        history: Arc<dyn History>,
        metrics: Arc<Metrics>,
        alerts: Alerts,
    ) -> ApiState {
        ApiState {
            metrics,
            log: ingestor.log_status().clone(),
            ingestor,
            queue: backend.queue,
            state: backend.state,
            history,
            max_body_bytes: config.ingest.max_body_bytes,
            max_batch: config.ingest.max_batch,
            max_depth: config.ingest.max_depth,
            alerts,
            catalog,
            endpoints: Arc::new(ArcSwap::from_pointee(crate::dispatch::Endpoints::default())),
            console: config.console.clone(),
            tasks: Arc::default(),
        }
    }

    /// Whether the API is open: no `server.api_keys` in the config in force
    /// (a reload changes them).
    pub fn open(&self) -> bool {
        self.catalog.snapshot().config.server.api_keys.is_empty()
    }

    /// Whether `given` is one of `server.api_keys` in force, compared in
    /// constant time against every one, without early exit.
    pub fn is_config_key(&self, given: &str) -> bool {
        let snapshot = self.catalog.snapshot();
        let mut ok = subtle::Choice::from(0);
        for key in &snapshot.config.server.api_keys {
            ok |= key.expose().as_bytes().ct_eq(given.as_bytes());
        }
        bool::from(ok)
    }

    /// Whether one of `server.api_keys` in force has this hash
    /// ([`crate::catalog::keys::hash`]).
    pub fn has_config_key_hash(&self, hash: &str) -> bool {
        let snapshot = self.catalog.snapshot();
        snapshot
            .config
            .server
            .api_keys
            .iter()
            .any(|k| crate::catalog::keys::hash(k.expose()) == hash)
    }

    /// Largest batch body: the per-event limit times 16.
    fn max_batch_bytes(&self) -> usize {
        self.max_body_bytes.saturating_mul(16)
    }
}

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    status: StatusCode,
    /// Stable machine-readable code.
    code: &'static str,
    /// What is wrong and what to do.
    message: String,
    /// Seconds to wait before trying again (`Retry-After`), if it matters.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<ingest::Error> for ApiError {
    fn from(e: ingest::Error) -> ApiError {
        match e {
            ingest::Error::Invalid { .. } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", e.to_string()),
            ingest::Error::TooLarge { .. } | ingest::Error::BatchTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            ingest::Error::Queue(_) | ingest::Error::Unconfirmed { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            ingest::Error::Overloaded { retry_after, .. } => ApiError {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", e.to_string())
            },
            ingest::Error::TenantQueueFull { retry_after, .. } => ApiError {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "tenant_queue_full", e.to_string())
            },
            ingest::Error::RateLimited { retry_after, .. } => ApiError {
                // Whole seconds, rounded up: never sooner than a token.
                retry_after: Some(retry_after.as_millis().div_ceil(1000).max(1) as u64),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
            },
        }
    }
}

impl From<crate::queue::Error> for ApiError {
    fn from(e: crate::queue::Error) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
    }
}

/// The API's routes, and the console's at `/console` unless
/// `console.enabled` is false.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = api_router(state.clone());
    let app = if state.console.enabled {
        api.clone().merge(crate::console::routes(state.clone(), api))
    } else {
        api
    };
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(middleware::from_fn_with_state(state, hosts::check_host))
}

/// The API's own routes, without the console.
fn api_router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/events", post(post_event))
        .route("/events/batch", post(post_batch))
        .route("/deliveries/dead", get(list_dead))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/replay", post(replay_delivery))
        .merge(admin::routes())
        .merge(events::routes())
        .merge(recover::routes())
        .merge(subscriptions::routes())
        .merge(tenants::routes())
        .merge(portal::routes())
        .merge(plugins::routes())
        .merge(event_types::routes())
        .merge(stats::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// Finds who is asking and hands the request on with its [`Principal`]
/// (an extension), inside a span naming it, so every log line of the
/// request carries the principal:
///
/// - one of `server.api_keys`: an admin;
/// - a key made through the API: its role and tenant (a revoked key is
///   gone from the snapshot, on every process within a second);
/// - any other key, or none, while `server.api_keys` is empty: an admin,
///   as before tenants existed (an open API is for local use: tenant keys
///   protect nothing while anyone may skip them);
/// - anything else: 401.
async fn authenticate(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // The console calls in process as its session's principal.
    let principal = match request.extensions().get::<crate::console::Vouched>() {
        Some(vouched) => vouched.0.clone(),
        None => {
            if !hosts::same_origin(request.method(), &headers, request.uri()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_site",
                    "a browser page of another site may not change anything here (its Origin is not this host)",
                ));
            }
            principal_of(&state, bearer(&headers)?)?
        }
    };
    let span = tracing::info_span!("request", principal = %principal);
    tracing::debug!(parent: &span, method = %request.method(), path = %request.uri().path(), "request");
    request.extensions_mut().insert(principal);
    use tracing::Instrument as _;
    Ok(next.run(request).instrument(span).await)
}

/// A 403 `forbidden`: the key's role may not use this route.
pub(crate) fn forbidden(principal: &Principal, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{what}; this key ({principal}) may not"),
    )
}

/// The bearer key of a request, if it sends one; the scheme is matched
/// without regard to case (RFC 9110). Anything else in `Authorization`
/// is a 401.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| Some(key.trim()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <api key>`",
            )
        })
}

/// Who `given` (a bearer key, or none) is, as [`authenticate`] describes;
/// 401 if nobody.
pub(crate) fn principal_of(state: &ApiState, given: Option<&str>) -> Result<Principal, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let Some(given) = given else {
        // An open API (no `server.api_keys`) lets anyone in as an admin, as
        // before tenants existed; a stored key still gets its own scope.
        return if state.open() {
            Ok(Principal::Admin { key: None })
        } else {
            Err(unauthorized("send `Authorization: Bearer <api key>`"))
        };
    };
    if state.is_config_key(given) {
        return Ok(Principal::Admin { key: None });
    }
    let snapshot = state.catalog.snapshot();
    if let Some(principal) = snapshot.principal_of_key(given) {
        // A process that cannot read the store cannot know the key still
        // stands (it may have been revoked elsewhere): it fails closed.
        let stale = state.catalog.staleness();
        let bound = snapshot.config.catalog.max_staleness;
        if stale > bound {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_stale",
                format!(
                    "this process has not read the catalogue store for {}s (catalog.max_staleness = {}): keys made \
                     through the API are refused until it can; try another process, or again shortly",
                    stale.as_secs(),
                    humantime::format_duration(bound)
                ),
            ));
        }
        if let Some(id) = principal.key_id() {
            state.catalog.key_used(id);
        }
        return Ok(principal);
    }
    if state.open() {
        Ok(Principal::Admin { key: None })
    } else {
        Err(unauthorized("the API key is not valid"))
    }
}

/// Refuses anyone but an admin with a 403.
pub(crate) fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_admin() {
        Ok(())
    } else {
        Err(forbidden(principal, "this route needs an admin key"))
    }
}

/// Whether `principal` may see deliveries and state of `subscription`:
/// an admin any, a tenant its own (deleted ones too), a producer none.
pub(crate) fn may_see(snapshot: &Snapshot, principal: &Principal, subscription: &SubscriptionName) -> bool {
    match principal {
        Principal::Admin { .. } => true,
        Principal::Producer { .. } => false,
        // Its own, live or deleted, made by this tenant: not by a deleted
        // tenant that had its id ([`Snapshot::owns`]).
        Principal::Tenant { tenant, .. } => match snapshot.subscription(subscription.as_str()) {
            Some((_, Owner::Operator)) => false,
            _ => snapshot
                .stored
                .get(subscription)
                .is_some_and(|s| snapshot.owns(tenant, s)),
        },
    }
}

/// How far before a tenant's creation its log is still read, for clocks
/// of processes that disagree: what falls in it is sorted out one by one
/// ([`in_tenant_log`]).
const CLOCK_SKEW: Millis = 60_000;

/// Fences the listing `filter` of `tenant`'s log to what `tenant`, as it
/// is now in the catalogue, may see: nothing made long before it was.
pub(crate) fn fence_listing(snapshot: &Snapshot, tenant: &TenantId, filter: &mut ListFilter) {
    if let Some(since) = snapshot.tenant_since(tenant).filter(|&s| s > 0) {
        let from = since.saturating_sub(CLOCK_SKEW);
        filter.from = Some(filter.from.map_or(from, |f| f.max(from)));
    }
}

/// Whether `summary`, filed under `tenant`, is in the log of `tenant` as
/// it is now in the catalogue: a delivery to one of its subscriptions
/// ([`Snapshot::owns`]), or, of a subscription the catalogue no longer
/// knows (its tombstone purged), one made after the tenant was. A tenant
/// made again with the id of a deleted one sees nothing of the old one.
pub(crate) fn in_tenant_log(snapshot: &Snapshot, tenant: &TenantId, summary: &DeliverySummary) -> bool {
    match snapshot.stored.get(&summary.subscription) {
        Some(sub) => snapshot.owns(tenant, sub),
        None => snapshot
            .tenant_since(tenant)
            .is_some_and(|since| summary.created_at >= since),
    }
}

/// Refuses producers with a 403: they may only send events.
pub(crate) fn require_reader(principal: &Principal) -> Result<(), ApiError> {
    match principal {
        Principal::Producer { .. } => Err(forbidden(principal, "producer keys may only send events")),
        _ => Ok(()),
    }
}

/// A 404 `not_found`.
pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// A 400 `invalid_body`: the request body is not what the route takes.
fn bad_body(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
}

/// Most bytes of the body of a write that is not ingest (a subscription,
/// a tenant, a key, a replay): far beyond any valid one, so a larger body
/// is refused before it is parsed.
pub const MAX_WRITE_BODY: usize = 2 << 20;

/// The body of a write that is not ingest, at most [`MAX_WRITE_BODY`]
/// bytes: beyond, the answer is 413 `too_large` in hookd's error body,
/// naming the limit (not axum's plain-text rejection).
pub(crate) struct WriteBody(pub bytes::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for WriteBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<WriteBody, ApiError> {
        read_limited(req.into_body(), MAX_WRITE_BODY, "").await.map(WriteBody)
    }
}

/// Most bytes of an oversized body read (and dropped) before its 413 is
/// sent, and how long that may take: a client still sending when the
/// answer comes and the connection closes would see the connection reset,
/// not the answer.
const DRAIN_BYTES: usize = 32 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a body of at most `limit` bytes; beyond, answers 413 `too_large`
/// naming the limit (and `setting`, what sets it, if any), once the rest
/// of the body is read and dropped (up to [`DRAIN_BYTES`] in
/// [`DRAIN_TIME`]).
async fn read_limited(mut body: Body, limit: usize, setting: &str) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| bad_body(format!("the request body could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if kept.len() + data.len() > limit {
            let mut read = kept.len() + data.len();
            let drain = async {
                while let Some(Ok(frame)) = body.frame().await {
                    read = read.saturating_add(frame.into_data().map_or(0, |d| d.len()));
                    if read > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body is over the limit of {limit} bytes{setting}"),
            ));
        }
        kept.extend_from_slice(&data);
    }
    Ok(kept.freeze())
}

/// Reads an ingest body of at most `limit` bytes, answering 413 beyond it.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    read_limited(body, limit, " (ingest.max_body_bytes)").await
}

/// `cli` for `hookd send` (its `user-agent`), `http` for everyone else.
fn source_of(headers: &HeaderMap) -> Source {
    let cli = headers
        .get(header::USER_AGENT)
        .is_some_and(|v| v.as_bytes().starts_with(CLI_USER_AGENT_PREFIX.as_bytes()));
    if cli {
        Source::Cli
    } else {
        Source::Http
    }
}

/// Who may send `event`, and for which tenant: an admin any; a producer
/// bound to a tenant only that tenant's (an event naming none becomes
/// its); a tenant key none.
fn authorize_event(principal: &Principal, event: &mut ingest::Event) -> Result<(), ApiError> {
    match principal {
        Principal::Admin { .. } | Principal::Producer { tenant: None, .. } => Ok(()),
        Principal::Producer {
            tenant: Some(bound), ..
        } => match &event.tenant {
            None => {
                event.tenant = Some(bound.clone());
                Ok(())
            }
            Some(t) if t == bound => Ok(()),
            Some(t) => Err(forbidden(
                principal,
                &format!(
                    "event {} is for tenant `{t}`, but this key sends only for `{bound}`",
                    event.id
                ),
            )),
        },
        Principal::Tenant { .. } => Err(forbidden(principal, "sending events needs an admin or producer key")),
    }
}

async fn post_event(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, state.max_body_bytes).await?;
    let mut event = ingest::parse_event(&body, state.max_depth)?;
    authorize_event(&principal, &mut event)?;
    let accepted = state.ingestor.ingest(event, source_of(&headers)).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

async fn post_batch(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, state.max_batch_bytes()).await?;
    let items: Vec<&RawValue> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            format!("batch must be a JSON array of events: {e}"),
        )
    })?;
    if items.len() > state.max_batch {
        return Err(ingest::Error::BatchTooLarge {
            count: items.len(),
            limit: state.max_batch,
        }
        .into());
    }
    let mut events = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let text = item.get().as_bytes();
        if text.len() > state.max_body_bytes {
            let e = ingest::Error::TooLarge {
                size: text.len(),
                limit: state.max_body_bytes,
            };
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("event {n}: {e}"),
            ));
        }
        let mut event = ingest::parse_event(text, state.max_depth)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", format!("event {n}: {e}")))?;
        authorize_event(&principal, &mut event)?;
        events.push(event);
    }
    let results = state.ingestor.ingest_batch(events, source_of(&headers)).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "results": results }))).into_response())
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn list_dead(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let snapshot = state.catalog.snapshot();
    // A tenant's listing reads its own subscriptions' dead deliveries
    // only (the queue files each under its owner), however many other
    // tenants have.
    let dead = match principal.tenant() {
        Some(tenant) => {
            state
                .queue
                .dead_in(&crate::queue::DeadScope::Owner(tenant.clone()), limit)
                .await?
        }
        None => state.queue.dead(limit).await?,
    };
    let items: Vec<_> = dead
        .iter()
        .filter(|d| may_see(&snapshot, &principal, &d.subscription))
        .map(|d| {
            // Bodies may be a MiB each: the listing gives their size only.
            let mut item = delivery_json(d);
            if let Some(item) = item.as_object_mut() {
                item.remove("body");
                item.insert("body_bytes".into(), d.body.len().into());
            }
            item
        })
        .collect();
    Ok(Json(json!({ "deliveries": items })).into_response())
}

fn parse_id(id: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e))
}

/// The 404 of a delivery that is not queued or dead, or not the caller's.
fn delivery_not_found(id: &DeliveryId) -> ApiError {
    not_found(format!(
        "delivery {id} is not queued or dead (delivered deliveries are not kept)"
    ))
}

async fn get_delivery(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let id = parse_id(&id)?;
    let snapshot = state.catalog.snapshot();
    match state.queue.get(&id).await? {
        Some((delivery, standing)) if may_see(&snapshot, &principal, &delivery.subscription) => {
            let mut body = delivery_json(&delivery);
            let mut standing = serde_json::to_value(standing).unwrap_or_default();
            // Its time (`due` or `since`) as every answer writes times.
            for key in ["due", "since"] {
                if let Some(ms) = standing.get(key).and_then(serde_json::Value::as_i64) {
                    standing[key] = json!(crate::model::time::format_ms(ms));
                }
            }
            body["standing"] = standing;
            Ok(Json(body).into_response())
        }
        _ => Err(delivery_not_found(&id)),
    }
}

async fn replay_delivery(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let id = parse_id(&id)?;
    if !principal.is_admin() {
        let snapshot = state.catalog.snapshot();
        match state.queue.get(&id).await? {
            Some((delivery, _)) if may_see(&snapshot, &principal, &delivery.subscription) => {}
            _ => return Err(delivery_not_found(&id)),
        }
    }
    if recover::replay_dead(&state, &id, now_ms()).await? {
        Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "replayed": true}))).into_response())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_dead",
            format!("delivery {id} is not dead: nothing to replay"),
        ))
    }
}

fn delivery_json(d: &crate::queue::Delivery) -> serde_json::Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "subscription": d.subscription,
        "created_at": crate::model::time::format_ms(d.created_at),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "body": String::from_utf8_lossy(&d.body),
    })
}

/// Ready while the queue answers: deliveries go on whatever the delivery
/// log's store does. A log store that fails shows as `"status":
/// "degraded"` (still 200), with the log's spool. The stores' error texts
/// name hosts, addresses and users: while `server.api_keys` is set, only
/// an admin key sees them; any other request gets the same answer
/// without them (never a 401: probes send no key).
async fn ready(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let detailed = state.open()
        || bearer(&headers)
            .ok()
            .flatten()
            .is_some_and(|key| principal_of(&state, Some(key)).is_ok_and(|p| p.is_admin()));
    match state.queue.ping().await {
        Ok(()) => {
            let mut log = state.log.health();
            if !detailed {
                log.error = None;
            }
            let mut down = state.tasks.down();
            if !detailed {
                for task in &mut down {
                    task.error.clear();
                }
            }
            let status = if state.log.degraded() || !down.is_empty() {
                "degraded"
            } else {
                "ready"
            };
            Json(json!({"status": status, "log": log, "tasks_down": down})).into_response()
        }
        Err(e) => {
            let message = if detailed {
                e.to_string()
            } else {
                "the queue does not answer (an admin key is told why)".to_owned()
            };
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message).into_response()
        }
    }
}

/// Whether `GET /metrics` needs an admin key under `server`: while
/// `api_keys` is set unless `metrics_public`, and always with the
/// deprecated `metrics_require_key`.
fn metrics_need_key(server: &crate::config::ServerConfig) -> bool {
    server.metrics_require_key || (!server.api_keys.is_empty() && !server.metrics_public)
}

async fn render_metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let snapshot = state.catalog.snapshot();
    if metrics_need_key(&snapshot.config.server) {
        let why = if snapshot.config.server.api_keys.is_empty() {
            "server.metrics_require_key is set"
        } else {
            "GET /metrics needs an admin key while server.api_keys is set (server.metrics_public = true opens it)"
        };
        // Only an admin reads the metrics when they are behind a key.
        let principal = bearer(&headers).and_then(|key| match key {
            Some(key) => principal_of(&state, Some(key)),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{why}: send `Authorization: Bearer <admin key>`"),
            )),
        });
        match principal {
            Ok(p) if p.is_admin() => {}
            Ok(p) => return forbidden(&p, "reading the metrics needs an admin key").into_response(),
            Err(e) => return e.into_response(),
        }
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], state.metrics.render()).into_response()
}
