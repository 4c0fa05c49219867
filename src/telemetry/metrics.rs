//! Prometheus metrics: one [`Metrics`] per process, built at start-up and
//! shared in an `Arc` (no global registry), rendered at `GET /metrics` in
//! the OpenMetrics text format.
//!
//! | family | labels | who counts |
//! | --- | --- | --- |
//! | `hookd_events_ingested_total` | `source`, `type` | [`crate::ingest::Ingestor`] |
//! | `hookd_dedup_hits_total` | | [`crate::ingest::Ingestor`] |
//! | `hookd_deliveries_total` | `subscription`, `outcome` | the dispatcher, through [`SubscriptionMetrics`] |
//! | `hookd_attempt_duration_seconds` | `subscription` | the dispatcher, through [`SubscriptionMetrics`] |
//! | `hookd_queue_depth` | `state` | a periodic sampler, [`Metrics::set_queue_depth`] |
//! | `hookd_plugin_calls_total` | `subscription`, `result` | the plugin stage, through [`SubscriptionMetrics`] |
//! | `hookd_plugin_errors_total` | `subscription`, `kind` | the plugin stage, through [`SubscriptionMetrics`] |
//! | `hookd_notifications_total` | `kind`, `result` | [`crate::notify::Notifier`] |
//!
//! The hot path does not allocate: event types are interned on first sight
//! (at most [`MAX_EVENT_TYPES`] of them; later types count as `other`), and
//! a subscription's counters are looked up once ([`Metrics::subscription`])
//! and kept by the caller.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `content-type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct event types given their own `type` label; later ones count as
/// [`OTHER_EVENT_TYPE`], so a producer inventing types cannot blow up the
/// number of series.
pub const MAX_EVENT_TYPES: usize = 200;

/// The `type` label of event types beyond [`MAX_EVENT_TYPES`]. (A real
/// event type named `other` shares the series.)
pub const OTHER_EVENT_TYPE: &str = "other";

/// The `subscription` label of subscriptions beyond `telemetry.max_series`
/// ([`Metrics::set_max_series`]). (A subscription named `other` shares the
/// series.)
pub const OTHER_SUBSCRIPTION: &str = "other";

/// Subscriptions given series of their own until told otherwise.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// The plugin failure kinds [`SubscriptionMetrics::plugin_error`] is given,
/// so a subscription's series can all be removed.
const PLUGIN_ERROR_KINDS: [&str; 9] = [
    "engine",
    "load",
    "deadline",
    "memory",
    "trap",
    "guest",
    "protected_header",
    "bad_output",
    "event",
];

/// Upper bounds of the attempt latency buckets, in seconds: 5 ms to 30 s.
pub const ATTEMPT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// Gives a label enum its wire names: `as_str` and [`EncodeLabelValue`].
macro_rules! label_values {
    ($name:ident { $($variant:ident => $label:literal),* $(,)? }) => {
        impl $name {
            /// The label value, as rendered.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// Where an event came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/events` and `/v1/events/batch` from a producer.
    Http,
    /// The Redis stream.
    Stream,
    /// `hookd send` (through the HTTP API).
    Cli,
    /// hookd's own `hookd.*` events (notifications).
    Internal,
}

label_values!(Source { Http => "http", Stream => "stream", Cli => "cli", Internal => "internal" });

impl Source {
    fn index(self) -> usize {
        self as usize
    }
}

/// How one delivery attempt (or the decision not to make one) ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed for the last time; kept as dead.
    Dead,
    /// A plugin dropped it: nothing sent, by design.
    Filtered,
    /// Its subscription is disabled; it waits.
    Parked,
    /// The endpoint answered 410 Gone.
    Gone,
    /// Refused before sending (a non-public address, say).
    Refused,
    /// Its subscription was deleted: never sent.
    Cancelled,
}

label_values!(DeliveryOutcome { Delivered => "delivered", Retry => "retry", Dead => "dead", Filtered => "filtered", Parked => "parked", Gone => "gone", Refused => "refused", Cancelled => "cancelled" });

impl DeliveryOutcome {
    /// Every outcome, in index order.
    const ALL: [DeliveryOutcome; 8] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Retry,
        DeliveryOutcome::Dead,
        DeliveryOutcome::Filtered,
        DeliveryOutcome::Parked,
        DeliveryOutcome::Gone,
        DeliveryOutcome::Refused,
        DeliveryOutcome::Cancelled,
    ];
}

/// What a plugin call decided.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PluginResult {
    /// Deliver (possibly reshaped).
    Deliver,
    /// Drop the delivery.
    Drop,
    /// The plugin failed (trap, deadline, memory, bad output).
    Error,
}

label_values!(PluginResult { Deliver => "deliver", Drop => "drop", Error => "error" });

impl PluginResult {
    /// Every result, in index order.
    const ALL: [PluginResult; 3] = [PluginResult::Deliver, PluginResult::Drop, PluginResult::Error];
}

/// A queue state whose depth is sampled.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum QueueState {
    /// Due now, waiting for a worker.
    Due,
    /// Waiting for a later attempt (retry backoff, lease).
    Scheduled,
    /// Held while their subscription is disabled.
    Parked,
    /// Out of retries, kept for replay.
    Dead,
}

label_values!(QueueState { Due => "due", Scheduled => "scheduled", Parked => "parked", Dead => "dead" });

/// What a notification is about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum NotificationKind {
    /// A subscription was disabled.
    Disabled,
    /// A subscription was enabled again.
    Recovered,
    /// A delivery died after its last retry.
    Dead,
}

label_values!(NotificationKind { Disabled => "disabled", Recovered => "recovered", Dead => "dead" });

/// What became of a notification's email.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum NotificationResult {
    /// In a mail the SMTP server accepted.
    Sent,
    /// In a mail that failed after every retry.
    Failed,
    /// Dropped: the notifier's queue was full.
    Dropped,
    /// Nobody to send it to (no `notify.to`, no `notify_to`).
    Unrouted,
}

label_values!(NotificationResult { Sent => "sent", Failed => "failed", Dropped => "dropped", Unrouted => "unrouted" });

/// Labels of `hookd_events_ingested_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    /// Where the event came from.
    source: Source,
    /// Its type, or `other` past the cap.
    r#type: String,
}

/// Labels of `hookd_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// The subscription's name.
    subscription: String,
    /// How it ended.
    outcome: DeliveryOutcome,
}

/// Labels of `hookd_attempt_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    /// The subscription's name.
    subscription: String,
}

/// Labels of `hookd_plugin_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    /// The subscription whose plugin ran.
    subscription: String,
    /// What it decided.
    result: PluginResult,
}

/// Labels of `hookd_plugin_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginErrorLabels {
    /// The subscription whose plugin failed.
    subscription: String,
    /// A short, fixed name of the failure (`deadline`, `memory`, `trap`…).
    kind: &'static str,
}

/// Labels of `hookd_queue_depth`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    /// The state counted.
    state: QueueState,
}

/// Labels of `hookd_notifications_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    /// What it was about.
    kind: NotificationKind,
    /// What became of it.
    result: NotificationResult,
}

/// Ingest counters of one event type, one per source, created on first use
/// so sources that never send the type show no series.
#[derive(Default)]
struct TypeCounters([OnceLock<Counter>; 4]);

/// Every metric hookd exports, and the registry that renders them.
pub struct Metrics {
    /// Renders every family below.
    registry: Registry,
    /// `hookd_events_ingested_total`.
    ingested: Family<IngestLabels, Counter>,
    /// Counters per event type seen so far (at most [`MAX_EVENT_TYPES`]).
    types: RwLock<HashMap<String, TypeCounters>>,
    /// Counters of the types past the cap.
    other_types: TypeCounters,
    /// `hookd_dedup_hits_total`.
    dedup_hits: Counter,
    /// `hookd_deliveries_total`.
    deliveries: Family<DeliveryLabels, Counter>,
    /// `hookd_attempt_duration_seconds`.
    attempt_duration: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    /// `hookd_queue_depth`.
    queue_depth: Family<QueueLabels, Gauge>,
    /// `hookd_plugin_calls_total`.
    plugin_calls: Family<PluginCallLabels, Counter>,
    /// `hookd_plugin_errors_total`.
    plugin_errors: Family<PluginErrorLabels, Counter>,
    /// `hookd_notifications_total`.
    notifications: Family<NotificationLabels, Counter>,
    /// `hookd_dead_expired_total`.
    dead_expired: Counter,
    /// `hookd_ingest_refused_total`.
    ingest_refused: Counter,
    /// `hookd_history_dropped_total`.
    history_dropped: Counter,
    /// `hookd_history_spooled_entries`.
    history_spooled: Gauge,
    /// `hookd_history_degraded`.
    history_degraded: Gauge,
    /// `hookd_catalog_rejected_records`.
    catalog_rejected: Gauge,
    /// `hookd_task_restarts_total`.
    task_restarts: Family<TaskLabels, Counter>,
    /// The subscriptions with series of their own.
    series: std::sync::Mutex<std::collections::HashSet<String>>,
    /// How many subscriptions may have series of their own
    /// (`telemetry.max_series`); later ones count as [`OTHER_SUBSCRIPTION`].
    max_series: std::sync::atomic::AtomicUsize,
}

/// Labels of `hookd_task_restarts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

fn attempt_histogram() -> Histogram {
    Histogram::new(ATTEMPT_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every family registered, all counts at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hookd");
        let ingested = Family::default();
        registry.register(
            "events_ingested",
            "New events accepted and fanned out (duplicates not included: see dedup_hits), by source and type",
            ingested.clone(),
        );
        let dedup_hits = Counter::default();
        registry.register(
            "dedup_hits",
            "Events whose id was seen within the dedup window: acknowledged, not delivered again",
            dedup_hits.clone(),
        );
        let deliveries = Family::default();
        registry.register(
            "deliveries",
            "Delivery attempts and decisions, by subscription and outcome",
            deliveries.clone(),
        );
        let attempt_duration = Family::new_with_constructor(attempt_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "attempt_duration",
            "Duration of one HTTP attempt, from connect to the end of the response head",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let queue_depth = Family::default();
        registry.register(
            "queue_depth",
            "Deliveries in the queue by state, as last sampled",
            queue_depth.clone(),
        );
        let plugin_calls = Family::default();
        registry.register(
            "plugin_calls",
            "Plugin calls by subscription and result",
            plugin_calls.clone(),
        );
        let plugin_errors = Family::default();
        registry.register(
            "plugin_errors",
            "Plugin failures by subscription and kind",
            plugin_errors.clone(),
        );
        let notifications: Family<NotificationLabels, Counter> = Family::default();
        registry.register(
            "notifications",
            "Notifications by kind and what became of their email",
            notifications.clone(),
        );
        let dead_expired = Counter::default();
        registry.register(
            "dead_expired",
            "Dead deliveries forgotten after queue.dead_retention (recorded as expired)",
            dead_expired.clone(),
        );
        let ingest_refused = Counter::default();
        registry.register(
            "ingest_refused",
            "Events refused at ingest (503) because the queue was deeper than ingest.max_queue_depth",
            ingest_refused.clone(),
        );
        let history_dropped = Counter::default();
        registry.register(
            "history_dropped",
            "Delivery log entries not kept: beyond the spool while the log store was down, or refused by it",
            history_dropped.clone(),
        );
        let history_spooled = Gauge::default();
        registry.register(
            "history_spooled_entries",
            "Delivery log entries waiting in the spool for the log store",
            history_spooled.clone(),
        );
        let history_degraded = Gauge::default();
        registry.register(
            "history_degraded",
            "1 while the delivery log store fails and entries wait in the spool, else 0",
            history_degraded.clone(),
        );
        let catalog_rejected = Gauge::default();
        registry.register(
            "catalog_rejected_records",
            "Stored catalogue records left out of the snapshot in force because they cannot be built",
            catalog_rejected.clone(),
        );
        let task_restarts = Family::default();
        registry.register(
            "task_restarts",
            "Long-running tasks restarted after a panic, by task",
            task_restarts.clone(),
        );
        // Notification counters are few and known: start them at zero so a
        // rate() over them works before the first notification.
        for kind in [
            NotificationKind::Disabled,
            NotificationKind::Recovered,
            NotificationKind::Dead,
        ] {
            for result in [
                NotificationResult::Sent,
                NotificationResult::Failed,
                NotificationResult::Dropped,
                NotificationResult::Unrouted,
            ] {
                let _ = notifications.get_or_create_owned(&NotificationLabels { kind, result });
            }
        }
        Metrics {
            registry,
            ingested,
            types: RwLock::new(HashMap::new()),
            other_types: TypeCounters::default(),
            dedup_hits,
            deliveries,
            attempt_duration,
            queue_depth,
            plugin_calls,
            plugin_errors,
            notifications,
            dead_expired,
            ingest_refused,
            history_dropped,
            history_spooled,
            history_degraded,
            catalog_rejected,
            task_restarts,
            series: Default::default(),
            max_series: DEFAULT_MAX_SERIES.into(),
        }
    }

    /// Sets `telemetry.max_series`: how many subscriptions get series of
    /// their own, so that tenants making subscriptions cannot grow the
    /// metrics without bound.
    pub fn set_max_series(&self, n: usize) {
        self.max_series.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes every series of subscription `name` (deleted, or gone from
    /// the config): its counters no longer render, and a handle still held
    /// counts into nothing.
    pub fn forget_subscription(&self, name: &str) {
        let mut series = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !series.remove(name) {
            return;
        }
        let subscription = name.to_owned();
        for outcome in DeliveryOutcome::ALL {
            self.deliveries.remove(&DeliveryLabels {
                subscription: subscription.clone(),
                outcome,
            });
        }
        self.attempt_duration.remove(&SubscriptionLabels {
            subscription: subscription.clone(),
        });
        for result in PluginResult::ALL {
            self.plugin_calls.remove(&PluginCallLabels {
                subscription: subscription.clone(),
                result,
            });
        }
        for kind in PLUGIN_ERROR_KINDS {
            self.plugin_errors.remove(&PluginErrorLabels {
                subscription: subscription.clone(),
                kind,
            });
        }
    }

    /// Counts one event of `event_type` accepted from `source`. Allocates
    /// only the first time a (source, type) pair is seen.
    pub fn event_ingested(&self, source: Source, event_type: &str) {
        let counter = |label: &str| {
            self.ingested.get_or_create_owned(&IngestLabels {
                source,
                r#type: label.to_owned(),
            })
        };
        let slot = source.index();
        {
            let types = self.types.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counters) = types.get(event_type) {
                counters.0[slot].get_or_init(|| counter(event_type)).inc();
                return;
            }
            if types.len() >= MAX_EVENT_TYPES {
                drop(types);
                self.other_types.0[slot].get_or_init(|| counter(OTHER_EVENT_TYPE)).inc();
                return;
            }
        }
        let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
        if types.len() >= MAX_EVENT_TYPES && !types.contains_key(event_type) {
            drop(types);
            self.other_types.0[slot].get_or_init(|| counter(OTHER_EVENT_TYPE)).inc();
            return;
        }
        types.entry(event_type.to_owned()).or_default().0[slot]
            .get_or_init(|| counter(event_type))
            .inc();
    }

    /// Counts `n` dead deliveries forgotten after the retention.
    pub fn dead_expired(&self, n: u64) {
        self.dead_expired.inc_by(n);
    }

    /// Counts `n` delivery log entries not kept.
    pub fn history_dropped(&self, n: u64) {
        self.history_dropped.inc_by(n);
    }

    /// Shows the delivery log's spool: entries waiting, and whether the
    /// store fails.
    pub fn history_spooled(&self, entries: u64, degraded: bool) {
        self.history_spooled.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.history_degraded.set(i64::from(degraded));
    }

    /// Shows how many stored catalogue records the snapshot in force left
    /// out.
    pub fn catalog_rejected(&self, n: usize) {
        self.catalog_rejected.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one restart of the task `task` after a panic.
    pub fn task_restarted(&self, task: &'static str) {
        self.task_restarts.get_or_create(&TaskLabels { task }).inc();
    }

    /// Counts `n` events refused because the queue was too deep.
    pub fn ingest_refused(&self, n: u64) {
        self.ingest_refused.inc_by(n);
    }

    /// Counts one event acknowledged as a duplicate.
    pub fn dedup_hit(&self) {
        self.dedup_hits.inc();
    }

    /// Sets the sampled depth of one queue state.
    pub fn set_queue_depth(&self, state: QueueState, depth: u64) {
        let depth = i64::try_from(depth).unwrap_or(i64::MAX);
        self.queue_depth.get_or_create(&QueueLabels { state }).set(depth);
    }

    /// Counts `n` notifications of `kind` by what became of their email.
    pub fn notifications(&self, kind: NotificationKind, result: NotificationResult, n: u64) {
        self.notifications
            .get_or_create(&NotificationLabels { kind, result })
            .inc_by(n);
    }

    /// One subscription's handles: look them up once (when the dispatcher
    /// prepares its endpoints) and count through them without locks or
    /// allocation. Every outcome and plugin result starts at zero, so its
    /// series exists before the first event.
    pub fn subscription(&self, name: &str) -> SubscriptionMetrics {
        let subscription = {
            let mut series = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if series.contains(name) || series.len() < self.max_series.load(std::sync::atomic::Ordering::Relaxed) {
                series.insert(name.to_owned());
                name.to_owned()
            } else {
                OTHER_SUBSCRIPTION.to_owned()
            }
        };
        SubscriptionMetrics {
            deliveries: DeliveryOutcome::ALL.map(|outcome| {
                self.deliveries.get_or_create_owned(&DeliveryLabels {
                    subscription: subscription.clone(),
                    outcome,
                })
            }),
            attempt_duration: self.attempt_duration.get_or_create_owned(&SubscriptionLabels {
                subscription: subscription.clone(),
            }),
            plugin_calls: PluginResult::ALL.map(|result| {
                self.plugin_calls.get_or_create_owned(&PluginCallLabels {
                    subscription: subscription.clone(),
                    result,
                })
            }),
            plugin_errors: self.plugin_errors.clone(),
            subscription,
        }
    }

    /// Everything, in the OpenMetrics text format (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String does not fail; say so if it ever does.
            tracing::error!(error = %e, "cannot render metrics");
        }
        out
    }
}

/// One subscription's delivery and plugin metrics, from [`Metrics::subscription`].
#[derive(Clone, Debug)]
pub struct SubscriptionMetrics {
    /// The subscription's name, for the rare labels made on the fly.
    subscription: String,
    /// `hookd_deliveries_total`, one counter per [`DeliveryOutcome`].
    deliveries: [Counter; 8],
    /// `hookd_attempt_duration_seconds` of this subscription.
    attempt_duration: Histogram,
    /// `hookd_plugin_calls_total`, one counter per [`PluginResult`].
    plugin_calls: [Counter; 3],
    /// The `hookd_plugin_errors_total` family (kinds are few but open-ended).
    plugin_errors: Family<PluginErrorLabels, Counter>,
}

impl SubscriptionMetrics {
    /// Counts one delivery outcome.
    pub fn delivery(&self, outcome: DeliveryOutcome) {
        self.deliveries[outcome as usize].inc();
    }

    /// Records how long one HTTP attempt took.
    pub fn attempt(&self, took: Duration) {
        self.attempt_duration.observe(took.as_secs_f64());
    }

    /// Counts one plugin call by what it decided.
    pub fn plugin_call(&self, result: PluginResult) {
        self.plugin_calls[result as usize].inc();
    }

    /// Counts one plugin failure; `kind` is a short fixed name
    /// (`deadline`, `memory`, `trap`, `output`…), never a message.
    pub fn plugin_error(&self, kind: &'static str) {
        self.plugin_errors
            .get_or_create(&PluginErrorLabels {
                subscription: self.subscription.clone(),
                kind,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn renders_every_family_with_its_labels() {
        let m = Metrics::new();
        m.event_ingested(Source::Http, "coupon.redeemed");
        m.event_ingested(Source::Http, "coupon.redeemed");
        m.event_ingested(Source::Stream, "link.clicked");
        m.dedup_hit();
        let crm = m.subscription("crm");
        crm.delivery(DeliveryOutcome::Delivered);
        crm.delivery(DeliveryOutcome::Retry);
        crm.delivery(DeliveryOutcome::Retry);
        crm.attempt(Duration::from_millis(30));
        crm.attempt(Duration::from_secs(40));
        crm.plugin_call(PluginResult::Drop);
        crm.plugin_error("deadline");
        m.set_queue_depth(QueueState::Due, 12);
        m.set_queue_depth(QueueState::Dead, 3);
        m.notifications(NotificationKind::Dead, NotificationResult::Sent, 1);

        let text = m.render();
        let cases: &[(&str, f64)] = &[
            (
                r#"hookd_events_ingested_total{source="http",type="coupon.redeemed"}"#,
                2.0,
            ),
            (
                r#"hookd_events_ingested_total{source="stream",type="link.clicked"}"#,
                1.0,
            ),
            ("hookd_dedup_hits_total", 1.0),
            (r#"hookd_deliveries_total{subscription="crm",outcome="delivered"}"#, 1.0),
            (r#"hookd_deliveries_total{subscription="crm",outcome="retry"}"#, 2.0),
            (r#"hookd_deliveries_total{subscription="crm",outcome="refused"}"#, 0.0),
            (r#"hookd_attempt_duration_seconds_count{subscription="crm"}"#, 2.0),
            (
                r#"hookd_attempt_duration_seconds_bucket{le="0.05",subscription="crm"}"#,
                1.0,
            ),
            (
                r#"hookd_attempt_duration_seconds_bucket{le="30.0",subscription="crm"}"#,
                1.0,
            ),
            (
                r#"hookd_attempt_duration_seconds_bucket{le="+Inf",subscription="crm"}"#,
                2.0,
            ),
            (r#"hookd_plugin_calls_total{subscription="crm",result="drop"}"#, 1.0),
            (r#"hookd_plugin_calls_total{subscription="crm",result="deliver"}"#, 0.0),
            (r#"hookd_plugin_errors_total{subscription="crm",kind="deadline"}"#, 1.0),
            (r#"hookd_queue_depth{state="due"}"#, 12.0),
            (r#"hookd_queue_depth{state="dead"}"#, 3.0),
            (r#"hookd_notifications_total{kind="dead",result="sent"}"#, 1.0),
        ];
        for (series, want) in cases {
            assert_eq!(sample(&text, series), Some(*want), "{series} in\n{text}");
        }
        assert!(
            text.contains("# TYPE hookd_attempt_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("# UNIT hookd_attempt_duration_seconds seconds"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        // No series for a source that never sent the type.
        assert!(!text.contains(r#"source="cli""#), "{text}");
    }

    #[test]
    fn event_types_past_the_cap_count_as_other() {
        let m = Metrics::new();
        for n in 0..MAX_EVENT_TYPES + 50 {
            m.event_ingested(Source::Http, &format!("t.n{n}"));
        }
        // A type seen before the cap keeps its own series.
        m.event_ingested(Source::Http, "t.n0");
        m.event_ingested(Source::Stream, "t.n1");
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("hookd_events_ingested_total{"))
            .count();
        assert_eq!(series, MAX_EVENT_TYPES + 2, "{text}");
        assert_eq!(
            sample(&text, r#"hookd_events_ingested_total{source="http",type="other"}"#),
            Some(50.0)
        );
        assert_eq!(
            sample(&text, r#"hookd_events_ingested_total{source="http",type="t.n0"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"hookd_events_ingested_total{source="stream",type="t.n1"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn subscription_handles_share_the_series() {
        let m = Metrics::new();
        m.subscription("crm").delivery(DeliveryOutcome::Dead);
        m.subscription("crm").delivery(DeliveryOutcome::Dead);
        let text = m.render();
        assert_eq!(
            sample(&text, r#"hookd_deliveries_total{subscription="crm",outcome="dead"}"#),
            Some(2.0)
        );
    }
}
