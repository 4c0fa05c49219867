//! Plugins: WebAssembly components that drop or reshape a delivery before
//! it is signed.
//!
//! This module is the only one that knows wasmtime. The rest of hookd sees
//! [`Plugins`] (one per process: the engine), [`Plugin`] (one per
//! subscription that has `[subscriptions.plugin]`), [`Input`] in and
//! [`Verdict`] out, and [`Error`]. The contract with plugins is the WIT
//! world in `wit/plugin.wit` (`hookd:plugin/transformer@0.1.0`); examples
//! and an SDK live in `plugins/`.
//!
//! ## How a call runs
//!
//! [`Plugins::load`] reads the component, compiles it once (or maps the
//! artifact cached on disk, see `cache.rs`), links it and keeps an
//! `InstancePre`; async code calls [`Plugins::load_async`], which does so
//! on tokio's blocking pool, so a compile (seconds, cold) never holds a
//! runtime worker. [`Plugin::transform`] takes a warm instance (a `Store` and
//! its instance) from the plugin's small pool, or instantiates one, calls
//! the guest's `transform`, checks the verdict (`output.rs`), and puts the
//! instance back. An instance that trapped, ran out of time or memory is
//! thrown away: the next call gets a fresh one. With `fresh_instance` every
//! call gets a fresh one (instantiation from the pooling allocator with
//! copy-on-write memory images is cheap, but not free).
//!
//! ## Decisions
//!
//! - **Async, not a blocking pool.** Guest code runs on a wasmtime fiber
//!   inside the caller's tokio task (`call_async`). Every epoch tick (1 ms,
//!   see `ticker.rs`) a running guest yields to the tokio scheduler, so no
//!   guest ever holds a worker thread for more than about a tick, and a
//!   warm call costs a fiber switch rather than a hop to another thread.
//! - **The deadline is wall time, for the call itself**: instantiation,
//!   the guest's run and whatever it blocks on in WASI (a sleep, a `poll`)
//!   together, by a `tokio::time::timeout` around the call. The wait for
//!   an instance slot before it is bounded on its own
//!   (`plugins.queue_timeout`, [`Error::Busy`]), so calls queued behind
//!   another tenant's slow plugin do not spend their own deadline waiting.
//!   Both are transient ([`Error::is_transient`]): the delivery is retried
//!   with its backoff, while a trap, a memory overrun, the plugin's own
//!   error or an invalid verdict kill it, with the reason. Past the
//!   deadline the call's future is dropped, which stops
//!   the guest and discards its instance (never kept warm), frees its slot,
//!   and fails the delivery with [`Error::Deadline`], well within its lease
//!   (at most 10 s against a lease of a minute) and without holding up a
//!   shutdown. Epoch ticks are what make a running guest yield so that the
//!   timeout can fire; they also count the ticks a call ran and interrupt
//!   it when they run out, which a busy hookd may reach after the wall
//!   deadline, never before.
//! - **Memory**: a `ResourceLimiter` on each store keeps the instance's
//!   total over all its linear memories (a component may have several)
//!   and refuses growth past the plugin's cap by trapping (so the failure
//!   is reported as a memory error, not as the allocator abort it would
//!   otherwise turn into); tables are bounded in total likewise. The
//!   pooling allocator bounds every slot at `plugins.memory_limit`. Idle
//!   warm instances keep what they grew, so what they hold together is
//!   bounded by `plugins.warm_memory`: an instance that would go past it
//!   is dropped after its call instead of kept.
//! - **Concurrency**: at most `plugins.max_instances` instances exist; half
//!   may sit idle as warm instances (`plugins.warm_instances` per plugin),
//!   and calls beyond the other half wait for a slot.
//! - **WASI, denied.** Rust's `wasm32-wasip2` standard library makes every
//!   component import a handful of WASI 0.2 interfaces (environment, exit,
//!   stdio, clocks, random, even filesystem preopens), and components from
//!   other languages import more. Rather than make plugin authors fight
//!   their toolchains, hookd links wasmtime-wasi with an empty context: no
//!   preopened directories (so no files), no environment variables or
//!   arguments, every socket address and name lookup refused, stdin empty.
//!   Stdout and stderr are captured (bounded) and surface in hookd's log, or
//!   in the trap message when a plugin panics. Clocks are *frozen at the
//!   Unix epoch*: plugins get no time source (the event carries its time),
//!   which keeps them deterministic and takes away timing side channels.
//!   WASI's timers (`subscribe-duration`, `subscribe-instant`, what a
//!   guest's sleep blocks on) still wait in real time, so a guest can block
//!   without running: the wall-clock deadline is what bounds that.
//!   Randomness is left as WASI provides it: hash maps need seeds, and
//!   random bytes grant no access to anything.
//! - **Logging** (`log` import) goes to `tracing` under the target
//!   `hookd::plugin::guest`, tagged with the subscription and the event id,
//!   at most `plugins.log_rate` messages per second per plugin.

mod cache;
mod host;
mod output;
mod run;
mod ticker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

pub use run::{run_once, RunReport};

use crate::config::{ByteSize, PluginConfig, PluginsConfig};
use crate::model::Delivery;
use host::bindings::hookd::plugin::types as wit;
use host::bindings::{Transformer, TransformerPre};
use host::{HostState, LogSink, RateLimit};
use ticker::{Ticker, TICK};

/// Why a plugin could not be loaded or did not produce a usable verdict.
///
/// `plugin` is the subscription the plugin serves. Every variant but
/// [`Error::Engine`], [`Error::Load`] and [`Error::Event`] fails one
/// delivery; those three are start-up (or CLI) problems.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin engine could not start.
    #[error("cannot start the plugin engine: {reason}")]
    Engine {
        /// What failed.
        reason: String,
    },
    /// The plugin file is missing, not a component, or not of hookd's world.
    #[error("cannot load the plugin of subscription `{plugin}`: {reason}")]
    Load {
        /// The subscription.
        plugin: String,
        /// What is wrong and what to do about it.
        reason: String,
    },
    /// The call ran longer than its deadline and was stopped.
    #[error(
        "plugin of subscription `{plugin}`: deadline exceeded after {} ms; make the plugin faster or raise its `deadline`",
        limit.as_millis()
    )]
    Deadline {
        /// The subscription.
        plugin: String,
        /// The deadline that was exceeded.
        limit: Duration,
    },
    /// No instance slot came free within `plugins.queue_timeout`: every
    /// slot is busy with other calls. The call never started.
    #[error(
        "plugin of subscription `{plugin}`: no instance slot came free within {} ms (plugins.queue_timeout); \
         other calls held them all", waited.as_millis()
    )]
    Busy {
        /// The subscription.
        plugin: String,
        /// `plugins.queue_timeout`.
        waited: Duration,
    },
    /// The plugin tried to grow its memory past its cap.
    #[error(
        "plugin of subscription `{plugin}`: memory limit of {} exceeded; fix the plugin or raise its `memory_limit`",
        ByteSize(*limit)
    )]
    Memory {
        /// The subscription.
        plugin: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// The plugin trapped (a Rust plugin's panic ends up here).
    #[error("plugin of subscription `{plugin}` crashed: {message}")]
    Trap {
        /// The subscription.
        plugin: String,
        /// The trap, and what the plugin wrote to stderr (a panic message).
        message: String,
    },
    /// The plugin returned its own error.
    #[error("plugin of subscription `{plugin}` failed: {message}")]
    Guest {
        /// The subscription.
        plugin: String,
        /// The plugin's message (at most 1 KiB, one line).
        message: String,
    },
    /// The plugin's patch touched a header hookd owns.
    #[error("plugin of subscription `{plugin}` tried to change header `{header}`, which hookd sets; patches may not touch it")]
    ProtectedHeader {
        /// The subscription.
        plugin: String,
        /// The header, lowercased.
        header: String,
    },
    /// The plugin's verdict is malformed (invalid header, body too large).
    #[error("plugin of subscription `{plugin}` returned an invalid patch: {problem}")]
    BadOutput {
        /// The subscription.
        plugin: String,
        /// What is wrong.
        problem: String,
    },
    /// `run_once` was given an event that hookd would refuse.
    #[error("invalid event: {reason}")]
    Event {
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// A short name of the kind of failure, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Engine { .. } => "engine",
            Error::Load { .. } => "load",
            Error::Deadline { .. } => "deadline",
            Error::Busy { .. } => "busy",
            Error::Memory { .. } => "memory",
            Error::Trap { .. } => "trap",
            Error::Guest { .. } => "guest",
            Error::ProtectedHeader { .. } => "protected_header",
            Error::BadOutput { .. } => "bad_output",
            Error::Event { .. } => "event",
        }
    }
}

impl Error {
    /// A failure that says nothing about the event (the call ran out of
    /// time, or never found a slot): the delivery is retried with its
    /// backoff. Every other failure would repeat on the same event, so it
    /// kills the delivery.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Deadline { .. } | Error::Busy { .. })
    }
}

/// What a plugin is given: one event about to be delivered. Built by
/// [`Input::for_delivery`] only, for the dispatcher and `hookd plugin run`
/// alike, so a run shows what a delivery would get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The event id (sent as `webhook-id`).
    pub event_id: String,
    /// The dotted event type.
    pub event_type: String,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The exact body hookd is about to send.
    pub body: Bytes,
    /// The headers hookd is about to send, before signing.
    pub headers: Vec<(String, String)>,
}

impl Input {
    /// What the plugin of `delivery`'s subscription is given on its first
    /// attempt, the subscription having the custom `headers`: the body as
    /// it stands, the time the event happened (the `timestamp` of its
    /// envelope, as the WIT contract says; when hookd accepted it if the
    /// body has none) and the headers hookd would send before signing
    /// (`content-type`, then the custom ones).
    pub fn for_delivery(delivery: &Delivery, headers: &[(String, String)]) -> Input {
        let mut sent = vec![(CONTENT_TYPE.to_owned(), JSON.to_owned())];
        // hookd sets the content type itself, whatever is configured.
        sent.extend(
            headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case(CONTENT_TYPE))
                .cloned(),
        );
        Input {
            event_id: delivery.event_id.to_string(),
            event_type: delivery.event_type.clone(),
            timestamp: occurred_at(&delivery.body).unwrap_or(delivery.created_at),
            body: delivery.body.clone(),
            headers: sent,
        }
    }
}

/// The header every delivery carries, as a plugin sees it.
const CONTENT_TYPE: &str = "content-type";
/// Its value.
const JSON: &str = "application/json";

/// The `timestamp` of a Standard Webhooks envelope, in milliseconds.
fn occurred_at(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        timestamp: Option<std::borrow::Cow<'a, str>>,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(&envelope.timestamp?).ok()?;
    Some(at.timestamp_millis())
}

/// What a plugin decided, checked: header names are valid, lowercase and not
/// protected; values are valid; the body is within `plugins.max_body_bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Do not deliver.
    Drop {
        /// Why, in the plugin's words (at most 1 KiB, one line).
        reason: String,
    },
    /// Deliver, patched.
    Deliver {
        /// The new body; `None` keeps the original.
        body: Option<Bytes>,
        /// Headers to set, replacing same-named ones (lowercase names).
        set_headers: Vec<(String, String)>,
        /// Headers to remove (lowercase names).
        remove_headers: Vec<String>,
    },
}

impl Verdict {
    /// Applies the verdict to a request: `None` if dropped, else the body
    /// and headers to send. Removals apply before sets.
    pub fn apply(&self, body: &Bytes, headers: &[(String, String)]) -> Option<(Bytes, Vec<(String, String)>)> {
        let Verdict::Deliver {
            body: new_body,
            set_headers,
            remove_headers,
        } = self
        else {
            return None;
        };
        let touched = |name: &str| {
            remove_headers.iter().any(|r| r.eq_ignore_ascii_case(name))
                || set_headers.iter().any(|(s, _)| s.eq_ignore_ascii_case(name))
        };
        let mut out: Vec<(String, String)> = headers.iter().filter(|(n, _)| !touched(n)).cloned().collect();
        for (name, value) in set_headers {
            out.retain(|(n, _)| n != name);
            out.push((name.clone(), value.clone()));
        }
        Some((new_body.clone().unwrap_or_else(|| body.clone()), out))
    }
}

/// How a loaded plugin came to be, for logs and `hookd plugin run`.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    /// The subscription it serves.
    pub subscription: String,
    /// The component file.
    pub path: PathBuf,
    /// Hex SHA-256 of the component file.
    pub digest: String,
    /// The compiled artifact in the cache, if the cache is usable.
    pub artifact: Option<PathBuf>,
    /// Whether the artifact was loaded from the cache instead of compiled.
    pub from_cache: bool,
    /// Time spent compiling or loading the artifact.
    pub load_time: Duration,
    /// The effective per-call deadline.
    pub deadline: Duration,
    /// The effective memory cap, in bytes.
    pub memory_limit: u64,
    /// Whether every call gets a fresh instance.
    pub fresh_instance: bool,
}

/// The plugin engine: one per process, shared by every [`Plugin`].
pub struct Plugins {
    /// Shared with each plugin, so the engine outlives them all.
    shared: Arc<Shared>,
}

/// What every plugin of a process shares.
struct Shared {
    /// The wasmtime engine: compiler, pooling allocator, epoch.
    engine: Engine,
    /// The imports every plugin gets: `hookd:plugin/log` and denied WASI.
    linker: Linker<HostState>,
    /// The `[plugins]` settings.
    settings: PluginsConfig,
    /// Slots for calls in flight (instances not sitting idle).
    calls: Semaphore,
    /// Idle warm instances over all plugins.
    idle_total: AtomicUsize,
    /// The most idle warm instances kept over all plugins.
    idle_cap: usize,
    /// Bytes of linear memory idle warm instances hold, over all plugins.
    idle_memory: AtomicU64,
    /// The most bytes they may hold (`plugins.warm_memory`).
    warm_memory: u64,
    /// Advances the epoch while guest code runs; stops when this is dropped.
    ticker: Ticker,
}

/// A loaded plugin, ready to transform events; cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    /// Shared by the clones.
    inner: Arc<PluginInner>,
}

struct PluginInner {
    /// The engine and its limits.
    shared: Arc<Shared>,
    /// The linked component, ready to instantiate.
    pre: TransformerPre<HostState>,
    /// Where it came from and its effective settings.
    info: PluginInfo,
    /// The subscription, for errors and log lines.
    name: Arc<str>,
    /// The subscription's plugin config, sorted by key.
    config: Vec<(String, String)>,
    /// The deadline in epoch ticks.
    tick_budget: u64,
    /// Log messages allowed, shared by the plugin's instances.
    log_rate: Arc<RateLimit>,
    /// Idle warm instances.
    idle: Mutex<Vec<Warm>>,
}

/// An instance and its store, between calls.
struct Warm {
    /// The store: memory, limits, WASI context.
    store: Store<HostState>,
    /// The instance's exports.
    instance: Transformer,
    /// Bytes of linear memory it held when put back idle (counted in
    /// `Shared::idle_memory` while it sits there).
    memory: u64,
}

impl Plugins {
    /// Starts the engine: compiler, pooling allocator sized from `settings`,
    /// the linker, and the epoch ticker thread.
    pub fn new(settings: &PluginsConfig) -> Result<Plugins, Error> {
        let engine_err = |what: &str, e: &dyn std::fmt::Display| Error::Engine {
            reason: format!("{what}: {e}"),
        };
        let max_instances = settings.max_instances.max(1);
        let memory_limit = usize::try_from(settings.memory_limit.bytes()).unwrap_or(usize::MAX);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances.saturating_mul(8))
            .total_memories(max_instances)
            .total_tables(max_instances.saturating_mul(4))
            .total_stacks(max_instances)
            .max_memory_size(memory_limit);
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| engine_err("invalid engine configuration", &e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| engine_err("cannot link WASI", &e))?;
        Transformer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| engine_err("cannot link the log import", &e))?;
        let ticker = Ticker::start(engine.clone()).map_err(|e| engine_err("cannot start the epoch thread", &e))?;
        let idle_cap = (max_instances / 2) as usize;
        Ok(Plugins {
            shared: Arc::new(Shared {
                engine,
                linker,
                settings: settings.clone(),
                calls: Semaphore::new((max_instances as usize - idle_cap).max(1)),
                idle_total: AtomicUsize::new(0),
                idle_cap,
                idle_memory: AtomicU64::new(0),
                warm_memory: settings.warm_memory.bytes(),
                ticker,
            }),
        })
    }

    /// [`Plugins::load`] on tokio's blocking pool: compiling never holds a
    /// runtime worker, so the API and deliveries go on while it runs. What
    /// async code (start-up, reload, `hookd plugin run`) calls.
    pub async fn load_async(&self, subscription: &str, cfg: &PluginConfig) -> Result<Plugin, Error> {
        let plugins = Plugins {
            shared: self.shared.clone(),
        };
        let (name, cfg) = (subscription.to_owned(), cfg.clone());
        tokio::task::spawn_blocking(move || plugins.load(&name, &cfg))
            .await
            .unwrap_or_else(|e| {
                Err(Error::Load {
                    plugin: subscription.to_owned(),
                    reason: format!("compiling it failed: {e}"),
                })
            })
    }

    /// Loads the plugin of `subscription`: reads the component, compiles it
    /// (or loads it from `plugins.cache_dir`) and links it.
    ///
    /// Compiling blocks the thread (for up to seconds, for a large plugin
    /// not yet cached): async code calls [`Plugins::load_async`].
    pub fn load(&self, subscription: &str, cfg: &PluginConfig) -> Result<Plugin, Error> {
        let settings = &self.shared.settings;
        let path = &cfg.path;
        let shown = path.display();
        let load_err = |reason: String| Error::Load {
            plugin: subscription.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| load_err(format!("cannot read {shown}: {e}")))?;
        check_component(&bytes).map_err(|problem| load_err(format!("{shown} {problem}")))?;
        let compiled = cache::compile(&self.shared.engine, &bytes, &settings.cache_dir)
            .map_err(|e| load_err(format!("{shown} is not a valid component: {e}")))?;
        let pre = self.shared.linker.instantiate_pre(&compiled.component).map_err(|e| {
            load_err(format!(
                "{shown} imports something hookd does not provide (plugins may import hookd:plugin/log and WASI 0.2 only): {e:#}"
            ))
        })?;
        let pre = TransformerPre::new(pre).map_err(|e| {
            load_err(format!(
                "{shown} is not a hookd plugin: it must implement the world hookd:plugin/transformer@0.1.0 (export `transform`): {e:#}"
            ))
        })?;
        let memory_limit = cfg.memory_limit.unwrap_or(settings.memory_limit);
        if memory_limit > settings.memory_limit {
            return Err(load_err(format!(
                "memory_limit {memory_limit} is over plugins.memory_limit ({})",
                settings.memory_limit
            )));
        }
        let deadline = cfg.deadline.unwrap_or(settings.deadline);
        let info = PluginInfo {
            subscription: subscription.to_owned(),
            path: path.clone(),
            digest: compiled.digest,
            artifact: compiled.artifact,
            from_cache: compiled.from_cache,
            load_time: compiled.took,
            deadline,
            memory_limit: memory_limit.bytes(),
            fresh_instance: cfg.fresh_instance.unwrap_or(settings.fresh_instance),
        };
        tracing::info!(
            subscription,
            path = %shown,
            digest = %info.digest,
            from_cache = info.from_cache,
            load_ms = info.load_time.as_millis() as u64,
            "plugin loaded"
        );
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                shared: self.shared.clone(),
                pre,
                info,
                name: subscription.into(),
                config: cfg.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                tick_budget: ticks_for(deadline),
                log_rate: Arc::new(RateLimit::new(settings.log_rate)),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// Checks the header: a component, not a core module or something else.
fn check_component(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err("is not a WebAssembly file".into());
    }
    match bytes[6..8] {
        [1, 0] => Ok(()),
        [0, 0] => Err(
            "is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
                       (or wrap it with `wasm-tools component new`)"
                .into(),
        ),
        _ => Err("has an unknown WebAssembly layer".into()),
    }
}

/// The deadline in epoch ticks: the guest runs at least `deadline`, at most
/// one tick more.
fn ticks_for(deadline: Duration) -> u64 {
    let ticks = deadline.as_nanos().div_ceil(TICK.as_nanos());
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

impl Plugin {
    /// Runs the plugin on one event and returns its checked verdict.
    ///
    /// It first waits for an instance slot, at most `plugins.queue_timeout`
    /// ([`Error::Busy`] past it). The call itself (instantiation, the
    /// guest's run, whatever it waits for in WASI) is then bounded by the
    /// plugin's deadline in wall time: past it the call fails with
    /// [`Error::Deadline`] and its instance is discarded. The guest runs
    /// inside this future, yielding every tick; dropping the future stops
    /// it (and discards its instance).
    pub async fn transform(&self, input: Input) -> Result<Verdict, Error> {
        let inner = &*self.inner;
        let waited = inner.shared.settings.queue_timeout;
        // The semaphore is never closed, so this only waits.
        let Ok(_slot) = tokio::time::timeout(waited, inner.shared.calls.acquire()).await else {
            tracing::debug!(subscription = %inner.name, "no plugin instance slot within plugins.queue_timeout");
            return Err(Error::Busy {
                plugin: inner.name.to_string(),
                waited,
            });
        };
        match tokio::time::timeout(inner.info.deadline, inner.transform(input)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                // The call's future, its slot and its instance are dropped:
                // an instance stopped mid-call is never kept warm.
                tracing::debug!(subscription = %inner.name, "plugin call stopped at its deadline (wall time); instance discarded");
                Err(Error::Deadline {
                    plugin: inner.name.to_string(),
                    limit: inner.info.deadline,
                })
            }
        }
    }

    /// Where the plugin came from and its effective settings.
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }
}

impl PluginInner {
    /// [`Plugin::transform`] without its wall-clock bound, in a slot.
    async fn transform(&self, input: Input) -> Result<Verdict, Error> {
        let mut warm = match self.take_idle() {
            Some(warm) => warm,
            None => self.instantiate(&input.event_id).await?,
        };
        let result = self.call(&mut warm, input).await;
        match &result {
            Err(Error::Deadline { .. } | Error::Memory { .. } | Error::Trap { .. }) => {
                tracing::debug!(subscription = %self.name, "plugin instance discarded after a failure");
            }
            _ => self.put_back(warm),
        }
        result
    }

    fn take_idle(&self) -> Option<Warm> {
        let warm = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()?;
        self.shared.idle_total.fetch_sub(1, Ordering::AcqRel);
        self.shared.idle_memory.fetch_sub(warm.memory, Ordering::AcqRel);
        Some(warm)
    }

    /// Keeps `warm` for the next call, if there is room: a free idle
    /// place, and room for the memory it holds within
    /// `plugins.warm_memory`.
    fn put_back(&self, mut warm: Warm) {
        if self.info.fresh_instance {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= self.shared.settings.warm_instances {
            return;
        }
        let shared = &self.shared;
        let memory = warm.store.data().limits.memory_total() as u64;
        let memory_reserved = shared
            .idle_memory
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let total = held.checked_add(memory)?;
                (total <= shared.warm_memory).then_some(total)
            });
        if memory_reserved.is_err() {
            tracing::debug!(subscription = %self.name, memory, "plugin instance dropped: idle instances hold plugins.warm_memory already");
            return;
        }
        let reserved = shared
            .idle_total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.idle_cap).then_some(n + 1)
            });
        if reserved.is_ok() {
            warm.memory = memory;
            idle.push(warm);
        } else {
            shared.idle_memory.fetch_sub(memory, Ordering::AcqRel);
        }
    }

    /// A new instance in a new store, set up with the limits, started for
    /// a call of `event_id`.
    async fn instantiate(&self, event_id: &str) -> Result<Warm, Error> {
        let memory_limit = usize::try_from(self.info.memory_limit).unwrap_or(usize::MAX);
        let log = LogSink {
            subscription: self.name.clone(),
            event_id: String::new(),
            rate: self.log_rate.clone(),
        };
        let mut store = Store::new(&self.shared.engine, HostState::new(memory_limit, log));
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.ticks_used += 1;
            if state.ticks_used >= state.tick_budget {
                state.deadline_hit = true;
                return Err(wasmtime::Error::new(host::DeadlineHit));
            }
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        // Instantiation runs guest code (start functions) under the deadline too.
        store.data_mut().begin_call(event_id, self.tick_budget);
        store.set_epoch_deadline(1);
        let _running = self.shared.ticker.active();
        match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => Ok(Warm {
                store,
                instance,
                memory: 0,
            }),
            Err(e) => Err(self.failure(&store, &e, "instantiation failed")),
        }
    }

    /// One guest call on `warm`.
    async fn call(&self, warm: &mut Warm, input: Input) -> Result<Verdict, Error> {
        let Warm { store, instance, .. } = warm;
        store.data_mut().begin_call(&input.event_id, self.tick_budget);
        store.set_epoch_deadline(1);
        let event = wit::Event {
            id: input.event_id,
            type_: input.event_type,
            timestamp: input.timestamp,
            body: input.body.to_vec(),
            headers: input.headers,
        };
        let returned = {
            let _running = self.shared.ticker.active();
            instance.call_transform(&mut *store, &event, &self.config).await
        };
        let verdict = match returned {
            Err(e) => return Err(self.failure(store, &e, "trapped")),
            Ok(Err(e)) => Err(Error::Guest {
                plugin: self.name.to_string(),
                message: output::clean_message(&e.message),
            }),
            Ok(Ok(verdict)) => output::check(&self.name, verdict, self.shared.settings.max_body_bytes.bytes()),
        };
        let written = store.data().output.text();
        if !written.is_empty() {
            store.data().log.write(
                host::bindings::hookd::plugin::log::Level::Debug,
                &format!("stdout/stderr: {written}"),
            );
        }
        verdict
    }

    /// Classifies a failed instantiation or call.
    fn failure(&self, store: &Store<HostState>, error: &wasmtime::Error, what: &str) -> Error {
        let state = store.data();
        let plugin = self.name.to_string();
        tracing::debug!(subscription = %plugin, error = ?error, "plugin {what}");
        if state.deadline_hit {
            return Error::Deadline {
                plugin,
                limit: self.info.deadline,
            };
        }
        if state.limits.memory_hit {
            return Error::Memory {
                plugin,
                limit: self.info.memory_limit,
            };
        }
        let cause = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => error.root_cause().to_string(),
        };
        let written = state.output.text();
        let message = if written.is_empty() {
            format!("{what}: {cause}")
        } else {
            format!(
                "{what}: {cause}; it wrote: {}",
                host::truncate(&written, output::MAX_MESSAGE)
            )
        };
        Error::Trap { plugin, message }
    }
}

impl Drop for PluginInner {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.shared.idle_total.fetch_sub(idle.len(), Ordering::AcqRel);
        let memory = idle.iter().map(|w| w.memory).sum();
        self.shared.idle_memory.fetch_sub(memory, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Plugins>();
        send_sync::<Plugin>();
    }

    #[test]
    fn deadlines_become_ticks() {
        assert_eq!(ticks_for(Duration::from_millis(20)), 21);
        assert_eq!(ticks_for(Duration::from_micros(1500)), 3);
        assert_eq!(ticks_for(Duration::from_millis(1)), 2);
    }

    #[test]
    fn input_gives_when_the_event_happened_and_the_headers_sent() {
        let json = br#"{"type":"a.b","id":"evt_1","timestamp":"2026-11-23T10:00:00Z","data":{}}"#;
        let event = crate::ingest::parse_event(json, crate::ingest::DEFAULT_MAX_DEPTH).unwrap();
        let name = crate::config::SubscriptionName::parse("crm").unwrap();
        let new = crate::ingest::to_subscriptions(&event, "", std::iter::once(&name), 1, 42);
        let custom = [
            ("x-team".to_string(), "crm".to_string()),
            ("Content-Type".to_string(), "text/plain".to_string()),
        ];
        let input = Input::for_delivery(&new.deliveries[0], &custom);
        assert_eq!(
            input.timestamp, 1_795_428_000_000,
            "the envelope's, not the creation time"
        );
        assert_eq!(
            input.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-team".to_string(), "crm".to_string()),
            ]
        );
        let mut odd = new.deliveries[0].clone();
        odd.body = Bytes::from_static(b"not json");
        assert_eq!(Input::for_delivery(&odd, &[]).timestamp, 42);
    }

    #[test]
    fn only_components_pass_the_header_check() {
        assert!(check_component(b"\0asm\x0d\0\x01\0rest").is_ok());
        let core = check_component(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(core.contains("core WebAssembly module"), "{core}");
        assert!(check_component(b"#!/bin/sh\n")
            .unwrap_err()
            .contains("not a WebAssembly file"));
        assert!(check_component(b"").is_err());
    }

    #[test]
    fn verdicts_apply_removals_then_sets() {
        let body = Bytes::from_static(b"old");
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-a".to_string(), "1".to_string()),
            ("X-B".to_string(), "2".to_string()),
        ];
        let verdict = Verdict::Deliver {
            body: Some(Bytes::from_static(b"new")),
            set_headers: vec![("x-a".into(), "9".into()), ("x-c".into(), "3".into())],
            remove_headers: vec!["x-b".into()],
        };
        let (new_body, new_headers) = verdict.apply(&body, &headers).unwrap();
        assert_eq!(new_body, Bytes::from_static(b"new"));
        assert_eq!(
            new_headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-a".to_string(), "9".to_string()),
                ("x-c".to_string(), "3".to_string()),
            ]
        );
        assert!(Verdict::Drop { reason: "no".into() }.apply(&body, &headers).is_none());
        let unchanged = Verdict::Deliver {
            body: None,
            set_headers: vec![],
            remove_headers: vec![],
        };
        assert_eq!(unchanged.apply(&body, &headers), Some((body.clone(), headers.clone())));
    }
}
