//! `GET /v1/stats`: the overview of delivery activity, for a console's
//! front page, mounted under `/v1` behind the API keys.
//!
//! `GET /v1/stats?window=hour|day` (`hour` by default) answers a [`Stats`]:
//! every minute of the window, oldest first, quiet ones included (the
//! minute under way last: 61 minutes for an hour, 1,441 for a day), with
//! the attempts that succeeded (2xx) and failed and their p50 and p99
//! latency; the window's totals; and the subscriptions failing now, worst
//! first. It reads the per-minute aggregates the delivery log keeps
//! ([`crate::history::activity`]: bucket bounds, never a scan of the log)
//! and the subscriptions' health from the state store.
//!
//! Who sees what:
//!
//! - a tenant key: its own view, the attempts to the subscriptions it
//!   owns and those of them failing (`?tenant=` naming another is a 404);
//! - an admin key: every attempt and every subscription, plus the queue's
//!   depth (`queue`) and the attempts per owning tenant (`tenants`, most
//!   first); with `?tenant=ID`, exactly that tenant's view;
//! - a producer key: 403.
//!
//! Latencies are the upper bound of the histogram bucket the quantile
//! falls in (1, 2, 5, 10, 20, 50, 100, 200, 500 ms, 1, 2, 5, 10, 30 s; 30 s
//! also means more), `null` for a minute without attempts.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::admin::bad_param;
use super::subscriptions::{describe, SubscriptionAnswer};
use super::{not_found, require_reader, ApiError, ApiState};
use crate::catalog::keys::Principal;
use crate::config::SubscriptionConfig;
use crate::history::activity::{minute_of, MINUTE_MS};
use crate::history::{AttemptCounts, TenantVolume};
use crate::model::{Millis, SubscriptionName, TenantId};
use crate::queue::{now_ms, Depth, SubscriptionState};

/// Most subscriptions in [`Stats::failing`].
pub const MAX_FAILING: usize = 20;

/// The stats routes, for [`super::router`] to merge under `/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new().route("/stats", get(stats))
}

/// How far back `GET /v1/stats` looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// The last 60 minutes and the minute under way.
    #[default]
    Hour,
    /// The last 1,440 minutes and the minute under way.
    Day,
}

impl Window {
    /// Whole minutes before the one under way.
    pub fn minutes(self) -> Millis {
        match self {
            Window::Hour => 60,
            Window::Day => 24 * 60,
        }
    }

    /// The window's name (`hour`), as in the query and the answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Window, String> {
        match text {
            "hour" => Ok(Window::Hour),
            "day" => Ok(Window::Day),
            _ => Err(format!("`{text}` is not a window; use hour or day")),
        }
    }
}

/// The answer of `GET /v1/stats`, for the server and its clients (the
/// console, the CLI) alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The window asked for.
    pub window: Window,
    /// The start of its first minute.
    #[serde(with = "crate::model::time::rfc3339")]
    pub from: DateTime<Utc>,
    /// The end of its last minute (the one under way), exclusive.
    #[serde(with = "crate::model::time::rfc3339")]
    pub to: DateTime<Utc>,
    /// Every minute of the window, oldest first, quiet ones included.
    pub minutes: Vec<MinuteStats>,
    /// The window's attempts, summed.
    pub totals: Totals,
    /// Subscriptions the caller may see that are failing (failed attempts
    /// in a row) or disabled, worst first: disabled ones, then by failures
    /// in a row, then failing longest; at most [`MAX_FAILING`].
    pub failing: Vec<FailingSubscription>,
    /// How many deliveries wait where, every subscription's: for an admin's
    /// all view only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<Depth>,
    /// Attempts in the window per tenant owning their subscription, most
    /// first (attempts to the operator's subscriptions are nobody's): for
    /// an admin's all view only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<TenantVolume>>,
}

/// One minute of [`Stats::minutes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteStats {
    /// The minute's start.
    #[serde(with = "crate::model::time::rfc3339")]
    pub at: DateTime<Utc>,
    /// Attempts answered 2xx.
    pub succeeded: u64,
    /// Every other attempt.
    pub failed: u64,
    /// Median latency: a bucket's upper bound; null without attempts.
    pub p50_ms: Option<u64>,
    /// 99th percentile latency: a bucket's upper bound; null without
    /// attempts.
    pub p99_ms: Option<u64>,
}

/// The window's attempts, [`Stats::totals`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Attempts answered 2xx.
    pub succeeded: u64,
    /// Every other attempt.
    pub failed: u64,
    /// Median latency over the window: a bucket's upper bound.
    pub p50_ms: Option<u64>,
    /// 99th percentile latency over the window: a bucket's upper bound.
    pub p99_ms: Option<u64>,
}

impl From<&AttemptCounts> for Totals {
    fn from(counts: &AttemptCounts) -> Totals {
        Totals {
            succeeded: counts.succeeded,
            failed: counts.failed,
            p50_ms: counts.p50_ms(),
            p99_ms: counts.p99_ms(),
        }
    }
}

/// A subscription of [`Stats::failing`]: the health fields of its
/// [`SubscriptionAnswer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingSubscription {
    /// `sub_…`, or a TOML subscription's name.
    pub id: SubscriptionName,
    /// Its display name.
    pub name: String,
    /// The tenant owning it; none for the operator's.
    pub tenant: Option<TenantId>,
    /// `active` or `disabled`.
    pub status: String,
    /// Failed attempts in a row.
    pub consecutive_failures: u64,
    /// Failing since, if it is.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub failing_since: Option<DateTime<Utc>>,
    /// Its last failure.
    #[serde(default, with = "crate::model::time::rfc3339_option")]
    pub last_failure_at: Option<DateTime<Utc>>,
}

impl From<SubscriptionAnswer> for FailingSubscription {
    fn from(answer: SubscriptionAnswer) -> FailingSubscription {
        FailingSubscription {
            id: answer.id,
            name: answer.name,
            tenant: answer.tenant,
            status: answer.status,
            consecutive_failures: answer.consecutive_failures,
            failing_since: answer.failing_since,
            last_failure_at: answer.last_failure_at,
        }
    }
}

/// A time for the answer.
fn time(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The query of `GET /v1/stats`: the window, and the tenant named.
fn parse_query(pairs: Vec<(String, String)>) -> Result<(Window, Option<TenantId>), ApiError> {
    let (mut window, mut tenant) = (Window::default(), None);
    for (name, value) in pairs {
        match name.as_str() {
            "window" => window = value.parse().map_err(|p| bad_param(&name, p))?,
            "tenant" => tenant = Some(TenantId::parse(&value).map_err(|p| bad_param(&name, p))?),
            _ => return Err(bad_param(&name, "unknown parameter; use window or tenant")),
        }
    }
    Ok((window, tenant))
}

async fn stats(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_reader(&principal)?;
    let Query(pairs) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let (window, named) = parse_query(pairs)?;
    let snapshot = state.catalog.snapshot();
    // Whose view: a tenant key's own; an admin's named tenant, or all.
    let view = match (principal.tenant(), named) {
        (Some(own), Some(t)) if &t != own => return Err(not_found(format!("no tenant `{t}`"))),
        (Some(own), _) => Some(own.clone()),
        (None, Some(t)) if !snapshot.tenants.contains_key(&t) => return Err(not_found(format!("no tenant `{t}`"))),
        (None, named) => named,
    };
    let all_view = principal.is_admin() && view.is_none();

    let now = now_ms();
    let to = minute_of(now) + MINUTE_MS;
    let from = to - (window.minutes() + 1) * MINUTE_MS;
    let mut activity = state.history.activity(view.as_ref(), from, to).await?;
    // A tenant's view starts in the minute it was made: the minutes before
    // hold the attempts of a deleted tenant that had its id, if any. (The
    // minute itself is shown whole: per-minute counts cannot be split.)
    if let Some(since) = view.as_ref().and_then(|t| snapshot.tenant_since(t)) {
        for minute in activity.minutes.iter_mut().filter(|m| m.at + MINUTE_MS <= since) {
            minute.counts = Default::default();
        }
    }
    let minutes = activity
        .minutes
        .iter()
        .map(|m| MinuteStats {
            at: time(m.at),
            succeeded: m.counts.succeeded,
            failed: m.counts.failed,
            p50_ms: m.counts.p50_ms(),
            p99_ms: m.counts.p99_ms(),
        })
        .collect();

    let visible: Vec<&SubscriptionConfig> = snapshot
        .config
        .subscriptions
        .iter()
        .filter(|s| view.is_none() || s.owner == view)
        .collect();
    let failing = failing(&state, &visible).await?;
    let queue = if all_view {
        Some(state.queue.depth(now).await?)
    } else {
        None
    };
    Ok(Json(Stats {
        window,
        from: time(activity.from),
        to: time(activity.to),
        minutes,
        totals: Totals::from(&activity.totals()),
        failing,
        queue,
        tenants: all_view.then_some(activity.tenants),
    })
    .into_response())
}

/// The worst of `subscriptions` that are failing or disabled, at most
/// [`MAX_FAILING`], each as [`describe`] shows it. The candidates come from
/// one read of every stored state; only those shown are described.
async fn failing(
    state: &ApiState,
    subscriptions: &[&SubscriptionConfig],
) -> Result<Vec<FailingSubscription>, ApiError> {
    let states: HashMap<SubscriptionName, SubscriptionState> =
        state.state.subscription_states().await?.into_iter().collect();
    let default = SubscriptionState::default();
    let mut worst: Vec<(&SubscriptionConfig, &SubscriptionState)> = subscriptions
        .iter()
        .map(|&sub| (sub, states.get(&sub.name).unwrap_or(&default)))
        .filter(|(sub, s)| !(sub.enabled && s.enabled) || s.consecutive_failures > 0)
        .collect();
    // Disabled first, then most failures in a row, then failing longest.
    worst.sort_by(|(a, sa), (b, sb)| {
        let disabled = |sub: &SubscriptionConfig, s: &SubscriptionState| !(sub.enabled && s.enabled);
        disabled(b, sb)
            .cmp(&disabled(a, sa))
            .then_with(|| sb.consecutive_failures.cmp(&sa.consecutive_failures))
            .then_with(|| {
                let since = |s: &SubscriptionState| s.failing_since.unwrap_or(Millis::MAX);
                since(sa).cmp(&since(sb))
            })
            .then_with(|| a.name.cmp(&b.name))
    });
    worst.truncate(MAX_FAILING);
    let answers = futures_util::future::try_join_all(worst.iter().map(|(sub, _)| describe(state, sub))).await?;
    Ok(answers.into_iter().map(FailingSubscription::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<(Window, Option<TenantId>), String> {
        parse_query(query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).map_err(|e| e.message)
    }

    #[test]
    fn queries_parse_and_problems_name_the_parameter() {
        assert_eq!(parse(&[]).unwrap(), (Window::Hour, None));
        let (window, tenant) = parse(&[("window", "day"), ("tenant", "acme")]).unwrap();
        assert_eq!((window, tenant.unwrap().as_str()), (Window::Day, "acme"));
        for (query, name) in [
            (&[("window", "week")][..], "`window`"),
            (&[("tenant", "A B")][..], "`tenant`"),
            (&[("colour", "red")][..], "`colour`"),
        ] {
            let err = parse(query).expect_err("rejected");
            assert!(err.starts_with(name), "{query:?}: {err}");
        }
        for window in [Window::Hour, Window::Day] {
            assert_eq!(window.as_str().parse::<Window>().unwrap(), window);
            assert_eq!(serde_json::to_value(window).unwrap(), window.as_str());
        }
    }

    #[test]
    fn the_answer_reads_back_and_leaves_out_what_the_caller_may_not_see() {
        let stats = Stats {
            window: Window::Hour,
            from: time(1_700_000_040_000),
            to: time(1_700_000_100_000),
            minutes: vec![MinuteStats {
                at: time(1_700_000_040_000),
                succeeded: 2,
                failed: 1,
                p50_ms: Some(50),
                p99_ms: Some(200),
            }],
            totals: Totals {
                succeeded: 2,
                failed: 1,
                p50_ms: Some(50),
                p99_ms: Some(200),
            },
            failing: Vec::new(),
            queue: None,
            tenants: None,
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["minutes"][0]["at"], "2023-11-14T22:14:00.000Z");
        assert!(json.get("queue").is_none() && json.get("tenants").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<Stats>(json).unwrap(), stats);
    }
}
