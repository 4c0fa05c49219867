//! Dispatch: claim due deliveries, attempt them, settle the outcome.
//!
//! One claim loop per process takes batches from the [`Queue`] (as many
//! as there are free in-flight slots), and spawns one task per delivery.
//! Each task waits for nothing: if its subscription is at its in-flight cap
//! the claim is held for that subscription in this process (its [`Hold`],
//! up to [`HOLD_PER_SLOT`] per slot of the cap, without a slot of the
//! process's, in claim order) and started as soon as one of its deliveries
//! in flight finishes, so a slow endpoint's backlog is claimed once, not
//! over and over, and it never holds slots the others could use. Beyond
//! that the delivery is deferred (given back unattempted, not counted as an
//! attempt; a subscription full batch after batch waits longer each
//! time, up to a second), and a held one whose lease would run short goes
//! back with those held behind it; if
//! the subscription has a `rate_limit` and its bucket (in the queue
//! backend, shared by every process: [`crate::queue::rate`]) has no token
//! left, it is deferred until one will be, the deliveries of one batch
//! spaced one interval apart.
//! Otherwise it signs, sends, classifies the result ([`policy::classify`]),
//! and hands a [`Settlement`] to the settle task, which batches them into
//! one queue call.
//!
//! Between claim and sign, a subscription's plugin runs on the delivery's
//! first attempt: `drop` ends it as filtered, `deliver` may replace the body
//! (stored with the delivery, so retries resend the same bytes) and change
//! headers (only the changes are stored, applied at each attempt to the
//! subscription's headers in force); a plugin error fails the delivery (dead, replayable once the
//! plugin is fixed).
//!
//! The subscriptions ([`Endpoints`]) are one immutable snapshot behind an
//! `ArcSwap`: a config or plugin reload builds a new one and swaps it in;
//! deliveries in flight finish with the snapshot they started with.

mod health;
pub use health::disable;
pub mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::catalog::Catalog;
use crate::config::{Config, RateLimit, SubscriptionConfig, SubscriptionName, STORED_ID_PREFIX};
use crate::deliver::{self, Client};
use crate::history::{self, AttemptRecord, DeliveryState, DeliverySummary, Entry, ErrorKind, Recorder};
use crate::model::{headers, PluginHeaders};
use crate::notify::{Alerts, Notification};
use crate::plugin::{self, Plugin, Plugins, Verdict};
use crate::queue::{now_ms, rate, Backend, Claim, Delivery, Millis, Queue, Settlement, StateStore};
use crate::sign::{self, Signer};
use crate::telemetry::metrics::{DeliveryOutcome, Metrics, PluginResult, SubscriptionMetrics};
use policy::{classify, Attempted, Outcome, RetryPolicy};

/// The `user-agent` every request carries.
pub const USER_AGENT_VALUE: &str = concat!("hookd/", env!("CARGO_PKG_VERSION"));

/// Most deliveries claimed in one queue call.
const CLAIM_BATCH: usize = 512;
/// Most settlements written in one queue call.
const SETTLE_BATCH: usize = 1024;
/// Delay before a delivery for a subscription this process does not know
/// yet is due again.
const UNKNOWN_RETRY: Duration = Duration::from_secs(1);
/// How long after its creation a delivery for an unknown stored
/// subscription is deferred, waiting for the catalogue to name it, before
/// it is kept as dead.
const UNKNOWN_PATIENCE: Duration = Duration::from_secs(300);
/// Delay before a deferred delivery (its subscription was full, or no slot
/// was free) is due again, the first time.
const DEFER_DELAY: Duration = Duration::from_millis(50);
/// Longest delay of a subscription that stays at its in-flight cap with
/// its [`Hold`] full: each batch that finds it so doubles its delay up to
/// this, and one that finds room resets it, so a slow endpoint's backlog
/// beyond the hold is claimed (and given back) about once a second instead
/// of twenty times. The hold keeps the endpoint busy meanwhile. Measured
/// over 10 s with one slot, 200 ms answers and 200 events queued (Redis):
/// without the hold and with 50 ms deferrals, 48 delivered, 36k ZADDs and
/// 764 ms of script time in Redis; without the hold and 1 s, 36 delivered
/// (the endpoint idled between a freed slot and the next claim); with the
/// hold and 1 s, 51 delivered (all it can take), 3.2k ZADDs, 109 ms.
const DEFER_DELAY_MAX: Duration = Duration::from_secs(1);

/// Most claims of one subscription held in a process while it is at its
/// in-flight cap, per slot of the cap (and at most [`HOLD_MAX`]).
const HOLD_PER_SLOT: usize = 16;
/// Most claims of one subscription held in a process.
const HOLD_MAX: usize = 256;

/// The claims of one subscription this process holds while it is at its
/// in-flight cap: parked here, in claim order, instead of going back to
/// the queue, and started one by one as its deliveries in flight finish.
/// Its runner ([`run_hold`]) owns the receiving end.
struct Hold {
    /// Held claims, oldest first, each with when it must be given up.
    tx: mpsc::UnboundedSender<(Claim, Arc<Endpoint>, tokio::time::Instant)>,
    /// How many are held.
    waiting: Arc<AtomicU64>,
}

/// Starts the held claims of one subscription in order, each once its
/// subscription has room and a slot is free. A claim held past its
/// deadline (half of what its lease leaves after an attempt) goes back to
/// the queue with every claim held behind it, all due at once so they
/// keep their order, rather than risk its lease running out; so does
/// everything held at shutdown.
async fn run_hold(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(Claim, Arc<Endpoint>, tokio::time::Instant)>,
    waiting: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((claim, endpoint, deadline)) = rx.recv().await {
        let room = async {
            let permit = endpoint.permits.clone().acquire_owned().await.ok()?;
            let slot = slots.clone().acquire_owned().await.ok()?;
            Some((permit, slot))
        };
        let room = tokio::select! {
            room = room => room,
            _ = tokio::time::sleep_until(deadline) => None,
            _ = shutdown.cancelled() => None,
        };
        waiting.fetch_sub(1, Ordering::Relaxed);
        match room {
            Some((permit, slot)) => {
                // The subscription as it is now: a reload may have changed
                // it, or deleted it, while the claim waited.
                let current = shared.endpoints.load().map.get(&endpoint.name).cloned();
                let shared = shared.clone();
                tasks.spawn(async move {
                    attempt(&shared, claim, current).await;
                    drop(permit);
                    drop(slot);
                });
            }
            None => {
                let due = now_ms();
                defer(&shared, &claim, due);
                while let Ok((claim, _, _)) = rx.try_recv() {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    defer(&shared, &claim, due);
                }
            }
        }
    }
}

/// The next deferral delay of a subscription found at its cap again, after
/// `previous` (none: it was not full before).
fn saturated_delay(previous: Option<Duration>) -> Duration {
    previous.map_or(DEFER_DELAY, |d| (d * 2).min(DEFER_DELAY_MAX))
}

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A subscription's endpoint could not be prepared.
    #[error("subscription `{subscription}`: {reason}")]
    Endpoint { subscription: String, reason: String },
    /// A subscription's plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] deliver::Error),
}

/// A subscription, ready to deliver to.
pub struct Endpoint {
    /// The subscription's name.
    name: SubscriptionName,
    /// Where to POST.
    url: http::Uri,
    /// Custom headers, validated at load.
    headers: HeaderMap,
    /// Signs with every configured secret.
    signer: Signer,
    /// Per-attempt timeout.
    timeout: Duration,
    /// When and whether to retry.
    retry: RetryPolicy,
    /// In-flight cap for this subscription.
    permits: Arc<Semaphore>,
    /// The cap `permits` was made with.
    cap: usize,
    /// The request rate limit, if the subscription has one (its bucket
    /// lives in the queue backend).
    rate_limit: Option<RateLimit>,
    /// Disabled in the config, or in the queue backend (automatically or by
    /// an operator): deliveries are parked, nothing is sent.
    disabled: Arc<Switch>,
    /// `enabled` in the config.
    configured_enabled: bool,
    /// Filters or reshapes each delivery before it is signed.
    plugin: Option<Plugin>,
    /// This subscription's counters.
    metrics: SubscriptionMetrics,
    /// Which endpoints it may reach: its tenant's plan's policy; `None`,
    /// the operator's.
    network: Option<deliver::NetworkPolicy>,
}

impl Endpoint {
    fn new(
        config: &Config,
        sub: &SubscriptionConfig,
        plugins: &LoadedPlugins,
        metrics: &Metrics,
        previous: Option<&Endpoint>,
    ) -> Result<Endpoint, Error> {
        let fail = |reason: String| Error::Endpoint {
            subscription: sub.name.to_string(),
            reason,
        };
        let url = sub.url.parse().map_err(|e| fail(format!("bad url: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &sub.headers {
            if headers::is_protected(name) {
                // Stored before the name was protected (`user-agent`):
                // hookd's own value was sent then too.
                tracing::warn!(subscription = %sub.name, header = %name,
                    "custom header ignored: hookd sets it; remove it from the subscription");
                continue;
            }
            let (name, value) =
                crate::model::headers::custom_header(name, value).map_err(|p| fail(format!("header {name} {p}")))?;
            headers.insert(name, value);
        }
        let signer = Signer::new(&sub.secrets).map_err(|e| fail(e.to_string()))?;
        let plugin = match (&sub.plugin, plugins.0.get(&sub.name)) {
            (Some(_), Some(plugin)) => Some(plugin.clone()),
            (Some(_), None) => return Err(fail("has a plugin but the plugin engine is not running".into())),
            (None, _) => None,
        };
        // Never above the process's own cap (nor a semaphore's), whatever
        // was stored.
        let cap = sub
            .max_in_flight
            .unwrap_or(config.delivery.max_in_flight_per_subscription)
            .min(config.delivery.max_in_flight);
        Ok(Endpoint {
            name: sub.name.clone(),
            url,
            headers,
            signer,
            timeout: sub.timeout.unwrap_or(config.delivery.timeout),
            cap,
            retry: RetryPolicy::from_config(&config.delivery, sub.max_retries),
            rate_limit: sub.rate_limit,
            // A reload keeps the in-flight count of an unchanged cap.
            permits: match previous {
                Some(p) if p.cap == cap => p.permits.clone(),
                _ => Arc::new(Semaphore::new(cap)),
            },
            disabled: match previous {
                Some(p) if sub.enabled => p.disabled.clone(),
                _ => Arc::new(Switch::new(!sub.enabled)),
            },
            configured_enabled: sub.enabled,
            plugin,
            metrics: metrics.subscription(sub.name.as_str()),
            network: sub.network.clone(),
        })
    }

    /// The request for one attempt: signed now, with every hookd header.
    fn request(&self, delivery: &Delivery, now_secs: i64) -> deliver::Request {
        let mut headers = match &delivery.headers {
            // The plugin's changes (validated when it made them) to the
            // headers in force now.
            Some(changes) => changes
                .apply(&self.header_pairs())
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            None => self.headers.clone(),
        };
        let id = delivery.event_id.as_str();
        let signature = self.signer.sign(id, now_secs, &delivery.body);
        let pairs = [
            (sign::HEADER_WEBHOOK_ID, id.to_owned()),
            (sign::HEADER_WEBHOOK_TIMESTAMP, now_secs.to_string()),
            (sign::HEADER_WEBHOOK_SIGNATURE, signature),
            (sign::HEADER_CONTENT_DIGEST, sign::content_digest(&delivery.body)),
        ];
        for (name, value) in pairs {
            // Ids, digits, base64 and spaces: always valid header values.
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        deliver::Request {
            url: self.url.clone(),
            headers,
            body: delivery.body.clone(),
            timeout: self.timeout,
            network: self.network.clone(),
        }
    }

    /// The configured custom headers as pairs.
    fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect()
    }
}

/// Whether a subscription is disabled in this process, versioned so that
/// the state task's mirror of the backend's state (read over a network
/// round trip) never undoes a change made here meanwhile: an operator's
/// enable racing a mirror that read "disabled" just before would otherwise
/// park the deliveries being resumed again, and resume them out of order.
///
/// Bit 0 is the state; the bits above count local changes.
#[derive(Debug)]
pub(crate) struct Switch(AtomicU64);

impl Switch {
    fn new(disabled: bool) -> Switch {
        Switch(AtomicU64::new(u64::from(disabled)))
    }

    /// Whether the subscription is disabled.
    pub(crate) fn is_disabled(&self) -> bool {
        self.0.load(Ordering::Acquire) & 1 == 1
    }

    /// Disables (`true`) or enables, as a change newer than any mirror
    /// under way.
    pub(crate) fn set(&self, disabled: bool) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            Some((((s >> 1) + 1) << 1) | u64::from(disabled))
        });
    }

    /// The state and version now, to pass to [`Switch::mirror`].
    pub(crate) fn snapshot(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Sets the state read from the backend by a read that started at
    /// `snapshot`, unless the switch was [`set`](Switch::set) since.
    pub(crate) fn mirror(&self, snapshot: u64, disabled: bool) -> bool {
        self.0
            .compare_exchange(
                snapshot,
                (snapshot & !1) | u64::from(disabled),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// The plugins of a config's subscriptions, loaded, by subscription.
#[derive(Default)]
pub struct LoadedPlugins(HashMap<SubscriptionName, Plugin>);

impl LoadedPlugins {
    /// Loads the plugin of every subscription of `config` that has one,
    /// with `plugins` (none if `config` has no plugin). Compiling runs on
    /// tokio's blocking pool, never on a runtime worker, so the API answers
    /// and deliveries go on meanwhile.
    pub async fn load(config: &Config, plugins: Option<&Plugins>) -> Result<LoadedPlugins, Error> {
        let mut loaded = HashMap::new();
        let Some(plugins) = plugins else {
            return Ok(LoadedPlugins(loaded));
        };
        for sub in &config.subscriptions {
            if let Some(cfg) = &sub.plugin {
                loaded.insert(sub.name.clone(), plugins.load_async(sub.name.as_str(), cfg).await?);
            }
        }
        Ok(LoadedPlugins(loaded))
    }
}

/// Every subscription, ready to deliver to: one immutable snapshot.
#[derive(Default)]
pub struct Endpoints {
    /// By name.
    map: HashMap<SubscriptionName, Arc<Endpoint>>,
}

impl Endpoints {
    /// Prepares `config`'s subscriptions, with their `plugins` loaded by
    /// [`LoadedPlugins::load`]. `previous` (the snapshot being replaced on
    /// reload) lends its in-flight counts and 410 Gone states to unchanged
    /// subscriptions.
    pub fn build(
        config: &Config,
        plugins: &LoadedPlugins,
        metrics: &Metrics,
        previous: Option<&Endpoints>,
    ) -> Result<Endpoints, Error> {
        let mut map = HashMap::new();
        for sub in &config.subscriptions {
            let before = previous.and_then(|p| p.map.get(&sub.name)).map(Arc::as_ref);
            match Endpoint::new(config, sub, plugins, metrics, before) {
                Ok(endpoint) => {
                    map.insert(sub.name.clone(), Arc::new(endpoint));
                }
                // A tenant's subscription that cannot be prepared is left
                // out alone (the catalogue's bounds should have refused
                // it); the operator's file must be fixed, so it fails.
                Err(e) if sub.owner.is_some() => {
                    error!(subscription = %sub.name, error = %e, "subscription cannot be prepared; left out");
                }
                Err(e) => return Err(e),
            }
        }
        // A subscription gone (deleted, or out of the config) takes its
        // series with it.
        for gone in previous
            .iter()
            .flat_map(|p| p.map.keys())
            .filter(|n| !map.contains_key(*n))
        {
            metrics.forget_subscription(gone.as_str());
        }
        Ok(Endpoints { map })
    }

    /// Marks `name` disabled or enabled in this process at once (the state
    /// task mirrors the backend's state within a second anyway). A
    /// subscription disabled in the config stays disabled.
    pub fn set_disabled(&self, name: &SubscriptionName, disabled: bool) {
        if let Some(endpoint) = self.map.get(name) {
            endpoint.disabled.set(disabled || !endpoint.configured_enabled);
        }
    }
}

/// Everything the claim loop and its delivery tasks share.
struct Shared {
    /// Where deliveries wait.
    queue: Arc<dyn Queue>,
    /// Subscription state, health and rate buckets.
    state: Arc<dyn StateStore>,
    /// The outbound HTTP client, shared by every delivery.
    client: Client,
    /// The current subscriptions; swapped whole on reload.
    endpoints: Arc<ArcSwap<Endpoints>>,
    /// Settlements on their way to the queue.
    settle_tx: mpsc::UnboundedSender<Settlement>,
    /// Hands delivery log entries to the history's writer.
    recorder: Recorder,
    /// Attempt outcomes on their way to the health task.
    health_tx: mpsc::UnboundedSender<health::Report>,
    /// Dead deliveries are notified here.
    alerts: Alerts,
    /// Tells deleted subscriptions from ones not known here yet.
    catalog: Arc<Catalog>,
    /// Counts what happens to deliveries no endpoint takes.
    metrics: Arc<Metrics>,
}

/// What the dispatcher reports to, beside the queue.
#[derive(Clone)]
pub struct Services {
    /// Records into the delivery log, never waiting for it.
    pub recorder: Recorder,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Operator notifications.
    pub alerts: Alerts,
    /// The catalogue, to tell a deleted subscription from an unknown one.
    pub catalog: Arc<Catalog>,
}

/// The claim loop and its delivery tasks.
pub struct Dispatcher {
    /// State shared with delivery tasks.
    shared: Arc<Shared>,
    /// Receiving end of the settlements, taken by [`Dispatcher::run`].
    settle_rx: mpsc::UnboundedReceiver<Settlement>,
    /// Receiving end of the attempt outcomes.
    health_rx: mpsc::UnboundedReceiver<health::Report>,
    /// Automatic deactivation thresholds.
    thresholds: health::Thresholds,
    /// Free in-flight slots of this process.
    slots: Arc<Semaphore>,
    /// How long a claim stays invisible to other workers.
    lease: Duration,
    /// Longest sleep when nothing is due (other processes may enqueue).
    poll: Duration,
    /// Woken by local ingest after an enqueue.
    queued: Arc<Notify>,
}

impl Dispatcher {
    /// A dispatcher delivering to `endpoints` (which a reload may swap).
    pub fn new(
        config: &Config,
        backend: Backend,
        endpoints: Arc<ArcSwap<Endpoints>>,
        queued: Arc<Notify>,
        services: Services,
    ) -> Result<Dispatcher, Error> {
        let client = Client::new(&config.delivery)?;
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        Ok(Dispatcher {
            shared: Arc::new(Shared {
                queue: backend.queue,
                state: backend.state,
                client,
                endpoints,
                settle_tx,
                recorder: services.recorder,
                health_tx,
                alerts: services.alerts,
                catalog: services.catalog,
                metrics: services.metrics,
            }),
            settle_rx,
            health_rx,
            thresholds: health::Thresholds {
                failures: config.delivery.disable_after_failures,
                duration: config.delivery.disable_after,
            },
            slots: Arc::new(Semaphore::new(config.delivery.max_in_flight)),
            lease: config.queue.lease,
            poll: config.queue.poll_interval,
            queued,
        })
    }

    /// Claims and delivers until `shutdown` is cancelled, then lets the
    /// deliveries in flight finish and writes their settlements. Anything
    /// still unsettled falls due again when its lease runs out.
    pub async fn run(self, shutdown: CancellationToken) {
        let Dispatcher {
            shared,
            settle_rx,
            health_rx,
            thresholds,
            slots,
            lease,
            poll,
            queued,
        } = self;
        let settler = tokio::spawn(settle_loop(shared.queue.clone(), settle_rx));
        let health = tokio::spawn(health::health_loop(
            shared.state.clone(),
            shared.endpoints.clone(),
            shared.alerts.clone(),
            thresholds,
            health_rx,
        ));
        let states = tokio::spawn(health::state_loop(
            shared.queue.clone(),
            shared.state.clone(),
            shared.endpoints.clone(),
            queued.clone(),
            shutdown.clone(),
        ));
        let tasks = TaskTracker::new();
        let mut backoff = Duration::from_millis(100);
        // Subscriptions found at their in-flight cap, batch after batch,
        // with the delay their deferred deliveries wait.
        let mut saturated: HashMap<SubscriptionName, Duration> = HashMap::new();
        // Claims held per subscription while it is at its cap.
        let mut holds: HashMap<SubscriptionName, Hold> = HashMap::new();
        while !shutdown.is_cancelled() {
            // Settlement, health and state run beside the claim loop; one
            // that ended (a panic) ends the dispatcher, which its
            // supervisor makes again whole (`crate::supervise`).
            let ended = [("settle", &settler), ("health", &health), ("state", &states)]
                .into_iter()
                .find(|(_, task)| task.is_finished());
            if let Some((task, _)) = ended {
                error!(
                    task,
                    "a dispatcher task ended while the dispatcher runs: the dispatcher stops, to start again"
                );
                break;
            }
            // Wait for at least one free slot.
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let free = slots.available_permits() + 1;
            let claimed = match shared.queue.claim(now_ms(), lease, free.min(CLAIM_BATCH)).await {
                Ok(claimed) => {
                    backoff = Duration::from_millis(100);
                    claimed
                }
                Err(e) => {
                    error!(error = %e, retry_in = ?backoff, "cannot claim deliveries");
                    drop(first);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if claimed.claims.is_empty() {
                drop(first);
                let wait = claimed
                    .next_due
                    .map(|due| Duration::from_millis((due - now_ms()).clamp(0, i64::MAX) as u64))
                    .unwrap_or(poll)
                    .min(poll);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = queued.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let mut permits = Some(first);
            // Deferred deliveries of one batch share a due time; equal due
            // times are claimed in id (creation) order, so a subscription's
            // deliveries keep their order however often its cap sends them back.
            let defer_due = now_ms() + DEFER_DELAY.as_millis() as Millis;
            let endpoints = shared.endpoints.load();
            // Subscriptions with a delivery deferred in this batch: their
            // later ones are deferred too, even if a slot frees meanwhile,
            // so none overtakes an earlier one.
            let mut held: HashSet<SubscriptionName> = HashSet::new();
            // Which subscriptions this batch found at their cap, and which
            // had room for at least one.
            let (mut capped, mut roomy) = (HashSet::new(), HashSet::new());
            // The batch in claim order: each delivery with its slot and its
            // subscription's permit, or None to be deferred; and how many
            // of each rate-limited subscription's are ready to go.
            let mut batch = Vec::new();
            let mut wanted: HashMap<SubscriptionName, (RateLimit, u32)> = HashMap::new();
            for claim in claimed.claims {
                let slot = match permits.take() {
                    Some(p) => p,
                    // The loop is the only claimer of slots: these are free.
                    None => match slots.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            held.insert(claim.delivery.subscription.clone());
                            batch.push((claim, None));
                            continue;
                        }
                    },
                };
                if held.contains(&claim.delivery.subscription) {
                    batch.push((claim, None));
                    continue;
                }
                let endpoint = endpoints.map.get(&claim.delivery.subscription).cloned();
                // The subscription's own cap, taken here in claim order:
                // while it is full, or claims already wait for it, the
                // claim is held here (without its slot) if there is room,
                // deferred to the queue if not.
                let permit = match &endpoint {
                    Some(e) if !e.disabled.is_disabled() => {
                        let hold = holds.entry(e.name.clone()).or_insert_with(|| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            let waiting = Arc::new(AtomicU64::new(0));
                            tasks.spawn(run_hold(
                                shared.clone(),
                                rx,
                                waiting.clone(),
                                slots.clone(),
                                tasks.clone(),
                                shutdown.clone(),
                            ));
                            Hold { tx, waiting }
                        });
                        let queued = hold.waiting.load(Ordering::Relaxed);
                        let got = if queued == 0 {
                            e.permits.clone().try_acquire_owned().ok()
                        } else {
                            None
                        };
                        match got {
                            Some(p) => {
                                roomy.insert(claim.delivery.subscription.clone());
                                Some(p)
                            }
                            None => {
                                let room = (e.cap * HOLD_PER_SLOT).min(HOLD_MAX) as u64;
                                if e.rate_limit.is_none() && queued < room {
                                    let patience = lease.saturating_sub(e.timeout) / 2;
                                    let deadline = tokio::time::Instant::now() + patience;
                                    hold.waiting.fetch_add(1, Ordering::Relaxed);
                                    drop(slot);
                                    if let Err(mpsc::error::SendError((claim, _, _))) =
                                        hold.tx.send((claim, e.clone(), deadline))
                                    {
                                        hold.waiting.fetch_sub(1, Ordering::Relaxed);
                                        defer(&shared, &claim, defer_due);
                                    }
                                    continue;
                                }
                                held.insert(claim.delivery.subscription.clone());
                                capped.insert(claim.delivery.subscription.clone());
                                batch.push((claim, None));
                                continue;
                            }
                        }
                    }
                    _ => None,
                };
                if let (Some(limit), Some(_)) = (endpoint.as_ref().and_then(|e| e.rate_limit), &permit) {
                    wanted
                        .entry(claim.delivery.subscription.clone())
                        .or_insert((limit, 0))
                        .1 += 1;
                }
                batch.push((claim, Some((endpoint, permit, slot))));
            }
            saturated.retain(|name, _| capped.contains(name) || !roomy.contains(name));
            for name in capped {
                let delay = saturated_delay(saturated.get(&name).copied());
                saturated.insert(name, delay);
            }
            // The rate limits: one bucket per subscription in the queue
            // backend, shared by every process. Deliveries beyond the
            // tokens granted wait for theirs, given back unattempted (so
            // waiting never costs a retry), one interval apart, in order.
            let now = now_ms();
            let grants = futures_util::future::join_all(wanted.into_iter().map(|(name, (limit, want))| {
                let state = shared.state.clone();
                async move {
                    let tokens = state.take_tokens(&name, &limit, want, now).await;
                    (name, limit, tokens)
                }
            }))
            .await;
            let mut grants: HashMap<SubscriptionName, (RateLimit, rate::Tokens)> = grants
                .into_iter()
                .map(|(name, limit, tokens)| {
                    let tokens = tokens.unwrap_or_else(|e| {
                        error!(subscription = %name, error = %e, "cannot take rate-limit tokens: deliveries wait");
                        rate::Tokens {
                            granted: 0,
                            next_at: Some(defer_due),
                        }
                    });
                    (name, (limit, tokens))
                })
                .collect();
            for (claim, go) in batch {
                let grant = grants.get_mut(&claim.delivery.subscription);
                let (endpoint, permit, slot) = match (go, grant) {
                    (Some(go), Some((_, tokens))) if tokens.granted > 0 => {
                        tokens.granted -= 1;
                        go
                    }
                    (Some(go), None) => go,
                    // Waiting for a token, after those waiting before it.
                    (_, Some((limit, tokens))) => {
                        let due = tokens.next_at.unwrap_or(defer_due).max(now + 1);
                        tokens.next_at = Some(due + rate::interval_ms(limit));
                        defer(&shared, &claim, due);
                        continue;
                    }
                    (None, None) => {
                        let due = match saturated.get(&claim.delivery.subscription) {
                            Some(delay) => now + delay.as_millis() as Millis,
                            None => defer_due,
                        };
                        defer(&shared, &claim, due);
                        continue;
                    }
                };
                let shared = shared.clone();
                tasks.spawn(async move {
                    attempt(&shared, claim, endpoint).await;
                    drop(permit);
                    drop(slot);
                });
            }
        }
        info!(
            in_flight = tasks.len(),
            "dispatcher stopping: draining deliveries in flight"
        );
        // Held claims go back to the queue; their runners end with this.
        drop(holds);
        tasks.close();
        tasks.wait().await;
        drop(shared);
        for (name, task) in [("settle", settler), ("health", health), ("state", states)] {
            if let Err(e) = task.await {
                error!(error = %e, task = name, "dispatcher task failed");
            }
        }
        info!("dispatcher stopped");
    }
}

/// Gives a claim back unattempted, due at `due`.
fn defer(shared: &Shared, claim: &Claim, due: Millis) {
    let _ = shared.settle_tx.send(Settlement::Defer {
        id: claim.delivery.id.clone(),
        lease: claim.lease,
        due,
    });
}

/// One attempt of one delivery to `endpoint` (its subscription, holding a
/// slot of its in-flight cap unless disabled), ending in exactly one
/// settlement.
async fn attempt(shared: &Shared, claim: Claim, endpoint: Option<Arc<Endpoint>>) {
    let Claim { mut delivery, lease } = claim;
    let Some(endpoint) = endpoint else {
        let snapshot = shared.catalog.snapshot();
        if snapshot.is_deleted(&delivery.subscription) {
            info!(delivery_id = %delivery.id, subscription = %delivery.subscription,
                "subscription deleted: delivery cancelled");
            shared
                .metrics
                .subscription(delivery.subscription.as_str())
                .delivery(DeliveryOutcome::Cancelled);
            shared.log_state(&delivery, DeliveryState::Cancelled, Some("subscription deleted".into()));
            let _ = shared.settle_tx.send(Settlement::Ack { id: delivery.id, lease });
            return;
        }
        let stored = delivery.subscription.as_str().starts_with(STORED_ID_PREFIX);
        if stored && now_ms() - delivery.created_at < UNKNOWN_PATIENCE.as_millis() as Millis {
            // Made through another process a moment ago: learn of it, and
            // try again in a while.
            debug!(delivery_id = %delivery.id, subscription = %delivery.subscription,
                "subscription not known here yet: catalogue refreshed, delivery deferred");
            let catalog = shared.catalog.clone();
            tokio::spawn(async move {
                let _ = catalog.refresh().await;
            });
            let _ = shared.settle_tx.send(Settlement::Defer {
                id: delivery.id,
                lease,
                due: now_ms() + UNKNOWN_RETRY.as_millis() as Millis,
            });
            return;
        }
        warn!(delivery_id = %delivery.id, subscription = %delivery.subscription,
            "subscription is no longer configured: delivery kept as dead");
        delivery.last_error = Some(format!("subscription `{}` is not configured", delivery.subscription));
        shared.log_state(&delivery, DeliveryState::Dead, delivery.last_error.clone());
        let _ = shared.settle_tx.send(Settlement::Dead { delivery, lease });
        return;
    };
    if endpoint.disabled.is_disabled() {
        endpoint.metrics.delivery(DeliveryOutcome::Parked);
        shared.log_state(&delivery, DeliveryState::Parked, Some("subscription disabled".into()));
        let _ = shared.settle_tx.send(Settlement::Park { id: delivery.id, lease });
        return;
    }

    if let (Some(plugin), None) = (&endpoint.plugin, &delivery.headers) {
        match transform(plugin, &endpoint, &mut delivery).await {
            Ok(None) => endpoint.metrics.plugin_call(PluginResult::Deliver),
            Ok(Some(reason)) => {
                endpoint.metrics.plugin_call(PluginResult::Drop);
                endpoint.metrics.delivery(DeliveryOutcome::Filtered);
                shared.log_state(
                    &delivery,
                    DeliveryState::Filtered,
                    Some(format!("dropped by plugin: {reason}")),
                );
                let _ = shared.settle_tx.send(Settlement::Ack { id: delivery.id, lease });
                return;
            }
            Err(e) if e.is_transient() => {
                // Out of time or of slots: nothing about the event, so it
                // is tried again later, one attempt spent (a plugin that is
                // always too slow still ends in the dead letters). The
                // endpoint was not called: its health is untouched.
                endpoint.metrics.plugin_call(PluginResult::Error);
                endpoint.metrics.plugin_error(e.kind());
                let error = format!("plugin_error: {e}");
                let retry = endpoint.retry.next(delivery.attempts + 1, None, &mut rand::rng());
                let state = if retry.is_some() {
                    DeliveryState::Retrying
                } else {
                    DeliveryState::Dead
                };
                shared.log_state(&delivery, state, Some(error.clone()));
                delivery.attempts += 1;
                delivery.last_error = Some(error);
                let settlement = match retry {
                    Some(delay) => {
                        endpoint.metrics.delivery(DeliveryOutcome::Retry);
                        info!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                            attempt = delivery.attempts, error = %crate::telemetry::escape(&e.to_string()),
                            retry_in = ?delay, "plugin did not finish: will retry");
                        Settlement::Retry {
                            delivery,
                            lease,
                            due: now_ms() + delay.as_millis() as Millis,
                        }
                    }
                    None => {
                        endpoint.metrics.delivery(DeliveryOutcome::Dead);
                        warn!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                            attempt = delivery.attempts, error = %crate::telemetry::escape(&e.to_string()),
                            "plugin did not finish and retries are exhausted: delivery is dead");
                        shared.alerts.raise(Notification::dead(&delivery, chrono::Utc::now()));
                        Settlement::Dead { delivery, lease }
                    }
                };
                let _ = shared.settle_tx.send(settlement);
                return;
            }
            Err(e) => {
                endpoint.metrics.plugin_call(PluginResult::Error);
                endpoint.metrics.plugin_error(e.kind());
                endpoint.metrics.delivery(DeliveryOutcome::Dead);
                warn!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                    error = %crate::telemetry::escape(&e.to_string()), "plugin failed: delivery is dead (replay it once the plugin is fixed)");
                delivery.last_error = Some(format!("plugin_error: {e}"));
                shared.log_state(&delivery, DeliveryState::Dead, delivery.last_error.clone());
                shared.alerts.raise(Notification::dead(&delivery, chrono::Utc::now()));
                let _ = shared.settle_tx.send(Settlement::Dead { delivery, lease });
                return;
            }
        }
    }

    let started = chrono::Utc::now();
    let request = endpoint.request(&delivery, started.timestamp());
    let request_headers = history::redact_headers(&request.headers, &[])
        .into_iter()
        .map(|(n, v)| {
            let keep = headers::LOGGED_REQUEST.contains(&n.as_str());
            (n, if keep { v } else { headers::REDACTED.into() })
        })
        .collect();
    let result = shared.client.send(request).await;
    let elapsed = (chrono::Utc::now() - started).to_std().unwrap_or_default();
    endpoint.metrics.attempt(elapsed);
    delivery.attempts += 1;
    let attempted = match &result {
        Ok(response) => Attempted::Answered {
            status: response.status.as_u16(),
            retry_after: response
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        },
        Err(failure) => Attempted::Failed {
            retryable: failure.is_retryable(),
        },
    };
    let outcome = classify(attempted, chrono::Utc::now());
    let error = match &result {
        Ok(response) if outcome != Outcome::Delivered => Some(format!("endpoint answered {}", response.status)),
        Ok(_) => None,
        Err(failure) => Some(format!("{}: {failure}", failure.kind())),
    };
    let status = result.as_ref().ok().map(|r| r.status.as_u16());
    let elapsed_ms = elapsed.as_millis() as u64;
    let now = now_ms();
    if let Some(report) = health::report_of(&delivery.subscription, outcome, status, now) {
        let _ = shared.health_tx.send(report);
    }
    let mut record = AttemptRecord {
        delivery_id: delivery.id.clone(),
        event_id: delivery.event_id.clone(),
        event_type: delivery.event_type.clone(),
        subscription: delivery.subscription.clone(),
        attempt: delivery.attempts,
        started_at: started.timestamp_millis(),
        duration_ms: elapsed_ms,
        request_headers,
        status,
        response_headers: Vec::new(),
        response_body: String::new(),
        error_kind: None,
        error: error.clone(),
        next_attempt_at: None,
        tenant: delivery.tenant.clone(),
    };
    match &result {
        Ok(response) => {
            record.response_headers = history::redact_headers(&response.headers, &[]);
            history::cap_headers(&mut record.response_headers);
            record.response_body = history::body_text(&response.body);
            if outcome != Outcome::Delivered {
                record.error_kind = Some(ErrorKind::Status);
            }
        }
        Err(failure) => record.error_kind = Some(ErrorKind::of(failure)),
    }
    let (settlement, state) = match outcome {
        Outcome::Delivered => {
            endpoint.metrics.delivery(DeliveryOutcome::Delivered);
            debug!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                attempt = delivery.attempts, status, elapsed_ms, "delivered");
            (
                Settlement::Ack {
                    id: delivery.id.clone(),
                    lease,
                },
                DeliveryState::Delivered,
            )
        }
        Outcome::Retry { not_before } => {
            delivery.last_error = error;
            match endpoint.retry.next(delivery.attempts, not_before, &mut rand::rng()) {
                Some(delay) => {
                    endpoint.metrics.delivery(DeliveryOutcome::Retry);
                    info!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                        attempt = delivery.attempts, status, elapsed_ms, error = delivery.last_error.as_deref(),
                        retry_in = ?delay, "attempt failed, will retry");
                    let due = now + delay.as_millis() as Millis;
                    record.next_attempt_at = Some(due);
                    (
                        Settlement::Retry {
                            delivery: delivery.clone(),
                            lease,
                            due,
                        },
                        DeliveryState::Retrying,
                    )
                }
                None => {
                    endpoint.metrics.delivery(DeliveryOutcome::Dead);
                    warn!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                        attempt = delivery.attempts, status, error = delivery.last_error.as_deref(),
                        "retries exhausted: delivery is dead");
                    shared.alerts.raise(Notification::dead(&delivery, chrono::Utc::now()));
                    (
                        Settlement::Dead {
                            delivery: delivery.clone(),
                            lease,
                        },
                        DeliveryState::Dead,
                    )
                }
            }
        }
        Outcome::Gone => {
            endpoint.metrics.delivery(DeliveryOutcome::Gone);
            endpoint.disabled.set(true);
            warn!(subscription = %endpoint.name, event_id = %delivery.event_id, delivery_id = %delivery.id,
                "endpoint answered 410 Gone: subscription disabled, nothing more is sent to it");
            delivery.last_error = Some("endpoint answered 410 Gone; subscription disabled".into());
            shared.alerts.raise(Notification::dead(&delivery, chrono::Utc::now()));
            (
                Settlement::Dead {
                    delivery: delivery.clone(),
                    lease,
                },
                DeliveryState::Dead,
            )
        }
        Outcome::Refused => {
            endpoint.metrics.delivery(DeliveryOutcome::Refused);
            warn!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                error = error.as_deref(), "attempt refused permanently: delivery is dead");
            delivery.last_error = error;
            shared.alerts.raise(Notification::dead(&delivery, chrono::Utc::now()));
            (
                Settlement::Dead {
                    delivery: delivery.clone(),
                    lease,
                },
                DeliveryState::Dead,
            )
        }
    };
    shared.log(Entry::Attempted { attempt: record, state });
    let _ = shared.settle_tx.send(settlement);
}

impl Shared {
    /// Hands an entry to the history's writer; it is dropped, with a
    /// warning, if the writer's backlog is full.
    fn log(&self, entry: Entry) {
        self.recorder.record(entry);
    }

    /// Logs a delivery that moved without an attempt (filtered, parked, dead).
    fn log_state(&self, delivery: &Delivery, state: DeliveryState, note: Option<String>) {
        // A delivery enters the log at its first attempt; one that never had
        // an attempt needs its summary first.
        if delivery.attempts == 0 {
            self.log(Entry::Created(DeliverySummary::created(delivery)));
        }
        self.log(Entry::State {
            id: delivery.id.clone(),
            state,
            at: now_ms(),
            note,
        });
    }
}

/// Runs the subscription's plugin on a delivery's first attempt. `None`:
/// send it (its body and header changes now kept in the delivery); `Some(reason)`:
/// the plugin dropped it (filtered).
async fn transform(
    plugin: &Plugin,
    endpoint: &Endpoint,
    delivery: &mut Delivery,
) -> Result<Option<String>, plugin::Error> {
    let input = plugin::Input::for_delivery(delivery, &endpoint.header_pairs());
    match plugin.transform(input).await? {
        Verdict::Deliver {
            body,
            set_headers,
            remove_headers,
        } => {
            if let Some(body) = body {
                delivery.body = body;
            }
            // Only the plugin's own changes are kept: the configured
            // values (credentials, perhaps) are taken fresh at each attempt.
            delivery.headers = Some(PluginHeaders::Patch {
                set: set_headers,
                remove: remove_headers,
            });
            Ok(None)
        }
        Verdict::Drop { reason } => {
            info!(event_id = %delivery.event_id, delivery_id = %delivery.id, subscription = %endpoint.name,
                reason = %reason, "plugin dropped the delivery: filtered");
            Ok(Some(reason))
        }
    }
}

/// Writes settlements in batches until every sender is gone.
async fn settle_loop(queue: Arc<dyn Queue>, mut rx: mpsc::UnboundedReceiver<Settlement>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let mut wait = Duration::from_millis(50);
        // A settlement that cannot be written is not lost: the lease runs
        // out and the delivery is attempted again (at least once). Keep
        // trying a while so that a short Redis blip causes no duplicates.
        for _ in 0..8 {
            match queue.settle(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %e, count = batch.len(), retry_in = ?wait, "cannot write settlements");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_hookd_sets_is_protected() {
        let config = Config::from_toml(&format!(
            "[[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/in\"\nevents = [\"*\"]\nsecrets = [\"{}\"]\nheaders = {{ \"x-team\" = \"a\" }}\n",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        ))
        .unwrap();
        let endpoint = Endpoint::new(
            &config,
            &config.subscriptions[0],
            &LoadedPlugins::default(),
            &Metrics::new(),
            None,
        )
        .unwrap();
        let delivery = Delivery::new(
            0,
            crate::model::EventId::parse("evt_1").unwrap(),
            "a.b".into(),
            None,
            config.subscriptions[0].name.clone(),
            bytes::Bytes::from_static(b"{}"),
            0,
        );
        let request = endpoint.request(&delivery, 1);
        for name in request.headers.keys() {
            assert!(
                name == "x-team" || headers::is_protected(name.as_str()),
                "hookd sets `{name}`, which a custom header could override"
            );
        }
    }

    #[test]
    fn a_full_subscription_waits_longer_each_batch_up_to_a_second() {
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            delay = Some(saturated_delay(delay));
            seen.push(delay.unwrap().as_millis());
        }
        assert_eq!(seen, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(saturated_delay(None), DEFER_DELAY);
        assert_eq!(saturated_delay(Some(Duration::from_secs(9))), DEFER_DELAY_MAX);
    }

    #[test]
    fn a_mirror_never_undoes_a_newer_local_change() {
        let switch = Switch::new(true);
        // The state task reads the backend ("disabled") while an operator
        // enables the subscription here.
        let before = switch.snapshot();
        switch.set(false);
        assert!(!switch.mirror(before, true), "the stale read is dropped");
        assert!(!switch.is_disabled());
        // The next round reads the backend after the change, and agrees.
        let before = switch.snapshot();
        assert!(switch.mirror(before, false));
        assert!(!switch.is_disabled());
        // A change made elsewhere (another process) is mirrored.
        let before = switch.snapshot();
        assert!(switch.mirror(before, true));
        assert!(switch.is_disabled());
    }
}
