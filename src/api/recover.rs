//! Putting failed deliveries back on their way, under `/v1` behind the API
//! keys:
//!
//! - `POST /v1/deliveries/{id}/retry`: attempt one delivery now. A dead one
//!   is replayed (attempts reset); one waiting for a retry has that retry
//!   pulled forward to now (its attempt count kept). Answers 202
//!   `{"id", "action": "replayed" | "retried" | "already_due"}`; 409
//!   `parked` (its subscription is disabled: enable it), `in_flight` (being
//!   attempted, or waiting for its subscription's concurrency or rate
//!   limit) or `finished` (delivered or filtered); 404 if unknown.
//! - `POST /v1/subscriptions/{name}/replay`: replay a subscription's failed
//!   deliveries in bulk, a page per call. Body (all optional):
//!   `{"state": "dead" | "retrying", "from": t, "to": t, "cursor": c,
//!   "limit": n}`, times RFC 3339 on the deliveries' creation, `[from, to)`.
//!   `dead` (the default) replays dead deliveries; `retrying` pulls the
//!   next attempt of those waiting for a retry forward to now. Answers
//!   `{"replayed", "skipped", "scanned", "next_cursor"}`; call again with
//!   `cursor` = `next_cursor` until it is null.
//!
//! ## Resumable and idempotent
//!
//! A bulk replay is a walk, and the cursor is its whole state: the filter,
//! the time the walk started and the position reached, so a walk broken
//! off (by a crash of hookd or of the caller) resumes where it stopped
//! from the last cursor, on any hookd process sharing the queue.
//!
//! The dead walk goes through the subscription's dead deliveries in order
//! of death, from the queue's index of them
//! ([`crate::queue::Queue::dead_in_after`], reading no other
//! subscription's, so a tenant's replay costs what it has and its cursor
//! carries only its own ids; the queue, not the delivery log,
//! since dead deliveries outlive the log's retention) and stops at those
//! that died after it started. A replayed delivery leaves the dead; if it
//! dies again, it does so after the walk started, so the same walk never
//! replays it twice, however often a page is repeated. Each replay is
//! itself atomic and conditional, so two walks racing replay each delivery
//! once. The retrying walk pages the delivery log's `retrying` deliveries
//! with its stable cursor and moves each only while it still waits for the
//! retry the log recorded ([`crate::queue::Queue::reschedule`]), so
//! repeating a page, or racing a dispatcher, never sends a delivery twice.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admin::parse_time;
use super::{bad_body, may_see, not_found, parse_id, require_reader, ApiError, ApiState, WriteBody};
use crate::catalog::keys::Principal;
use crate::config::SubscriptionName;
use crate::history::{DeliveryState, Entry, ListFilter};
use crate::queue::{now_ms, DeliveryId, Lease, Millis, Standing};

/// Deliveries one bulk replay call looks at when the body gives no limit.
pub const DEFAULT_PAGE: usize = 500;
/// Most deliveries one bulk replay call looks at.
pub const MAX_PAGE: usize = 1000;

/// The routes, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/deliveries/{id}/retry", post(retry))
        .route("/subscriptions/{name}/replay", post(replay_subscription))
}

/// Records that operators moved deliveries back to pending. The log is a
/// record, not the truth: if it cannot be written the move still stands.
async fn log_moved(state: &ApiState, ids: Vec<DeliveryId>, note: &str) {
    if ids.is_empty() {
        return;
    }
    let at = now_ms();
    let entries: Vec<Entry> = ids
        .into_iter()
        .map(|id| Entry::State {
            id,
            state: DeliveryState::Pending,
            at,
            note: Some(note.to_owned()),
        })
        .collect();
    if let Err(e) = state.history.record(&entries).await {
        tracing::warn!(error = %e, "cannot record replayed deliveries in the delivery log");
    }
}

/// Replays dead delivery `id` (its attempts reset) and records the move
/// in the delivery log: the one replay of a single dead delivery, for
/// `POST /v1/deliveries/{id}/replay` and `.../retry` alike. False if it
/// was not dead (any more).
pub(super) async fn replay_dead(state: &ApiState, id: &DeliveryId, now: Millis) -> Result<bool, ApiError> {
    if !state.queue.replay(id, now).await? {
        return Ok(false);
    }
    log_moved(state, vec![id.clone()], "replayed by an operator").await;
    state.ingestor.wake();
    Ok(true)
}

async fn retry(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let id = parse_id(&id)?;
    let now = now_ms();
    let snapshot = state.catalog.snapshot();
    let unknown = || not_found(format!("no delivery {id} in the queue or the delivery log"));
    let conflict = |code, message: String| Err(ApiError::new(StatusCode::CONFLICT, code, message));
    let queued = state.queue.get(&id).await?;
    if let Some((delivery, _)) = &queued {
        if !may_see(&snapshot, &principal, &delivery.subscription) {
            return Err(unknown());
        }
    }
    let Some((delivery, standing)) = queued else {
        let logged = state
            .history
            .delivery(&id)
            .await?
            .filter(|(summary, _)| may_see(&snapshot, &principal, &summary.subscription));
        return match logged {
            Some((summary, _)) => conflict(
                "finished",
                format!(
                    "delivery {id} is {}: nothing to retry (replay its event to send it again)",
                    summary.state
                ),
            ),
            None => Err(unknown()),
        };
    };
    let action = match standing {
        Standing::Dead { .. } => {
            // Sent again, it is new work: through ingest's admission (its
            // event's tenant's plan rate, whoever asks).
            state.ingestor.admit(delivery.tenant.as_ref(), 1).await?;
            if !replay_dead(&state, &id, now).await? {
                return conflict("in_flight", format!("delivery {id} was replayed meanwhile"));
            }
            "replayed"
        }
        Standing::Parked { .. } => {
            return conflict(
                "parked",
                format!(
                    "delivery {id} is parked because subscription {} is disabled: enable it to resume its deliveries",
                    delivery.subscription
                ),
            );
        }
        Standing::Pending { due } if due <= now => "already_due",
        Standing::Pending { due } => {
            let waiting = state
                .history
                .delivery(&id)
                .await?
                .is_some_and(|(s, _)| s.state == DeliveryState::Retrying && s.next_attempt_at == Some(due));
            if !waiting || !state.queue.reschedule(&id, Lease(due), now).await? {
                return conflict(
                    "in_flight",
                    format!(
                        "delivery {id} is not waiting for a retry: it is being attempted, or waits for its \
                         subscription's concurrency or rate limit; try again in a moment"
                    ),
                );
            }
            log_moved(&state, vec![id.clone()], "retried now by an operator").await;
            "retried"
        }
    };
    state.ingestor.wake();
    tracing::info!(delivery = %id, subscription = %delivery.subscription, action, "delivery retried by an operator");
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "action": action }))).into_response())
}

/// Which failed deliveries a bulk replay takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Target {
    /// Dead: replayed, attempts reset.
    Dead,
    /// Waiting for a retry: the retry is pulled forward to now.
    Retrying,
}

/// The body of `POST /v1/subscriptions/{name}/replay`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    state: Option<Target>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// A bulk replay's whole state, handed to the caller as an opaque cursor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Walk {
    /// The subscription replayed.
    subscription: SubscriptionName,
    /// What is replayed.
    target: Target,
    /// Creation time range, `[from, to)`.
    from: Option<Millis>,
    to: Option<Millis>,
    /// When the walk started: the dead walk stops at deliveries that died
    /// after it.
    started: Millis,
    /// Dead walk: the position (death time, id) reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<(Millis, DeliveryId)>,
    /// Retrying walk: the delivery log's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_cursor: Option<String>,
}

impl Walk {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a walk always serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(text: &str) -> Option<Walk> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// Whether a delivery created at `created_at` is in the walk's range.
    fn in_range(&self, created_at: Millis) -> bool {
        self.from.is_none_or(|from| created_at >= from) && self.to.is_none_or(|to| created_at < to)
    }
}

/// The walk a call continues: the cursor's, after checking that the body
/// does not ask for something else, or a new one from the body.
fn walk_of(body: &ReplayBody, subscription: SubscriptionName) -> Result<Walk, ApiError> {
    let from = body.from.as_deref().map(|t| parse_time("from", t)).transpose()?;
    let to = body.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
    let Some(cursor) = &body.cursor else {
        if let (Some(from), Some(to)) = (from, to) {
            if from >= to {
                return Err(bad_body("`from` must be before `to`"));
            }
        }
        return Ok(Walk {
            subscription,
            target: body.state.unwrap_or(Target::Dead),
            from,
            to,
            started: now_ms(),
            at: None,
            log_cursor: None,
        });
    };
    let walk = Walk::decode(cursor).ok_or_else(|| {
        bad_body("`cursor` is not a replay cursor: pass back a next_cursor exactly as a previous call returned it")
    })?;
    let differs = walk.subscription != subscription
        || body.state.is_some_and(|s| s != walk.target)
        || (body.from.is_some() && from != walk.from)
        || (body.to.is_some() && to != walk.to);
    if differs {
        return Err(bad_body(
            "the cursor belongs to another replay (subscription, state or time range differ): \
             send the cursor alone to resume it, or no cursor to start a new one",
        ));
    }
    Ok(walk)
}

async fn replay_subscription(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    WriteBody(body): WriteBody,
) -> Result<Response, ApiError> {
    let body: ReplayBody = if body.is_empty() {
        ReplayBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            bad_body(format!(
                "send {{\"state\": \"dead\"|\"retrying\", \"from\", \"to\", \"cursor\", \"limit\"}} (all optional): {e}"
            ))
        })?
    };
    let found = super::subscriptions::find(&state, &principal, &name)?;
    let (subscription, owner) = (found.name, found.owner);
    let limit = match body.limit {
        None => DEFAULT_PAGE,
        Some(n @ 1..=MAX_PAGE) => n,
        Some(n) => return Err(bad_body(format!("`limit` {n} is out of range: use 1 to {MAX_PAGE}"))),
    };
    let mut walk = walk_of(&body, subscription)?;
    let now = now_ms();
    let (mut replayed, mut skipped, mut scanned) = (Vec::new(), 0u64, 0usize);
    let more = match walk.target {
        Target::Dead => {
            // What it sends again is new work: through ingest's admission,
            // a page at most as large as its tenant's plan rate grants now,
            // whoever asks (the next page goes on from the first one left).
            let budget = state
                .ingestor
                .admit_up_to(owner.as_ref(), u32::try_from(limit).unwrap_or(u32::MAX))
                .await? as usize;
            let after = walk.at.as_ref().map(|(at, id)| (*at, id));
            // The subscription's own dead deliveries, from its index: the
            // walk reads nothing of another subscription's, and its cursor
            // holds only this one's ids.
            let scope = crate::queue::DeadScope::Subscription(walk.subscription.clone());
            let page = state.queue.dead_in_after(&scope, after, limit).await?;
            let mut full = page.len() == limit;
            let mut ended = false;
            for (at, delivery) in page {
                if at > walk.started {
                    // Died after the walk started: replayed by it, or new.
                    ended = true;
                    break;
                }
                if replayed.len() >= budget {
                    full = true;
                    break;
                }
                scanned += 1;
                walk.at = Some((at, delivery.id.clone()));
                if delivery.subscription != walk.subscription || !walk.in_range(delivery.created_at) {
                    continue;
                }
                if state.queue.replay(&delivery.id, now).await? {
                    replayed.push(delivery.id);
                } else {
                    skipped += 1;
                }
            }
            full && !ended
        }
        Target::Retrying => {
            let filter = ListFilter {
                subscription: Some(walk.subscription.clone()),
                state: Some(DeliveryState::Retrying),
                from: walk.from,
                to: walk.to,
                ..ListFilter::default()
            };
            let page = state.history.list(&filter, walk.log_cursor.as_deref(), limit).await?;
            for summary in page.items {
                scanned += 1;
                let moved = match summary.next_attempt_at {
                    Some(due) if due > now => state.queue.reschedule(&summary.id, Lease(due), now).await?,
                    _ => false,
                };
                if moved {
                    replayed.push(summary.id);
                } else {
                    skipped += 1;
                }
            }
            walk.log_cursor = page.next_cursor;
            walk.log_cursor.is_some()
        }
    };
    let count = replayed.len();
    let note = match walk.target {
        Target::Dead => "replayed in bulk by an operator",
        Target::Retrying => "retried now in bulk by an operator",
    };
    log_moved(&state, replayed, note).await;
    if count > 0 {
        state.ingestor.wake();
    }
    tracing::info!(
        subscription = %walk.subscription,
        target = ?walk.target,
        replayed = count,
        skipped,
        scanned,
        "bulk replay page"
    );
    Ok(Json(json!({
        "subscription": walk.subscription,
        "state": walk.target,
        "replayed": count,
        "skipped": skipped,
        "scanned": scanned,
        "next_cursor": more.then(|| walk.encode()),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let walk = Walk {
            subscription: SubscriptionName::parse("crm").unwrap(),
            target: Target::Dead,
            from: Some(5),
            to: None,
            started: 10,
            at: Some((7, DeliveryId::new(3))),
            log_cursor: None,
        };
        assert_eq!(Walk::decode(&walk.encode()), Some(walk.clone()));
        assert_eq!(Walk::decode("not a cursor"), None);
        assert!(walk.in_range(5) && !walk.in_range(4));
    }

    #[test]
    fn a_cursor_cannot_change_the_replay() {
        let crm = SubscriptionName::parse("crm").unwrap();
        let first = walk_of(
            &ReplayBody {
                state: Some(Target::Dead),
                from: Some("2026-01-01T00:00:00Z".into()),
                to: None,
                cursor: None,
                limit: None,
            },
            crm.clone(),
        )
        .unwrap();
        let body = |state, cursor: &str| ReplayBody {
            state,
            from: None,
            to: None,
            cursor: Some(cursor.to_owned()),
            limit: None,
        };
        let cursor = first.encode();
        assert_eq!(walk_of(&body(None, &cursor), crm.clone()).unwrap(), first);
        assert!(walk_of(&body(Some(Target::Retrying), &cursor), crm.clone()).is_err());
        assert!(walk_of(&body(None, &cursor), SubscriptionName::parse("billing").unwrap()).is_err());
    }
}
