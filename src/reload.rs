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
//! `[plans]`, `[[event_types]]`, `[plugins.registry]`, `server.api_keys`
//! (a removed key stops working at once), `server.allowed_hosts`,
//! `server.metrics_public` and `server.metrics_require_key`,
//! and the delivery settings subscriptions take their defaults from,
//! handed to the [`Catalog`], which publishes them with the stored
//! subscriptions. Every other setting is built into something at start
//! (the listener, the queue, the HTTP client and its address guard, the
//! plugin engine, the notifier, the log's trimming, the console): a file
//! changing one of them is refused whole, naming each such key and saying
//! a restart is needed ([`restart_needed`]), and the running config stays.
//! Nothing is ever kept silently.
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
use tracing::{error, info};

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

/// The watched files as they were at one moment.
pub(crate) struct Watched(Vec<Stamp>);

impl Watched {
    /// `config`'s watched files as they are now: taken when hookd starts,
    /// so a change made before the reloader runs (plugins still loading)
    /// is reloaded too.
    pub(crate) fn now(config: &Config) -> Watched {
        Watched(watched(config).iter().map(stamp).collect())
    }
}

impl Reloader {
    /// Reloads on SIGHUP, file changes (since `since`) or catalogue
    /// publications until `shutdown`.
    pub async fn run(mut self, since: Watched, shutdown: CancellationToken) {
        // Built in code, not from a file: plugins and the catalogue can
        // still change.
        let source = self.config.source.clone();
        let mut hangup = match &source {
            Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            None => None,
        };
        let mut published = self.catalog.subscribe();
        published.borrow_and_update();
        // The endpoints were built while plugins loaded, from the snapshot
        // of that moment; the API was serving meanwhile, so a subscription
        // made then (published before this subscribed) is taken now.
        self.rebuild().await;
        let mut stamps: Vec<Stamp> = since.0;
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
        self.metrics.catalog_rejected(snapshot.rejected.len());
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
        let needed = restart_needed(&self.config, &config);
        if !needed.is_empty() {
            error!(
                changed = %needed.join(", "),
                "config reload rejected ({why}): {} cannot change while hookd runs; restart needed. The running config stays",
                needed.join(", ")
            );
            return;
        }
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
        self.endpoints.store(Arc::new(endpoints));
        info!(subscriptions = config.subscriptions.len(), "config reloaded ({why})");
        self.catalog.set_file(config.clone()).await;
        self.config = config;
    }
}

/// Settings that take effect only at start, by key: `[server]` but for
/// its keys, `[queue]`, `[ingest]`, `[notify]`, `[history]`, `[console]`,
/// `[plugins]` but for its registry, and the delivery settings built into
/// the HTTP client and the dispatcher.
const RELOADABLE: &[&str] = &[
    "server.api_keys",
    "server.allowed_hosts",
    "server.metrics_public",
    "server.metrics_require_key",
    "plugins.registry",
    "delivery.timeout",
    "delivery.max_retries",
    "delivery.max_retries_limit",
    "delivery.timeout_max",
    "delivery.backoff_initial",
    "delivery.backoff_multiplier",
    "delivery.backoff_max",
    "delivery.max_in_flight_per_subscription",
    "delivery.response_body_limit",
];

/// The sections compared; subscriptions, tenants, plans and event types
/// always reload.
const SECTIONS: &[&str] = &[
    "server", "queue", "ingest", "delivery", "plugins", "notify", "history", "console",
];

/// The keys whose change from `old` to `new` needs a restart, as
/// `section.key` with the values (secrets named, never shown).
pub(crate) fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let table = |c: &Config| {
        toml::Value::try_from(c)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default()
    };
    let (before, after) = (table(old), table(new));
    let mut changed = Vec::new();
    for section in SECTIONS {
        let empty = toml::map::Map::new();
        let b = before.get(*section).and_then(|v| v.as_table()).unwrap_or(&empty);
        let a = after.get(*section).and_then(|v| v.as_table()).unwrap_or(&empty);
        let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let name = format!("{section}.{key}");
            // Secrets are compared below, as they are.
            let secret = name == "queue.redis_url" || name == "notify.smtp_password";
            if secret || RELOADABLE.contains(&name.as_str()) || b.get(key) == a.get(key) {
                continue;
            }
            let show = |v: Option<&toml::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "unset".into());
            changed.push(format!("{name} ({} → {})", show(b.get(key)), show(a.get(key))));
        }
    }
    // Secrets serialize as `[redacted]`: compare them as they are.
    if old.queue.redis_url != new.queue.redis_url {
        changed.push("queue.redis_url (changed)".into());
    }
    if old.notify.smtp_password != new.notify.smtp_password {
        changed.push("notify.smtp_password (changed)".into());
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(extra).unwrap()
    }

    #[test]
    fn start_only_settings_need_a_restart_and_keys_do_not() {
        let base = config("[server]\napi_keys = [\"key-a-0123456789\"]\n");
        assert!(restart_needed(&base, &base).is_empty());
        for changed in [
            "metrics_require_key = true",
            "metrics_public = true\nallowed_hosts = [\"hooks.example.com\"]",
        ] {
            let keys = config(&format!("[server]\napi_keys = [\"key-b-0123456789\"]\n{changed}\n"));
            assert!(
                restart_needed(&base, &keys).is_empty(),
                "{:?}",
                restart_needed(&base, &keys)
            );
        }
        let shards = config("[server]\napi_keys = [\"key-a-0123456789\"]\n[queue]\nshards = 32\n");
        assert_eq!(restart_needed(&base, &shards), vec!["queue.shards (8 → 32)".to_owned()]);
        let guard =
            config("[server]\napi_keys = [\"key-a-0123456789\"]\n[delivery]\nallow_private_networks = true\nbackoff_max = \"1h\"\n");
        assert_eq!(
            restart_needed(&base, &guard),
            vec!["delivery.allow_private_networks (false → true)".to_owned()]
        );
        let redis =
            config("[server]\napi_keys = [\"key-a-0123456789\"]\n[queue]\nredis_url = \"redis://127.0.0.1:1\"\n");
        let other =
            config("[server]\napi_keys = [\"key-a-0123456789\"]\n[queue]\nredis_url = \"redis://127.0.0.1:2\"\n");
        let needed = restart_needed(&redis, &other);
        assert_eq!(needed, vec!["queue.redis_url (changed)".to_owned()]);
        assert!(!needed.concat().contains("127.0.0.1"), "secrets are named, not shown");
    }
}
