//! # hookd: webhook delivery daemon
//!
//! hookd takes events from producers and delivers each one to every
//! subscription that wants it, as a signed HTTPS POST, retrying until the
//! endpoint acknowledges with a 2xx. Delivery is at least once: nothing is
//! lost when hookd, Redis or the endpoint crashes.
//!
//! ## The tour
//!
//! A request travels through the modules in one direction:
//!
//! ```text
//!  POST /v1/events ─┐
//!  XADD …:events ───┼─► ingest ─► queue ─► dispatch ─► sign ─► deliver ─► endpoint
//!  hookd send ──────┘  (validate,  (dedup,   (claim,     (HMAC,  (hyper)
//!                       fan out)    due set)  classify,   Ed25519)
//!                                             retry)
//! ```
//!
//! - [`model`]: the leaf of shared types every stage uses (event ids,
//!   types and patterns, subscription names, deliveries, tenants, secrets,
//!   hosts as requests and `server.allowed_hosts` name them
//!   ([`model::Host`]), the clock's unit, the header lists
//!   ([`model::headers`]) and the API's one time format ([`model::time`]));
//!   it imports nothing else of hookd.
//! - [`catalog`]: tenants, API keys ([`catalog::keys`]), plans, the event
//!   catalogue and every subscription — the config file's and those made
//!   through the API, kept in a [`catalog::store::CatalogStore`] (Redis or
//!   `catalog.redb`) — published as one immutable, versioned
//!   [`catalog::Snapshot`] that ingest, dispatch and the API read. Every
//!   process polls the store's version every 250 ms, so a change made
//!   anywhere is in force everywhere within a second. Fan-out's index
//!   ([`catalog::Routes`]) is by tenant. Writes are compare-and-set on what
//!   they were built from (a plan's subscription count on the tenant's
//!   revision), in the store's one atomic apply; a stored record that
//!   cannot be built is left out of the snapshot alone, never stopping the
//!   rest.
//! - [`config`]: the TOML file, loaded with figment over compiled-in
//!   defaults (`src/config/defaults.toml`) and `HOOKD_` variables, validated
//!   with errors that name the key; every subscription field a tenant or
//!   the file sets is held to [`config::bounds`] (a plan may lower them).
//!   Secrets print as `[redacted]`, and so
//!   do custom header values, plugin settings and the userinfo and
//!   parameters of URLs ([`model::redact_url`], the one URL redaction).
//! - [`ingest`]: one validation path for every source ([`ingest::parse_event`],
//!   `data`'s nesting bounded by `ingest.max_depth`, then the catalogue's
//!   checks: the tenant exists, the schema holds), plan rate limits and
//!   quotas, backpressure on a queue too deep, fan-out to the matching
//!   subscriptions of the snapshot in force ([`ingest::Ingestor`]), and the
//!   Redis stream consumer ([`ingest::stream`]).
//! - [`queue`]: the [`queue::Queue`] trait (the delivery lifecycle) and,
//!   beside it, [`queue::StateStore`] (subscription state, health, rate
//!   buckets), and their two backends: Redis
//!   sorted sets (many processes, one Redis or a Cluster) and an embedded
//!   redb store (one process, no setup). Dedup and enqueue are one atomic
//!   step; claims are leased so a crashed worker's deliveries fall due again.
//!   Its Redis connection layer (`queue::redis::link`: the pool, script
//!   runs, per-shard pipelines, timeouts and TLS from `[queue]`) serves the
//!   Redis history, the catalogue and the stream consumer too. Leases and
//!   due times follow Redis's clock (`TIME` in the scripts), not the
//!   processes'. An enqueue
//!   may wait for replicas (`queue.redis_wait_replicas`), and
//!   [`queue::epoch`] notices a Redis that lost its data while hookd runs.
//! - [`history`]: the delivery log: every delivery's state and every
//!   attempt (headers with secrets redacted, status, the first bytes of the
//!   response, the error kind) and every event's body as ingested, in
//!   PostgreSQL ([`history::postgres`]: day partitions dropped whole by
//!   retention, schema migrated at start, connections over rustls TLS as
//!   `history.postgres_tls` says), in Redis, or in a redb file of
//!   its own, trimmed by age and count in the background; written by
//!   ingest and the dispatcher through one non-blocking
//!   [`history::Recorder`], whose writer spools what a slow or failing
//!   store does not take (memory, then disk: [`history::spool`]) so
//!   deliveries never wait for the log; read by the admin API and event
//!   replay. It also keeps per-minute aggregates of attempts (outcome, a
//!   latency histogram, for all and per tenant: [`history::activity`]) as
//!   they are recorded, for the overview of `GET /v1/stats`.
//! - [`dispatch`]: the claim loop, bounded concurrency overall and per
//!   subscription, per-subscription rate limits (buckets in the queue
//!   backend, [`queue::rate`]), the
//!   pure outcome classification and retry policy ([`dispatch::policy`]),
//!   and batched settlements.
//! - [`sign`]: Standard Webhooks signatures (`v1` HMAC-SHA256 under
//!   `whsec_` secrets, `v1a` Ed25519 under `whsk_` secret keys, with their
//!   `whpk_` public keys), `content-digest`, the one reader of secrets
//!   ([`sign::SigningKey`]) the config's checks share, and the
//!   [`sign::Verifier`] receivers use (secrets and public keys alike).
//! - [`deliver`]: the outbound HTTP client (hyper, rustls, HTTP/1.1 and
//!   HTTP/2), which refuses non-public addresses after DNS resolution, and
//!   the endpoint URL rule the config's checks share
//!   ([`deliver::check_endpoint_url`]), both under the subscription owner's
//!   [`deliver::NetworkPolicy`]: `[delivery]`'s for the operator, the plan's
//!   alone for a tenant.
//! - [`api`]: the HTTP API (ingest, dead deliveries and replay, the
//!   delivery log in [`api::admin`], replaying an event to its
//!   subscriptions in [`api::events`], retrying and bulk replay of failed
//!   deliveries in [`api::recover`], subscriptions in
//!   [`api::subscriptions`], tenants and keys in [`api::tenants`], the
//!   event catalogue in [`api::event_types`], the overview of delivery
//!   activity in [`api::stats`], the plugin registry in [`api::plugins`],
//!   one-time console links and the listing and ending of console
//!   sessions in [`api::portal`], health) and a client of it
//!   for the CLI. [`api::serve`] runs it on hyper with the limits a public
//!   listener needs: a connection cap, head and request timeouts, an idle
//!   timeout and a stream cap for HTTP/2, a bounded shutdown; cross-site
//!   browser posts are refused. Every request is made by a
//!   [`catalog::keys::Principal`] (admin, producer, tenant); a tenant sees
//!   its own objects only, another's being a 404. A tenant's own are those
//!   of its *generation* ([`catalog::Snapshot::owns`]): a tenant made again
//!   with a deleted one's id sees nothing of the old one's log, which the
//!   API fences as it reads (`api::in_tenant_log`), whatever the log store.
//! - [`console`]: the web console and tenant portal at `/console`: HTML
//!   rendered on the server with maud, no script, one embedded stylesheet.
//!   Its pages read and act through the API's own routes, called in
//!   process as the session's principal, so a tenant's portal has exactly
//!   a tenant key's reach. Sessions and one-time links live in the
//!   catalogue store ([`console::session`]), shared by every process; each
//!   remembers the key that let it in (a link, the key of the admin who
//!   made it) and ends with that key.
//! - [`cli`]: the operator verbs' side of that API (`hookd subscriptions`,
//!   `deliveries`, `attempts`, `event`, `retry`, `replay`, `enable`,
//!   `disable`, `dead`): argument checks, and the tables printed from the
//!   JSON answers.
//! - [`notify`]: operator notifications (subscription disabled or
//!   recovered, deliveries dead): digest emails over SMTP, one per
//!   recipient list per window, and the matching `hookd.*` events.
//! - [`telemetry`]: structured logs and Prometheus metrics
//!   ([`telemetry::Metrics`], served at `GET /metrics`).
//! - [`plugin`]: the only module that knows wasmtime: WebAssembly plugins
//!   that drop or reshape a delivery before it is signed, sandboxed with a
//!   deadline on the call in wall time (the wait for an instance slot is
//!   bounded apart, by `plugins.queue_timeout`) and a memory cap on each
//!   instance's total, with the memory idle warm instances keep bounded
//!   too. Running out of time or of slots is retried; a trap or a bad
//!   verdict kills the delivery. Plugins compile on tokio's
//!   blocking pool; the API serves while they do, and the dispatcher starts
//!   once they are loaded. [`plugin::Input::for_delivery`] builds what a
//!   plugin is given, for deliveries and `hookd plugin run` alike.
//! - `reload` (private): hot reload of the config and plugin files, handed
//!   to the catalogue; it rebuilds the dispatcher's endpoints whenever the
//!   catalogue publishes.
//! - [`demo`]: `hookd demo`, hookd and a verifying receiver in one process.
//! - [`supervise`]: [`run`]'s long-running tasks (the dispatcher's claim
//!   loop with its settlement, the reloader, the catalogue poll, the
//!   sweeps, the stream consumer), each made again from its shared handles
//!   after a panic, with backoff, counted and shown in `/readyz`. The
//!   history writer is not among them: it owns the spool's open segment,
//!   so it is not made again (a panic there is a bug in it alone).
//!
//! `main` is thin: it parses the CLI, loads the config, sets up logging and
//! calls [`run`], which takes everything it touches as arguments; tests call
//! the same `run` with a port-0 listener.
//!
//! ## Where this departs from DESIGN.md
//!
//! - The `webhook-id` endpoints receive is the *event* id: the same event
//!   fanned out to two subscriptions carries the same id to both, and it is
//!   stable across retries, so it is the dedup key receivers want.
//! - On a single Redis node one claim, settle or enqueue is one Lua script
//!   run over every shard involved (one round trip), not one per shard; on
//!   a Cluster it is one run per shard. Claims are fair between owners
//!   (each tenant, and the operator): the owners with something due take
//!   turns, each its oldest first, by the same rule on both backends (on
//!   a Cluster, shard by shard), so one tenant's backlog delays another's
//!   fresh deliveries by about one claim batch, not by the backlog.
//! - The embedded store fsyncs an enqueue (and a replay) before answering,
//!   so an accepted event is never lost; claims and settlements are made
//!   durable at least every second. A crash can undo up to a second of
//!   acknowledgements: those deliveries are sent again (at least once).
//! - A subscription made through the API is, downstream of the catalogue,
//!   a [`config::SubscriptionConfig`] named by its id (`sub_…`) with an
//!   `owner`: fan-out, endpoints, health, parking and the log treat both
//!   kinds alike. TOML names may not start with `sub_`. Deleting one
//!   leaves a tombstone in the store, so a process meeting its deliveries
//!   cancels them (recorded as `cancelled`) instead of waiting to learn of
//!   it; a delivery for a `sub_…` id not known yet is deferred while the
//!   catalogue refreshes.
//! - The catalogue store is versioned records, not one structure per
//!   kind: every process reloads the whole catalogue when the version
//!   moves (one `GET` every 250 ms otherwise). Changes are rare next to
//!   deliveries; a change feed can replace the reload if catalogues grow
//!   large. Key use times live apart and do not bump the version.
//! - Subscription state, health and rate buckets (a tenant's ingest bucket
//!   too) have a trait of their own, [`queue::StateStore`], beside
//!   [`queue::Queue`]; both are implemented by the same backend (one Redis,
//!   one redb file), handed around together as a [`queue::Backend`].
//! - The console is not a separate app calling the API over HTTP: it is
//!   server-rendered in the same process and calls the API's router in
//!   process, with the session's principal attached as a request extension
//!   (`console::Vouched`) that the network can never set. Sessions are not
//!   versioned catalogue records (a sign-in must not make every process
//!   reload the catalogue); they live beside the records with an expiry.
//! - An API with no `server.api_keys` stays open to anyone as an admin, as
//!   before tenants; a stored key presented to it still gets its own
//!   scope. Tenant keys protect nothing until `server.api_keys` is set.
//!   Such an API is refused at start on an address beyond loopback unless
//!   `server.allow_unauthenticated` says it is meant, and it still refuses
//!   a browser's cross-site posts.
//! - Two modules beyond DESIGN.md's list: `history` (the delivery log has
//!   its own store, since the queue forgets a delivery once it is
//!   acknowledged: PostgreSQL with `history.postgres_url`, so Redis holds
//!   only the hot queue, else beside the queue) and `reload` (hot reload of the config and plugin
//!   files, swapping immutable subscription snapshots in the ingestor and
//!   the dispatcher). Subscription health and parking live in
//!   `dispatch::health`, with their state in the queue backend.
//! - `*` matches every event type but hookd's own `hookd.*` notifications,
//!   which a subscription receives only by naming them; producers may not
//!   send `hookd.` types.
//! - Delivery ids are `dlv_<UUIDv7><shard>`: they sort in creation order,
//!   the tie-break of equal due times.
//! - Waiting for a subscription's in-flight cap or rate limit is a deferral:
//!   the claimed delivery goes back to the queue unattempted, due when it
//!   may go. Once one delivery of a subscription is deferred in a claim
//!   batch, its later ones are too, so a subscription's deliveries keep
//!   their order (parked ones resume oldest first). A rate limit is one
//!   token bucket in the queue backend, shared by every process: one
//!   backend call per claim batch per limited subscription.
//! - Bulk replay has no job table: the cursor carries the whole walk (the
//!   filter, when it started, the position reached), so it resumes on any
//!   process, and the dead walk stops at deliveries that died after it
//!   started, so it never replays one twice. Event replay re-enqueues the
//!   event's stored body under a dedup key of its own
//!   (`{event_id}/replay/{key}`), keeping the `webhook-id`.
//! - Dead deliveries are not kept forever: after `queue.dead_retention`
//!   (30d) a background sweep forgets them ([`queue::Queue::expire_dead`])
//!   and the log records them as `expired`. Parked deliveries do not
//!   expire: they belong to a disabled subscription and wait for an
//!   operator, whose enable sends them; dropping them on a timer would
//!   lose events nobody chose to give up.
//! - Ingest's backpressure (`ingest.max_queue_depth`) reads the queue depth
//!   the metrics sampler takes every 5 s ([`ingest::Backpressure`]), not a
//!   count per event: the bound is approximate by one sample's worth.
//!   A tenant's quota (`plans.X.max_pending`) is exact instead: each
//!   backend counts a tenant's unfinished deliveries in the same atomic
//!   write as every move in or out ([`queue::Queue::pending_of`]), and
//!   ingest reads that count on each call of a tenant with a quota.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod console;
pub mod deliver;
pub mod demo;
pub mod dispatch;
pub mod history;
pub mod ingest;
pub mod model;
pub mod notify;
pub mod plugin;
pub mod queue;
mod reload;
pub mod sign;
pub mod supervise;
pub mod telemetry;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use config::Config;
use history::History;
use queue::{Backend, Queue};

/// Opens the queue backend `config` selects (Redis with a `redis_url`,
/// the embedded store otherwise): its queue and its state store.
pub async fn open_queue(config: &Config) -> anyhow::Result<Backend> {
    Ok(match &config.queue.redis_url {
        Some(_) => Backend::new(Arc::new(queue::redis::RedisQueue::connect(&config.queue).await?)),
        None => Backend::new(Arc::new(queue::embedded::EmbeddedQueue::open(&config.queue)?)),
    })
}

/// Opens the delivery history `config` selects: in PostgreSQL with a
/// `history.postgres_url`, else beside the queue: in Redis with a
/// `redis_url`, in `history.redb` under `queue.data_dir` otherwise.
pub async fn open_history(config: &Config) -> anyhow::Result<Arc<dyn History>> {
    if config.history.postgres_url.is_some() {
        return Ok(Arc::new(
            history::postgres::PostgresHistory::connect(&config.history).await?,
        ));
    }
    Ok(match &config.queue.redis_url {
        Some(_) => Arc::new(history::redis::RedisHistory::connect(&config.queue, &config.history).await?),
        None => Arc::new(history::embedded::EmbeddedHistory::open(
            &config.queue,
            &config.history,
        )?),
    })
}

/// Opens the catalogue store beside the queue `config` selects: in Redis
/// with a `redis_url`, in `catalog.redb` under `queue.data_dir` otherwise.
pub async fn open_catalog_store(config: &Config) -> anyhow::Result<Arc<dyn catalog::store::CatalogStore>> {
    Ok(match &config.queue.redis_url {
        Some(_) => Arc::new(catalog::store::redis::RedisCatalog::connect(&config.queue).await?),
        None => Arc::new(catalog::store::embedded::EmbeddedCatalog::open(&config.queue)?),
    })
}

/// Runs hookd: the HTTP API on `listener`, the stream consumer (Redis
/// backend) and the dispatcher, until `shutdown` is cancelled. Then stops
/// accepting, lets in-flight requests and deliveries finish, and returns.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let backend = open_queue(&config).await.context("cannot open the queue")?;
    run_with_queue(config, backend, listener, shutdown).await
}

/// [`run`] with a queue already opened; opens the history itself.
pub async fn run_with_queue(
    config: Config,
    backend: Backend,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let history = open_history(&config)
        .await
        .context("cannot open the delivery history")?;
    run_with_backends(config, backend, history, listener, shutdown).await
}

/// [`run`] with the queue and the history already opened (tests share
/// them with the running hookd this way).
pub async fn run_with_backends(
    config: Config,
    backend: Backend,
    history: Arc<dyn History>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The watched files as they are now: a change made while the API
    // already serves and plugins still load is a change to reload.
    let watched = reload::Watched::now(&config);
    let tls = api::serve::tls_acceptor(&config.server)?;
    let queued = Arc::new(Notify::new());
    let metrics = Arc::new(telemetry::Metrics::new());
    metrics.set_max_series(config.telemetry.max_series);
    // One writer of the delivery log for ingest and the dispatcher; it
    // stops after the dispatcher has drained, keeping its last entries.
    let recorder_stop = CancellationToken::new();
    let spool = history::Spool::open(
        &config.queue.data_dir,
        config.history.spool_memory.0,
        config.history.spool_disk.0,
    );
    let (recorder, recorder_task) =
        history::Recorder::start(history.clone(), spool, metrics.clone(), recorder_stop.clone());
    let store = open_catalog_store(&config)
        .await
        .context("cannot open the catalogue store")?;
    let catalog = catalog::Catalog::open(config.clone(), store)
        .await
        .context("cannot load the catalogue")?;
    metrics.catalog_rejected(catalog.snapshot().rejected.len());
    let ingestor = Arc::new(ingest::Ingestor::new(
        &config,
        catalog.clone(),
        backend.clone(),
        queued.clone(),
        recorder.clone(),
        metrics.clone(),
    ));
    let plugins = if catalog
        .snapshot()
        .config
        .subscriptions
        .iter()
        .any(|s| s.plugin.is_some())
    {
        Some(Arc::new(
            plugin::Plugins::new(&config.plugins).context("cannot start the plugin engine")?,
        ))
    } else {
        None
    };
    // Everything below stops on `stop`: the caller's shutdown, or a
    // start-up failure once the API is already serving.
    let stop = shutdown.child_token();
    let tasks = TaskTracker::new();
    // The notifier flushes its digest after the dispatcher stops raising.
    let notifier_stop = CancellationToken::new();
    let (notifier, notifier_task) = notify::Notifier::start(&config, metrics.clone(), notifier_stop.clone())?;
    // Notification events are ingested by a task of their own, stopped
    // after the dispatcher, so the last dead deliveries' events are queued.
    let alerts_stop = CancellationToken::new();
    let (alerts, alerts_task) = notify::Alerts::start(notifier, ingestor.clone(), alerts_stop.clone());
    // The API serves from here on, while plugins compile (seconds each,
    // cold) on the blocking pool; the dispatcher starts once they are
    // loaded. Until then the API's view of the endpoints is empty (enable
    // and disable act through the queue backend all the same).
    let endpoints = Arc::new(arc_swap::ArcSwap::from_pointee(dispatch::Endpoints::default()));
    let state = api::ApiState::new(
        &config,
        catalog.clone(),
        ingestor.clone(),
        backend.clone(),
        history.clone(),
        metrics.clone(),
        alerts.clone(),
    );
    // Which supervised tasks are down, for `/readyz` ([`supervise`]).
    let task_health = Arc::new(supervise::TaskHealth::default());
    let state = Arc::new(api::ApiState {
        endpoints: endpoints.clone(),
        tasks: task_health.clone(),
        ..state
    });
    let addr = listener.local_addr()?;
    let kind = if config.queue.redis_url.is_some() {
        "redis"
    } else {
        "embedded"
    };
    info!(%addr, subscriptions = config.subscriptions.len(), backend = kind, "hookd serving");
    if config.server.metrics_require_key {
        tracing::warn!(
            "server.metrics_require_key is deprecated: while server.api_keys is set, GET /metrics needs an \
             admin key by default (server.metrics_public = true opens it)"
        );
    }
    let server = tokio::spawn({
        let server_config = config.server.clone();
        let stop = stop.clone();
        async move { api::serve::serve(listener, api::router(state), &server_config, tls, stop).await }
    });
    // Every long-running task is supervised: a panic is logged, counted,
    // shown in `/readyz` and the task made again from these handles.
    let supervised =
        |task: &'static str, make: Box<dyn FnMut() -> futures_util::future::BoxFuture<'static, ()> + Send>| {
            supervise::supervise(&tasks, task, task_health.clone(), metrics.clone(), stop.clone(), make);
        };
    {
        let (queue, metrics, backpressure, stop) = (
            backend.queue.clone(),
            metrics.clone(),
            ingestor.backpressure().clone(),
            stop.clone(),
        );
        supervised(
            "depth",
            Box::new(move || {
                Box::pin(sample_depth(
                    queue.clone(),
                    metrics.clone(),
                    backpressure.clone(),
                    stop.clone(),
                ))
            }),
        );
    }
    if !config.queue.dead_retention.is_zero() {
        let (queue, retention, recorder, metrics, stop) = (
            backend.queue.clone(),
            config.queue.dead_retention,
            recorder.clone(),
            metrics.clone(),
            stop.clone(),
        );
        supervised(
            "dead_expiry",
            Box::new(move || {
                Box::pin(expire_dead_loop(
                    queue.clone(),
                    retention,
                    recorder.clone(),
                    metrics.clone(),
                    stop.clone(),
                ))
            }),
        );
    }
    if config.ingest.stream && ingest::stream::StreamConsumer::new(&config, ingestor.clone()).is_some() {
        let (config, ingestor, stop) = (config.clone(), ingestor.clone(), stop.clone());
        supervised(
            "stream_consumer",
            Box::new(move || {
                let consumer = ingest::stream::StreamConsumer::new(&config, ingestor.clone());
                let stop = stop.clone();
                Box::pin(async move {
                    if let Some(consumer) = consumer {
                        consumer.run(stop).await;
                    }
                })
            }),
        );
    }
    {
        let (catalog, stop) = (catalog.clone(), stop.clone());
        supervised("catalog", Box::new(move || Box::pin(catalog.clone().run(stop.clone()))));
    }
    if config.queue.redis_url.is_some() {
        let (queue_config, stop) = (config.queue.clone(), stop.clone());
        supervised(
            "epoch",
            Box::new(move || Box::pin(queue::epoch::watch(queue_config.clone(), stop.clone()))),
        );
    }
    {
        let (history, history_config, stop) = (history.clone(), config.history.clone(), stop.clone());
        supervised(
            "trim",
            Box::new(move || {
                Box::pin(history::trim_loop(
                    history.clone(),
                    history_config.clone(),
                    stop.clone(),
                ))
            }),
        );
    }

    let snapshot = catalog.snapshot();
    let prepare = async {
        let loaded = dispatch::LoadedPlugins::load(&snapshot.config, plugins.as_deref()).await?;
        dispatch::Endpoints::build(&snapshot.config, &loaded, &metrics, None)
    };
    let prepared = tokio::select! {
        prepared = prepare => Some(prepared),
        _ = stop.cancelled() => None,
    };
    let mut failed = None;
    match prepared {
        Some(Ok(built)) => {
            endpoints.store(Arc::new(built));
            let started = (|| {
                if config.delivery.dispatch {
                    let services = dispatch::Services {
                        recorder: recorder.clone(),
                        metrics: metrics.clone(),
                        alerts: alerts.clone(),
                        catalog: catalog.clone(),
                    };
                    let make = {
                        let (config, backend, endpoints, queued) =
                            (config.clone(), backend.clone(), endpoints.clone(), queued.clone());
                        move |services: dispatch::Services| {
                            dispatch::Dispatcher::new(
                                &config,
                                backend.clone(),
                                endpoints.clone(),
                                queued.clone(),
                                services,
                            )
                        }
                    };
                    // Made once here, so a start-up error stops hookd; made
                    // again from the same handles after a panic.
                    let mut first = Some(make(services.clone())?);
                    let stop_dispatch = stop.clone();
                    supervised(
                        "dispatcher",
                        Box::new(move || {
                            let dispatcher = first.take().map(Ok).unwrap_or_else(|| make(services.clone()));
                            let stop = stop_dispatch.clone();
                            Box::pin(async move {
                                match dispatcher {
                                    Ok(dispatcher) => dispatcher.run(stop).await,
                                    Err(e) => tracing::error!(error = %e, "cannot make the dispatcher again"),
                                }
                            })
                        }),
                    );
                }
                Ok::<_, dispatch::Error>(())
            })();
            if let Err(e) = started {
                failed = Some(anyhow::Error::from(e));
            }
            let mut first = Some((plugins, watched));
            let (catalog, metrics, stop_reload) = (catalog.clone(), metrics.clone(), stop.clone());
            supervised(
                "reloader",
                Box::new(move || {
                    // Made again, it starts from the file in force and its
                    // files as they are now; the plugin engine starts again
                    // when a config needs it.
                    let config = catalog.file();
                    let (plugins, watched) = first.take().unwrap_or_else(|| (None, reload::Watched::now(&config)));
                    let reloader = reload::Reloader {
                        catalog: catalog.clone(),
                        config: (*config).clone(),
                        plugins,
                        endpoints: endpoints.clone(),
                        metrics: metrics.clone(),
                    };
                    Box::pin(reloader.run(watched, stop_reload.clone()))
                }),
            );
        }
        Some(Err(e)) => failed = Some(e.into()),
        // Told to stop while plugins were loading: nothing was delivered.
        None => {}
    }
    if failed.is_some() {
        stop.cancel();
    }
    server.await.context("HTTP server task failed")?;
    tasks.close();
    tasks.wait().await;
    alerts_stop.cancel();
    let _ = alerts_task.await;
    notifier_stop.cancel();
    let _ = notifier_task.await;
    // The last ingestors go now; their enqueue task then ends and lets go
    // of the queue (an embedded store's file is free once `run` returns).
    let enqueue_task = ingestor.enqueue_task();
    drop(alerts);
    drop(ingestor);
    if let Some(task) = enqueue_task {
        if tokio::time::timeout(ENQUEUE_DRAIN, task).await.is_err() {
            tracing::warn!("the enqueue task outlived the stop; the queue is released when it ends");
        }
    }
    recorder_stop.cancel();
    let _ = recorder_task.await;
    if let Some(e) = failed {
        return Err(e);
    }
    info!("hookd stopped");
    Ok(())
}

/// How long a stop waits for the enqueue task to let go of the queue.
const ENQUEUE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the queue depth gauges and ingest's backpressure are
/// refreshed.
pub(crate) const DEPTH_SAMPLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Refreshes the queue depth gauges and ingest's backpressure until
/// `shutdown`.
async fn sample_depth(
    queue: Arc<dyn Queue>,
    metrics: Arc<telemetry::Metrics>,
    backpressure: Arc<ingest::Backpressure>,
    shutdown: CancellationToken,
) {
    use telemetry::metrics::QueueState;
    loop {
        match queue.depth(queue::now_ms()).await {
            Ok(depth) => {
                metrics.set_queue_depth(QueueState::Due, depth.due);
                metrics.set_queue_depth(QueueState::Scheduled, depth.scheduled);
                metrics.set_queue_depth(QueueState::Parked, depth.parked);
                metrics.set_queue_depth(QueueState::Dead, depth.dead);
                backpressure.observe(&depth);
            }
            Err(e) => tracing::warn!(error = %e, "cannot sample the queue depth"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(DEPTH_SAMPLE) => {}
        }
    }
}

/// How often dead deliveries past `queue.dead_retention` are looked for.
const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Most dead deliveries forgotten in one queue call; a sweep makes as
/// many calls as it needs, pausing [`EXPIRE_PAUSE`] between them.
const EXPIRE_BATCH: usize = 500;
/// The pause between two batches of one sweep, so a backlog of expired
/// deliveries never keeps the backend busy.
const EXPIRE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Forgets dead deliveries that died more than `retention` ago until
/// `shutdown`, recording each as `expired` in the delivery log and
/// counting them in `hookd_dead_expired_total`. Every process sharing a
/// Redis runs it; each delivery is forgotten once.
async fn expire_dead_loop(
    queue: Arc<dyn Queue>,
    retention: std::time::Duration,
    recorder: history::Recorder,
    metrics: Arc<telemetry::Metrics>,
    shutdown: CancellationToken,
) {
    let retention_ms = queue::Millis::try_from(retention.as_millis()).unwrap_or(queue::Millis::MAX);
    let note = format!(
        "dead longer than queue.dead_retention ({}): forgotten, no longer replayable",
        humantime::format_duration(retention)
    );
    loop {
        loop {
            let now = queue::now_ms();
            let expired = match queue.expire_dead(now.saturating_sub(retention_ms), EXPIRE_BATCH).await {
                Ok(expired) => expired,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot expire old dead deliveries");
                    break;
                }
            };
            metrics.dead_expired(expired.removed);
            if expired.removed > 0 {
                info!(
                    count = expired.removed,
                    "dead deliveries past queue.dead_retention forgotten"
                );
            }
            for delivery in expired.deliveries {
                recorder.record(history::Entry::State {
                    id: delivery.id,
                    state: history::DeliveryState::Expired,
                    at: now,
                    note: Some(note.clone()),
                });
            }
            if expired.removed < EXPIRE_BATCH as u64 {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EXPIRE_PAUSE) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{DeliveryState, DeliverySummary, Entry};
    use crate::model::{Delivery, DeliveryId, EventId, SubscriptionName};
    use crate::queue::{NewEvent, Settlement};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_forgets_old_dead_deliveries_and_logs_them_expired() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config::from_toml(&format!("[queue]\ndata_dir = {:?}\n", dir.path().display().to_string())).unwrap();
        let backend = open_queue(&config).await.unwrap();
        let history = open_history(&config).await.unwrap();
        let queue = backend.queue.clone();
        let event_id = EventId::parse("evt_old").unwrap();
        let delivery = Delivery {
            id: DeliveryId::new(queue::shard_of(&event_id, config.queue.shards)),
            event_id: event_id.clone(),
            event_type: "coupon.redeemed".into(),
            subscription: SubscriptionName::parse("crm").unwrap(),
            created_at: queue::now_ms(),
            attempts: 1,
            body: bytes::Bytes::from_static(b"{}"),
            last_error: Some("endpoint answered 500".into()),
            headers: None,
            tenant: None,
        };
        let new = NewEvent {
            event_id,
            dedup_key: None,
            deliveries: vec![delivery.clone()],
        };
        queue.enqueue(&[new], std::time::Duration::from_secs(60)).await.unwrap();
        let claim = queue
            .claim(queue::now_ms(), std::time::Duration::from_secs(60), 1)
            .await
            .unwrap()
            .claims
            .remove(0);
        queue
            .settle(&[Settlement::Dead {
                delivery: claim.delivery,
                lease: claim.lease,
            }])
            .await
            .unwrap();
        history
            .record(&[
                Entry::Created(DeliverySummary::created(&delivery)),
                Entry::State {
                    id: delivery.id.clone(),
                    state: DeliveryState::Dead,
                    at: queue::now_ms(),
                    note: None,
                },
            ])
            .await
            .unwrap();

        let stop = CancellationToken::new();
        let metrics = Arc::new(telemetry::Metrics::new());
        let spool = history::Spool::open(dir.path(), 1 << 20, 1 << 20);
        let (recorder, recorder_task) = history::Recorder::start(history.clone(), spool, metrics.clone(), stop.clone());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let sweep = tokio::spawn(expire_dead_loop(
            queue.clone(),
            std::time::Duration::from_millis(1),
            recorder,
            metrics.clone(),
            stop.clone(),
        ));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let summary = loop {
            let (summary, _) = history.delivery(&delivery.id).await.unwrap().expect("logged");
            if summary.state == DeliveryState::Expired {
                break summary;
            }
            assert!(std::time::Instant::now() < deadline, "not expired: {summary:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(summary.state.as_str(), "expired");
        assert!(queue.get(&delivery.id).await.unwrap().is_none(), "gone from the queue");
        assert!(!queue.replay(&delivery.id, queue::now_ms()).await.unwrap());
        assert!(
            metrics.render().contains("hookd_dead_expired_total 1"),
            "{}",
            metrics.render()
        );
        stop.cancel();
        sweep.await.unwrap();
        recorder_task.await.unwrap();
    }
}
