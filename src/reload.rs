//! Hot reload of the config file and the plugins it names.
//!
//! On SIGHUP, or when the config file or a plugin file changes (checked
//! every [`POLL`] by modification time and size, which sees an in-place
//! write and an atomic rename alike), the file is loaded and validated
//! again, every plugin is loaded again (compiled artifacts come from the
//! disk cache; compiling runs on tokio's blocking pool, never on a runtime
//! worker), and the new subscriptions are swapped in whole: the
//! ingestor's filters and the dispatcher's endpoints. Deliveries in flight
//! finish with the snapshot they started with; queued deliveries are
//! untouched. A config or plugin that does not load is rejected with its
//! reason in the log, and the running one stays.
//!
//! What is reloaded: `[[subscriptions]]` (and their plugins), `[[tenants]]`,
//! `[plans]` and the delivery settings they take defaults from, handed to
//! the [`Catalog`], which publishes them with the stored subscriptions.
//! `[server]`, `[queue]` and `[ingest]` take effect at the next restart; a
//! change there is logged.
//!
//! The reloader also follows the catalogue: whenever it publishes (a
//! subscription made, changed or deleted through the API on any process),
//! the dispatcher's endpoints are rebuilt from the new snapshot, unchanged
//! subscriptions keeping their in-flight counts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::dispatch::{Endpoints, LoadedPlugins};
use crate::plugin::Plugins;
use crate::telemetry::Metrics;

/// How often the watched files are checked.
pub const POLL: Duration = Duration::from_secs(1);

/// Watches and reloads; owned by its task.
pub(crate) struct Reloader {
    /// The config file in force.
    pub config: Config,
    /// Publishes it with the stored subscriptions.
    pub catalog: Arc<Catalog>,
    /// The plugin engine, started on the first config that needs it.
    pub plugins: Option<Arc<Plugins>>,
    /// The dispatcher's subscriptions.
    pub endpoints: Arc<ArcSwap<Endpoints>>,
    /// Counters the new endpoints report to.
    pub metrics: Arc<Metrics>,
}

/// What identifies the state of one file: size and modification time.
type Stamp = Option<(u64, SystemTime)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// The config file and every plugin file it names.
fn watched(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.source.iter().cloned().collect();
    files.extend(
        config
            .subscriptions
            .iter()
            .filter_map(|s| s.plugin.as_ref())
            .map(|p| p.path.clone()),
    );
    files
}

impl Reloader {
    /// Reloads on SIGHUP, file changes or catalogue publications until
    /// `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Built in code, not from a file: plugins and the catalogue can
        // still change.
        let source = self.config.source.clone();
        let mut hangup = match &source {
            Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            None => None,
        };
        let mut published = self.catalog.subscribe();
        published.borrow_and_update();
        let mut stamps: Vec<Stamp> = watched(&self.config).iter().map(stamp).collect();
        loop {
            let signalled = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => false,
                _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    published.borrow_and_update();
                    self.rebuild().await;
                    continue;
                }
            };
            let now: Vec<Stamp> = watched(&self.config).iter().map(stamp).collect();
            if !signalled && now == stamps {
                continue;
            }
            let why = if signalled { "SIGHUP" } else { "a watched file changed" };
            match &source {
                Some(source) => match Config::load(Some(source)) {
                    Ok(config) => self.apply(config, why).await,
                    Err(e) => {
                        error!(error = %e, file = %source.display(), "config reload rejected ({why}); the running config stays")
                    }
                },
                None => {
                    let config = self.config.clone();
                    self.apply(config, "a plugin file changed").await;
                }
            }
            // What this reload published is built already.
            published.borrow_and_update();
            stamps = watched(&self.config).iter().map(stamp).collect();
        }
    }

    /// Rebuilds the endpoints from the catalogue's snapshot in force,
    /// keeping the running ones if that fails. Plugins load on the
    /// blocking pool.
    async fn rebuild(&mut self) {
        let snapshot = self.catalog.snapshot();
        if snapshot.config.subscriptions.iter().any(|s| s.plugin.is_some()) && self.plugins.is_none() {
            match Plugins::new(&snapshot.config.plugins) {
                Ok(p) => self.plugins = Some(Arc::new(p)),
                Err(e) => {
                    error!(error = %e, "cannot start the plugin engine; the running subscriptions stay");
                    return;
                }
            }
        }
        let loaded = match LoadedPlugins::load(&snapshot.config, self.plugins.as_deref()).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, "cannot apply the catalogue's change; the running subscriptions stay");
                return;
            }
        };
        let previous = self.endpoints.load();
        match Endpoints::build(&snapshot.config, &loaded, &self.metrics, Some(&previous)) {
            Ok(endpoints) => self.endpoints.store(Arc::new(endpoints)),
            Err(e) => error!(error = %e, "cannot apply the catalogue's change; the running subscriptions stay"),
        }
    }

    /// Builds the new subscriptions from `config` and swaps them in, or
    /// keeps the running ones if anything fails to load.
    async fn apply(&mut self, config: Config, why: &str) {
        if config.subscriptions.iter().any(|s| s.plugin.is_some()) && self.plugins.is_none() {
            match Plugins::new(&config.plugins) {
                Ok(p) => self.plugins = Some(Arc::new(p)),
                Err(e) => {
                    error!(error = %e, "config reload rejected ({why}): cannot start the plugin engine; the running config stays");
                    return;
                }
            }
        }
        let preview = self.catalog.preview(&config).await;
        let loaded = match LoadedPlugins::load(&preview.config, self.plugins.as_deref()).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, "config reload rejected ({why}); the running config stays");
                return;
            }
        };
        let previous = self.endpoints.load();
        let endpoints = match Endpoints::build(&preview.config, &loaded, &self.metrics, Some(&previous)) {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, "config reload rejected ({why}); the running config stays");
                return;
            }
        };
        for (section, before, after) in [
            (
                "server",
                toml::to_string(&self.config.server),
                toml::to_string(&config.server),
            ),
            (
                "queue",
                toml::to_string(&self.config.queue),
                toml::to_string(&config.queue),
            ),
            (
                "ingest",
                toml::to_string(&self.config.ingest),
                toml::to_string(&config.ingest),
            ),
        ] {
            if before.ok() != after.ok() {
                warn!(
                    section,
                    "config reload: [{section}] changed; it takes effect at the next restart"
                );
            }
        }
        self.endpoints.store(Arc::new(endpoints));
        info!(subscriptions = config.subscriptions.len(), "config reloaded ({why})");
        self.catalog.set_file(config.clone()).await;
        self.config = config;
    }
}
