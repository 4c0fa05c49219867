//! Subscription health: automatic deactivation and parking.
//!
//! Every attempt's outcome is reported here. The health task folds each
//! batch of outcomes into one [`HealthUpdate`] per subscription and writes
//! it to the queue backend, which keeps the counts (consecutive failures,
//! failing since) shared by every hookd process and across restarts. A
//! subscription over a threshold (`delivery.disable_after_failures`
//! consecutive failed attempts, or failing for `delivery.disable_after`),
//! or whose endpoint answered 410 Gone, is disabled in the backend (429 and
//! 503 answers count neither way: [`report_of`]): from
//! then on its deliveries are parked, not attempted and not dropped, until
//! an operator enables it again, which puts them back in the queue in order.
//!
//! The state task mirrors the backend's enabled/disabled states into the
//! endpoints every [`STATE_SYNC`], so a subscription disabled or enabled by
//! another process (or the admin API) takes effect here too, and re-runs
//! `unpark` for enabled subscriptions, which catches deliveries a process
//! with a stale view parked after an enable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::policy::Outcome;
use super::Endpoints;
use crate::config::SubscriptionName;
use crate::notify::{Alerts, Notification};
use crate::queue::{now_ms, HealthUpdate, Millis, Queue, StateStore};

/// How often the backend's subscription states are mirrored here.
pub const STATE_SYNC: Duration = Duration::from_secs(1);
/// Every this many state syncs, enabled subscriptions are unparked again.
const UNPARK_EVERY: u32 = 5;
/// Most subscriptions one sweep looks at for parked deliveries; the next
/// sweep goes on from there, so a catalogue of many subscriptions is swept
/// a slice at a time instead of all at once.
const UNPARK_SWEEP: usize = 100;

/// One attempt's outcome, as health needs it.
#[derive(Clone, Debug)]
pub(crate) enum Report {
    /// The endpoint acknowledged (2xx).
    Success { subscription: SubscriptionName, at: Millis },
    /// The attempt failed.
    Failure { subscription: SubscriptionName, at: Millis },
    /// The endpoint answered 410 Gone: disable at once.
    Gone { subscription: SubscriptionName },
}

/// What an attempt reports to health, if anything: a 2xx a success, a
/// 410 Gone disables, a 429 or 503 nothing (the endpoint is up and asks
/// for patience: it neither counts toward automatic deactivation nor
/// resets the count), and every other failure counts toward it.
pub(crate) fn report_of(
    subscription: &SubscriptionName,
    outcome: Outcome,
    status: Option<u16>,
    at: Millis,
) -> Option<Report> {
    let subscription = subscription.clone();
    Some(match outcome {
        Outcome::Delivered => Report::Success { subscription, at },
        Outcome::Gone => Report::Gone { subscription },
        Outcome::Retry { .. } if matches!(status, Some(429 | 503)) => return None,
        _ => Report::Failure { subscription, at },
    })
}

/// Thresholds of automatic deactivation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Thresholds {
    /// Consecutive failed attempts that disable; 0: never.
    pub failures: u64,
    /// Failing continuously this long disables; zero: never.
    pub duration: Duration,
}

/// Folds reports into per-subscription updates, in report order: after a
/// success only the failures that follow it count.
pub(crate) fn fold(reports: &[Report]) -> Vec<HealthUpdate> {
    let mut by_sub: HashMap<&SubscriptionName, HealthUpdate> = HashMap::new();
    let mut order = Vec::new();
    for report in reports {
        let (subscription, success, at) = match report {
            Report::Success { subscription, at } => (subscription, true, *at),
            Report::Failure { subscription, at } => (subscription, false, *at),
            Report::Gone { .. } => continue,
        };
        let update = by_sub.entry(subscription).or_insert_with(|| {
            order.push(subscription);
            HealthUpdate {
                subscription: subscription.clone(),
                successes: 0,
                failures: 0,
                last_outcome_success: success,
                last_success_at: None,
                last_failure_at: None,
            }
        });
        if success {
            update.successes += 1;
            update.failures = 0;
            update.last_success_at = Some(at);
        } else {
            update.failures += 1;
            update.last_failure_at = Some(at);
        }
        update.last_outcome_success = success;
    }
    order.into_iter().filter_map(|s| by_sub.remove(s)).collect()
}

/// Disables `name`: here at once (this process sends nothing more to it),
/// then in the backend with `reason`, for every process; if that changed
/// it, logs it and raises [`Notification::SubscriptionDisabled`]. The one
/// way a subscription is disabled, automatically (here) or by an operator
/// or its owner (the API's `POST /v1/subscriptions/{id}/disable`).
/// Returns whether the backend's state changed.
pub async fn disable(
    state: &dyn StateStore,
    endpoints: &ArcSwap<Endpoints>,
    alerts: &Alerts,
    name: &SubscriptionName,
    reason: String,
) -> Result<bool, crate::queue::Error> {
    endpoints.load().set_disabled(name, true);
    let changed = state.set_enabled(name, false, Some(reason.clone()), now_ms()).await?;
    if changed {
        warn!(subscription = %name, reason = %crate::telemetry::escape(&reason), "subscription disabled: its deliveries are parked until it is enabled again");
        alerts.raise(Notification::SubscriptionDisabled {
            subscription: name.clone(),
            reason,
            at: chrono::Utc::now(),
        });
    }
    Ok(changed)
}

/// [`disable`] for the health task, which has no one to answer: a failure
/// is logged.
async fn disable_logged(
    state: &dyn StateStore,
    endpoints: &ArcSwap<Endpoints>,
    alerts: &Alerts,
    name: &SubscriptionName,
    reason: String,
) {
    if let Err(e) = disable(state, endpoints, alerts, name, reason).await {
        error!(subscription = %name, error = %e, "cannot store the subscription's disabled state");
    }
}

/// Writes health updates and disables subscriptions over a threshold.
pub(crate) async fn health_loop(
    state: Arc<dyn StateStore>,
    endpoints: Arc<ArcSwap<Endpoints>>,
    alerts: Alerts,
    thresholds: Thresholds,
    mut rx: mpsc::UnboundedReceiver<Report>,
) {
    let mut batch = Vec::with_capacity(1024);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        for report in &batch {
            if let Report::Gone { subscription } = report {
                disable_logged(
                    state.as_ref(),
                    &endpoints,
                    &alerts,
                    subscription,
                    "endpoint answered 410 Gone".into(),
                )
                .await;
            }
        }
        let updates = fold(&batch);
        batch.clear();
        if updates.is_empty() {
            continue;
        }
        let states = match state.record_health(&updates).await {
            Ok(states) => states,
            Err(e) => {
                error!(error = %e, "cannot record subscription health");
                continue;
            }
        };
        let now = now_ms();
        for (name, now_state) in states {
            if !now_state.enabled {
                continue;
            }
            let by_count = thresholds.failures > 0 && now_state.consecutive_failures >= thresholds.failures;
            let by_time = !thresholds.duration.is_zero()
                && now_state
                    .failing_since
                    .is_some_and(|since| now - since >= thresholds.duration.as_millis() as i64);
            if by_count || by_time {
                let reason = if by_count {
                    format!("{} consecutive failed attempts", now_state.consecutive_failures)
                } else {
                    format!(
                        "failing for more than {}",
                        humantime::format_duration(thresholds.duration)
                    )
                };
                disable_logged(state.as_ref(), &endpoints, &alerts, &name, reason).await;
            }
        }
    }
}

/// Mirrors the backend's subscription states into the endpoints until
/// `shutdown`, and unparks enabled subscriptions now and then.
pub(crate) async fn state_loop(
    queue: Arc<dyn Queue>,
    state: Arc<dyn StateStore>,
    endpoints: Arc<ArcSwap<Endpoints>>,
    queued: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut round: u32 = 0;
    // Where the sweep for parked deliveries goes on from.
    let mut sweep_after: Option<SubscriptionName> = None;
    loop {
        // Versions before the read: a local change made while it is under
        // way wins over what it read.
        let current = endpoints.load_full();
        let before: HashMap<_, _> = current.map.iter().map(|(n, e)| (n, e.disabled.snapshot())).collect();
        match state.subscription_states().await {
            Ok(states) => {
                let states: HashMap<_, _> = states.into_iter().collect();
                let mut sweep = Vec::new();
                for (name, endpoint) in &current.map {
                    let enabled_in_backend = states.get(name).is_none_or(|s| s.enabled);
                    if let Some(&snapshot) = before.get(name) {
                        endpoint
                            .disabled
                            .mirror(snapshot, !(enabled_in_backend && endpoint.configured_enabled));
                    }
                    if enabled_in_backend && endpoint.configured_enabled {
                        sweep.push(name);
                    }
                }
                if round.is_multiple_of(UNPARK_EVERY) {
                    // The next slice, in name order, after the last one.
                    sweep.sort();
                    let start = match &sweep_after {
                        Some(last) => sweep.partition_point(|n| *n <= last),
                        None => 0,
                    };
                    let slice: Vec<&SubscriptionName> = sweep.iter().skip(start).take(UNPARK_SWEEP).copied().collect();
                    sweep_after = if start + slice.len() >= sweep.len() {
                        None
                    } else {
                        slice.last().map(|n| (*n).clone())
                    };
                    for name in slice {
                        match queue.unpark(name, now_ms()).await {
                            Ok(0) => {}
                            Ok(n) => {
                                info!(subscription = %name, count = n, "parked deliveries resumed");
                                queued.notify_one();
                            }
                            Err(e) => error!(subscription = %name, error = %e, "cannot resume parked deliveries"),
                        }
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot read subscription states"),
        }
        round = round.wrapping_add(1);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(STATE_SYNC) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> SubscriptionName {
        SubscriptionName::parse(s).unwrap()
    }

    #[test]
    fn throttling_answers_do_not_count_toward_deactivation() {
        let sub = name("a");
        let retry = Outcome::Retry { not_before: None };
        let cases: &[(Outcome, Option<u16>, &str)] = &[
            (Outcome::Delivered, Some(200), "success"),
            (Outcome::Gone, Some(410), "gone"),
            (retry, Some(500), "failure"),
            (retry, Some(404), "failure"),
            (retry, None, "failure"),
            (Outcome::Refused, None, "failure"),
            // The endpoint is up and asks for patience: neither way.
            (retry, Some(429), "none"),
            (retry, Some(503), "none"),
            (
                Outcome::Retry {
                    not_before: Some(Duration::from_secs(30)),
                },
                Some(429),
                "none",
            ),
        ];
        for (outcome, status, want) in cases {
            let got = match report_of(&sub, *outcome, *status, 7) {
                Some(Report::Success { .. }) => "success",
                Some(Report::Gone { .. }) => "gone",
                Some(Report::Failure { .. }) => "failure",
                None => "none",
            };
            assert_eq!(got, *want, "{outcome:?} {status:?}");
        }
    }

    #[test]
    fn folding_counts_failures_after_the_last_success() {
        let (a, b) = (name("a"), name("b"));
        let reports = [
            Report::Failure {
                subscription: a.clone(),
                at: 1,
            },
            Report::Success {
                subscription: a.clone(),
                at: 2,
            },
            Report::Failure {
                subscription: b.clone(),
                at: 3,
            },
            Report::Failure {
                subscription: a.clone(),
                at: 4,
            },
            Report::Failure {
                subscription: a.clone(),
                at: 5,
            },
            Report::Gone {
                subscription: b.clone(),
            },
            Report::Failure {
                subscription: b.clone(),
                at: 6,
            },
        ];
        let updates = fold(&reports);
        assert_eq!(updates.len(), 2);
        let ua = &updates[0];
        assert_eq!(
            (
                ua.subscription.as_str(),
                ua.successes,
                ua.failures,
                ua.last_outcome_success
            ),
            ("a", 1, 2, false)
        );
        assert_eq!((ua.last_success_at, ua.last_failure_at), (Some(2), Some(5)));
        let ub = &updates[1];
        assert_eq!(
            (ub.successes, ub.failures, ub.last_outcome_success, ub.last_success_at),
            (0, 2, false, None)
        );
        let ok = fold(&[
            Report::Failure {
                subscription: a.clone(),
                at: 1,
            },
            Report::Success { subscription: a, at: 2 },
        ]);
        assert_eq!((ok[0].failures, ok[0].last_outcome_success), (0, true));
    }
}
